//! The Negotiating and Authenticating states: transport negotiation with the client (TLS,
//! GSSAPI refusal, cancel requests), the StartupMessage, the upstream connection, and the
//! authentication exchange relayed message by message until ReadyForQuery (or, with
//! `auth_query`, SCRAM terminated by [`super::terminate`]).
use super::{Context, Outcome, terminate};
use crate::errors::Code;
use crate::net::Conn;
use crate::net::tls::ALPN_POSTGRESQL;
use crate::wire::backend::{self, ErrorFields};
use crate::wire::frame::peek_header;
use crate::wire::frontend;
use crate::wire::startup::{
    self as packets, CancelKey, MAX_STARTUP_PACKET, StartupMessage, StartupPacket,
    TLS_HANDSHAKE_BYTE,
};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

/// Upstream messages during startup are small; this bounds a misbehaving server.
const MAX_UPSTREAM_STARTUP_FRAME: usize = 1 << 20;

/// Who is on the other end, for logs, policy and audit.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub peer: SocketAddr,
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub client_tls: bool,
    /// The cancel key tokengate issued to the client (the backend's real pid, tokengate's own
    /// secret), if the upstream sent one.
    pub client_key: Option<CancelKey>,
    /// The server backend's own pid (NotificationResponses name it as their sender).
    pub server_pid: Option<u32>,
    /// ParameterStatus values the server reported during startup (e.g.
    /// `standard_conforming_strings`), in order; the read path tracks later changes.
    pub parameters: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A session that finished authentication and is ready to relay.
pub struct Established {
    pub info: SessionInfo,
    pub client: Conn,
    /// Client bytes read past the startup phase (a pipelining client may send them early).
    pub client_buf: BytesMut,
    pub upstream: Conn,
    pub upstream_buf: BytesMut,
}

pub(super) enum Io {
    Eof,
    Timeout,
    Failed,
}

/// Runs Negotiating and Authenticating. `Err` carries the outcome of a connection that ended
/// here; any error the client should see has already been sent.
pub async fn handshake(
    ctx: &Context,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Result<Established, Outcome> {
    let deadline = Instant::now() + ctx.config.startup_timeout;
    let (mut client, startup, raw) = negotiate(ctx, tcp, deadline).await?;

    if startup.major != 3 {
        let e = Code::UnsupportedProtocol.error(format!(
            "unsupported frontend protocol {}.{}",
            startup.major, startup.minor
        ));
        send_error(&mut client, &e).await;
        return Err(Outcome::Refused);
    }
    if startup.wants_replication() && !ctx.config.allow_replication {
        let e = Code::ReplicationRefused
            .error("replication connections are not allowed through tokengate");
        send_error(&mut client, &e).await;
        return Err(Outcome::Refused);
    }

    let mut upstream = match ctx.connector.connect().await {
        Ok(u) => {
            ctx.health.set_upstream_up(true);
            u
        }
        Err(e) => {
            ctx.metrics.upstream_errors_total.inc();
            ctx.health.set_upstream_up(false);
            tracing::warn!(%peer, error = %e, "upstream connection failed");
            send_error(&mut client, &Code::UpstreamUnavailable.error(&e)).await;
            return Err(Outcome::UpstreamError);
        }
    };
    if send(&mut upstream, &raw).await.is_err() {
        ctx.metrics.upstream_errors_total.inc();
        let e = Code::UpstreamLost.error(format!(
            "upstream {} closed the connection during startup",
            ctx.connector.address()
        ));
        send_error(&mut client, &e).await;
        return Err(Outcome::UpstreamError);
    }

    let mut info = SessionInfo {
        peer,
        user: startup.user().unwrap_or_default().to_string(),
        database: startup.database().unwrap_or_default().to_string(),
        application_name: startup
            .param("application_name")
            .unwrap_or_default()
            .to_string(),
        client_tls: client.is_tls(),
        client_key: None,
        server_pid: None,
        parameters: Vec::new(),
    };
    let mut client_buf = BytesMut::with_capacity(1024);
    let mut upstream_buf = BytesMut::with_capacity(8192);
    let max_client = ctx.config.max_message_bytes;

    let result = async {
        loop {
            let frame = match read_frame(
                &mut upstream,
                &mut upstream_buf,
                MAX_UPSTREAM_STARTUP_FRAME,
                deadline,
            )
            .await
            {
                Ok(f) => f,
                // Waiting on the upstream, not on the client: an upstream error (08006).
                Err(FrameError::Io(Io::Timeout)) => return Err(upstream_stalled(ctx)),
                Err(_) => {
                    ctx.metrics.upstream_errors_total.inc();
                    return Err((
                        Some(Code::UpstreamLost.error(format!(
                            "upstream {} closed the connection during startup",
                            ctx.connector.address()
                        ))),
                        Outcome::UpstreamError,
                    ));
                }
            };
            let (tag, body) = (frame[0], &frame[5..]);
            match tag {
                backend::AUTHENTICATION => {
                    let code = backend::auth_code(body).map_err(|_| upstream_garbage(ctx))?;
                    if code == backend::AUTH_SASL
                        && let Some(lookup) = &ctx.auth
                    {
                        let legs = terminate::Legs {
                            client: &mut client,
                            client_buf: &mut client_buf,
                            upstream: &mut upstream,
                            upstream_buf: &mut upstream_buf,
                            deadline,
                        };
                        match terminate::scram(ctx, lookup, &info, body, legs).await? {
                            terminate::Terminated::Done => continue,
                            terminate::Terminated::PassThrough => {}
                        }
                    }
                    // SCRAM-SHA-256-PLUS binds to the TLS channel, which tokengate terminates:
                    // a client that picked it would fail. Plain SCRAM still authenticates.
                    let rewritten = if code == backend::AUTH_SASL {
                        backend::strip_scram_plus(body).map_err(|_| upstream_garbage(ctx))?
                    } else {
                        None
                    };
                    write(&mut client, rewritten.as_deref().unwrap_or(&frame)).await?;
                    if expects_client_response(code) {
                        let reply =
                            match read_frame(&mut client, &mut client_buf, max_client, deadline)
                                .await
                            {
                                Ok(f) => f,
                                Err(FrameError::Io(Io::Timeout)) => return Err(timeout_error()),
                                Err(FrameError::Io(_)) => return Err((None, Outcome::ClientGone)),
                                Err(FrameError::Wire(e)) => {
                                    return Err((
                                        Some(malformed(&e.to_string())),
                                        Outcome::ProtocolError,
                                    ));
                                }
                            };
                        if reply[0] == frontend::TERMINATE {
                            return Err((None, Outcome::ClientGone));
                        }
                        if reply[0] != frontend::PASSWORD {
                            return Err((
                                Some(malformed("expected a password or SASL response message")),
                                Outcome::ProtocolError,
                            ));
                        }
                        if code == backend::AUTH_SASL
                            && client.is_tls()
                            && upstream.is_tls()
                            && claims_channel_binding_support(&reply[5..])
                        {
                            return Err((
                                Some(Code::ChannelBindingUnavailable.error(
                                    "SCRAM channel binding cannot pass through tokengate's TLS termination",
                                )),
                                Outcome::AuthFailed,
                            ));
                        }
                        send(&mut upstream, &reply).await.map_err(|_| {
                            (
                                Some(
                                    Code::UpstreamLost.error(
                                        "upstream closed the connection during authentication",
                                    ),
                                ),
                                Outcome::UpstreamError,
                            )
                        })?;
                    }
                }
                backend::BACKEND_KEY_DATA => {
                    let key = backend::backend_key_data(body).map_err(|_| upstream_garbage(ctx))?;
                    info.server_pid = Some(key.pid);
                    let ours = ctx.cancels.register(key);
                    let message = backend::encode_backend_key_data(&ours);
                    // Recorded before writing, so a failed write still unregisters it.
                    info.client_key = Some(ours);
                    write(&mut client, &message).await?;
                }
                backend::ERROR_RESPONSE => {
                    // The server's own error (wrong password, unknown database...), unchanged.
                    write(&mut client, &frame).await?;
                    return Err((None, Outcome::AuthFailed));
                }
                backend::READY_FOR_QUERY => {
                    write(&mut client, &frame).await?;
                    return Ok(());
                }
                backend::PARAMETER_STATUS => {
                    if let Some((name, value)) =
                        super::readpath::names::parameter_status(body)
                        && info.parameters.len() < 64
                    {
                        info.parameters.push((name.to_vec(), value.to_vec()));
                    }
                    write(&mut client, &frame).await?
                }
                _ => write(&mut client, &frame).await?,
            }
        }
    }
    .await;

    match result {
        Ok(()) => Ok(Established {
            info,
            client,
            client_buf,
            upstream,
            upstream_buf,
        }),
        Err((error, outcome)) => {
            if let Some(key) = &info.client_key {
                ctx.cancels.unregister(key);
            }
            if let Some(e) = error {
                send_error(&mut client, &e).await;
            }
            Err(outcome)
        }
    }
}

pub(super) type StartupFailure = (Option<ErrorFields>, Outcome);

pub(super) fn timeout_error() -> StartupFailure {
    (
        Some(Code::StartupTimeout.error("startup and authentication did not complete in time")),
        Outcome::StartupTimeout,
    )
}

fn upstream_stalled(ctx: &Context) -> StartupFailure {
    ctx.metrics.upstream_errors_total.inc();
    (
        Some(Code::UpstreamTimeout.error(format!(
            "upstream {} did not answer during startup within startup_timeout",
            ctx.connector.address()
        ))),
        Outcome::UpstreamError,
    )
}

/// Answers a connection tokengate will not serve (e.g. over `max_client_connections`) the
/// way PostgreSQL does: after transport negotiation and the StartupMessage, with `error`.
/// Cancel requests on such a connection are still forwarded.
pub async fn refuse(
    ctx: &Context,
    tcp: TcpStream,
    error: ErrorFields,
    within: Duration,
) -> Outcome {
    let deadline = Instant::now() + within.min(ctx.config.startup_timeout);
    match negotiate(ctx, tcp, deadline).await {
        Ok((mut client, _, _)) => {
            send_error(&mut client, &error).await;
            Outcome::Refused
        }
        Err(outcome) => outcome,
    }
}

fn malformed(what: &str) -> ErrorFields {
    Code::MalformedMessage.error(what)
}

pub(super) fn upstream_garbage(ctx: &Context) -> StartupFailure {
    ctx.metrics.upstream_errors_total.inc();
    (
        Some(Code::UpstreamLost.error(format!(
            "upstream {} sent a malformed message during startup",
            ctx.connector.address()
        ))),
        Outcome::UpstreamError,
    )
}

/// Writes to the client and flushes: TLS streams keep encrypted records buffered otherwise.
pub(super) async fn write(client: &mut Conn, bytes: &[u8]) -> Result<(), StartupFailure> {
    send(client, bytes)
        .await
        .map_err(|_| (None, Outcome::ClientGone))
}

async fn send(conn: &mut Conn, bytes: &[u8]) -> std::io::Result<()> {
    conn.write_all(bytes).await?;
    conn.flush().await
}

/// Authentication requests the client must answer: cleartext (3), MD5 (5), GSS (7, 8), SSPI
/// (9), SASL (10) and SASLContinue (11). SASLFinal (12) and Ok (0) need no answer.
fn expects_client_response(code: i32) -> bool {
    matches!(code, 3 | 5 | 7 | 8 | 9 | 10 | 11)
}

/// True when a SASLInitialResponse carries the gs2 flag `y` ("I support channel binding but
/// think the server does not"). Over a TLS upstream, PostgreSQL rejects that as a downgrade,
/// and the flag is covered by the SCRAM proof, so it cannot be rewritten.
fn claims_channel_binding_support(body: &[u8]) -> bool {
    let mut r = crate::wire::Reader::new(body, "SASLInitialResponse");
    let (Ok(_mechanism), Ok(Some(data))) = (r.cstr(), r.value()) else {
        return false;
    };
    data.starts_with(b"y,")
}

/// Best effort: the client may already be gone.
pub async fn send_error(conn: &mut Conn, error: &ErrorFields) {
    let _ = conn.write_all(&error.encode()).await;
    let _ = conn.flush().await;
}

pub(super) enum FrameError {
    Io(Io),
    Wire(crate::wire::WireError),
}

/// Reads one whole tagged frame (tag + length + body) into a fresh buffer.
pub(super) async fn read_frame(
    conn: &mut Conn,
    buf: &mut BytesMut,
    max: usize,
    deadline: Instant,
) -> Result<BytesMut, FrameError> {
    loop {
        if let Some(h) = peek_header(buf, max).map_err(FrameError::Wire)?
            && buf.len() >= h.frame_len
        {
            return Ok(buf.split_to(h.frame_len));
        }
        buf.reserve(4096);
        match timeout_at(deadline, conn.read_buf(buf)).await {
            Err(_) => return Err(FrameError::Io(Io::Timeout)),
            Ok(Ok(0)) => return Err(FrameError::Io(Io::Eof)),
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(FrameError::Io(Io::Failed)),
        }
    }
}

/// Negotiating: handles SSLRequest, GSSENCRequest, direct TLS and CancelRequest until the
/// StartupMessage arrives. Returns it with its raw bytes, forwarded unchanged.
async fn negotiate(
    ctx: &Context,
    tcp: TcpStream,
    deadline: Instant,
) -> Result<(Conn, StartupMessage, Vec<u8>), Outcome> {
    let mut conn = Conn::Plain(tcp);
    let mut tls_done = false;
    let mut gss_done = false;

    // PostgreSQL 17 direct TLS: the client opens with a TLS ClientHello instead of SSLRequest.
    if let Conn::Plain(tcp) = &conn {
        let mut first = [0u8; 1];
        match timeout_at(deadline, tcp.peek(&mut first)).await {
            Err(_) => return Err(Outcome::StartupTimeout),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(Outcome::ClientGone),
            Ok(Ok(_)) => {}
        }
        if first[0] == TLS_HANDSHAKE_BYTE {
            conn = accept_tls(ctx, conn, deadline, true).await?;
            tls_done = true;
        }
    }

    loop {
        let mut len_bytes = [0u8; 4];
        match timeout_at(deadline, conn.read_exact(&mut len_bytes)).await {
            Err(_) => return Err(Outcome::StartupTimeout),
            Ok(Err(_)) => return Err(Outcome::ClientGone),
            Ok(Ok(_)) => {}
        }
        let len = u32::from_be_bytes(len_bytes) as usize;
        if !(8..=MAX_STARTUP_PACKET).contains(&len) {
            send_error(
                &mut conn,
                &malformed(&format!("invalid startup packet length {len}")),
            )
            .await;
            return Err(Outcome::ProtocolError);
        }
        let mut raw = vec![0u8; len];
        raw[..4].copy_from_slice(&len_bytes);
        match timeout_at(deadline, conn.read_exact(&mut raw[4..])).await {
            Err(_) => return Err(Outcome::StartupTimeout),
            Ok(Err(_)) => return Err(Outcome::ClientGone),
            Ok(Ok(_)) => {}
        }
        let packet = match packets::parse_startup_packet(&raw[4..]) {
            Ok(p) => p,
            Err(e) => {
                send_error(&mut conn, &malformed(&e.to_string())).await;
                return Err(Outcome::ProtocolError);
            }
        };
        match packet {
            StartupPacket::Ssl if !tls_done && ctx.client_tls.is_some() => {
                answer(&mut conn, b'S').await?;
                conn = accept_tls(ctx, conn, deadline, false).await?;
                tls_done = true;
            }
            StartupPacket::Ssl if !tls_done => answer(&mut conn, b'N').await?,
            StartupPacket::GssEnc if !gss_done => {
                answer(&mut conn, b'N').await?;
                gss_done = true;
            }
            StartupPacket::Ssl | StartupPacket::GssEnc => {
                send_error(&mut conn, &malformed("duplicate encryption request")).await;
                return Err(Outcome::ProtocolError);
            }
            StartupPacket::Cancel(key) => {
                forward_cancel(ctx, &key).await;
                return Err(Outcome::Cancel);
            }
            StartupPacket::Startup(m) => return Ok((conn, m, raw)),
        }
    }
}

async fn answer(conn: &mut Conn, byte: u8) -> Result<(), Outcome> {
    send(conn, &[byte]).await.map_err(|_| Outcome::ClientGone)
}

async fn accept_tls(
    ctx: &Context,
    conn: Conn,
    deadline: Instant,
    direct: bool,
) -> Result<Conn, Outcome> {
    let (Some(acceptor), Conn::Plain(tcp)) = (&ctx.client_tls, conn) else {
        // Direct TLS to a listener without TLS: nothing sensible can be said in plaintext.
        return Err(Outcome::TlsError);
    };
    let tls = match timeout_at(deadline, acceptor.accept(tcp)).await {
        Err(_) => return Err(Outcome::StartupTimeout),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "client TLS handshake failed");
            return Err(Outcome::TlsError);
        }
        Ok(Ok(t)) => t,
    };
    // Direct TLS is only defined with ALPN "postgresql" (PostgreSQL 17), which guards against
    // cross-protocol attacks; PostgreSQL closes such connections too.
    if direct && tls.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
        return Err(Outcome::TlsError);
    }
    Ok(Conn::ServerTls(Box::new(tls)))
}

/// Forwards a client's CancelRequest to the upstream backend it belongs to. Unknown keys are
/// dropped silently, as PostgreSQL does, so probing reveals nothing.
async fn forward_cancel(ctx: &Context, presented: &packets::CancelKey) {
    let Some(upstream_key) = ctx.cancels.resolve(presented) else {
        tracing::debug!(
            pid = presented.pid,
            "cancel request with unknown key dropped"
        );
        return;
    };
    if let Err(e) = ctx.connector.cancel(&upstream_key).await {
        ctx.metrics.upstream_errors_total.inc();
        tracing::warn!(error = %e, "forwarding cancel request failed");
    }
}
