//! The leader's fence. kube-lease-manager retries a failed renewal with backoff and
//! reports the lease lost only once it sees another holder, so a leader cut off from the
//! API server would go on dispatching, and committing parts, while a standby takes over.
//! The fence reads the Lease itself every quarter of its duration: a leader that sees
//! another holder stops at once, and one that has not been able to read itself as the
//! holder for longer than the lease's duration (the time after which a standby may take
//! over) stops too.
//!
//! A renewal that is merely late, on a loaded machine, is not a loss: while the Lease
//! still names this leader, no standby has taken it. Times are this process's monotonic
//! clock, so clock skew between machines does not matter.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio_util::sync::CancellationToken;

/// What the leader last saw of its lease.
#[derive(Debug)]
pub struct Fence {
    identity: String,
    duration: Duration,
    /// When the Lease was last read naming this leader (or leadership began).
    confirmed: Instant,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Held,
    /// Why leadership is lost.
    Lost(String),
}

impl Fence {
    pub fn new(identity: &str, duration: Duration, now: Instant) -> Self {
        Fence { identity: identity.to_string(), duration, confirmed: now }
    }

    /// How often the Lease is read.
    pub fn period(&self) -> Duration {
        self.duration / 4
    }

    /// The Lease's holder as read at `now`.
    pub fn observe(&mut self, holder: Option<&str>, now: Instant) -> Verdict {
        if holder != Some(self.identity.as_str()) {
            return Verdict::Lost(format!("the lease is held by {}", holder.unwrap_or("nobody")));
        }
        self.confirmed = now;
        Verdict::Held
    }

    /// Without a reading (the API server unreachable): lost once this leader has gone a
    /// whole lease without confirming it still holds it.
    pub fn check(&self, now: Instant) -> Verdict {
        let since = now.saturating_duration_since(self.confirmed);
        if since > self.duration {
            return Verdict::Lost(format!("the lease could not be read for {since:?}, longer than its {:?}", self.duration));
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
        // A read slower than half a lease counts as none.
        let verdict = match tokio::time::timeout(fence.duration / 2, leases.get(name)).await {
            Ok(Ok(lease)) => fence.observe(lease.spec.and_then(|s| s.holder_identity).as_deref(), Instant::now()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the leader lease");
                fence.check(Instant::now())
            }
            Err(_) => fence.check(Instant::now()),
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
    fn unreadable_for_longer_than_the_lease_is_lost() {
        let t0 = Instant::now();
        let mut f = Fence::new("me", D, t0);
        assert_eq!(f.observe(Some("me"), t0 + Duration::from_secs(4)), Verdict::Held);
        assert_eq!(f.check(t0 + Duration::from_secs(19)), Verdict::Held);
        let Verdict::Lost(why) = f.check(t0 + Duration::from_secs(20)) else { panic!("not lost") };
        assert!(why.contains("could not be read"), "{why}");
    }

    #[test]
    fn a_late_renewal_is_not_a_loss_while_the_lease_names_this_leader() {
        let t0 = Instant::now();
        let mut f = Fence::new("me", D, t0);
        // Read a minute on, still the holder: nobody took it over.
        assert_eq!(f.observe(Some("me"), t0 + Duration::from_secs(60)), Verdict::Held);
        assert_eq!(f.check(t0 + Duration::from_secs(70)), Verdict::Held);
    }

    #[test]
    fn another_holder_means_lost_at_once() {
        let t0 = Instant::now();
        let mut f = Fence::new("me", D, t0);
        assert_eq!(f.observe(Some("other"), t0), Verdict::Lost("the lease is held by other".into()));
        assert!(matches!(f.observe(None, t0), Verdict::Lost(_)));
    }
}
