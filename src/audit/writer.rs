//! [`AuditLog`]: a bounded queue in front of a dedicated writer thread that seals records
//! into the chain, appends them, rotates by size, fsyncs per [`FsyncMode`], and applies
//! [`OnFailure`] while the file cannot be written.
//!
//! A thread rather than a tokio task: file writes and `fsync` block, and keeping them off
//! the runtime's workers keeps them off every session's data path.
use super::chain::{Chain, ChainKey};
use super::record::{AuditRecord, LossNotice};
use super::{AuditConfig, FsyncMode, OnFailure};
use crate::observe::metrics::Metrics;
use crate::protect::keys::{KeyError, KeyRing};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// How often a failing writer retries on its own (a `flush` retries at once).
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// `fsync: interval` syncs at most this often.
const FSYNC_INTERVAL: Duration = Duration::from_secs(1);
/// How far back from the end startup looks for the last complete record.
const RESUME_WINDOW: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit key: {0}")]
    Key(#[from] KeyError),
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "audit log {path}: the last line is not an audit record ({reason}); move the file away to start a new chain"
    )]
    Resume { path: PathBuf, reason: String },
    #[error("audit writer thread: {0}")]
    Thread(std::io::Error),
    #[error(
        "audit log {path} is readable or writable by group or others (mode {mode:o}); run: chmod 600 {path}"
    )]
    Permissions { path: PathBuf, mode: u32 },
}

enum Message {
    Record(Box<AuditRecord>),
    /// Write what is queued (retrying a failing file at once) and answer whether the log is
    /// healthy.
    Flush(SyncSender<bool>),
    /// Answer once everything queued before is written and synced (`fsync: always`): whether
    /// it is durable. Sessions wait for it before the client sees ReadyForQuery.
    Durable(tokio::sync::oneshot::Sender<bool>),
    /// Sync and close the file; the next write opens `path` again (after an external
    /// rotation renamed it away: SIGHUP).
    Reopen,
}

/// State the session's side reads without touching the writer.
struct Shared {
    /// The last write attempt failed (cleared by the next successful write).
    failing: AtomicBool,
    /// Records sent but not yet taken by the writer.
    queued: AtomicUsize,
    /// Records `record` could not queue (full or writer gone), for the next loss notice.
    lost_before_queue: AtomicU64,
    capacity: usize,
    on_failure: OnFailure,
    records: Counter,
    write_errors: Counter,
    dropped: Counter,
    healthy: Gauge,
}

/// The audit log handle the sessions share (`Arc<AuditLog>`).
pub struct AuditLog {
    sender: SyncSender<Message>,
    /// `fsync: always`: sessions wait for durability before ReadyForQuery.
    durable: bool,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("accepting", &self.accepting())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or continues) the log at `config.path` with the active version of the key
    /// `config.key_name`, and starts the writer thread.
    pub fn open(
        config: AuditConfig,
        keys: &KeyRing,
        metrics: &Metrics,
    ) -> Result<Self, AuditError> {
        refuse_loose_permissions(&config.path)?;
        let version = active_version(keys, &config.key_name)?;
        let key = ChainKey::new(keys.get(&config.key_name, Some(version))?, version);
        let (chain, needs_newline) = resume_chain(&config.path, key)?;
        let capacity = config.queue_capacity.max(1);
        let shared = Arc::new(Shared {
            failing: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            lost_before_queue: AtomicU64::new(0),
            capacity,
            on_failure: config.on_failure,
            records: metrics.audit_records_total.clone(),
            write_errors: metrics.audit_write_errors_total.clone(),
            dropped: metrics.audit_dropped_total.clone(),
            healthy: metrics.audit_healthy.clone(),
        });
        shared.healthy.set(1);
        let durable = config.fsync == FsyncMode::Always;
        let (sender, receiver) = std::sync::mpsc::sync_channel(capacity);
        let mut writer = Writer {
            config,
            chain,
            file: None,
            file_len: 0,
            needs_newline,
            backlog: VecDeque::new(),
            lost: 0,
            unsynced: false,
            last_sync: Instant::now(),
            shared: shared.clone(),
            dropped_in_batch: false,
        };
        // Open now so a bad path shows up in the log at startup, not at the first record;
        // a failure here is handled like any write failure (retried, per on_failure).
        if let Err(e) = writer.ensure_open() {
            writer.failed(&e);
        }
        let thread = std::thread::Builder::new()
            .name("tokengate-audit".into())
            .spawn(move || writer.run(receiver))
            .map_err(AuditError::Thread)?;
        Ok(AuditLog {
            sender,
            durable,
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues a record; never blocks. When the queue is full or the writer is gone the
    /// record is dropped and counted, and the chain gets a `records_lost` notice.
    pub fn record(&self, record: AuditRecord) {
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        match self.sender.try_send(Message::Record(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                self.shared
                    .lost_before_queue
                    .fetch_add(1, Ordering::Relaxed);
                self.shared.dropped.inc();
            }
        }
    }

    /// False while failing closed (`on_failure: refuse` and the file cannot be written, or
    /// the queue is full): the session must refuse statements that need auditing.
    pub fn accepting(&self) -> bool {
        self.shared.on_failure == OnFailure::Continue
            || !(self.shared.failing.load(Ordering::Relaxed)
                || self.shared.queued.load(Ordering::Relaxed) >= self.shared.capacity)
    }

    /// With `fsync: always`, a ticket answered once every record queued before this call is
    /// on disk and synced (`true`), or could not be (`false`); `None` in the other modes.
    /// Many sessions' tickets share one write and one fsync.
    pub fn durable(&self) -> Option<tokio::sync::oneshot::Receiver<bool>> {
        if !self.durable {
            return None;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        match self.sender.try_send(Message::Durable(tx)) {
            Ok(()) => Some(rx),
            Err(TrySendError::Full(Message::Durable(tx)))
            | Err(TrySendError::Disconnected(Message::Durable(tx))) => {
                let _ = tx.send(false);
                Some(rx)
            }
            Err(_) => None,
        }
    }

    /// Closes the file after writing what is queued; the next record opens the path again,
    /// creating it (0600) if an external rotation moved it away. The chain continues.
    pub fn reopen(&self) {
        let _ = self.sender.try_send(Message::Reopen);
    }

    /// True when an unwritten record must fail the statement's session rather than be lost
    /// quietly (`on_failure: refuse`).
    pub fn fails_closed(&self) -> bool {
        self.shared.on_failure == OnFailure::Refuse
    }

    /// True when the last write attempt succeeded.
    pub fn healthy(&self) -> bool {
        !self.shared.failing.load(Ordering::Relaxed)
    }

    /// Blocks until everything queued before the call is written (or has failed), retrying
    /// a failing file at once; returns [`healthy`](Self::healthy). For shutdown and tests.
    pub fn flush(&self) -> bool {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        if self.sender.send(Message::Flush(reply)).is_err() {
            return false;
        }
        answer.recv().unwrap_or(false)
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // Writes what is queued; the thread ends when the sender below is dropped.
        self.flush();
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        let (sender, _) = std::sync::mpsc::sync_channel(1);
        drop(std::mem::replace(&mut self.sender, sender));
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// An existing log readable by group or others is refused, as the key file is: records
/// hold statement text and client addresses. New files are created 0600.
fn refuse_loose_permissions(path: &Path) -> Result<(), AuditError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {
                let mode = m.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(AuditError::Permissions {
                        path: path.to_owned(),
                        mode,
                    });
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(AuditError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The active version of `name`. `KeyRing` has no accessor for it, so it is read from the
/// ring's own file text (only the `active` fields are deserialised).
fn active_version(keys: &KeyRing, name: &str) -> Result<u32, AuditError> {
    #[derive(serde::Deserialize)]
    struct File {
        keys: std::collections::BTreeMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        active: u32,
    }
    keys.get(name, None)?;
    let text = keys.to_file_text();
    serde_json::from_str::<File>(&text)
        .ok()
        .and_then(|f| f.keys.get(name).map(|e| e.active))
        .ok_or_else(|| {
            AuditError::Key(KeyError::UnknownKey {
                name: name.to_owned(),
            })
        })
}

/// Continues the chain after the last complete record of `path` (or of `path.1` when the
/// current file is empty or missing). Returns whether the file ends in a partial line that
/// must be terminated before appending.
fn resume_chain(path: &Path, key: ChainKey) -> Result<(Chain, bool), AuditError> {
    for candidate in [path.to_owned(), rotated(path, 1)] {
        let io = |source| AuditError::Io {
            path: candidate.clone(),
            source,
        };
        let metadata = match std::fs::metadata(&candidate) {
            Ok(m) if m.is_file() && m.len() > 0 => m,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(e)),
        };
        let mut file = File::open(&candidate).map_err(io)?;
        let start = metadata.len().saturating_sub(RESUME_WINDOW);
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail).map_err(io)?;
        let needs_newline = !tail.ends_with(b"\n") && candidate == path;
        // The last newline-terminated line; a partial one after it was torn by a crash and
        // stays in the file as evidence (verify reports it).
        let complete = match tail.iter().rposition(|b| *b == b'\n') {
            Some(end) => &tail[..end],
            None => &[][..],
        };
        let last = complete
            .rsplit(|b| *b == b'\n')
            .next()
            .filter(|l| !l.is_empty());
        let Some(last) = last else {
            return Err(AuditError::Resume {
                path: candidate,
                reason: "no complete line".into(),
            });
        };
        let text = std::str::from_utf8(last).map_err(|_| AuditError::Resume {
            path: candidate.clone(),
            reason: "not UTF-8".into(),
        })?;
        let chain = Chain::resume(key, text).map_err(|e| AuditError::Resume {
            path: candidate.clone(),
            reason: e.to_string(),
        })?;
        return Ok((chain, needs_newline));
    }
    Ok((Chain::genesis(key), false))
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// What the writer thread owns.
struct Writer {
    config: AuditConfig,
    chain: Chain,
    file: Option<File>,
    file_len: u64,
    needs_newline: bool,
    /// Records taken from the queue and not yet written.
    backlog: VecDeque<Box<AuditRecord>>,
    /// Records dropped since the last successful write, for the next loss notice.
    lost: u64,
    unsynced: bool,
    last_sync: Instant,
    shared: Arc<Shared>,
    /// A record was dropped since the last durability answer: that answer is `false`.
    dropped_in_batch: bool,
}

impl Writer {
    fn run(mut self, receiver: Receiver<Message>) {
        loop {
            let timeout = if self.shared.failing.load(Ordering::Relaxed) {
                RETRY_INTERVAL
            } else if self.unsynced {
                FSYNC_INTERVAL.saturating_sub(self.last_sync.elapsed())
            } else {
                Duration::from_secs(3600)
            };
            let mut replies = Vec::new();
            let mut durable = Vec::new();
            match receiver.recv_timeout(timeout) {
                Ok(message) => {
                    self.take(message, &mut replies, &mut durable);
                    // Drain what else is queued into one batch (group commit).
                    while let Ok(message) = receiver.try_recv() {
                        self.take(message, &mut replies, &mut durable);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.write_pending();
                    self.sync();
                    return;
                }
            }
            self.write_pending();
            if self.shared.failing.load(Ordering::Relaxed)
                && self.backlog.is_empty()
                && self.lost == 0
            {
                self.probe();
            }
            if self.config.fsync == FsyncMode::Interval
                && self.unsynced
                && self.last_sync.elapsed() >= FSYNC_INTERVAL
            {
                self.sync();
            }
            let healthy = !self.shared.failing.load(Ordering::Relaxed);
            for reply in replies {
                let _ = reply.send(healthy);
            }
            // With fsync: always every batch written above was synced by write_batch; with
            // a backlog left (failing), it is not durable.
            let dropped = std::mem::take(&mut self.dropped_in_batch);
            let synced = healthy && self.backlog.is_empty() && self.lost == 0 && !dropped;
            for ticket in durable {
                let _ = ticket.send(synced);
            }
        }
    }

    fn take(
        &mut self,
        message: Message,
        replies: &mut Vec<SyncSender<bool>>,
        durable: &mut Vec<tokio::sync::oneshot::Sender<bool>>,
    ) {
        match message {
            Message::Record(mut record) => {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                if self.config.redact_text {
                    record.statement = None;
                }
                self.backlog.push_back(record);
                if self.backlog.len() > self.shared.capacity {
                    // Only while failing closed with sessions racing the refusal: keep the
                    // oldest (already promised) records, drop the newest.
                    self.backlog.pop_back();
                    self.lose(1);
                }
            }
            Message::Flush(reply) => replies.push(reply),
            Message::Durable(ticket) => durable.push(ticket),
            Message::Reopen => {
                // Records queued before the reopen go to the old file, later ones to the new.
                self.write_pending();
                self.sync();
                self.file = None;
                self.needs_newline = false;
            }
        }
    }

    fn lose(&mut self, n: u64) {
        self.dropped_in_batch = true;
        self.lost += n;
        self.shared.dropped.inc_by(n);
    }

    /// Writes the loss notice (if any) and the backlog, rotating between lines as needed.
    fn write_pending(&mut self) {
        let dropped = self.shared.lost_before_queue.swap(0, Ordering::Relaxed);
        self.dropped_in_batch |= dropped > 0;
        self.lost += dropped;
        while self.lost > 0 || !self.backlog.is_empty() {
            match self.write_batch() {
                Ok(()) => self.recovered(),
                Err(e) => {
                    self.failed(&e);
                    if self.shared.on_failure == OnFailure::Continue {
                        let n = self.backlog.len() as u64;
                        self.backlog.clear();
                        self.lose(n);
                    }
                    return;
                }
            }
        }
    }

    /// Writes as many pending lines as fit in the current file (at least one), committing
    /// the chain and the backlog only once the bytes are written.
    fn write_batch(&mut self) -> std::io::Result<()> {
        self.ensure_open()?;
        let mut chain = self.chain.clone();
        let mut buffer = Vec::new();
        if self.needs_newline {
            buffer.push(b'\n');
        }
        let limit = self.config.max_bytes;
        let fits = |len: u64, buffer: &Vec<u8>, line: &str| {
            let used = len + buffer.len() as u64;
            limit == 0 || used == 0 || used + (line.len() as u64) < limit // the line plus its newline fit
        };
        let mut notice_written = false;
        let mut records = 0usize;
        if self.lost > 0 {
            let line = chain
                .seal(&LossNotice::new(SystemTime::now(), self.lost))
                .map_err(std::io::Error::other)?;
            if fits(self.file_len, &buffer, &line) {
                buffer.extend_from_slice(line.as_bytes());
                buffer.push(b'\n');
                notice_written = true;
            } else {
                chain = self.chain.clone();
            }
        }
        if notice_written || self.lost == 0 {
            for record in &self.backlog {
                let before = chain.clone();
                let line = chain.seal(record.as_ref()).map_err(std::io::Error::other)?;
                if !fits(self.file_len, &buffer, &line) {
                    chain = before;
                    break;
                }
                buffer.extend_from_slice(line.as_bytes());
                buffer.push(b'\n');
                records += 1;
            }
        }
        if !notice_written && records == 0 {
            // Nothing fits in what is left of this file.
            return self.rotate();
        }
        let Some(file) = self.file.as_mut() else {
            return Err(std::io::Error::other("audit file not open"));
        };
        if let Err(e) = file.write_all(&buffer) {
            // Cut a partial write back off so the next attempt appends to whole lines.
            let _ = file.set_len(self.file_len);
            self.file = None;
            return Err(e);
        }
        if self.config.fsync == FsyncMode::Always
            && let Err(e) = file.sync_data()
        {
            // The bytes may or may not be durable; don't write them twice, but report.
            self.commit(chain, &buffer, notice_written, records);
            self.file = None;
            return Err(e);
        }
        self.commit(chain, &buffer, notice_written, records);
        Ok(())
    }

    fn commit(&mut self, chain: Chain, buffer: &[u8], notice_written: bool, records: usize) {
        self.chain = chain;
        self.file_len += buffer.len() as u64;
        self.needs_newline = false;
        if notice_written {
            self.lost = 0;
        }
        self.backlog.drain(..records);
        self.shared.records.inc_by(records as u64);
        self.unsynced = self.config.fsync == FsyncMode::Interval;
    }

    fn ensure_open(&mut self) -> std::io::Result<()> {
        if self.file.is_some() {
            return Ok(());
        }
        let mut options = OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        {
            // Records hold statement text and client addresses: owner-only.
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(&self.config.path)?;
        let metadata = file.metadata()?;
        // A character device (/dev/full, /dev/null) has no size to rotate on.
        self.file_len = if metadata.is_file() {
            metadata.len()
        } else {
            0
        };
        self.file = Some(file);
        Ok(())
    }

    /// `path` → `path.1`, `path.1` → `path.2`, …; the new file continues the chain.
    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(file) = self.file.take()
            && self.config.fsync != FsyncMode::Never
        {
            file.sync_data()?;
        }
        let path = &self.config.path;
        let mut highest = 0;
        while rotated(path, highest + 1).exists() {
            highest += 1;
        }
        for n in (1..=highest).rev() {
            std::fs::rename(rotated(path, n), rotated(path, n + 1))?;
        }
        std::fs::rename(path, rotated(path, 1))?;
        self.unsynced = false;
        self.ensure_open()
    }

    fn sync(&mut self) {
        if !self.unsynced {
            return;
        }
        if let Some(file) = &self.file {
            match file.sync_data() {
                Ok(()) => {
                    self.unsynced = false;
                    self.last_sync = Instant::now();
                }
                Err(e) => {
                    self.failed(&e);
                    self.file = None;
                }
            }
        }
    }

    /// With nothing pending to retry (the open or an fsync failed), a failing writer checks
    /// that the file opens and syncs again. It cannot see a full disk this way; the next
    /// record's write will.
    fn probe(&mut self) {
        let result = self
            .ensure_open()
            .and_then(|()| self.file.as_ref().map_or(Ok(()), File::sync_data));
        match result {
            Ok(()) => {
                self.unsynced = false;
                self.recovered();
            }
            Err(e) => {
                self.file = None;
                self.failed(&e);
            }
        }
    }

    fn failed(&mut self, error: &std::io::Error) {
        self.shared.write_errors.inc();
        if !self.shared.failing.swap(true, Ordering::Relaxed) {
            self.shared.healthy.set(0);
            tracing::error!(
                path = %self.config.path.display(),
                on_failure = ?self.shared.on_failure,
                "audit log write failed: {error}"
            );
        }
    }

    fn recovered(&mut self) {
        if self.shared.failing.swap(false, Ordering::Relaxed) {
            self.shared.healthy.set(1);
            tracing::info!(path = %self.config.path.display(), "audit log writable again");
        }
    }
}
