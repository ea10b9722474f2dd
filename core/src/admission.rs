//! Admission arithmetic, once: how many batches each priority level, and all levels
//! together, may hold at once, with room kept for the higher levels so that lower ones
//! can never take every slot (as Kueue's borrowing limits do). The operator's scheduler
//! admits by it; the facade refuses a submission with 429 `queue_full` by the same rule.

use crate::crd::Priority;

/// Admission limits: per priority level (high, medium, low) and in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub per_priority: [usize; 3],
    pub max_jobs: usize,
    /// Slots of `max_jobs` kept for high and for medium batches: a lower level may not
    /// use the part of a higher level's reserve that level does not use.
    pub reserved: [usize; 2],
}

/// Admission refused: the batch stays Pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueFull;

impl Limits {
    /// Whether one more batch of `priority` fits beside `active`, the batches already
    /// admitted per level.
    pub fn admits(&self, active: [usize; 3], priority: Priority) -> Result<(), QueueFull> {
        let level = priority.level();
        let total: usize = active.iter().sum();
        let kept_above: usize = (0..level).map(|higher| self.reserved[higher].saturating_sub(active[higher])).sum();
        if active[level] >= self.per_priority[level] || total + kept_above >= self.max_jobs {
            return Err(QueueFull);
        }
        Ok(())
    }

    pub fn limit(&self, priority: Priority) -> usize {
        self.per_priority[priority.level()]
    }
}

/// Counts `priorities` per level, as [`Limits::admits`] takes them.
pub fn per_level(priorities: impl IntoIterator<Item = Priority>) -> [usize; 3] {
    let mut out = [0; 3];
    for p in priorities {
        out[p.level()] += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_level_and_the_total_are_bounded() {
        let l = Limits { per_priority: [1, 2, 2], max_jobs: 3, reserved: [0, 0] };
        let cases = [
            ([0, 0, 0], Priority::High, true),
            ([1, 0, 0], Priority::High, false),
            ([1, 1, 0], Priority::Medium, true),
            ([1, 1, 1], Priority::Low, false),
            ([0, 2, 0], Priority::Medium, false),
            ([0, 0, 2], Priority::Low, false),
            ([0, 1, 1], Priority::High, true),
        ];
        for (active, p, ok) in cases {
            assert_eq!(l.admits(active, p).is_ok(), ok, "{active:?} {p:?}");
        }
        assert_eq!(per_level([Priority::Low, Priority::High, Priority::Low]), [1, 0, 2]);
    }

    #[test]
    fn lower_levels_leave_the_higher_levels_reserves() {
        // The brief's limits, with 100 slots kept for high and 50 for medium.
        let l = Limits { per_priority: [100, 500, 1000], max_jobs: 1000, reserved: [100, 50] };
        assert!(l.admits([0, 0, 849], Priority::Low).is_ok());
        assert!(l.admits([0, 0, 850], Priority::Low).is_err(), "150 slots stay for high and medium");
        assert!(l.admits([0, 50, 850], Priority::Medium).is_err(), "medium used its own 50; high's 100 stay");
        assert!(l.admits([0, 49, 850], Priority::Medium).is_ok());
        assert!(l.admits([0, 50, 850], Priority::High).is_ok(), "high may use its reserve");
        assert!(l.admits([99, 50, 850], Priority::High).is_ok());
        assert!(l.admits([100, 50, 850], Priority::High).is_err(), "max_jobs");
        // A high level using its reserve lets nothing else in.
        assert!(l.admits([30, 0, 850], Priority::Low).is_err());
    }
}
