//! The order work is done in, as pure logic: admission per priority, strict priority with
//! aging, earliest deadline first within a level, and retries with backoff.
//!
//! It knows nothing of endpoints, HTTP or where results go; the engine owns one and asks
//! it for the next chunk whenever an endpoint has room. Time is passed in, so tests step
//! it instead of sleeping.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

pub use kubesentiment_core::admission::QueueFull;
use kubesentiment_core::admission::{self, Limits};
use kubesentiment_core::crd::Priority;

/// A batch's identity in the scheduler (its UID).
pub type JobId = String;

/// A contiguous run of a batch's texts, sent to one endpoint in one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub job: JobId,
    pub range: Range<usize>,
    /// Failed attempts so far.
    pub attempts: u32,
    /// The endpoint that failed it last, to try another.
    pub avoid: Option<String>,
}

impl Chunk {
    pub fn len(&self) -> usize {
        self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// The two halves of a chunk of two or more texts, to isolate a failing text.
    pub fn split(&self) -> Option<(Chunk, Chunk)> {
        (self.len() >= 2).then(|| {
            let mid = self.range.start + self.len() / 2;
            let half = |range| Chunk { job: self.job.clone(), range, attempts: 0, avoid: self.avoid.clone() };
            (half(self.range.start..mid), half(mid..self.range.end))
        })
    }
}

struct Entry {
    priority: Priority,
    deadline: Instant,
    /// Since when the job has waited for a chunk to be dispatched.
    waiting_since: Instant,
    /// Work not yet dispatched; retries go first, each with its earliest time.
    pending: VecDeque<(Chunk, Instant)>,
    in_flight: usize,
}

pub struct Scheduler {
    limits: Limits,
    /// A waiting job gains one level per `aging`.
    aging: Duration,
    jobs: HashMap<JobId, Entry>,
}

impl Scheduler {
    pub fn new(limits: Limits, aging: Duration) -> Self {
        Scheduler { limits, aging, jobs: HashMap::new() }
    }

    pub fn contains(&self, job: &str) -> bool {
        self.jobs.contains_key(job)
    }

    /// Admits a job if its priority level and the total have room. Idempotent.
    pub fn admit(&mut self, job: &str, priority: Priority, deadline: Instant, now: Instant) -> Result<(), QueueFull> {
        if self.jobs.contains_key(job) {
            return Ok(());
        }
        self.limits.admits(admission::per_level(self.jobs.values().map(|e| e.priority)), priority)?;
        self.jobs.insert(job.to_string(), Entry { priority, deadline, waiting_since: now, pending: VecDeque::new(), in_flight: 0 });
        Ok(())
    }

    /// Adds fresh work to an admitted job.
    pub fn enqueue(&mut self, job: &str, ranges: impl IntoIterator<Item = Range<usize>>, now: Instant) {
        if let Some(e) = self.jobs.get_mut(job) {
            for range in ranges.into_iter().filter(|r| !r.is_empty()) {
                e.pending.push_back((Chunk { job: job.to_string(), range, attempts: 0, avoid: None }, now));
            }
        }
    }

    /// Puts a failed chunk (or its halves) back, first in its job's line, not before `at`.
    pub fn retry(&mut self, chunk: Chunk, at: Instant) {
        if let Some(e) = self.jobs.get_mut(&chunk.job) {
            e.pending.push_front((chunk, at));
        }
    }

    /// Forgets a job (final, cancelled or deleted), freeing its admission slot.
    pub fn remove(&mut self, job: &str) {
        self.jobs.remove(job);
    }

    /// The next chunk to dispatch, at most `max_texts(job)` long, or `None` if nothing is
    /// ready. Order: effective level (priority minus one per `aging` waited), then
    /// deadline, then longest waiting.
    pub fn next(&mut self, now: Instant, max_texts: impl Fn(&str) -> usize) -> Option<Chunk> {
        let aging = self.aging.as_secs_f64().max(1e-3);
        let (id, _) = self
            .jobs
            .iter()
            .filter(|(_, e)| e.pending.iter().any(|(_, at)| *at <= now))
            .map(|(id, e)| {
                // May go below 0 (above high): a starved job must be able to overtake,
                // not only tie, or an earlier deadline at the higher level would win forever.
                let aged = (now.saturating_duration_since(e.waiting_since).as_secs_f64() / aging) as i64;
                (id, (e.priority.level() as i64 - aged, e.deadline, e.waiting_since))
            })
            .min_by_key(|(_, key)| *key)?;
        let id = id.clone();
        let e = self.jobs.get_mut(&id).expect("the job was just found. This is a bug.");
        let pos = e.pending.iter().position(|(_, at)| *at <= now).expect("a ready chunk was just found. This is a bug.");
        let (mut chunk, at) = e.pending.remove(pos).expect("the position is in range. This is a bug.");
        let max = max_texts(&id).max(1);
        if chunk.len() > max {
            let rest = Chunk { range: chunk.range.start + max..chunk.range.end, ..chunk.clone() };
            chunk.range.end = chunk.range.start + max;
            e.pending.insert(pos, (rest, at));
        }
        e.in_flight += 1;
        e.waiting_since = now;
        Some(chunk)
    }

    /// A dispatched chunk came back (done, failed or split); pair of [`Scheduler::next`].
    pub fn returned(&mut self, job: &str) {
        if let Some(e) = self.jobs.get_mut(job) {
            e.in_flight = e.in_flight.saturating_sub(1);
        }
    }

    /// Keeps a returned chunk counted as in flight while its outcome is being stored.
    pub fn hold(&mut self, job: &str) {
        if let Some(e) = self.jobs.get_mut(job) {
            e.in_flight += 1;
        }
    }

    /// Drops a job's work not yet dispatched; what is in flight stays counted.
    pub fn drop_pending(&mut self, job: &str) {
        if let Some(e) = self.jobs.get_mut(job) {
            e.pending.clear();
        }
    }

    /// A job's chunks dispatched and not yet returned.
    pub fn in_flight(&self, job: &str) -> usize {
        self.jobs.get(job).map_or(0, |e| e.in_flight)
    }

    /// Whether an admitted job has nothing pending and nothing in flight.
    pub fn is_drained(&self, job: &str) -> bool {
        self.jobs.get(job).is_some_and(|e| e.pending.is_empty() && e.in_flight == 0)
    }

    /// The earliest time after `now` a retry waiting on backoff becomes ready.
    pub fn next_ready_after(&self, now: Instant) -> Option<Instant> {
        self.jobs.values().flat_map(|e| e.pending.iter().map(|(_, at)| *at)).filter(|at| *at > now).min()
    }

    /// Admitted jobs with unfinished work, and their pending texts, per priority level.
    pub fn queue_sizes(&self) -> [(usize, usize); 3] {
        let mut out = [(0, 0); 3];
        for e in self.jobs.values() {
            let slot = &mut out[e.priority.level()];
            slot.0 += 1;
            slot.1 += e.pending.iter().map(|(c, _)| c.len()).sum::<usize>();
        }
        out
    }

    pub fn admitted(&self) -> usize {
        self.jobs.len()
    }
}

#[cfg(test)]
// A batch's work is often one whole range.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    fn sched(per_priority: [usize; 3], max_jobs: usize) -> Scheduler {
        Scheduler::new(Limits { per_priority, max_jobs }, Duration::from_secs(10))
    }

    const FAR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_high_batch_overtakes_twenty_low_ones_in_one_round() {
        let t0 = Instant::now();
        let mut s = sched([100, 500, 1000], 1000);
        for i in 0..20 {
            let id = format!("low-{i}");
            s.admit(&id, Priority::Low, t0 + FAR, t0).unwrap();
            s.enqueue(&id, [0..1000], t0);
        }
        // Two chunks go out before the high batch arrives…
        assert!(s.next(t0, |_| 100).unwrap().job.starts_with("low"));
        assert!(s.next(t0, |_| 100).unwrap().job.starts_with("low"));
        s.admit("high", Priority::High, t0 + FAR, t0).unwrap();
        s.enqueue("high", [0..10], t0);
        // …and the very next dispatch is the high batch's.
        let c = s.next(t0, |_| 100).unwrap();
        assert_eq!((c.job.as_str(), c.range.clone()), ("high", 0..10));
    }

    #[test]
    fn aging_lets_low_work_progress_under_steady_high_load() {
        let t0 = Instant::now();
        let mut s = sched([100, 500, 1000], 1000);
        s.admit("high", Priority::High, t0 + FAR, t0).unwrap();
        s.enqueue("high", [0..1_000_000], t0);
        // The low batch's deadline is later, so a tie in level is not enough for it.
        s.admit("low", Priority::Low, t0 + 2 * FAR, t0).unwrap();
        s.enqueue("low", [0..30], t0);
        // One chunk per second: the high batch always has work, yet low gets a turn once
        // it has waited three aging periods (one level above high), and again after each
        // further three.
        let lows: Vec<u64> = (0..100)
            .filter(|sec| {
                let c = s.next(t0 + Duration::from_secs(*sec), |_| 10).unwrap();
                s.returned(&c.job);
                c.job == "low"
            })
            .collect();
        assert_eq!(lows, [30, 60, 90]);
    }

    #[test]
    fn earliest_deadline_first_within_a_level() {
        let t0 = Instant::now();
        let mut s = sched([100, 500, 1000], 1000);
        for (id, secs) in [("late", 300), ("soon", 30), ("mid", 100)] {
            s.admit(id, Priority::Medium, t0 + Duration::from_secs(secs), t0).unwrap();
            s.enqueue(id, [0..5], t0);
        }
        let order: Vec<_> = (0..3).map(|_| s.next(t0, |_| 5).unwrap().job).collect();
        assert_eq!(order, ["soon", "mid", "late"]);
    }

    #[test]
    fn admission_limits_per_level_and_total() {
        let t0 = Instant::now();
        let mut s = sched([1, 2, 2], 3);
        assert_eq!(s.admit("h1", Priority::High, t0, t0), Ok(()));
        assert_eq!(s.admit("h2", Priority::High, t0, t0), Err(QueueFull));
        assert_eq!(s.admit("h1", Priority::High, t0, t0), Ok(()), "admitting twice is a no-op");
        assert_eq!(s.admit("m1", Priority::Medium, t0, t0), Ok(()));
        assert_eq!(s.admit("l1", Priority::Low, t0, t0), Ok(()));
        assert_eq!(s.admit("l2", Priority::Low, t0, t0), Err(QueueFull), "max_jobs");
        s.remove("h1");
        assert_eq!(s.admit("l2", Priority::Low, t0, t0), Ok(()));
    }

    #[test]
    fn chunks_are_cut_to_size_and_retries_wait_their_backoff() {
        let t0 = Instant::now();
        let mut s = sched([100, 500, 1000], 1000);
        s.admit("a", Priority::Medium, t0 + FAR, t0).unwrap();
        s.enqueue("a", [0..25], t0);
        let c = s.next(t0, |_| 10).unwrap();
        assert_eq!(c.range, 0..10);
        s.retry(Chunk { attempts: 1, ..c }, t0 + Duration::from_secs(1));
        // The retry is not ready yet, so fresh work goes first.
        assert_eq!(s.next(t0, |_| 10).unwrap().range, 10..20);
        assert_eq!(s.next_ready_after(t0), Some(t0 + Duration::from_secs(1)));
        let later = t0 + Duration::from_secs(1);
        let r = s.next(later, |_| 10).unwrap();
        assert_eq!((r.range, r.attempts), (0..10, 1));
        assert_eq!(s.next(later, |_| 10).unwrap().range, 20..25);
        assert_eq!(s.next(later, |_| 10), None);
        assert!(!s.is_drained("a"));
        for _ in 0..4 {
            s.returned("a");
        }
        assert!(s.is_drained("a"));
    }

    #[test]
    fn split_isolates_one_text() {
        let c = Chunk { job: "a".into(), range: 4..9, attempts: 3, avoid: None };
        let (l, r) = c.split().unwrap();
        assert_eq!((l.range, r.range, l.attempts), (4..6, 6..9, 0));
        assert_eq!(Chunk { range: 4..5, ..c }.split(), None);
    }
}
