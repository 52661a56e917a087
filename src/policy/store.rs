//! The policy in force, swapped atomically on reload.
//!
//! Sessions call [`PolicyStore::current`] once per statement and keep the `Arc<Policy>`
//! snapshot for that statement, so a reload never changes a statement half-way. Reloads
//! parse and validate off the data path (the file watcher's thread, or `spawn_blocking` for
//! SIGHUP) and either swap in a whole valid policy or keep the old one.
//!
//! A reload never weakens protection by accident:
//! - a file must have its sections and a `"*"` rule ([`super::weaken::require_sections`]);
//! - the watcher and SIGHUP load a file only once it is stable: the same bytes, size and
//!   mtime read twice, [`SETTLE`] apart (an in-place write is seen half-done otherwise);
//! - a policy that protects less than the one in force ([`super::weaken::weakenings`]) is
//!   logged at error and held: only SIGHUP (or [`PolicyStore::reload_now`]) applies it, or
//!   the watcher when `allow_weakening_reload` is set.
use super::error::PolicyError;
use super::model::Policy;
use crate::observe::metrics::{Metrics, ResultLabel};
use arc_swap::ArcSwap;
use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Editors save atomically (write a temp file, rename it over); ~200 ms lets the burst of
/// events settle into one reload.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// A file must read the same twice this far apart before the watcher loads it.
const SETTLE: Duration = Duration::from_millis(300);
/// How long the watcher waits for a file that keeps changing before it gives up (the next
/// change event tries again).
const SETTLE_ATTEMPTS: u32 = 40;

/// Kubernetes updates a mounted ConfigMap by swapping this symlinked directory; the policy
/// file's own name never appears in the events.
const CONFIGMAP_DATA_DIR: &str = "..data";

/// The shared, atomically replaceable policy. Cheap to clone.
#[derive(Clone)]
pub struct PolicyStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    current: ArcSwap<Policy>,
    generation: AtomicU64,
    /// The text of the policy in force, so duplicate file events don't bump the generation.
    text: Mutex<String>,
    metrics: Metrics,
    /// Let the watcher apply weakening policies too (`allow_weakening_reload`).
    allow_weakening: std::sync::atomic::AtomicBool,
}

/// Who asked for a reload: the watcher may not weaken protection on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    Watcher,
    /// SIGHUP or an explicit call: the operator's intent.
    Explicit,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {dir} for policy changes: {source}")]
    Notify {
        dir: String,
        #[source]
        source: notify::Error,
    },
    #[error("cannot install the SIGHUP handler: {0}")]
    Signal(#[source] std::io::Error),
}

impl PolicyStore {
    /// Loads and validates the file; generation 1 on success.
    pub fn load(path: impl Into<PathBuf>, metrics: Metrics) -> Result<PolicyStore, PolicyError> {
        let path = path.into();
        let (policy, text) = read_and_build(&path)?;
        metrics.policy_generation.set(1);
        Ok(PolicyStore {
            inner: Arc::new(Inner {
                path,
                current: ArcSwap::from_pointee(policy),
                generation: AtomicU64::new(1),
                text: Mutex::new(text),
                metrics,
                allow_weakening: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// The policy in force: take one snapshot per statement.
    pub fn current(&self) -> Arc<Policy> {
        self.inner.current.load_full()
    }

    /// Starts at 1 and increments on each good reload.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Reads, validates and swaps in the file now, even when it protects less than the policy
    /// in force (that is logged at warn). Blocking (file I/O and parsing): call it from a
    /// blocking context. On error the old policy stays and the error is returned.
    pub fn reload_now(&self) -> Result<u64, PolicyError> {
        self.reload(Trigger::Explicit, None)
            .map(|_| self.generation())
    }

    /// Lets the file watcher apply policies that protect less than the one in force.
    pub fn set_allow_weakening_reload(&self, allow: bool) {
        self.inner.allow_weakening.store(allow, Ordering::Relaxed);
    }

    /// Reloads from `text` (already read by the watcher) or from the file. Returns whether a
    /// new generation is in force.
    fn reload(&self, trigger: Trigger, text: Option<String>) -> Result<bool, PolicyError> {
        // One reload at a time, so generations and the stored text stay in step.
        let mut text_in_force = match self.inner.text.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let shown = self.inner.path.display().to_string();
        let result = match text {
            Some(text) => build(text, &shown),
            None => read_and_build(&self.inner.path),
        };
        let metrics = &self.inner.metrics;
        let count = |result: &str| {
            metrics
                .policy_reloads_total
                .get_or_create(&ResultLabel {
                    result: result.into(),
                })
                .inc();
        };
        let (policy, text) = match result {
            Ok(built) => built,
            Err(err) => {
                count("error");
                tracing::error!(
                    file = %shown,
                    kept_generation = self.generation(),
                    "policy reload rejected, keeping the policy in force:\n{err}"
                );
                return Err(err);
            }
        };
        // File events often come in pairs; an identical file is not a new generation.
        if trigger == Trigger::Watcher && text == *text_in_force {
            return Ok(false);
        }
        let weaker = super::weaken::weakenings(&self.current(), &policy);
        if !weaker.is_empty() {
            let list = weaker.join("\n  ");
            if trigger == Trigger::Watcher && !self.inner.allow_weakening.load(Ordering::Relaxed) {
                count("held");
                tracing::error!(
                    file = %shown,
                    kept_generation = self.generation(),
                    "policy change NOT applied: it would protect less than the policy in force. \
                     Send SIGHUP to apply it (or set allow_weakening_reload). It weakens:\n  {list}"
                );
                return Ok(false);
            }
            tracing::warn!(
                file = %shown,
                "applying a policy that protects less than the one it replaces:\n  {list}"
            );
        }
        self.inner.current.store(Arc::new(policy));
        let generation = self.inner.generation.fetch_add(1, Ordering::AcqRel) + 1;
        *text_in_force = text;
        count("ok");
        metrics
            .policy_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        tracing::info!(file = %shown, generation, "policy reloaded");
        Ok(true)
    }

    /// Reloads once the file reads the same twice [`SETTLE`] apart (bytes, size and mtime):
    /// an in-place write is never loaded half-done. A file that keeps changing is skipped
    /// (the next change tries again); one that cannot be read is reported as a failed reload.
    fn reload_settled(&self, trigger: Trigger) {
        let path = &self.inner.path;
        let read = || -> std::io::Result<(Vec<u8>, u64, Option<std::time::SystemTime>)> {
            let bytes = std::fs::read(path)?;
            let meta = std::fs::metadata(path)?;
            Ok((bytes, meta.len(), meta.modified().ok()))
        };
        let mut last = None;
        let mut unreadable = 0;
        for _ in 0..SETTLE_ATTEMPTS {
            let now = match read() {
                Ok(r) => r,
                // A rename in progress clears quickly; an error that persists is reported.
                Err(_) if unreadable < 3 => {
                    unreadable += 1;
                    last = None;
                    std::thread::sleep(SETTLE);
                    continue;
                }
                Err(_) => {
                    let _ = self.reload(trigger, None);
                    return;
                }
            };
            if last.as_ref() == Some(&now) {
                let (bytes, _, _) = now;
                // Not UTF-8: the reload from the file reports it.
                let text = String::from_utf8(bytes).ok();
                let _ = self.reload(trigger, text);
                return;
            }
            last = Some(now);
            std::thread::sleep(SETTLE);
        }
        tracing::warn!(
            file = %path.display(),
            "policy file kept changing; not reloaded (the next change tries again)"
        );
    }

    /// Starts reloading on SIGHUP and on changes to the policy file. Must be called inside a
    /// Tokio runtime. Dropping the handle stops both.
    pub fn spawn_watchers(&self) -> Result<WatchHandle, WatchError> {
        let debouncer = self.watch_file()?;
        let sighup = self.watch_sighup()?;
        Ok(WatchHandle {
            _debouncer: debouncer,
            sighup: Some(sighup),
        })
    }

    fn watch_file(
        &self,
    ) -> Result<Debouncer<notify::RecommendedWatcher, RecommendedCache>, WatchError> {
        // Watch the directory: an atomic save replaces the file's inode, which would end a
        // watch on the file itself.
        let dir = match self.inner.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = self.inner.path.file_name().map(|n| n.to_os_string());
        let store = self.clone();
        let mut debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
            let events = match result {
                Ok(events) => events,
                Err(errors) => {
                    for e in errors {
                        tracing::warn!(error = %e, "policy file watcher error");
                    }
                    return;
                }
            };
            let relevant = events.iter().any(|event| {
                !event.kind.is_access()
                    && event.paths.iter().any(|p| {
                        p.file_name().is_some_and(|n| {
                            Some(n) == file_name.as_deref() || n == CONFIGMAP_DATA_DIR
                        })
                    })
            });
            if relevant {
                // Runs on the debouncer's own thread: off the data path. Errors are
                // logged and counted inside.
                store.reload_settled(Trigger::Watcher);
            }
        })
        .map_err(|source| WatchError::Notify {
            dir: dir.display().to_string(),
            source,
        })?;
        debouncer
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Notify {
                dir: dir.display().to_string(),
                source,
            })?;
        Ok(debouncer)
    }

    fn watch_sighup(&self) -> Result<tokio::task::JoinHandle<()>, WatchError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = signal(SignalKind::hangup()).map_err(WatchError::Signal)?;
        let store = self.clone();
        Ok(tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading policy");
                let store = store.clone();
                // Parsing is CPU work and file I/O: keep it off the async workers.
                let _ = tokio::task::spawn_blocking(move || store.reload(Trigger::Explicit, None))
                    .await;
            }
        }))
    }
}

/// Keeps the watchers running; dropping it stops them.
pub struct WatchHandle {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
    sighup: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        if let Some(task) = self.sighup.take() {
            task.abort();
        }
    }
}

pub(crate) fn read_and_build(path: &Path) -> Result<(Policy, String), PolicyError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: shown.clone(),
        source,
    })?;
    build(text, &shown)
}

/// A policy file's text to a whole policy: valid, with its sections and catch-all.
fn build(text: String, shown: &str) -> Result<(Policy, String), PolicyError> {
    let policy = Policy::from_yaml(&text, shown)?;
    super::weaken::require_sections(&policy, &text)?;
    Ok((policy, text))
}
