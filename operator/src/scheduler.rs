//! The order work is done in, as pure logic: admission per priority (with room reserved
//! for the higher levels), weighted shares between the priority levels, fair shares
//! between tenants within a level, earliest deadline first within a tenant, bounded
//! aging, and retries with backoff.
//!
//! **Levels.** When several levels have work, each gets dispatches in proportion to its
//! weight (stride scheduling; 6 : 3 : 1 by default), so high work waits at most a few
//! dispatches however long the backlog below it, and low work is never starved by a
//! steady high load. A level with no work lends its share to the others and cannot hoard
//! it for later.
//!
//! **Tenants.** Within a level, each tenant (a namespace, or a REST API key's tenant
//! inside a shared namespace) gets texts in proportion to its weight (fair queuing on
//! texts dispatched). A tenant that arrives starts just ahead of those already queued,
//! so one tenant's backlog never delays another's first chunk.
//!
//! **Aging.** A job admitted `aging` ago also competes in the level above its own, behind
//! that level's own jobs, at most one level up: it takes the turns the higher level has
//! no native work for, never a native job's place, and keeps its own level's turns.
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
    /// Transient error answers (500/502/503/504), and losses beside other chunks, since
    /// the last attempt was spent.
    pub transient: u32,
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
            let half = |range| Chunk { job: self.job.clone(), range, attempts: 0, transient: 0, avoid: self.avoid.clone() };
            (half(self.range.start..mid), half(mid..self.range.end))
        })
    }
}

/// How work is shared: the levels' weights and the aging period.
#[derive(Clone, Debug)]
pub struct Shares {
    /// Dispatches per round, by level (high, medium, low); each at least 1.
    pub level_weights: [u32; 3],
    /// A job waiting this long also competes one level up.
    pub aging: Duration,
}

impl Default for Shares {
    fn default() -> Self {
        Shares { level_weights: [6, 3, 1], aging: Duration::from_secs(10) }
    }
}

/// Who a job belongs to, for fair shares within a level, and its weight.
#[derive(Clone, Debug, PartialEq)]
pub struct Tenant {
    pub name: String,
    pub weight: f64,
}

impl Tenant {
    pub fn new(name: impl Into<String>) -> Self {
        Tenant { name: name.into(), weight: 1.0 }
    }
}

struct Entry {
    priority: Priority,
    tenant: String,
    deadline: Instant,
    admitted: Instant,
    /// Work not yet dispatched; retries go first, each with its earliest time.
    pending: VecDeque<(Chunk, Instant)>,
    in_flight: usize,
}

pub struct Scheduler {
    limits: Limits,
    shares: Shares,
    jobs: HashMap<JobId, Entry>,
    /// Each level's pass in the stride schedule: the level with the lowest pass among
    /// those with work goes next, and advances by 1/weight.
    pass: [f64; 3],
    /// The pass of the last dispatch: the schedule's virtual time.
    now_pass: f64,
    /// Per level, per tenant: texts dispatched over the tenant's weight (its virtual time).
    vtime: [HashMap<String, f64>; 3],
    /// Each tenant's weight, as last admitted.
    weights: HashMap<String, f64>,
}

/// A ready job as `next` weighs it.
struct Candidate<'a> {
    id: &'a JobId,
    entry: &'a Entry,
    /// The level it competes in now: its own, or the one above when aged.
    level: usize,
    aged: bool,
}

impl Scheduler {
    pub fn new(limits: Limits, shares: Shares) -> Self {
        Scheduler {
            limits,
            shares,
            jobs: HashMap::new(),
            pass: [0.0; 3],
            now_pass: 0.0,
            vtime: Default::default(),
            weights: HashMap::new(),
        }
    }

    pub fn contains(&self, job: &str) -> bool {
        self.jobs.contains_key(job)
    }

    /// Every job admitted and not yet removed.
    pub fn ids(&self) -> impl Iterator<Item = &JobId> {
        self.jobs.keys()
    }

    /// Admits a job of `tenant` if its priority level and the total have room (leaving
    /// the room reserved for higher levels). Idempotent.
    pub fn admit(&mut self, job: &str, priority: Priority, tenant: Tenant, deadline: Instant, now: Instant) -> Result<(), QueueFull> {
        if self.jobs.contains_key(job) {
            return Ok(());
        }
        self.limits.admits(admission::per_level(self.jobs.values().map(|e| e.priority)), priority)?;
        self.weights.insert(tenant.name.clone(), tenant.weight.max(0.01));
        let entry = Entry { priority, tenant: tenant.name, deadline, admitted: now, pending: VecDeque::new(), in_flight: 0 };
        self.jobs.insert(job.to_string(), entry);
        Ok(())
    }

    /// Adds fresh work to an admitted job.
    pub fn enqueue(&mut self, job: &str, ranges: impl IntoIterator<Item = Range<usize>>, now: Instant) {
        if let Some(e) = self.jobs.get_mut(job) {
            for range in ranges.into_iter().filter(|r| !r.is_empty()) {
                e.pending.push_back((Chunk { job: job.to_string(), range, attempts: 0, transient: 0, avoid: None }, now));
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
    /// ready: the level whose turn it is (stride over the levels' weights), within it the
    /// tenant furthest behind its fair share, within that tenant the earliest deadline.
    pub fn next(&mut self, now: Instant, max_texts: impl Fn(&str) -> usize) -> Option<Chunk> {
        let aging = self.shares.aging;
        // Each ready job competes in its own level and, once aged, also in the one above.
        let ready: Vec<Candidate> = self
            .jobs
            .iter()
            .filter(|(_, e)| e.pending.iter().any(|(_, at)| *at <= now))
            .flat_map(|(id, e)| {
                let own = e.priority.level();
                let aged = own > 0 && now.saturating_duration_since(e.admitted) >= aging;
                let above = aged.then(|| Candidate { id, entry: e, level: own - 1, aged: true });
                std::iter::once(Candidate { id, entry: e, level: own, aged: false }).chain(above)
            })
            .collect();
        if ready.is_empty() {
            return None;
        }
        // The level: lowest pass among those with work, ties to the higher level.
        let busy: [bool; 3] = std::array::from_fn(|l| ready.iter().any(|c| c.level == l));
        let level = (0..3).filter(|l| busy[*l]).min_by(|a, b| self.pass[*a].total_cmp(&self.pass[*b]).then(a.cmp(b)))?;
        self.now_pass = self.pass[level];
        self.pass[level] += 1.0 / f64::from(self.shares.level_weights[level].max(1));
        // A level without work joins at the current virtual time when work comes: it can
        // neither spend a share it did not use nor pay for turns it took long ago.
        for l in (0..3).filter(|l| !busy[*l]) {
            self.pass[l] = self.now_pass;
        }
        // Within the level, its own jobs before those aged into it.
        let native = ready.iter().any(|c| c.level == level && !c.aged);
        let pool: Vec<&Candidate> = ready.iter().filter(|c| c.level == level && c.aged != native).collect();
        // The tenant: least virtual time; one arriving now starts just ahead of the rest.
        let vtimes = &self.vtime[level];
        let start = pool.iter().filter_map(|c| vtimes.get(&c.entry.tenant)).fold(f64::INFINITY, |a, b| a.min(*b));
        let start = if start.is_finite() { start - 1e-9 } else { 0.0 };
        let vtime = |c: &Candidate| vtimes.get(&c.entry.tenant).copied().unwrap_or(start);
        let chosen = pool
            .iter()
            .min_by(|a, b| {
                vtime(a)
                    .total_cmp(&vtime(b))
                    .then_with(|| a.entry.tenant.cmp(&b.entry.tenant))
                    .then_with(|| a.entry.deadline.cmp(&b.entry.deadline))
                    .then_with(|| a.entry.admitted.cmp(&b.entry.admitted))
                    .then_with(|| a.id.cmp(b.id))
            })
            .expect("the level has a candidate. This is a bug.");
        let (id, tenant, tenant_vtime) = (chosen.id.clone(), chosen.entry.tenant.clone(), vtime(chosen));
        drop(ready);

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
        let weight = self.weights.get(&tenant).copied().unwrap_or(1.0);
        self.vtime[level].insert(tenant, tenant_vtime + chunk.len() as f64 / weight);
        self.forget_idle_tenants();
        Some(chunk)
    }

    /// Drops the fair-queue state of tenants with no job left, so the maps stay small.
    fn forget_idle_tenants(&mut self) {
        if self.vtime.iter().map(HashMap::len).sum::<usize>() <= 2 * self.jobs.len() + 16 {
            return;
        }
        let live: std::collections::HashSet<&str> = self.jobs.values().map(|e| e.tenant.as_str()).collect();
        for level in &mut self.vtime {
            level.retain(|t, _| live.contains(t.as_str()));
        }
        self.weights.retain(|t, _| live.contains(t.as_str()));
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

    /// Texts not yet dispatched, per tenant.
    pub fn queued_by_tenant(&self) -> HashMap<&str, usize> {
        let mut out: HashMap<&str, usize> = HashMap::new();
        for e in self.jobs.values() {
            *out.entry(e.tenant.as_str()).or_default() += e.pending.iter().map(|(c, _)| c.len()).sum::<usize>();
        }
        out
    }

    /// The tenant of `job`.
    pub fn tenant(&self, job: &str) -> Option<&str> {
        self.jobs.get(job).map(|e| e.tenant.as_str())
    }

    pub fn admitted(&self) -> usize {
        self.jobs.len()
    }
}

#[cfg(test)]
mod tests;
