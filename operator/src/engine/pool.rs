//! The inference endpoints as the engine sees them: each one's chunks in flight (`workers`,
//! and more while they are small), whether it is skipped for a while after failing to
//! answer, whether it has left the Service, and its measured speed, from which chunk
//! sizes follow.
//!
//! Pure state: time is passed in, nothing here does I/O.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kubesentiment_core::backoff::Backoff;

/// How long a chunk should take on one endpoint; chunk sizes adapt toward it.
const TARGET_CHUNK_SECONDS: f64 = 1.0;
const MIN_CHUNK: usize = 8;
/// The size of chunks sent before an endpoint's speed is known.
pub const FIRST_CHUNK: usize = 64;
/// Texts, per worker, below which an endpoint takes chunks beyond `workers`: small jobs'
/// chunks (a 10-text job is one chunk of 10) then pile up until the inference server's
/// batcher can fill its forward passes with them, while chunks of a second's work stay
/// bounded by `workers`, so that what waits at an endpoint, ahead of a new high-priority
/// chunk, is at most about a second per worker, plus one small chunk's.
const SMALL_TEXTS_PER_WORKER: usize = FIRST_CHUNK;
/// Most chunks in flight at an endpoint, per worker, however small.
const MOST_CHUNKS_PER_WORKER: usize = 8;
/// An endpoint that failed to answer gets one chunk at a time until it has answered
/// again, and for this long after. When a text crashes its server, every chunk in flight
/// there is lost with it, and a text lost beside others pays no attempt
/// ([`Pool::lost_alone`]); so while halving isolates it, the text must come to run alone
/// for its attempts to count. Counted from the answer, since a crashed container may take
/// longer than this to come back (Kubernetes waits 10 s, then 20 s, ...).
const CALM: Duration = Duration::from_secs(10);
/// How long an endpoint that did not answer is skipped, by consecutive failures.
const DEAD: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));

#[derive(Default)]
struct Endpoint {
    in_flight: usize,
    in_flight_texts: usize,
    /// Skipped until then after failing to answer.
    dead_until: Option<Instant>,
    /// Failures to answer in a row.
    failures: u32,
    /// When it first answered after its last failures.
    recovered_at: Option<Instant>,
    /// How many times it failed to answer, in all.
    failed: u64,
    /// No longer in the Service: it finishes its chunks in flight and gets no new ones.
    gone: bool,
    secs_per_text: Option<f64>,
}

impl Endpoint {
    fn open(&self, workers: usize, now: Instant) -> bool {
        let calm = self.failures == 0 && self.recovered_at.is_none_or(|t| now.saturating_duration_since(t) >= CALM);
        let room = if calm {
            self.in_flight < workers
                || (self.in_flight < workers * MOST_CHUNKS_PER_WORKER && self.in_flight_texts < workers * SMALL_TEXTS_PER_WORKER)
        } else {
            self.in_flight == 0
        };
        !self.gone && room && self.dead_until.is_none_or(|t| t <= now)
    }
}

/// A chunk's place at its endpoint, from [`Pool::take`]: the endpoint's failures until then.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    failed: u64,
}

pub struct Pool {
    workers: usize,
    endpoints: HashMap<String, Endpoint>,
}

impl Pool {
    /// A pool that gives each endpoint `workers` chunks at once, and more while the texts
    /// in flight there are fewer than `workers` first chunks.
    pub fn new(workers: usize) -> Self {
        Pool { workers: workers.max(1), endpoints: HashMap::new() }
    }

    /// The Service's ready endpoints are now `urls`: new ones join, and those that left
    /// finish their chunks in flight and are then forgotten.
    pub fn set(&mut self, urls: &[String]) {
        self.endpoints.retain(|u, e| urls.contains(u) || e.in_flight > 0);
        for (u, e) in self.endpoints.iter_mut() {
            e.gone = !urls.contains(u);
        }
        for u in urls {
            self.endpoints.entry(u.clone()).or_default();
        }
    }

    /// The open endpoint with the fewest chunks in flight (ties by name), and the size
    /// of a chunk that should take it about a second, at most `max_texts`.
    pub fn pick(&self, now: Instant, max_texts: usize) -> Option<(String, usize)> {
        self.endpoints
            .iter()
            .filter(|(_, e)| e.open(self.workers, now))
            .min_by_key(|(u, e)| (e.in_flight, *u))
            .map(|(u, e)| (u.clone(), chunk_size(e.secs_per_text, max_texts)))
    }

    /// An open endpoint other than `avoid`, for a retry, if there is one.
    pub fn other_than(&self, avoid: &str, now: Instant) -> Option<String> {
        let mut open: Vec<&String> =
            self.endpoints.iter().filter(|(u, e)| *u != avoid && e.open(self.workers, now)).map(|(u, _)| u).collect();
        open.sort();
        open.first().map(|u| u.to_string())
    }

    /// A chunk of `texts` went to `url`.
    pub fn take(&mut self, url: &str, texts: usize) -> Sent {
        let Some(e) = self.endpoints.get_mut(url) else { return Sent::default() };
        e.in_flight += 1;
        e.in_flight_texts += texts;
        Sent { failed: e.failed }
    }

    /// The slot of a chunk of `texts` at `url` is free. `answered` is (texts asked, wall
    /// time) when the endpoint answered, which clears its failures and feeds its measured
    /// speed.
    pub fn release(&mut self, url: &str, texts: usize, answered: Option<(usize, Duration)>, now: Instant) {
        let Some(e) = self.endpoints.get_mut(url) else { return };
        // Chunks that shared the endpoint with this one (itself included).
        let sharing = e.in_flight.max(1);
        e.in_flight = e.in_flight.saturating_sub(1);
        e.in_flight_texts = e.in_flight_texts.saturating_sub(texts);
        if let Some((texts, elapsed)) = answered {
            if e.failures > 0 {
                e.recovered_at = Some(now);
            }
            e.failures = 0;
            e.dead_until = None;
            if texts > 0 {
                // The endpoint served `sharing` chunks at once, so each text cost it only
                // a share of this chunk's wall time.
                let per_text = elapsed.as_secs_f64() / (texts * sharing) as f64;
                e.secs_per_text = Some(e.secs_per_text.map_or(per_text, |old| 0.7 * old + 0.3 * per_text));
            }
        }
        if e.gone && e.in_flight == 0 {
            self.endpoints.remove(url);
        }
    }

    /// Whether a chunk `sent` to `url`, back now without an answer, was lost on its own:
    /// nothing else is in flight there, and the endpoint has not failed since it was sent
    /// (as it has when another chunk came back lost first). Call it before
    /// [`Pool::release`] of that chunk.
    pub fn lost_alone(&self, url: &str, sent: Sent) -> bool {
        self.endpoints.get(url).is_some_and(|e| e.in_flight <= 1 && e.failed == sent.failed)
    }

    /// `url` did not answer, or said it is failing: skip it for a while, longer after
    /// each failure in a row.
    pub fn unreachable(&mut self, url: &str, now: Instant) {
        if let Some(e) = self.endpoints.get_mut(url) {
            e.dead_until = Some(now + DEAD.delay(e.failures));
            e.failures += 1;
            e.failed += 1;
        }
    }

    /// When the first skipped endpoint opens again.
    pub fn next_open_after(&self, now: Instant) -> Option<Instant> {
        self.endpoints.values().filter(|e| !e.gone).filter_map(|e| e.dead_until).filter(|t| *t > now).min()
    }

    /// Chunks in flight per endpoint.
    pub fn in_flight(&self) -> impl Iterator<Item = (&str, usize)> {
        self.endpoints.iter().map(|(u, e)| (u.as_str(), e.in_flight))
    }

    /// Texts of every chunk in flight.
    pub fn in_flight_texts(&self) -> usize {
        self.endpoints.values().map(|e| e.in_flight_texts).sum()
    }

    /// Endpoints in the Service now.
    pub fn ready(&self) -> usize {
        self.endpoints.values().filter(|e| !e.gone).count()
    }

    /// Texts per second one endpoint serves, the mean of those measured.
    pub fn texts_per_second(&self) -> Option<f64> {
        let rates: Vec<f64> = self.endpoints.values().filter_map(|e| e.secs_per_text).map(|s| 1.0 / s.max(1e-9)).collect();
        (!rates.is_empty()).then(|| rates.iter().sum::<f64>() / rates.len() as f64)
    }
}

/// Texts for a chunk of about [`TARGET_CHUNK_SECONDS`] at `secs_per_text`, within
/// `MIN_CHUNK..=max`; [`FIRST_CHUNK`] before the speed is known.
pub fn chunk_size(secs_per_text: Option<f64>, max: usize) -> usize {
    match secs_per_text {
        None => FIRST_CHUNK.min(max),
        Some(s) => ((TARGET_CHUNK_SECONDS / s.max(1e-6)) as usize).clamp(MIN_CHUNK, max.max(MIN_CHUNK)).min(max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_follow_measured_latency() {
        assert_eq!(chunk_size(None, 1000), FIRST_CHUNK);
        assert_eq!(chunk_size(None, 10), 10);
        assert_eq!(chunk_size(Some(0.002), 1000), 500);
        assert_eq!(chunk_size(Some(0.001), 100), 100);
        assert_eq!(chunk_size(Some(10.0), 1000), MIN_CHUNK);
        assert_eq!(chunk_size(Some(10.0), 3), 3);
    }

    fn urls(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn slots_are_spread_and_bounded() {
        let t0 = Instant::now();
        let mut p = Pool::new(2);
        p.set(&urls(&["a", "b"]));
        let mut picked = Vec::new();
        while let Some((u, _)) = p.pick(t0, 100) {
            p.take(&u, 100);
            picked.push(u);
        }
        assert_eq!(picked, ["a", "b", "a", "b"], "chunks of 100 texts: `workers` at each endpoint");
        p.release("b", 100, Some((100, Duration::from_millis(100))), t0);
        assert_eq!(p.pick(t0, 1000).map(|(u, _)| u).as_deref(), Some("b"));
    }

    #[test]
    fn small_chunks_pile_up_to_a_budget_of_texts() {
        let t0 = Instant::now();
        // Chunks of at most `texts` taken at `at` until the endpoint is full.
        let fill = |p: &mut Pool, at: Instant, texts: usize| {
            let mut n = 0;
            while let Some((u, size)) = p.pick(at, texts) {
                p.take(&u, size);
                n += 1;
            }
            n
        };
        let fresh = || {
            let mut p = Pool::new(2);
            p.set(&urls(&["a"]));
            p
        };
        let mut p = fresh();
        assert_eq!(fill(&mut p, t0, 10), 13, "10-text chunks until 2 × 64 texts are in flight");
        assert_eq!(p.in_flight_texts(), 130);
        p.release("a", 10, Some((10, Duration::from_millis(50))), t0);
        assert_eq!(fill(&mut p, t0, 10), 1, "one more once below the budget");
        assert_eq!(fill(&mut fresh(), t0, 1), 16, "however small, 8 chunks per worker");
        // Large chunks after small ones: while below the budget, then none; the
        // overshoot is one chunk.
        let mut p = fresh();
        p.take("a", 10);
        p.take("a", 10);
        assert_eq!(fill(&mut p, t0, 1000), 2);
        assert_eq!(p.in_flight_texts(), 20 + 2 * FIRST_CHUNK);
        // An endpoint that failed to answer gets one chunk at a time until CALM after it
        // answers again, however long it was away.
        let mut p = fresh();
        p.unreachable("a", t0);
        let back = t0 + 3 * CALM;
        assert_eq!(fill(&mut p, back, 10), 1, "back, and not yet answered");
        p.release("a", 10, Some((10, Duration::from_millis(5))), back);
        assert_eq!(fill(&mut p, back + CALM / 2, 10), 1, "within CALM of its answer");
        p.release("a", 10, Some((10, Duration::from_millis(5))), back + CALM / 2);
        assert_eq!(fill(&mut p, back + CALM, 10), 13, "calm again");
    }

    #[test]
    fn speed_is_shared_among_chunks_in_flight() {
        let t0 = Instant::now();
        let mut p = Pool::new(2);
        p.set(&urls(&["a"]));
        p.take("a", 100);
        p.take("a", 100);
        assert_eq!(p.in_flight_texts(), 200);
        // Two chunks shared the endpoint: 100 texts in 1 s is 200 texts/s of its time.
        p.release("a", 100, Some((100, Duration::from_secs(1))), t0);
        assert_eq!(p.pick(t0, 10_000), Some(("a".into(), 200)));
        assert_eq!((p.in_flight_texts(), p.texts_per_second().map(|r| r.round())), (100, Some(200.0)));
    }

    #[test]
    fn an_unreachable_endpoint_is_skipped_with_backoff_until_it_answers() {
        let t0 = Instant::now();
        let mut p = Pool::new(1);
        p.set(&urls(&["a", "b"]));
        p.unreachable("a", t0);
        assert_eq!(p.pick(t0, 10).map(|(u, _)| u).as_deref(), Some("b"));
        assert_eq!(p.other_than("b", t0), None);
        assert_eq!(p.next_open_after(t0), Some(t0 + Duration::from_millis(200)));
        p.unreachable("a", t0);
        assert_eq!(p.next_open_after(t0), Some(t0 + Duration::from_millis(400)), "longer after each failure");
        let later = t0 + Duration::from_millis(400);
        assert_eq!(p.other_than("b", later).as_deref(), Some("a"));
        p.take("a", 1);
        p.release("a", 1, Some((1, Duration::from_millis(5))), t0);
        p.unreachable("a", later);
        assert_eq!(p.next_open_after(later), Some(later + Duration::from_millis(200)), "an answer resets the backoff");
    }

    #[test]
    fn a_chunk_is_lost_alone_only_if_nothing_shared_its_endpoint() {
        let t0 = Instant::now();
        let mut p = Pool::new(2);
        p.set(&urls(&["a"]));
        let first = p.take("a", 1);
        assert!(p.lost_alone("a", first), "the only chunk there");
        // A crash takes two chunks: whichever comes back first, neither was alone.
        let second = p.take("a", 1);
        assert!(!p.lost_alone("a", second), "another is still in flight");
        p.release("a", 1, None, t0);
        p.unreachable("a", t0);
        assert!(!p.lost_alone("a", first), "the endpoint failed after it was sent");
        p.release("a", 1, None, t0);
        // Sent after that failure, at the same instant, and back alone.
        let third = p.take("a", 1);
        assert!(p.lost_alone("a", third));
        assert!(!p.lost_alone("b", third), "an endpoint the pool does not know");
    }

    #[test]
    fn endpoints_that_leave_get_no_new_work_even_after_a_late_answer() {
        let t0 = Instant::now();
        let mut p = Pool::new(4);
        p.set(&urls(&["a", "b"]));
        p.take("a", 5);
        p.take("a", 5);
        p.set(&urls(&["b"]));
        assert_eq!(p.ready(), 1);
        assert_eq!(p.other_than("b", t0), None);
        p.release("a", 5, Some((10, Duration::from_millis(10))), t0);
        assert_eq!(p.other_than("b", t0), None, "a late answer does not bring it back");
        assert_eq!(p.in_flight().count(), 2);
        p.release("a", 5, None, t0);
        assert_eq!(p.in_flight().map(|(u, _)| u).collect::<Vec<_>>(), ["b"], "forgotten once idle");
        assert_eq!(p.in_flight_texts(), 0);
        p.set(&urls(&["a", "b"]));
        assert_eq!(p.other_than("b", t0).as_deref(), Some("a"), "and welcome when it is back");
    }
}
