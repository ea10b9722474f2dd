//! Admission arithmetic, once: how many batches each priority level, and all levels
//! together, may hold at once. The operator's scheduler admits by it; the facade refuses
//! a submission with 429 `queue_full` by the same rule.

use crate::crd::Priority;

/// Admission limits: per priority level (high, medium, low) and in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub per_priority: [usize; 3],
    pub max_jobs: usize,
}

/// Admission refused: the batch stays Pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueFull;

impl Limits {
    /// Whether one more batch of `priority` fits beside `active`, the batches already
    /// admitted per level.
    pub fn admits(&self, active: [usize; 3], priority: Priority) -> Result<(), QueueFull> {
        let total: usize = active.iter().sum();
        if active[priority.level()] >= self.per_priority[priority.level()] || total >= self.max_jobs {
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
        let l = Limits { per_priority: [1, 2, 2], max_jobs: 3 };
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
}
