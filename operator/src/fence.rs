//! The leader's fence. kube-lease-manager retries a failed renewal with backoff and
//! reports the lease lost only once another holder shows up, so a leader cut off from
//! the API server would go on dispatching, and committing parts, while a standby takes
//! over. The fence watches the Lease itself, reading it every quarter of its duration: a
//! leader that has not seen its own renewal land within the duration and one reading
//! period, or sees another holder, has lost it, and stops. The renewals come every
//! duration less the grace (a third), so a healthy leader always sees one in time; a
//! cut-off one stops within about 1.5 durations of its last renewal.
//!
//! Renewals are matched by the Lease's `renewTime` changing, timed on this process's
//! own monotonic clock, so clock skew between machines does not matter.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio_util::sync::CancellationToken;

/// What the leader last saw of its lease.
#[derive(Debug)]
pub struct Fence {
    identity: String,
    duration: Duration,
    renew_time: Option<String>,
    /// When a renewal by us was last seen (or leadership began).
    renewed: Instant,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Held,
    /// Why leadership is lost.
    Lost(String),
}

impl Fence {
    pub fn new(identity: &str, duration: Duration, now: Instant) -> Self {
        Fence { identity: identity.to_string(), duration, renew_time: None, renewed: now }
    }

    /// The Lease as read at `now`: its holder and renew time.
    pub fn observe(&mut self, holder: Option<&str>, renew_time: Option<&str>, now: Instant) -> Verdict {
        if holder != Some(self.identity.as_str()) {
            return Verdict::Lost(format!("the lease is held by {}", holder.unwrap_or("nobody")));
        }
        if renew_time.is_some() && renew_time != self.renew_time.as_deref() {
            self.renew_time = renew_time.map(str::to_string);
            self.renewed = now;
        }
        self.check(now)
    }

    /// How often the Lease is read.
    pub fn period(&self) -> Duration {
        self.duration / 4
    }

    /// Without a reading (the API server unreachable): lost once the lease ran out, with
    /// a reading period's allowance for how late the last renewal was seen.
    pub fn check(&self, now: Instant) -> Verdict {
        let since = now.saturating_duration_since(self.renewed);
        if since > self.duration + self.period() {
            return Verdict::Lost(format!("no renewal seen for {since:?}, longer than the lease's {:?}", self.duration));
        }
        Verdict::Held
    }
}

/// Reads the Lease every quarter of its duration until the fence says it is lost (then
/// returns why) or `stop` is cancelled.
pub async fn watch(leases: Api<Lease>, name: &str, mut fence: Fence, stop: CancellationToken) -> Option<String> {
    let every = fence.period();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(every) => {}
        }
        let now = Instant::now();
        let verdict = match tokio::time::timeout(every, leases.get(name)).await {
            Ok(Ok(lease)) => {
                let spec = lease.spec.unwrap_or_default();
                let renew = spec.renew_time.map(|t| t.0.to_string());
                fence.observe(spec.holder_identity.as_deref(), renew.as_deref(), now)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the leader lease");
                fence.check(now)
            }
            Err(_) => fence.check(now),
        };
        if let Verdict::Lost(why) = verdict {
            return Some(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn renewals_keep_it_and_their_absence_loses_it_after_the_duration() {
        let t0 = Instant::now();
        let mut f = Fence::new("me", D, t0);
        assert_eq!(f.observe(Some("me"), Some("t1"), t0 + Duration::from_secs(4)), Verdict::Held);
        // The same renew time for 18 s after it was seen: still within the lease and a
        // reading period (15 + 3.75 s).
        assert_eq!(f.observe(Some("me"), Some("t1"), t0 + Duration::from_secs(22)), Verdict::Held);
        assert!(matches!(f.observe(Some("me"), Some("t1"), t0 + Duration::from_secs(23)), Verdict::Lost(_)));
        // A renewal seen again restarts the clock.
        assert_eq!(f.observe(Some("me"), Some("t2"), t0 + Duration::from_secs(24)), Verdict::Held);
    }

    #[test]
    fn unreachable_for_longer_than_the_lease_is_lost() {
        let t0 = Instant::now();
        let mut f = Fence::new("me", D, t0);
        f.observe(Some("me"), Some("t1"), t0);
        assert_eq!(f.check(t0 + Duration::from_secs(18)), Verdict::Held);
        let Verdict::Lost(why) = f.check(t0 + Duration::from_secs(19)) else { panic!("not lost") };
        assert!(why.contains("no renewal seen"), "{why}");
    }

    #[test]
    fn another_holder_means_lost_at_once() {
        let t0 = Instant::now();
        let mut f = Fence::new("me", D, t0);
        assert_eq!(f.observe(Some("other"), Some("t1"), t0), Verdict::Lost("the lease is held by other".into()));
        assert!(matches!(f.observe(None, None, t0), Verdict::Lost(_)));
    }
}
