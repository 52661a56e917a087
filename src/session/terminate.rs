//! SCRAM termination during Authenticating (with `auth_query` configured): tokengate answers
//! the upstream's AuthenticationSASL by verifying the client itself against the role's stored
//! secret, then proves the role upstream with the ClientKey from the client's proof. The
//! client never talks SCRAM with the upstream, so its channel binding (SCRAM-SHA-256-PLUS,
//! libpq's default `channel_binding=prefer`) binds to tokengate's certificate, and the
//! upstream leg binds to the upstream's certificate.
//!
//! ```text
//! client            tokengate                                 upstream
//!                      ◀── AuthenticationSASL (offered mechanisms)
//!                      lookup secret (auth_query); unknown → mock secret, fails as 28P01
//!   ◀── SASL [-PLUS]
//!   ── initial ──▶     ServerExchange::start
//!   ◀── Continue
//!   ── final ──▶       ServerExchange::finish → ClientKey (or 28P01)
//!                      ── SASLInitialResponse ──▶
//!                      ◀── Continue (salt, iterations must match the secret)
//!                      ── SASLResponse (proof from ClientKey) ──▶
//!                      ◀── Final (server signature checked with ServerKey)
//!   ◀── Final (tokengate's server signature), then AuthenticationOk... relayed
//! ```
use super::startup::{
    FrameError, Io, SessionInfo, StartupFailure, read_frame, timeout_error, write,
};
use super::{Context, Outcome};
use crate::auth::lookup::AuthLookup;
use crate::auth::messages::{self, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL, SASL_RESPONSE};
use crate::auth::scram::{ClientExchange, ClientKey, ScramError, ScramSecret, ServerExchange};
use crate::errors::Code;
use crate::net::Conn;
use crate::wire::backend::{self, ErrorFields};
use crate::wire::frontend;
use bytes::BytesMut;
use tokio::time::Instant;

/// Upstream messages during startup are small.
const MAX_UPSTREAM_AUTH_FRAME: usize = 1 << 16;

pub enum Terminated {
    /// Both exchanges succeeded; the upstream's next message (AuthenticationOk) follows.
    Done,
    /// The upstream offers no SCRAM-SHA-256 mechanism tokengate can use: relay its request
    /// as usual.
    PassThrough,
}

/// The two legs of one login, borrowed from the handshake.
pub struct Legs<'a> {
    pub client: &'a mut Conn,
    pub client_buf: &'a mut BytesMut,
    pub upstream: &'a mut Conn,
    pub upstream_buf: &'a mut BytesMut,
    pub deadline: Instant,
}

/// Runs SCRAM termination for the upstream's AuthenticationSASL `body`.
pub async fn scram(
    ctx: &Context,
    lookup: &AuthLookup,
    info: &SessionInfo,
    body: &[u8],
    legs: Legs<'_>,
) -> Result<Terminated, StartupFailure> {
    let offered = messages::mechanisms(body).map_err(|_| upstream_garbage(ctx))?;
    let upstream_hash = match &*legs.upstream {
        Conn::ClientTls(tls) => tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| crate::auth::binding::server_end_point(c)),
        _ => None,
    };
    let Some(mut upstream_exchange) = ClientExchange::new(&offered, upstream_hash) else {
        return Ok(Terminated::PassThrough);
    };
    let looked_up = tokio::time::timeout_at(
        legs.deadline,
        lookup.scram_secret(&info.user, &info.database),
    )
    .await
    .map_err(|_| timeout_error())?;
    let (secret, known) = match looked_up {
        Ok(Some(s)) => (s, true),
        Ok(None) => {
            // As PostgreSQL does for a role that does not exist: a complete exchange that
            // fails at the end like a wrong password, so probing cannot enumerate roles.
            tracing::info!(user = %info.user, "auth_query returned no SCRAM secret for the role; the login will fail");
            (lookup.mock_secret(&info.user), false)
        }
        Err(e) => {
            tracing::warn!(user = %info.user, error = %e, "auth_query failed");
            return Err((
                Some(Code::AuthLookupFailed.error(format!(
                    "cannot look up the SCRAM secret of role \"{}\"",
                    info.user
                ))),
                Outcome::AuthFailed,
            ));
        }
    };
    let Legs {
        client,
        client_buf,
        upstream,
        upstream_buf,
        deadline,
    } = legs;

    // Client leg: tokengate is the server.
    let binding = match &*client {
        Conn::ServerTls(_) => ctx.client_binding.as_deref(),
        _ => None,
    };
    let mechanisms = ServerExchange::mechanisms(binding.is_some());
    write(client, &messages::sasl(&mechanisms)).await?;
    let initial = read_client(ctx, client, client_buf, deadline).await?;
    let (mechanism, data) = messages::parse_initial_response(&initial[5..])
        .map_err(|e| scram_failure(info, ScramError::Malformed(wire_what(&e))))?;
    let exchange = ServerExchange::start(&mechanism, data, binding.is_some(), &secret)
        .map_err(|e| scram_failure(info, e))?;
    write(
        client,
        &messages::sasl_step(AUTH_SASL_CONTINUE, exchange.server_first()),
    )
    .await?;
    let last = read_client(ctx, client, client_buf, deadline).await?;
    let (server_final, client_key) = exchange
        .finish(&last[5..], binding, &secret)
        .map_err(|e| scram_failure(info, e))?;
    if !known {
        return Err(scram_failure(info, ScramError::WrongProof));
    }

    // Upstream leg: tokengate is the client, proving the role with its ClientKey.
    prove_upstream(
        ctx,
        client,
        upstream,
        upstream_buf,
        deadline,
        &mut upstream_exchange,
        &secret,
        &client_key,
    )
    .await?;
    drop(client_key);
    drop(secret);
    write(client, &messages::sasl_step(AUTH_SASL_FINAL, &server_final)).await?;
    Ok(Terminated::Done)
}

#[allow(clippy::too_many_arguments)]
async fn prove_upstream(
    ctx: &Context,
    client: &mut Conn,
    upstream: &mut Conn,
    upstream_buf: &mut BytesMut,
    deadline: Instant,
    exchange: &mut ClientExchange,
    secret: &ScramSecret,
    client_key: &ClientKey,
) -> Result<(), StartupFailure> {
    send_upstream(
        ctx,
        upstream,
        &messages::initial_response(exchange.mechanism(), &exchange.client_first()),
    )
    .await?;
    let frame = read_upstream_step(ctx, client, upstream, upstream_buf, deadline).await?;
    let server_first = messages::server_step(&frame[5..], AUTH_SASL_CONTINUE)
        .map_err(|_| upstream_garbage(ctx))?
        .ok_or_else(|| upstream_garbage(ctx))?;
    let reply = exchange
        .client_final(server_first, secret, client_key)
        .map_err(|e| mismatch(ctx, e))?;
    send_upstream(ctx, upstream, &messages::response(&reply)).await?;
    let frame = read_upstream_step(ctx, client, upstream, upstream_buf, deadline).await?;
    let server_final = messages::server_step(&frame[5..], AUTH_SASL_FINAL)
        .map_err(|_| upstream_garbage(ctx))?
        .ok_or_else(|| upstream_garbage(ctx))?;
    exchange
        .verify_server_final(server_final)
        .map_err(|e| mismatch(ctx, e))
}

/// The next upstream Authentication message. An ErrorResponse (the server refused the role,
/// e.g. a password changed between lookup and login) goes to the client unchanged.
async fn read_upstream_step(
    ctx: &Context,
    client: &mut Conn,
    upstream: &mut Conn,
    buf: &mut BytesMut,
    deadline: Instant,
) -> Result<BytesMut, StartupFailure> {
    let frame = match read_frame(upstream, buf, MAX_UPSTREAM_AUTH_FRAME, deadline).await {
        Ok(f) => f,
        Err(FrameError::Io(Io::Timeout)) => return Err(timeout_error()),
        Err(_) => return Err(upstream_lost(ctx)),
    };
    match frame[0] {
        backend::AUTHENTICATION => Ok(frame),
        backend::ERROR_RESPONSE => {
            write(client, &frame).await?;
            Err((None, Outcome::AuthFailed))
        }
        _ => Err(upstream_garbage(ctx)),
    }
}

async fn send_upstream(
    ctx: &Context,
    upstream: &mut Conn,
    bytes: &[u8],
) -> Result<(), StartupFailure> {
    use tokio::io::AsyncWriteExt;
    let sent = async {
        upstream.write_all(bytes).await?;
        upstream.flush().await
    };
    sent.await.map_err(|_| upstream_lost(ctx))
}

/// A SASL message from the client.
async fn read_client(
    ctx: &Context,
    client: &mut Conn,
    buf: &mut BytesMut,
    deadline: Instant,
) -> Result<BytesMut, StartupFailure> {
    let frame = match read_frame(
        client,
        buf,
        ctx.config.max_message_bytes.min(1 << 16),
        deadline,
    )
    .await
    {
        Ok(f) => f,
        Err(FrameError::Io(Io::Timeout)) => return Err(timeout_error()),
        Err(FrameError::Io(_)) => return Err((None, Outcome::ClientGone)),
        Err(FrameError::Wire(e)) => {
            return Err((
                Some(Code::MalformedMessage.error(e)),
                Outcome::ProtocolError,
            ));
        }
    };
    match frame[0] {
        SASL_RESPONSE => Ok(frame),
        frontend::TERMINATE => Err((None, Outcome::ClientGone)),
        _ => Err((
            Some(Code::MalformedMessage.error("expected a SASL response message")),
            Outcome::ProtocolError,
        )),
    }
}

fn wire_what(e: &crate::wire::WireError) -> &'static str {
    match e {
        crate::wire::WireError::Malformed(what) => what,
        _ => "SASLInitialResponse",
    }
}

/// The client failed SCRAM. A wrong password gets PostgreSQL's own error, word for word, so
/// drivers react as they do directly; protocol problems get TG026.
fn scram_failure(info: &SessionInfo, e: ScramError) -> StartupFailure {
    match e {
        ScramError::WrongProof => (
            Some(ErrorFields::fatal(
                "28P01",
                format!("password authentication failed for user \"{}\"", info.user),
            )),
            Outcome::AuthFailed,
        ),
        other => (
            Some(Code::ScramNegotiation.error(other)),
            Outcome::AuthFailed,
        ),
    }
}

fn mismatch(ctx: &Context, e: ScramError) -> StartupFailure {
    tracing::warn!(upstream = %ctx.connector.address(), error = %e, "upstream SCRAM exchange does not match the looked-up secret");
    (
        Some(Code::UpstreamAuthMismatch.error(e)),
        Outcome::AuthFailed,
    )
}

fn upstream_lost(ctx: &Context) -> StartupFailure {
    ctx.metrics.upstream_errors_total.inc();
    (
        Some(Code::UpstreamLost.error(format!(
            "upstream {} closed the connection during authentication",
            ctx.connector.address()
        ))),
        Outcome::UpstreamError,
    )
}

fn upstream_garbage(ctx: &Context) -> StartupFailure {
    super::startup::upstream_garbage(ctx)
}
