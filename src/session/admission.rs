//! Admission control: how many client sessions run at once. `max_client_connections`,
//! lowered so that sessions cannot use up the process's file descriptors (which would starve
//! accept and the admin endpoint); connections over the limit are answered like PostgreSQL
//! answers them (53300 after the StartupMessage), a bounded number at a time.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Over-limit connections answered with 53300 at once; beyond this they are closed without a
/// message, so a flood cannot use the descriptors the admitted sessions need.
const MAX_REFUSING: usize = 16;
/// How long an over-limit connection has to send its StartupMessage.
pub const REFUSE_WITHIN: Duration = Duration::from_secs(5);
/// File descriptors kept for everything but sessions: listeners, runtimes, the admin
/// endpoint, catalog connections, the audit log, the policy watcher.
const RESERVED_FDS: usize = 64;

/// Sessions served now, connections being refused, and the limit.
#[derive(Debug, Default)]
pub struct Admission {
    max_sessions: AtomicUsize,
    sessions: AtomicUsize,
    refusing: AtomicUsize,
}

/// A held slot; released on drop.
pub struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(max_sessions: usize) -> Self {
        Admission {
            max_sessions: AtomicUsize::new(max_sessions),
            ..Admission::default()
        }
    }

    /// A session slot, or `None` at the limit.
    pub fn admit(&self) -> Option<Slot<'_>> {
        let max = self.max_sessions.load(Ordering::Relaxed);
        let slot = Slot(&self.sessions);
        (self.sessions.fetch_add(1, Ordering::AcqRel) < max).then_some(slot)
    }

    /// A slot to answer an over-limit connection, or `None` when enough are being answered.
    pub fn refusing(&self) -> Option<Slot<'_>> {
        let slot = Slot(&self.refusing);
        (self.refusing.fetch_add(1, Ordering::AcqRel) < MAX_REFUSING).then_some(slot)
    }

    /// Sessions being served now.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// The limit in force.
    pub fn max_sessions(&self) -> usize {
        self.max_sessions.load(Ordering::Relaxed)
    }

    /// Sets the limit to `configured`, lowered to what the open files limit allows (two
    /// descriptors per session). The soft limit is first raised to the hard one (as Go and
    /// nginx do): a default soft limit of 1024 would otherwise cap tokengate at a few
    /// hundred sessions.
    pub fn fit_fd_limit(&self, configured: usize) {
        let effective = match raise_open_files_limit() {
            Some(limit) => {
                let fit = (limit.saturating_sub(RESERVED_FDS) / 2).max(1);
                if fit < configured {
                    tracing::warn!(
                        open_files_limit = limit,
                        max_client_connections = configured,
                        effective = fit,
                        "the file descriptor limit allows fewer sessions than max_client_connections; raise ulimit -n (the hard limit)"
                    );
                }
                fit.min(configured)
            }
            None => configured,
        };
        self.max_sessions.store(effective, Ordering::Relaxed);
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (capped, since the kernel refuses
/// "unlimited" for this resource) and returns the soft limit in force; `None` when unlimited.
fn raise_open_files_limit() -> Option<usize> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    const CAP: u64 = 1 << 20;
    let limit = getrlimit(Resource::Nofile);
    let target = limit.maximum.unwrap_or(CAP).min(CAP);
    if limit.current.is_some_and(|c| c < target) {
        let raised = Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "could not raise the open files limit");
        }
    }
    getrlimit(Resource::Nofile)
        .current
        .map(|c| usize::try_from(c).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_and_released() {
        let a = Admission::new(2);
        let first = a.admit().unwrap();
        let second = a.admit().unwrap();
        assert!(a.admit().is_none(), "over the limit");
        assert_eq!(a.sessions(), 2);
        drop(first);
        let third = a.admit().unwrap();
        assert_eq!(a.sessions(), 2);
        drop((second, third));
        assert_eq!(a.sessions(), 0);
        let refusing: Vec<_> = (0..MAX_REFUSING).map_while(|_| a.refusing()).collect();
        assert_eq!(refusing.len(), MAX_REFUSING);
        assert!(a.refusing().is_none());
    }
}
