//! Exfiltration alerts: per-role sliding one-minute windows of protected values returned and
//! statements refused, checked against the policy's `alerts:` limits. Crossing a limit is
//! logged at warn and counted in `tokengate_alerts_total{role,kind}` once per window per
//! kind; with `action: terminate` the caller ends the session.
//!
//! The window is 60 one-second buckets per role, so `observe` is a hash lookup, a bucket
//! update and a 60-slot sum. The clock is injected ([`Clock`]) so tests need no sleeps.
use crate::observe::metrics::{Metrics, RoleKindLabel};
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The policy's `alerts:` block (reused, not redefined: `RoleView::alerts()` returns it).
pub use crate::policy::model::AlertAction;
pub use crate::policy::model::Alerts as AlertLimits;

const WINDOW_SECS: u64 = 60;

/// Whole seconds on a monotonic scale.
pub trait Clock: Send + Sync {
    fn now_secs(&self) -> u64;
}

/// Seconds since the monitor was created.
#[derive(Debug)]
pub struct MonotonicClock(Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock(Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now_secs(&self) -> u64 {
        self.0.elapsed().as_secs()
    }
}

/// A clock tests move by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_secs(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a threshold counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertKind {
    ProtectedValues,
    Refusals,
}

impl AlertKind {
    /// The `kind` label value.
    pub fn label(self) -> &'static str {
        match self {
            AlertKind::ProtectedValues => "protected_values",
            AlertKind::Refusals => "refusals",
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Bucket {
    second: u64,
    protected_values: u64,
    refusals: u64,
}

/// One role's last minute.
struct Window {
    buckets: [Bucket; WINDOW_SECS as usize],
    /// When each kind last alerted, so a crossing is reported once per window.
    last_alert: [Option<u64>; 2],
}

impl Window {
    fn new() -> Self {
        Window {
            buckets: [Bucket::default(); WINDOW_SECS as usize],
            last_alert: [None; 2],
        }
    }

    fn add(&mut self, now: u64, protected_values: u64, refused: bool) {
        let bucket = &mut self.buckets[(now % WINDOW_SECS) as usize];
        if bucket.second != now {
            *bucket = Bucket {
                second: now,
                ..Bucket::default()
            };
        }
        bucket.protected_values = bucket.protected_values.saturating_add(protected_values);
        bucket.refusals += u64::from(refused);
    }

    /// Totals over the seconds `now - 59 ..= now`.
    fn totals(&self, now: u64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|b| b.second + WINDOW_SECS > now && b.second <= now)
            .fold((0, 0), |(p, r), b| {
                (p.saturating_add(b.protected_values), r + b.refusals)
            })
    }
}

/// The alert monitor shared by every session.
pub struct Alerts<C: Clock = MonotonicClock> {
    clock: C,
    windows: DashMap<String, Window>,
    metrics: Option<Metrics>,
}

impl Alerts<MonotonicClock> {
    pub fn new(metrics: Option<Metrics>) -> Self {
        Alerts::with_clock(MonotonicClock::default(), metrics)
    }
}

impl<C: Clock> Alerts<C> {
    pub fn with_clock(clock: C, metrics: Option<Metrics>) -> Self {
        Alerts {
            clock,
            windows: DashMap::new(),
            metrics,
        }
    }

    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Counts one statement of `role` (`protected_values` = values tokenized, masked or
    /// nulled in its result) and checks the limits. A limit is crossed when the last
    /// minute's count *exceeds* it (`max_… : 100` allows 100). Returns the role's action
    /// (`Log` when unset) while the role is over a limit, `None` otherwise; the caller ends
    /// the session on `Terminate`.
    pub fn observe(
        &self,
        role: &str,
        protected_values: u64,
        refused: bool,
        limits: &AlertLimits,
    ) -> Option<AlertAction> {
        if limits.max_protected_values_per_minute.is_none()
            && limits.max_refusals_per_minute.is_none()
        {
            return None;
        }
        let now = self.clock.now_secs();
        let mut window = match self.windows.get_mut(role) {
            Some(w) => w,
            None => self
                .windows
                .entry(role.to_owned())
                .or_insert_with(Window::new),
        };
        window.add(now, protected_values, refused);
        let (protected_total, refusal_total) = window.totals(now);
        let mut over = false;
        for (kind, total, limit) in [
            (
                AlertKind::ProtectedValues,
                protected_total,
                limits.max_protected_values_per_minute,
            ),
            (
                AlertKind::Refusals,
                refusal_total,
                limits.max_refusals_per_minute,
            ),
        ] {
            let Some(limit) = limit.filter(|l| total > *l) else {
                continue;
            };
            over = true;
            let last = &mut window.last_alert[kind as usize];
            if last.is_none_or(|at| now >= at + WINDOW_SECS) {
                *last = Some(now);
                self.report(role, kind, total, limit, limits.action);
            }
        }
        over.then(|| limits.action.unwrap_or(AlertAction::Log))
    }

    fn report(
        &self,
        role: &str,
        kind: AlertKind,
        total: u64,
        limit: u64,
        action: Option<AlertAction>,
    ) {
        tracing::warn!(
            role,
            kind = kind.label(),
            count = total,
            limit,
            action = ?action.unwrap_or(AlertAction::Log),
            "exfiltration alert: {} in the last minute over the limit",
            kind.label()
        );
        if let Some(metrics) = &self.metrics {
            metrics
                .alerts_total
                .get_or_create(&RoleKindLabel {
                    role: role.to_owned(),
                    kind: kind.label().to_owned(),
                })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(
        values: Option<u64>,
        refusals: Option<u64>,
        action: Option<AlertAction>,
    ) -> AlertLimits {
        AlertLimits {
            max_protected_values_per_minute: values,
            max_refusals_per_minute: refusals,
            action,
        }
    }

    fn alert_count(metrics: &Metrics, role: &str, kind: &str) -> u64 {
        metrics
            .alerts_total
            .get_or_create(&RoleKindLabel {
                role: role.into(),
                kind: kind.into(),
            })
            .get()
    }

    #[test]
    fn fires_above_the_limit_not_at_or_below_it() {
        let (_registry, metrics) = Metrics::standalone();
        let alerts = Alerts::with_clock(ManualClock::default(), Some(metrics.clone()));
        let l = limits(Some(100), None, Some(AlertAction::Terminate));
        assert_eq!(alerts.observe("analyst", 60, false, &l), None);
        alerts.clock().advance(30);
        assert_eq!(
            alerts.observe("analyst", 40, false, &l),
            None,
            "exactly 100 is allowed"
        );
        assert_eq!(alert_count(&metrics, "analyst", "protected_values"), 0);
        assert_eq!(
            alerts.observe("analyst", 1, false, &l),
            Some(AlertAction::Terminate)
        );
        assert_eq!(alert_count(&metrics, "analyst", "protected_values"), 1);
        // Other roles have their own windows.
        assert_eq!(alerts.observe("support", 100, false, &l), None);
    }

    #[test]
    fn the_window_slides_and_alerts_once_per_window() {
        let (_registry, metrics) = Metrics::standalone();
        let alerts = Alerts::with_clock(ManualClock::default(), Some(metrics.clone()));
        let l = limits(None, Some(2), None);
        assert_eq!(alerts.observe("r", 0, true, &l), None);
        alerts.clock().advance(10);
        assert_eq!(alerts.observe("r", 0, true, &l), None);
        assert_eq!(alerts.observe("r", 0, true, &l), Some(AlertAction::Log));
        assert_eq!(alerts.observe("r", 0, true, &l), Some(AlertAction::Log));
        assert_eq!(
            alert_count(&metrics, "r", "refusals"),
            1,
            "one warning per window, not per statement"
        );
        // At t=60 the refusal from t=0 has left the window (t-59..=t): 3 remain, still over,
        // and the alert from t=10 is still this window's.
        alerts.clock().advance(50);
        assert_eq!(alerts.observe("r", 0, false, &l), Some(AlertAction::Log));
        alerts.clock().advance(9);
        assert_eq!(alerts.observe("r", 0, false, &l), Some(AlertAction::Log));
        assert_eq!(alert_count(&metrics, "r", "refusals"), 1);
        // At t=70 the refusals from t=10 are gone.
        alerts.clock().advance(1);
        assert_eq!(alerts.observe("r", 0, false, &l), None);
        // A new burst in a new window alerts again.
        assert_eq!(alerts.observe("r", 0, true, &l), None);
        assert_eq!(alerts.observe("r", 0, true, &l), None);
        assert_eq!(alerts.observe("r", 0, true, &l), Some(AlertAction::Log));
        assert_eq!(alert_count(&metrics, "r", "refusals"), 2);
        // Protected values are not counted when that limit is unset.
        alerts.clock().advance(60);
        assert_eq!(alerts.observe("r", 1_000_000, false, &l), None);
    }

    #[test]
    fn no_limits_means_no_tracking() {
        let alerts = Alerts::with_clock(ManualClock::default(), None);
        let l = limits(None, None, Some(AlertAction::Terminate));
        assert_eq!(alerts.observe("r", u64::MAX, true, &l), None);
        assert!(alerts.windows.is_empty());
    }

    #[test]
    fn policy_limits_compose_into_the_monitor() {
        let policy = crate::policy::Policy::from_yaml(
            "version: 1\nlabels:\n  email: { class: pii, token: email }\ncolumns:\n  public.c.email: email\nroles:\n  r: { default: token, alerts: { max_protected_values_per_minute: 5, action: terminate } }\n",
            "test.yaml",
        )
        .unwrap();
        let view = policy.for_role("r", &[]);
        let l = view.alerts().unwrap();
        let alerts = Alerts::with_clock(ManualClock::default(), None);
        assert_eq!(alerts.observe("r", 5, false, &l), None);
        assert_eq!(
            alerts.observe("r", 1, false, &l),
            Some(AlertAction::Terminate)
        );
    }
}
