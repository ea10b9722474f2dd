//! The scheduler on a stepped clock: hand-made cases, then properties over any mix of
//! levels, tenants, deadlines and backlogs.
// A batch's work is often one whole range.
#![allow(clippy::single_range_in_vec_init)]

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const FAR: Duration = Duration::from_secs(3600);

fn sched(per_priority: [usize; 3], max_jobs: usize) -> Scheduler {
    Scheduler::new(Limits { per_priority, max_jobs, reserved: [0, 0] }, Shares::default())
}

fn open() -> Scheduler {
    sched([100_000; 3], 100_000)
}

/// Admits and enqueues `texts` for `id` of `tenant`.
fn add(s: &mut Scheduler, id: &str, p: Priority, tenant: &str, deadline: Instant, texts: usize, now: Instant) {
    s.admit(id, p, Tenant::new(tenant), deadline, now).unwrap();
    s.enqueue(id, [0..texts], now);
}

/// Dispatches one chunk of at most `size` texts and returns it at once.
fn step(s: &mut Scheduler, now: Instant, size: usize) -> Option<Chunk> {
    let c = s.next(now, |_| size)?;
    s.returned(&c.job);
    Some(c)
}

#[test]
fn a_high_batch_overtakes_twenty_low_ones_in_one_round() {
    let t0 = Instant::now();
    let mut s = open();
    for i in 0..20 {
        add(&mut s, &format!("low-{i}"), Priority::Low, "t", t0 + FAR, 1000, t0);
    }
    // Two chunks go out before the high batch arrives…
    assert!(s.next(t0, |_| 100).unwrap().job.starts_with("low"));
    assert!(s.next(t0, |_| 100).unwrap().job.starts_with("low"));
    add(&mut s, "high", Priority::High, "t", t0 + FAR, 10, t0);
    // …and the very next dispatch is the high batch's.
    let c = s.next(t0, |_| 100).unwrap();
    assert_eq!((c.job.as_str(), c.range.clone()), ("high", 0..10));
}

#[test]
fn busy_levels_share_dispatches_six_three_one() {
    let t0 = Instant::now();
    let mut s = open();
    for (id, p) in [("h", Priority::High), ("m", Priority::Medium), ("l", Priority::Low)] {
        add(&mut s, id, p, "t", t0 + FAR, 1_000_000, t0);
    }
    let mut counts = BTreeMap::new();
    for i in 0..100 {
        // Every job is dispatched often, so none ages.
        let c = step(&mut s, t0 + Duration::from_millis(i), 1).unwrap();
        *counts.entry(c.job).or_insert(0) += 1;
    }
    assert_eq!(counts, BTreeMap::from([("h".into(), 60), ("l".into(), 10), ("m".into(), 30)]));
}

#[test]
fn an_idle_level_cannot_hoard_its_share() {
    let t0 = Instant::now();
    let mut s = open();
    add(&mut s, "l", Priority::Low, "t", t0 + FAR, 1_000_000, t0);
    for i in 0..1000 {
        step(&mut s, t0 + Duration::from_millis(i), 1);
    }
    // High arrives after 1,000 low dispatches: it gets its share from now on, not 1,000
    // dispatches in a row.
    add(&mut s, "h", Priority::High, "t", t0 + FAR, 1_000_000, t0 + Duration::from_secs(1));
    let lows = (0..20).filter(|i| step(&mut s, t0 + Duration::from_millis(1000 + i), 1).unwrap().job == "l").count();
    assert!((2..=4).contains(&lows), "{lows} of 20");
}

#[test]
fn aged_work_takes_the_turns_a_higher_level_leaves_but_never_a_native_jobs_place() {
    let t0 = Instant::now();
    let mut s = open();
    add(&mut s, "h", Priority::High, "t", t0 + FAR, 1_000_000, t0);
    add(&mut s, "old-low", Priority::Low, "t", t0 + FAR, 1_000_000, t0);
    // 20 s later the low job has aged into medium, where nothing else is: it takes the
    // medium turns as well as its own (3 + 1 of every 10).
    let later = t0 + Duration::from_secs(20);
    let lows = (0..100).filter(|i| step(&mut s, later + Duration::from_nanos(*i), 1).unwrap().job == "old-low").count();
    assert!((35..=45).contains(&lows), "the aged low job used medium's turns too: {lows}");
    // A native medium job arrives: it goes before the aged one in medium's turns.
    add(&mut s, "m", Priority::Medium, "t", t0 + FAR, 1_000_000, later);
    let now = later + Duration::from_secs(1);
    let got: Vec<String> = (0..10).map(|i| step(&mut s, now + Duration::from_nanos(i), 1).unwrap().job).collect();
    assert!((2..=4).contains(&got.iter().filter(|j| *j == "m").count()), "{got:?}");
    assert!((1..=2).contains(&got.iter().filter(|j| *j == "old-low").count()), "it keeps the low turns: {got:?}");
}

#[test]
fn one_tenants_backlog_does_not_delay_anothers_batch() {
    let t0 = Instant::now();
    let mut s = open();
    for i in 0..300 {
        add(&mut s, &format!("a-{i}"), Priority::Medium, "team-a", t0 + Duration::from_secs(i), 100, t0);
    }
    for i in 0..50 {
        step(&mut s, t0 + Duration::from_millis(i), 10);
    }
    // Team b's one batch, due later than all of team a's, goes next.
    add(&mut s, "b", Priority::Medium, "team-b", t0 + FAR, 100, t0 + Duration::from_secs(1));
    assert_eq!(step(&mut s, t0 + Duration::from_secs(1), 10).unwrap().job, "b");
    // From then on the two tenants share texts equally.
    let bs = (0..20).filter(|i| step(&mut s, t0 + Duration::from_secs(1) + Duration::from_millis(*i), 10).unwrap().job == "b").count();
    assert_eq!(bs, 9, "b had 10 chunks of work, 1 already done");
}

#[test]
fn tenant_weights_set_their_shares_of_texts() {
    let t0 = Instant::now();
    let mut s = open();
    s.admit("heavy", Priority::Medium, Tenant { name: "gold".into(), weight: 3.0 }, t0 + FAR, t0).unwrap();
    s.enqueue("heavy", [0..1_000_000], t0);
    add(&mut s, "light", Priority::Medium, "bronze", t0 + FAR, 1_000_000, t0);
    let heavy = (0..400).filter(|i| step(&mut s, t0 + Duration::from_millis(*i), 10).unwrap().job == "heavy").count();
    assert!((299..=301).contains(&heavy), "{heavy} of 400");
}

#[test]
fn earliest_deadline_first_within_a_tenant() {
    let t0 = Instant::now();
    let mut s = open();
    for (id, secs) in [("late", 300), ("soon", 30), ("mid", 100)] {
        add(&mut s, id, Priority::Medium, "t", t0 + Duration::from_secs(secs), 5, t0);
    }
    let order: Vec<_> = (0..3).map(|_| s.next(t0, |_| 5).unwrap().job).collect();
    assert_eq!(order, ["soon", "mid", "late"]);
}

#[test]
fn admission_limits_per_level_and_total() {
    let t0 = Instant::now();
    let mut s = sched([1, 2, 2], 3);
    let admit = |s: &mut Scheduler, id: &str, p| s.admit(id, p, Tenant::new("t"), t0, t0);
    assert_eq!(admit(&mut s, "h1", Priority::High), Ok(()));
    assert_eq!(admit(&mut s, "h2", Priority::High), Err(QueueFull));
    assert_eq!(admit(&mut s, "h1", Priority::High), Ok(()), "admitting twice is a no-op");
    assert_eq!(admit(&mut s, "m1", Priority::Medium), Ok(()));
    assert_eq!(admit(&mut s, "l1", Priority::Low), Ok(()));
    assert_eq!(admit(&mut s, "l2", Priority::Low), Err(QueueFull), "max_jobs");
    s.remove("h1");
    assert_eq!(admit(&mut s, "l2", Priority::Low), Ok(()));
}

#[test]
fn room_reserved_for_higher_levels_is_kept_from_lower_ones() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(Limits { per_priority: [10, 10, 10], max_jobs: 10, reserved: [2, 1] }, Shares::default());
    let admit = |s: &mut Scheduler, id: String, p| s.admit(&id, p, Tenant::new("t"), t0, t0);
    let lows = (0..10).filter(|i| admit(&mut s, format!("l{i}"), Priority::Low).is_ok()).count();
    assert_eq!(lows, 7, "10 slots less 2 for high and 1 for medium");
    assert_eq!(admit(&mut s, "m".into(), Priority::Medium), Ok(()));
    assert_eq!(admit(&mut s, "m2".into(), Priority::Medium), Err(QueueFull), "high's 2 stay reserved");
    assert_eq!(admit(&mut s, "h".into(), Priority::High), Ok(()));
    assert_eq!(admit(&mut s, "h2".into(), Priority::High), Ok(()));
    assert_eq!(admit(&mut s, "h3".into(), Priority::High), Err(QueueFull), "max_jobs");
}

#[test]
fn chunks_are_cut_to_size_and_retries_wait_their_backoff() {
    let t0 = Instant::now();
    let mut s = open();
    add(&mut s, "a", Priority::Medium, "t", t0 + FAR, 25, t0);
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
    let c = Chunk { job: "a".into(), range: 4..9, attempts: 3, transient: 2, avoid: None };
    let (l, r) = c.split().unwrap();
    assert_eq!((l.range, r.range, l.attempts, l.transient), (4..6, 6..9, 0, 0));
    assert_eq!(Chunk { range: 4..5, ..c }.split(), None);
}

/// The most dispatches a new job of `level` from a new tenant waits for its first, when
/// every level is busy: between two turns of a level of weight w, a level of weight v
/// takes at most v/w + 1 turns. With 6 : 3 : 1 that is 2 for high, 4 for medium and 11
/// for low, all within one round of 10 dispatches (low's own turn ends its round).
fn bound(level: usize) -> usize {
    let w = Shares::default().level_weights;
    (0..3).filter(|l| *l != level).map(|l| (w[l] / w[level]) as usize + 1).sum()
}

#[test]
fn a_high_batch_starts_within_a_round_behind_ten_thousand_queued_batches() {
    let t0 = Instant::now();
    let mut s = open();
    for i in 0..10_000 {
        let p = [Priority::High, Priority::Medium, Priority::Low][i % 3];
        add(&mut s, &format!("b{i}"), p, &format!("tenant-{}", i % 7), t0 + Duration::from_secs(i as u64), 100, t0);
    }
    // The backlog has waited long: everything that can age has.
    let now = t0 + Duration::from_secs(600);
    for i in 0..100 {
        step(&mut s, now + Duration::from_millis(i), 10);
    }
    add(&mut s, "new-high", Priority::High, "newcomer", now + FAR, 10, now);
    let waited = (0..).take_while(|i| step(&mut s, now + Duration::from_millis(200 + i), 10).unwrap().job != "new-high").count();
    assert!(waited <= bound(0), "{waited} dispatches");
}

#[derive(Debug, Clone)]
struct JobSpec {
    level: usize,
    tenant: u8,
    deadline_s: u64,
    texts: usize,
}

fn jobs() -> impl Strategy<Value = Vec<JobSpec>> {
    let job = (0..3usize, 0..5u8, 1..10_000u64, 1..400usize).prop_map(|(level, tenant, deadline_s, texts)| JobSpec {
        level,
        tenant,
        deadline_s,
        texts,
    });
    prop::collection::vec(job, 1..400)
}

fn load(s: &mut Scheduler, t0: Instant, specs: &[JobSpec]) {
    for (i, j) in specs.iter().enumerate() {
        let p = [Priority::High, Priority::Medium, Priority::Low][j.level];
        add(s, &format!("j{i}"), p, &format!("tenant-{}", j.tenant), t0 + Duration::from_secs(j.deadline_s), j.texts, t0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A new batch of any level, from a tenant with nothing queued, starts within its
    /// level's bound, whatever is queued and however long it has waited.
    #[test]
    fn every_level_waits_a_bounded_number_of_dispatches(specs in jobs(), level in 0..3usize, warmup in 0..300usize, aged_s in 0..120u64) {
        let t0 = Instant::now();
        let mut s = open();
        load(&mut s, t0, &specs);
        let now = t0 + Duration::from_secs(aged_s);
        for i in 0..warmup {
            if step(&mut s, now + Duration::from_millis(i as u64), 10).is_none() { break; }
        }
        let p = [Priority::High, Priority::Medium, Priority::Low][level];
        let now = now + Duration::from_secs(1);
        add(&mut s, "new", p, "newcomer", now + FAR, 10, now);
        let mut waited = 0;
        while step(&mut s, now + Duration::from_millis(waited as u64), 10).unwrap().job != "new" {
            waited += 1;
        }
        prop_assert!(waited <= bound(level), "level {} waited {} dispatches", level, waited);
    }

    /// Under a steady high load (the high batches never run out), every low batch (each
    /// its own tenant, so none waits on another's deadline) is dispatched in turn.
    #[test]
    fn lows_are_never_starved(lows in 1..50usize, highs in 1..50usize) {
        let t0 = Instant::now();
        let mut s = open();
        for i in 0..highs {
            add(&mut s, &format!("h{i}"), Priority::High, "t", t0 + FAR, usize::MAX / 2, t0);
        }
        for i in 0..lows {
            add(&mut s, &format!("l{i}"), Priority::Low, &format!("tenant-l{i}"), t0 + FAR, usize::MAX / 2, t0);
        }
        let mut last = std::collections::HashMap::new();
        let mut longest = 0;
        for n in 0..(lows * (bound(2) + 1) * 3) {
            let c = step(&mut s, t0 + Duration::from_millis(n as u64), 1).unwrap();
            if c.job.starts_with('l') {
                let gap = n - last.insert(c.job.clone(), n).unwrap_or(0);
                longest = longest.max(gap);
            }
        }
        // Lows share the low level's turns (and medium's, once aged).
        prop_assert!(longest <= lows * (bound(2) + 1), "a low batch waited {} dispatches ({} lows)", longest, lows);
        prop_assert_eq!(last.len(), lows);
    }

    /// Within a level and a tenant, batches start in deadline order.
    #[test]
    fn earliest_deadline_first_within_a_level_and_tenant(specs in jobs()) {
        let t0 = Instant::now();
        let mut s = open();
        load(&mut s, t0, &specs);
        let mut first = std::collections::HashMap::new();
        for n in 0..20_000 {
            // Within the aging period, so no job leaves its level.
            let Some(c) = step(&mut s, t0 + Duration::from_micros(n), 1000) else { break };
            first.entry(c.job.clone()).or_insert(n);
        }
        for (i, a) in specs.iter().enumerate() {
            for (j, b) in specs.iter().enumerate() {
                if a.level == b.level && a.tenant == b.tenant && a.deadline_s < b.deadline_s {
                    let (fa, fb) = (first[&format!("j{i}")], first[&format!("j{j}")]);
                    prop_assert!(fa < fb, "j{} (due {}) started after j{} (due {})", i, a.deadline_s, j, b.deadline_s);
                }
            }
        }
    }
}
