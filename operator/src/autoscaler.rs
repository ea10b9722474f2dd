//! Queue-aware autoscaling of the inference Deployment, by the leader (chart value
//! `inference.autoscaling.mode: operator`).
//!
//! The operator knows what a CPU autoscaler cannot: the texts it holds, queued and in
//! flight, and how fast each pod serves them. It asks for enough pods to drain that work
//! within `target_drain`, through the Deployment's `/scale` subresource, from zero when a
//! batch arrives, and back to the minimum (which may be zero) once nothing has been held
//! for `idle`. It never scales down while work is held, so no pod is taken away with
//! chunks in flight, and it scales up at most once per `interval` (from zero at once), so
//! it does not flap. Every change is an Event on the Deployment and a metric.
//!
//! [`Autoscaler::decide`] is pure: it takes the load and the time, so its tests step
//! the clock. [`run`] is the task that feeds it and applies its decisions.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, Load};
use crate::metrics::Metrics;

/// The operator's autoscaling settings (flags; the chart sets them from
/// `inference.autoscaling`).
#[derive(Clone, Debug, clap::Args)]
pub struct AutoscaleArgs {
    /// The inference Deployment (in the inference Service's namespace) to scale through its
    /// /scale subresource. Unset: the operator scales nothing.
    #[arg(long, env = "KUBESENTIMENT_AUTOSCALE_DEPLOYMENT")]
    pub autoscale_deployment: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub autoscale_min_replicas: u32,
    #[arg(long, default_value_t = 10)]
    pub autoscale_max_replicas: u32,
    /// Enough pods to drain the texts held within this many seconds.
    #[arg(long, default_value_t = 60)]
    pub target_drain_seconds: u64,
    /// Back to the minimum after this many seconds without texts queued or in flight.
    #[arg(long, default_value_t = 300)]
    pub scale_down_idle_seconds: u64,
    /// Texts per second one pod is assumed to serve until one is measured.
    #[arg(long, default_value_t = 300.0)]
    pub assumed_texts_per_second: f64,
    /// Least time between two scale-ups (a scale-up from zero goes at once).
    #[arg(long, default_value_t = 10)]
    pub scale_interval_seconds: u64,
}

#[derive(Clone, Debug)]
pub struct Policy {
    pub min: u32,
    pub max: u32,
    pub target_drain: Duration,
    pub idle: Duration,
    pub assumed_rate: f64,
    pub interval: Duration,
}

impl From<&AutoscaleArgs> for Policy {
    fn from(a: &AutoscaleArgs) -> Self {
        Policy {
            min: a.autoscale_min_replicas,
            max: a.autoscale_max_replicas.max(a.autoscale_min_replicas).max(1),
            target_drain: Duration::from_secs(a.target_drain_seconds.max(1)),
            idle: Duration::from_secs(a.scale_down_idle_seconds),
            assumed_rate: a.assumed_texts_per_second.max(1.0),
            interval: Duration::from_secs(a.scale_interval_seconds),
        }
    }
}

/// Why the replicas change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The texts held need this many pods.
    Queue,
    /// Nothing was held for the idle time.
    Idle,
    /// The minimum or the maximum decides.
    Bound,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Queue => "queue",
            Reason::Idle => "idle",
            Reason::Bound => "bound",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub replicas: u32,
    pub reason: Reason,
    pub why: String,
}

/// The deciding state: when the work last went to nothing, and the last change.
pub struct Autoscaler {
    policy: Policy,
    idle_since: Option<Instant>,
    last_change: Option<Instant>,
}

impl Autoscaler {
    pub fn new(policy: Policy) -> Self {
        Autoscaler { policy, idle_since: None, last_change: None }
    }

    /// The replicas to set now, or `None` to leave `current` as it is.
    pub fn decide(&mut self, load: &Load, current: u32, now: Instant) -> Option<Decision> {
        let p = &self.policy;
        let work = load.queued_texts + load.in_flight_texts;
        let decision = if work == 0 {
            let since = *self.idle_since.get_or_insert(now);
            let idle = now.saturating_duration_since(since);
            if current > p.min && idle >= p.idle {
                Some(Decision { replicas: p.min, reason: Reason::Idle, why: format!("nothing held for {} s", idle.as_secs()) })
            } else if current < p.min {
                Some(Decision { replicas: p.min, reason: Reason::Bound, why: format!("below the minimum of {}", p.min) })
            } else {
                None
            }
        } else {
            self.idle_since = None;
            let rate = load.texts_per_second_per_endpoint.unwrap_or(p.assumed_rate);
            let needed = (work as f64 / (rate * p.target_drain.as_secs_f64())).ceil() as u32;
            let desired = needed.clamp(p.min.max(1), p.max);
            let reason = if needed > p.max || needed < p.min { Reason::Bound } else { Reason::Queue };
            let why = format!(
                "{work} texts held at {rate:.0} texts/s per pod{}: {needed} pods drain them in {} s",
                if load.texts_per_second_per_endpoint.is_some() { "" } else { " (assumed)" },
                p.target_drain.as_secs()
            );
            let settled = self.last_change.is_none_or(|t| now.saturating_duration_since(t) >= p.interval);
            if desired > current && (current == 0 || settled) {
                Some(Decision { replicas: desired, reason, why })
            } else if current > p.max {
                Some(Decision { replicas: p.max, reason: Reason::Bound, why: format!("above the maximum of {}", p.max) })
            } else {
                // Never fewer pods while work is held: a pod may hold chunks in flight.
                None
            }
        };
        if decision.is_some() {
            self.last_change = Some(now);
        }
        decision
    }
}

/// What the controller shows a batch that waits for pods: how long a scale-up has been
/// taking (from the decision to the first ready pod), and the rate a pod serves.
#[derive(Clone, Default)]
pub struct Capacity(Arc<Mutex<Option<(f64, f64)>>>);

impl Capacity {
    /// Seconds until `texts` are done when no pod is ready yet, if the autoscaler runs.
    pub fn eta_from_zero(&self, texts: usize) -> Option<i64> {
        let (startup, rate) = (*self.0.lock().expect("the lock is never poisoned. This is a bug."))?;
        Some((startup + texts as f64 / rate.max(1.0)).ceil() as i64)
    }

    fn set(&self, startup: f64, rate: f64) {
        *self.0.lock().expect("the lock is never poisoned. This is a bug.") = Some((startup, rate));
    }
}

/// The autoscaler's task: every second, the engine's load and the Deployment's replicas
/// in, a decision out, until `stop`.
pub struct Scaler {
    pub client: Client,
    pub namespace: String,
    pub deployment: String,
    pub policy: Policy,
    pub engine: Engine,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub capacity: Capacity,
}

pub async fn run(s: Scaler, stop: CancellationToken) {
    let api: Api<Deployment> = Api::namespaced(s.client.clone(), &s.namespace);
    let mut scaler = Autoscaler::new(s.policy.clone());
    // A scale-up from zero starts the clock; the first ready pod stops it.
    let mut scaling_from_zero: Option<Instant> = None;
    let mut startup = 30.0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(load) = s.engine.load().await else { return };
        let scale = match api.get_scale(&s.deployment).await {
            Ok(scale) => scale,
            Err(e) => {
                tracing::warn!(error = %e, deployment = %s.deployment, "reading the inference Deployment's scale");
                continue;
            }
        };
        let current = scale.spec.as_ref().and_then(|sp| sp.replicas).unwrap_or(0).max(0) as u32;
        s.metrics.autoscaler_current.set(i64::from(current));
        if let Some(began) = scaling_from_zero.filter(|_| load.endpoints > 0) {
            startup = began.elapsed().as_secs_f64();
            scaling_from_zero = None;
        }
        s.capacity.set(startup, load.texts_per_second_per_endpoint.unwrap_or(s.policy.assumed_rate));
        let Some(d) = scaler.decide(&load, current, Instant::now()) else { continue };
        let patch = Patch::Merge(json!({"spec": {"replicas": d.replicas}}));
        if let Err(e) = api.patch_scale(&s.deployment, &PatchParams::default(), &patch).await {
            tracing::warn!(error = %e, replicas = d.replicas, "scaling the inference Deployment");
            continue;
        }
        if current == 0 && d.replicas > 0 {
            scaling_from_zero = Some(Instant::now());
        }
        tracing::info!(from = current, to = d.replicas, reason = d.reason.as_str(), why = %d.why, "scaling inference");
        s.metrics.autoscaler_desired.set(i64::from(d.replicas));
        s.metrics.autoscaler_decisions.with_label_values(&[d.reason.as_str()]).inc();
        let deployment = ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some("Deployment".into()),
            name: Some(s.deployment.clone()),
            namespace: Some(s.namespace.clone()),
            uid: scale.metadata.uid.clone(),
            ..Default::default()
        };
        let reason = if d.replicas > current { "ScaledUp" } else { "ScaledDown" };
        let note = format!("{current} → {} replicas ({}): {}", d.replicas, d.reason.as_str(), d.why);
        let event = Event { type_: EventType::Normal, reason: reason.into(), note: Some(note), action: "Scale".into(), secondary: None };
        if let Err(e) = s.recorder.publish(&event, &deployment).await {
            tracing::warn!(error = %e, "publishing a scaling event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            min: 0,
            max: 4,
            target_drain: Duration::from_secs(10),
            idle: Duration::from_secs(30),
            assumed_rate: 100.0,
            interval: Duration::from_secs(5),
        }
    }

    fn load(queued: usize, in_flight: usize, rate: Option<f64>) -> Load {
        Load { queued_texts: queued, in_flight_texts: in_flight, endpoints: 0, texts_per_second_per_endpoint: rate }
    }

    /// (seconds, load, current) → the replicas decided, or None.
    type Step = (u64, Load, u32, Option<(u32, Reason)>);

    #[test]
    fn from_zero_up_with_the_queue_and_back_to_zero_when_idle() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(policy());
        let at = |s: u64| t0 + Duration::from_secs(s);
        let steps: &[Step] = &[
            (0, load(0, 0, None), 0, None),
            // A batch arrives: at once from zero; 2,500 texts at the assumed 100/s need 3 pods.
            (1, load(2500, 0, None), 0, Some((3, Reason::Queue))),
            // More work within the interval: wait.
            (2, load(3900, 100, None), 3, None),
            // After the interval, the measured rate decides: 4,000 at 50/s → 8, capped at 4.
            (7, load(3900, 100, Some(50.0)), 3, Some((4, Reason::Bound))),
            // Work shrinks: no scale-down while any is held.
            (20, load(0, 10, Some(50.0)), 4, None),
            // Nothing held: the idle clock starts, and runs out after 30 s.
            (21, load(0, 0, Some(50.0)), 4, None),
            (50, load(0, 0, Some(50.0)), 4, None),
            (51, load(0, 0, Some(50.0)), 4, Some((0, Reason::Idle))),
            (52, load(0, 0, Some(50.0)), 0, None),
            // Work again: from zero at once, whatever the interval.
            (53, load(10, 0, Some(50.0)), 0, Some((1, Reason::Queue))),
        ];
        for (s, l, current, want) in steps {
            let got = a.decide(l, *current, at(*s)).map(|d| (d.replicas, d.reason));
            assert_eq!(got, *want, "at {s} s with {l:?} and {current} replicas");
        }
    }

    #[test]
    fn bounds_hold_both_ways() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(Policy { min: 2, max: 3, ..policy() });
        assert_eq!(a.decide(&load(0, 0, None), 0, t0).map(|d| (d.replicas, d.reason)), Some((2, Reason::Bound)));
        let later = t0 + Duration::from_secs(100);
        assert_eq!(a.decide(&load(1, 0, None), 5, later).map(|d| (d.replicas, d.reason)), Some((3, Reason::Bound)));
        // Idle goes down to the minimum, not below.
        let mut a = Autoscaler::new(Policy { min: 2, max: 3, ..policy() });
        a.decide(&load(0, 0, None), 3, t0);
        let d = a.decide(&load(0, 0, None), 3, t0 + Duration::from_secs(31)).unwrap();
        assert_eq!((d.replicas, d.reason), (2, Reason::Idle));
        assert!(d.why.contains("31 s"), "{}", d.why);
    }

    #[test]
    fn a_little_work_never_flaps() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(policy());
        let mut changes = 0;
        let mut current = 1;
        // Work comes and goes every other second for ten minutes, never idle for 30 s.
        for s in 0..600 {
            let l = if s % 2 == 0 { load(50, 0, Some(100.0)) } else { load(0, 0, Some(100.0)) };
            if let Some(d) = a.decide(&l, current, t0 + Duration::from_secs(s)) {
                current = d.replicas;
                changes += 1;
            }
        }
        assert_eq!((changes, current), (0, 1));
    }
}
