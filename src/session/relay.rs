//! The Relaying state: two pumps in one task, client→upstream and upstream→client.
//!
//! Each pump reads into a buffer, walks the frames, and writes them on. A frame whose handler
//! needs only its tag streams through as the bytes that arrived, even before it is complete,
//! so a 100 MB DataRow costs no buffering. A frame whose handler needs the body is buffered
//! whole and may be replaced; only then is output copied into an owned buffer (lazily, from
//! the first replacement on). The two pumps run concurrently in one task (no cross-thread
//! wake-ups) and share the little state they need through an uncontended mutex.
//!
//! Backpressure and read-ahead: a pump reads from its source only after its previous batch was
//! written *and flushed* to the destination (a TLS stream otherwise keeps encrypted records
//! buffered, and a peer waiting for them stalls). So beyond what the destination's socket has
//! accepted, tokengate holds at most one read ([`READ_CHUNK`], 32 KiB) or the one frame a
//! handler needs whole. On the upload path the kernel buffers are capped as well
//! ([`crate::net::UPLOAD_SOCKET_BUFFER`] on the client socket's receive side and the upstream
//! socket's send side), so what a client has sent that the server has not yet read grows by
//! at most a few hundred KiB compared with a direct connection, and a driver streaming a batch
//! blocks about as early as it would directly. (A driver that notices the server's error only
//! between its own writes still sees it one proxy hop later.)
use super::readpath::{ClientVerdict, EndSession, ReadPath, ServerVerdict};
use super::startup::Established;
use super::{Context, Outcome};
use crate::catalog::Snapshot;
use crate::errors::Code;
use crate::net::{ConnRead, ConnWrite};
use crate::wire::WireError;
use crate::wire::backend::{self, ErrorFields};
use crate::wire::frame::peek_header;
use crate::wire::frontend;
use bytes::{Buf, BytesMut};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Read granularity: large enough that a bulk read takes few syscalls, small enough that
/// thousands of idle sessions stay cheap.
const READ_CHUNK: usize = 32 * 1024;
/// Upstream frames are trusted more than client ones, but a frame we must buffer whole is still
/// bounded by PostgreSQL's own 1 GiB limit.
const MAX_UPSTREAM_FRAME: usize = (1 << 30) + 1024;
/// How long a closing session waits for the other pump to flush.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Bound on queued statement timers (a misbehaving client cannot grow it).
const MAX_PENDING_TIMERS: usize = 4096;

/// What a handler decides for one whole frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Forward,
    /// Send the handler's scratch bytes instead of the frame.
    Replace,
    Drop,
}

/// What a handler needs to see of a frame, decided from its tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Forward the bytes as they arrive.
    Stream,
    /// Buffer the whole frame and call [`FrameHandler::on_frame`].
    Body,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("unexpected message type 0x{0:02x}")]
    UnknownTag(u8),
    /// The read path ends the session (a reply that does not match, TG020/TG021).
    #[error("{}", .0.0.message)]
    End(EndSession),
    #[error("the audit records of this output could not be made durable")]
    AuditNotDurable,
}

/// What a handler's output waits for before it is written (audit durability).
pub struct Hold {
    pub ticket: tokio::sync::oneshot::Receiver<bool>,
    /// A `false` answer withholds the output and ends the session (`on_failure: refuse`).
    pub must_succeed: bool,
}

/// The per-direction protocol logic plugged into a [`Pump`].
pub trait FrameHandler {
    fn on_header(&mut self, tag: u8) -> Result<Need, RelayError>;
    fn on_frame(&mut self, frame: &[u8], scratch: &mut Vec<u8>) -> Result<Action, RelayError>;
    /// Audit durability hook: something to wait for before the processed output is written.
    fn hold_output(&mut self) -> Option<Hold> {
        None
    }
}

/// The result of processing the buffered input.
#[derive(Debug, PartialEq, Eq)]
enum Output {
    /// Write the first `n` buffered bytes unchanged.
    Direct(usize),
    /// Write `owned`, then drop the first `n` buffered bytes.
    Owned(usize),
}

/// One direction of a session: framing plus buffers, generic over the handler.
pub struct Pump<H> {
    pub buf: BytesMut,
    owned: Vec<u8>,
    scratch: Vec<u8>,
    /// Bytes of a streamed frame still to forward.
    stream_remaining: usize,
    max_frame: usize,
    pub handler: H,
}

impl<H: FrameHandler> Pump<H> {
    pub fn new(handler: H, initial: BytesMut, max_frame: usize) -> Self {
        let mut buf = initial;
        buf.reserve(READ_CHUNK);
        Pump {
            buf,
            owned: Vec::new(),
            scratch: Vec::new(),
            stream_remaining: 0,
            max_frame,
            handler,
        }
    }

    /// Walks the buffered frames, deciding each, until the buffer holds no complete unit.
    fn process(&mut self) -> Result<Output, RelayError> {
        let input = &self.buf[..];
        let mut pos = 0;
        // Set once a frame is replaced or dropped: from then on output goes to `owned`, and
        // `copied` marks how much of `input` has been accounted for there.
        let mut copied: Option<usize> = None;
        loop {
            if self.stream_remaining > 0 {
                let n = self.stream_remaining.min(input.len() - pos);
                pos += n;
                self.stream_remaining -= n;
                if self.stream_remaining > 0 {
                    break;
                }
                continue;
            }
            let Some(header) = peek_header(&input[pos..], self.max_frame)? else {
                break;
            };
            match self.handler.on_header(header.tag)? {
                Need::Stream => self.stream_remaining = header.frame_len,
                Need::Body => {
                    if input.len() - pos < header.frame_len {
                        break;
                    }
                    let frame = &input[pos..pos + header.frame_len];
                    self.scratch.clear();
                    let action = self.handler.on_frame(frame, &mut self.scratch)?;
                    if action != Action::Forward {
                        let from = copied.unwrap_or(0);
                        if copied.is_none() {
                            self.owned.clear();
                        }
                        self.owned.extend_from_slice(&input[from..pos]);
                        if action == Action::Replace {
                            self.owned.extend_from_slice(&self.scratch);
                        }
                        copied = Some(pos + header.frame_len);
                    }
                    pos += header.frame_len;
                }
            }
        }
        Ok(match copied {
            None => Output::Direct(pos),
            Some(from) => {
                self.owned.extend_from_slice(&input[from..pos]);
                Output::Owned(pos)
            }
        })
    }

    /// Processes what is buffered and writes the result. Returns bytes written.
    async fn flush_to(
        &mut self,
        wr: &mut ConnWrite,
    ) -> Result<Result<usize, std::io::Error>, RelayError> {
        let out = self.process()?;
        if let Some(hold) = self.handler.hold_output()
            && !hold.ticket.await.unwrap_or(false)
            && hold.must_succeed
        {
            return Err(RelayError::AuditNotDurable);
        }
        let written = match out {
            Output::Direct(0) => return Ok(Ok(0)),
            Output::Direct(n) => {
                let r = write_batch(wr, &self.buf[..n]).await;
                self.buf.advance(n);
                r.map(|_| n)
            }
            Output::Owned(n) => {
                let r = write_batch(wr, &self.owned).await;
                self.buf.advance(n);
                r.map(|_| self.owned.len())
            }
        };
        Ok(written)
    }

    fn make_room(&mut self) {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
    }
}

/// Writes one batch and flushes it. A TLS stream (tokio-rustls) reports bytes as written once
/// they are encrypted into its buffer, even when the socket would block; without the flush the
/// last records of a batch stay there until the next write, which may never come (the peer
/// waits for them). The flush also makes the pump wait until the socket has taken the whole
/// batch, so the next read from the other side happens only then (see the read-ahead bound
/// in the module docs). On plain TCP the flush is free.
async fn write_batch(wr: &mut ConnWrite, bytes: &[u8]) -> std::io::Result<()> {
    wr.write_all(bytes).await?;
    wr.flush().await
}

/// State the two pumps share.
#[derive(Default)]
pub struct Shared {
    /// Start times of requests awaiting their ReadyForQuery (Query, Sync, FunctionCall).
    pending: VecDeque<Instant>,
    client_terminated: bool,
    /// Present whenever a policy is configured.
    readpath: Option<ReadPath>,
    /// Woken after each batch of server replies (the client side waits on it for tokengate's
    /// own query to be answered).
    replies: Arc<tokio::sync::Notify>,
    /// When the client last sent bytes (kept only with `idle_timeout` or `query_timeout`).
    client_active: Option<Instant>,
}

/// Client → upstream: validates framing, counts statements, starts statement timers.
pub struct ClientHandler<'a> {
    ctx: &'a Context,
    shared: &'a Mutex<Shared>,
    terminated: bool,
    enforcing: bool,
}

impl FrameHandler for ClientHandler<'_> {
    fn on_header(&mut self, tag: u8) -> Result<Need, RelayError> {
        match tag {
            frontend::QUERY | frontend::SYNC | frontend::FUNCTION_CALL => {
                if tag == frontend::QUERY {
                    self.ctx.metrics.statements_total.inc();
                }
                let mut s = lock(self.shared);
                if s.pending.len() >= MAX_PENDING_TIMERS {
                    s.pending.pop_front();
                }
                s.pending.push_back(Instant::now());
            }
            frontend::EXECUTE => {
                self.ctx.metrics.statements_total.inc();
            }
            frontend::TERMINATE => {
                self.terminated = true;
                lock(self.shared).client_terminated = true;
            }
            frontend::COPY_DONE | frontend::COPY_FAIL if self.enforcing => {
                if let Some(rp) = lock(self.shared).readpath.as_mut() {
                    // A tokenized COPY's CopyDone is recorded when its body is handled.
                    if !(tag == frontend::COPY_DONE && rp.rewrites_copy_in()) {
                        rp.client_tag(tag);
                    }
                }
            }
            t if frontend::is_known_tag(t) => {}
            t => return Err(RelayError::UnknownTag(t)),
        }
        // COPY FROM STDIN into columns stored as tokens: its rows are tokenized (issue 14).
        if self.enforcing
            && matches!(tag, frontend::COPY_DATA | frontend::COPY_DONE)
            && lock(self.shared)
                .readpath
                .as_ref()
                .is_some_and(|rp| rp.rewrites_copy_in())
        {
            return Ok(Need::Body);
        }
        if self.enforcing
            && matches!(
                tag,
                frontend::QUERY
                    | frontend::PARSE
                    | frontend::BIND
                    | frontend::EXECUTE
                    | frontend::DESCRIBE
                    | frontend::CLOSE
                    | frontend::SYNC
                    | frontend::FUNCTION_CALL
            )
        {
            return Ok(Need::Body);
        }
        Ok(Need::Stream)
    }

    fn on_frame(&mut self, frame: &[u8], scratch: &mut Vec<u8>) -> Result<Action, RelayError> {
        let mut s = lock(self.shared);
        let Some(rp) = s.readpath.as_mut() else {
            return Ok(Action::Forward);
        };
        match rp.client_frame(frame)? {
            ClientVerdict::Forward => Ok(Action::Forward),
            ClientVerdict::Replace(bytes) => {
                scratch.extend_from_slice(&bytes);
                Ok(Action::Replace)
            }
        }
    }
}

/// Upstream → client: stops statement timers, remembers whether the server's last word was an
/// error (so a close after a FATAL is not reported twice).
pub struct UpstreamHandler<'a> {
    ctx: &'a Context,
    shared: &'a Mutex<Shared>,
    last_tag: u8,
    enforcing: bool,
    rewritten: Vec<u8>,
    /// The audit writer's answer to wait for before writing (see `hold_output`).
    durable: Option<Hold>,
}

impl FrameHandler for UpstreamHandler<'_> {
    fn on_header(&mut self, tag: u8) -> Result<Need, RelayError> {
        self.last_tag = tag;
        if tag == backend::READY_FOR_QUERY {
            let started = lock(self.shared).pending.pop_front();
            if let Some(t) = started {
                self.ctx
                    .metrics
                    .statement_duration_seconds
                    .observe(t.elapsed().as_secs_f64());
            }
        }
        if self.enforcing
            && let Some(rp) = lock(self.shared).readpath.as_mut()
            && rp.server_header(tag).map_err(RelayError::End)?
        {
            return Ok(Need::Body);
        }
        Ok(Need::Stream)
    }

    fn on_frame(&mut self, frame: &[u8], scratch: &mut Vec<u8>) -> Result<Action, RelayError> {
        let mut s = lock(self.shared);
        let Some(rp) = s.readpath.as_mut() else {
            return Ok(Action::Forward);
        };
        let action = match rp
            .server_frame(frame, &mut self.rewritten)
            .map_err(RelayError::End)?
        {
            ServerVerdict::Forward => Action::Forward,
            ServerVerdict::Drop => Action::Drop,
            ServerVerdict::Replace(bytes) => {
                scratch.extend_from_slice(&bytes);
                self.rewritten = bytes;
                Action::Replace
            }
        };
        // Audit durability: with `fsync: always`, a record this frame completed (at
        // CommandComplete, PortalSuspended or ReadyForQuery) must be durable before the batch
        // holding the frame reaches the client.
        if let Some(ticket) = rp.durable_ticket() {
            self.durable = Some(Hold {
                ticket,
                must_succeed: rp.audit_fails_closed(),
            });
        }
        Ok(action)
    }

    fn hold_output(&mut self) -> Option<Hold> {
        self.durable.take()
    }
}

/// Starts the read path for a session when a policy is configured: loads the catalog (for
/// group memberships and column names) and the login role's view of the policy.
async fn start_readpath(ctx: &Context, info: &super::startup::SessionInfo) -> Option<ReadPath> {
    let store = ctx.policy.as_ref()?;
    let (mut snapshot, mut catalog_error) = (None, None);
    load_catalog(ctx, &mut snapshot, &mut catalog_error, &info.database).await;
    let groups = snapshot
        .as_ref()
        .map(|s: &Arc<Snapshot>| s.groups_of(&info.user).to_vec())
        .unwrap_or_default();
    let mut rp = ReadPath::new(
        info.database.clone(),
        info.user.clone(),
        store.current().for_role(&info.user, &groups),
        ctx.readpath.clone(),
        ctx.keys.clone(),
        ctx.metrics.clone(),
        (
            ctx.audit.clone(),
            ctx.alerts.clone(),
            super::readpath::AuditSession {
                id: u64::from(info.client_key.as_ref().map_or(0, |k| k.pid)),
                client: info.peer.to_string(),
                application_name: info.application_name.clone(),
            },
        ),
    );
    rp.server_pid = info.server_pid;
    rp.snapshot = snapshot;
    rp.catalog_error = catalog_error;
    for (name, value) in &info.parameters {
        rp.names.parameter(name, value);
    }
    rp.needs_refresh = false;
    rp.policy_generation = store.generation();
    Some(rp)
}

async fn load_catalog(
    ctx: &Context,
    snapshot: &mut Option<Arc<Snapshot>>,
    error: &mut Option<String>,
    database: &str,
) {
    let result = match &ctx.catalog {
        Some(c) => c.snapshot(database).await.map_err(|e| e.to_string()),
        None => Err("no catalog service role is configured".to_string()),
    };
    match result {
        Ok(s) => {
            *snapshot = Some(s);
            *error = None;
        }
        Err(e) => {
            tracing::warn!(database, error = %e, "catalog unavailable: restricted statements are refused");
            *error = Some(e);
        }
    }
}

/// Before each batch of client messages: pick up policy reloads and refresh the catalog after
/// DDL. Awaits happen outside the lock.
async fn refresh_readpath(ctx: &Context, shared: &Mutex<Shared>) {
    let Some(store) = ctx.policy.as_ref() else {
        return;
    };
    refresh_at_rest_states(ctx, shared).await;
    let (refresh, database, login, generation) = {
        let s = lock(shared);
        let Some(rp) = s.readpath.as_ref() else {
            return;
        };
        (
            // After DDL, only once the server has answered it (a load before could miss it).
            (rp.needs_refresh && rp.idle()) || rp.snapshot.is_none(),
            rp.database.clone(),
            rp.login.clone(),
            rp.policy_generation,
        )
    };
    if !refresh && generation == store.generation() {
        return;
    }
    let mut snapshot = None;
    let mut error = None;
    if refresh {
        if let Some(c) = &ctx.catalog {
            c.invalidate(&database).await;
        }
        load_catalog(ctx, &mut snapshot, &mut error, &database).await;
    }
    let mut s = lock(shared);
    let Some(rp) = s.readpath.as_mut() else {
        return;
    };
    if refresh {
        // A failed reload keeps the old snapshot for group memberships, but not as proof:
        // `needs_refresh` stays set, and restricted statements are refused until a reload
        // succeeds (TG141).
        if snapshot.is_some() {
            rp.snapshot = snapshot;
            rp.needs_refresh = false;
        }
        rp.catalog_error = error;
    }
    let groups = rp
        .snapshot
        .as_ref()
        .map(|s| s.groups_of(&login).to_vec())
        .unwrap_or_default();
    rp.view = store.current().for_role(&login, &groups);
    rp.policy_generation = store.generation();
}

/// With columns stored as tokens in the policy: the latest state of those columns (their key
/// versions), read at most `at_rest_max_age` ago (see [`crate::catalog::at_rest_cache`]).
async fn refresh_at_rest_states(ctx: &Context, shared: &Mutex<Shared>) {
    let database = {
        let s = lock(shared);
        match s.readpath.as_ref() {
            Some(rp) if rp.view.has_at_rest() => rp.database.clone(),
            _ => return,
        }
    };
    let result = match &ctx.catalog {
        Some(c) => c.at_rest_states(&database).await,
        None => Err("no catalog service role is configured (catalog_user)".to_string()),
    };
    let mut s = lock(shared);
    if let Some(rp) = s.readpath.as_mut() {
        match result {
            Ok(states) => {
                rp.at_rest_states = Some(states);
                rp.at_rest_error = None;
            }
            Err(e) => rp.at_rest_error = Some(e),
        }
    }
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // The pumps never panic while holding the lock; recover the data if one ever did.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum ClientEnd {
    Terminated,
    Eof,
    UpstreamWriteFailed,
    Protocol(ErrorFields),
}

enum UpstreamEnd {
    /// The upstream closed; its last message was (or was not) an ErrorResponse.
    Eof {
        after_error: bool,
    },
    ClientWriteFailed,
    Stopped,
    /// The read path ended the session (a reply that does not match, TG020/TG021).
    Ended,
}

/// Relays until either side ends, then closes both.
pub async fn run(ctx: &Context, est: Established) -> Outcome {
    let Established {
        info,
        client,
        client_buf,
        upstream,
        upstream_buf,
    } = est;
    let (client_rd, client_wr) = client.into_split();
    let (upstream_rd, upstream_wr) = upstream.into_split();
    let readpath = start_readpath(ctx, &info).await;
    let enforcing = readpath.is_some();
    let shared = Mutex::new(Shared {
        readpath,
        ..Shared::default()
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<ErrorFields>();

    let client_side = client_pump(ctx, &shared, client_rd, upstream_wr, client_buf, enforcing);
    let upstream_side = upstream_pump(
        ctx,
        &shared,
        upstream_rd,
        client_wr,
        upstream_buf,
        stop_rx,
        enforcing,
    );
    tokio::pin!(client_side, upstream_side);

    tokio::select! {
        (end, mut upstream_wr) = &mut client_side => {
            match end {
                ClientEnd::Terminated => {
                    // Let the server see the Terminate and close; the upstream pump then ends.
                    let _ = tokio::time::timeout(CLOSE_GRACE, &mut upstream_side).await;
                    Outcome::Completed
                }
                ClientEnd::Eof => {
                    // Say goodbye for the client so the server logs no unexpected EOF.
                    let _ = write_batch(&mut upstream_wr, &[frontend::TERMINATE, 0, 0, 0, 4]).await;
                    Outcome::Completed
                }
                ClientEnd::UpstreamWriteFailed => {
                    let _ = tokio::time::timeout(CLOSE_GRACE, &mut upstream_side).await;
                    Outcome::UpstreamError
                }
                ClientEnd::Protocol(error) => {
                    tracing::warn!(peer = %info.peer, user = %info.user, error = %error.message, "closing session on protocol error");
                    let _ = stop_tx.send(error);
                    let _ = tokio::time::timeout(CLOSE_GRACE, &mut upstream_side).await;
                    let _ = write_batch(&mut upstream_wr, &[frontend::TERMINATE, 0, 0, 0, 4]).await;
                    Outcome::ProtocolError
                }
            }
        }
        end = &mut upstream_side => match end {
            UpstreamEnd::Eof { after_error: true } | UpstreamEnd::ClientWriteFailed => Outcome::Completed,
            UpstreamEnd::Eof { after_error: false } => Outcome::UpstreamError,
            UpstreamEnd::Stopped => Outcome::Shutdown,
            UpstreamEnd::Ended => Outcome::ProtocolError,
        },
    }
}

async fn client_pump(
    ctx: &Context,
    shared: &Mutex<Shared>,
    mut rd: ConnRead,
    mut wr: ConnWrite,
    initial: BytesMut,
    enforcing: bool,
) -> (ClientEnd, ConnWrite) {
    let handler = ClientHandler {
        ctx,
        shared,
        terminated: false,
        enforcing,
    };
    let mut pump = Pump::new(handler, initial, ctx.config.max_message_bytes);
    loop {
        if enforcing && !pump.buf.is_empty() {
            refresh_readpath(ctx, shared).await;
            if !read_session_names(shared, &mut wr).await {
                return (ClientEnd::UpstreamWriteFailed, wr);
            }
        }
        match pump.flush_to(&mut wr).await {
            Err(e) => return (ClientEnd::Protocol(protocol_error(&e)), wr),
            Ok(Err(_)) => return (ClientEnd::UpstreamWriteFailed, wr),
            Ok(Ok(_)) => {}
        }
        if pump.handler.terminated {
            let _ = wr.flush().await;
            return (ClientEnd::Terminated, wr);
        }
        pump.make_room();
        match rd.read_buf(&mut pump.buf).await {
            Ok(0) | Err(_) => return (ClientEnd::Eof, wr),
            Ok(n) => {
                ctx.bytes_from_client.inc_by(n as u64);
                if ctx.config.idle_timeout.is_some() || ctx.config.query_timeout.is_some() {
                    lock(shared).client_active = Some(Instant::now());
                }
            }
        }
    }
}

/// Before a restricted statement is analysed: when the session's search path and temp schema
/// are unknown or may have changed, and nothing is pending, sends tokengate's own query for
/// them and waits until the upstream side has consumed its replies. False if the upstream
/// could not be written.
/// Then, the same way, the relations the session created in its open transaction.
async fn read_session_names(shared: &Mutex<Shared>, wr: &mut ConnWrite) -> bool {
    if let Some(rp) = lock(shared).readpath.as_mut() {
        rp.batch_starts();
    }
    for _ in 0..2 {
        if !read_session_state(shared, wr).await {
            return false;
        }
    }
    true
}

/// One internal read: the session's names if due, else its created relations if due.
async fn read_session_state(shared: &Mutex<Shared>, wr: &mut ConnWrite) -> bool {
    let (query, replies) = {
        let mut s = lock(shared);
        let replies = s.replies.clone();
        match s.readpath.as_mut() {
            Some(rp) if rp.wants_names_read() || rp.wants_created_read() => {
                let query = if rp.wants_names_read() {
                    rp.start_names_read()
                } else {
                    rp.start_created_read()
                };
                // Its ReadyForQuery stops a statement timer like any Query's.
                if s.pending.len() < MAX_PENDING_TIMERS {
                    s.pending.push_back(Instant::now());
                }
                (query, replies)
            }
            _ => return true,
        }
    };
    if wr.write_all(&query).await.is_err() || wr.flush().await.is_err() {
        return false;
    }
    loop {
        if lock(shared).readpath.as_ref().is_none_or(ReadPath::idle) {
            return true;
        }
        // The upstream side calls notify_one after each batch: a wake-up between the check
        // and this await is kept as a permit.
        replies.notified().await;
    }
}

fn protocol_error(e: &RelayError) -> ErrorFields {
    match e {
        RelayError::Wire(WireError::TooLarge { len, max }) => Code::MessageTooLarge.error(format!(
            "client message of {len} bytes exceeds max_message_bytes ({max})"
        )),
        other => Code::MalformedMessage.error(other),
    }
}

async fn upstream_pump(
    ctx: &Context,
    shared: &Mutex<Shared>,
    mut rd: ConnRead,
    mut wr: ConnWrite,
    initial: BytesMut,
    mut stop: tokio::sync::oneshot::Receiver<ErrorFields>,
    enforcing: bool,
) -> UpstreamEnd {
    let handler = UpstreamHandler {
        ctx,
        shared,
        last_tag: 0,
        enforcing,
        rewritten: Vec::new(),
        durable: None,
    };
    let mut pump = Pump::new(handler, initial, MAX_UPSTREAM_FRAME);
    let mut force_close = ctx.force_close.clone();
    let mut stop_open = true;
    let mut force_open = true;
    let mut upstream_active = Instant::now();
    loop {
        match pump.flush_to(&mut wr).await {
            Ok(Ok(_)) => {
                let terminate = if enforcing {
                    let mut s = lock(shared);
                    s.replies.notify_one();
                    s.readpath.as_mut().and_then(|rp| rp.terminate.take())
                } else {
                    None
                };
                if let Some(r) = terminate {
                    tracing::warn!(error = %r.message, "ending session on alert");
                    write_error(&mut wr, &r.code.error(&r.message)).await;
                    return UpstreamEnd::Stopped;
                }
            }
            Err(RelayError::AuditNotDurable) => {
                let e = Code::AuditUnavailable.error(
                    "the statement's audit record could not be made durable; the session is closed",
                );
                let fatal = ErrorFields {
                    severity: crate::wire::backend::Severity::Fatal,
                    ..e
                };
                write_error(&mut wr, &fatal).await;
                return UpstreamEnd::Stopped;
            }
            Ok(Err(_)) => return UpstreamEnd::ClientWriteFailed,
            Err(RelayError::End(EndSession(r))) => {
                tracing::warn!(code = r.code.id(), error = %r.message, "ending session");
                write_error(&mut wr, &r.code.error(&r.message)).await;
                return UpstreamEnd::Ended;
            }
            Err(e) => {
                tracing::warn!(error = %e, "upstream sent a malformed message");
                ctx.metrics.upstream_errors_total.inc();
                let e = Code::UpstreamLost.error(format!(
                    "upstream {} sent a malformed message",
                    ctx.connector.address()
                ));
                write_error(&mut wr, &e).await;
                return UpstreamEnd::Eof { after_error: false };
            }
        }
        pump.make_room();
        let check_at = timeouts::next_check(ctx, shared, upstream_active);
        tokio::select! {
            biased;
            _ = tokio::time::sleep_until(check_at.unwrap_or_else(Instant::now)), if check_at.is_some() => {
                if let Some((e, end)) = timeouts::expired(ctx, shared, upstream_active) {
                    write_error(&mut wr, &e).await;
                    return end;
                }
            }
            r = &mut stop, if stop_open => {
                stop_open = false;
                if let Ok(error) = r {
                    write_error(&mut wr, &error).await;
                    return UpstreamEnd::ClientWriteFailed;
                }
            }
            r = force_close.changed(), if force_open => {
                match r {
                    Ok(()) if *force_close.borrow() => {
                        let e = Code::ShuttingDown.error("the drain period ended");
                        write_error(&mut wr, &e).await;
                        return UpstreamEnd::Stopped;
                    }
                    Ok(()) => {}
                    Err(_) => force_open = false,
                }
            }
            r = rd.read_buf(&mut pump.buf) => match r {
                Ok(0) | Err(_) => {
                    let after_error = pump.handler.last_tag == backend::ERROR_RESPONSE
                        || lock(shared).client_terminated;
                    if !after_error {
                        ctx.metrics.upstream_errors_total.inc();
                        ctx.health.set_upstream_up(false);
                        let e = Code::UpstreamLost.error(format!(
                            "lost the connection to upstream {}",
                            ctx.connector.address()
                        ));
                        write_error(&mut wr, &e).await;
                    }
                    return UpstreamEnd::Eof { after_error };
                }
                Ok(n) => {
                    ctx.bytes_from_upstream.inc_by(n as u64);
                    upstream_active = Instant::now();
                }
            },
        }
    }
}

/// `query_timeout` and `idle_timeout`, checked by the upstream pump's timer.
mod timeouts {
    use super::{Context, ErrorFields, Instant, Mutex, Shared, UpstreamEnd, lock};
    use crate::errors::Code;

    /// When to look again, or `None` when no timeout is configured. An idle session with a
    /// query timeout is looked at every half timeout, so a request is failed at most 1.5×
    /// `query_timeout` after the upstream went silent.
    pub(super) fn next_check(
        ctx: &Context,
        shared: &Mutex<Shared>,
        upstream_active: Instant,
    ) -> Option<Instant> {
        let (query, idle) = (ctx.config.query_timeout, ctx.config.idle_timeout);
        if query.is_none() && idle.is_none() {
            return None;
        }
        let now = Instant::now();
        let s = lock(shared);
        let waiting = s.pending.front().copied();
        let query_at = query.map(|q| match waiting {
            Some(start) => start.max(last_activity(&s, upstream_active)) + q,
            None => now + q / 2,
        });
        let idle_at = idle.map(|i| match waiting {
            None => last_activity(&s, upstream_active) + i,
            Some(_) => now + i,
        });
        [query_at, idle_at].into_iter().flatten().min()
    }

    /// The error that ends the session when a timeout expired.
    pub(super) fn expired(
        ctx: &Context,
        shared: &Mutex<Shared>,
        upstream_active: Instant,
    ) -> Option<(ErrorFields, UpstreamEnd)> {
        let s = lock(shared);
        match s.pending.front() {
            Some(start) => {
                let q = ctx.config.query_timeout?;
                // Silence on both legs: a client still streaming (COPY FROM STDIN) is not
                // waiting on the upstream yet; once its writes block, it stops counting.
                if (*start).max(last_activity(&s, upstream_active)).elapsed() < q {
                    return None;
                }
                drop(s);
                ctx.metrics.upstream_errors_total.inc();
                tracing::warn!(upstream = %ctx.connector.address(), secs = q.as_secs_f64(), "upstream silent past query_timeout; closing the session");
                let e = Code::UpstreamTimeout.error(format!(
                    "upstream {} sent nothing for {}s while a request was waiting (query_timeout)",
                    ctx.connector.address(),
                    q.as_secs_f64()
                ));
                Some((e, UpstreamEnd::Eof { after_error: false }))
            }
            None => {
                let i = ctx.config.idle_timeout?;
                if last_activity(&s, upstream_active).elapsed() < i {
                    return None;
                }
                let e = Code::IdleTimeout.error(format!(
                    "the session was idle for {}s (idle_timeout)",
                    i.as_secs_f64()
                ));
                Some((e, UpstreamEnd::Stopped))
            }
        }
    }

    fn last_activity(s: &Shared, upstream_active: Instant) -> Instant {
        s.client_active
            .map_or(upstream_active, |c| c.max(upstream_active))
    }
}

async fn write_error(wr: &mut ConnWrite, e: &ErrorFields) {
    let _ = wr.write_all(&e.encode()).await;
    let _ = wr.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replaces every 'D' frame with "D" + uppercase body; forwards others.
    struct Upper;
    impl FrameHandler for Upper {
        fn on_header(&mut self, tag: u8) -> Result<Need, RelayError> {
            Ok(if tag == b'D' {
                Need::Body
            } else {
                Need::Stream
            })
        }
        fn on_frame(&mut self, frame: &[u8], scratch: &mut Vec<u8>) -> Result<Action, RelayError> {
            if frame[5..] == *b"drop" {
                return Ok(Action::Drop);
            }
            scratch.extend_from_slice(&frame[..5]);
            scratch.extend(frame[5..].iter().map(|b| b.to_ascii_uppercase()));
            Ok(Action::Replace)
        }
    }

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn run_all(pump: &mut Pump<Upper>) -> Vec<u8> {
        let mut out = Vec::new();
        match pump.process().unwrap() {
            Output::Direct(n) => {
                out.extend_from_slice(&pump.buf[..n]);
                pump.buf.advance(n);
            }
            Output::Owned(n) => {
                out.extend_from_slice(&pump.owned);
                pump.buf.advance(n);
            }
        }
        out
    }

    #[test]
    fn untouched_frames_are_forwarded_without_copy() {
        let input = [frame(b'C', b"SELECT 1\0"), frame(b'Z', b"I")].concat();
        let mut pump = Pump::new(Upper, BytesMut::from(&input[..]), 1 << 20);
        assert_eq!(pump.process().unwrap(), Output::Direct(input.len()));
    }

    #[test]
    fn replaced_and_dropped_frames_keep_order() {
        let input = [
            frame(b'T', b"desc"),
            frame(b'D', b"abc"),
            frame(b'D', b"drop"),
            frame(b'C', b"done"),
        ]
        .concat();
        let mut pump = Pump::new(Upper, BytesMut::from(&input[..]), 1 << 20);
        let out = run_all(&mut pump);
        let expected = [
            frame(b'T', b"desc"),
            frame(b'D', b"ABC"),
            frame(b'C', b"done"),
        ]
        .concat();
        assert_eq!(out, expected);
        assert!(pump.buf.is_empty());
    }

    #[test]
    fn streamed_frames_pass_before_they_are_complete() {
        let big = frame(b'd', &[7u8; 1000]);
        let mut pump = Pump::new(Upper, BytesMut::from(&big[..300]), 64);
        // Bigger than max_frame would be an error only for a Body frame; streamed frames are
        // bounded by max_frame too, so use a bigger limit here.
        assert!(pump.process().is_err());
        let mut pump = Pump::new(Upper, BytesMut::from(&big[..300]), 1 << 20);
        assert_eq!(run_all(&mut pump), big[..300]);
        pump.buf.extend_from_slice(&big[300..]);
        assert_eq!(run_all(&mut pump), big[300..]);
        assert_eq!(pump.stream_remaining, 0);
    }

    #[test]
    fn body_frames_wait_until_whole() {
        let d = frame(b'D', b"hello");
        let mut pump = Pump::new(Upper, BytesMut::from(&d[..7]), 1 << 20);
        assert_eq!(pump.process().unwrap(), Output::Direct(0));
        pump.buf.extend_from_slice(&d[7..]);
        assert_eq!(run_all(&mut pump), frame(b'D', b"HELLO"));
    }

    #[test]
    fn split_at_every_byte_gives_the_same_output() {
        let input = [
            frame(b'T', b"desc"),
            frame(b'D', b"abc"),
            frame(b'C', b"x"),
            frame(b'D', b"zz"),
        ]
        .concat();
        let mut whole = Pump::new(Upper, BytesMut::from(&input[..]), 1 << 20);
        let expected = run_all(&mut whole);
        for cut in 0..input.len() {
            let mut pump = Pump::new(Upper, BytesMut::from(&input[..cut]), 1 << 20);
            let mut out = run_all(&mut pump);
            pump.buf.extend_from_slice(&input[cut..]);
            out.extend(run_all(&mut pump));
            assert_eq!(out, expected, "cut at {cut}");
        }
    }

    #[test]
    fn bad_length_is_an_error() {
        let mut pump = Pump::new(Upper, BytesMut::from(&b"Q\0\0\0\x02"[..]), 1 << 20);
        assert!(pump.process().is_err());
    }
}
