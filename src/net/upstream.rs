//! Opening connections to the upstream PostgreSQL: TCP with a timeout, then SSLRequest and a
//! TLS handshake as `sslmode` demands. Also used to forward cancel requests.
use super::Conn;
use crate::config::{SslMode, Upstream};
use crate::wire::startup::{CancelKey, SSL_REQUEST_CODE};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not connect to upstream {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to upstream {addr} after {secs}s")]
    Timeout { addr: String, secs: u64 },
    #[error("upstream {addr} does not accept TLS, but sslmode={mode} requires it")]
    TlsRefused { addr: String, mode: String },
    #[error("TLS handshake with upstream {addr} failed: {reason}")]
    Handshake { addr: String, reason: String },
    #[error("upstream {addr} answered the SSLRequest with an unexpected byte 0x{byte:02x}")]
    BadSslAnswer { addr: String, byte: u8 },
}

/// Everything needed to open upstream connections, prepared once at startup.
#[derive(Clone)]
pub struct Connector {
    pub upstream: Upstream,
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
    keepalive: Option<crate::config::Keepalive>,
}

impl Connector {
    pub fn new(upstream: Upstream, tls: Option<Arc<ClientConfig>>, timeout: Duration) -> Self {
        Connector {
            upstream,
            tls,
            timeout,
            keepalive: None,
        }
    }

    /// TCP keepalive on every connection opened (a dead upstream host is then noticed even
    /// while a session waits for a reply).
    pub fn with_keepalive(mut self, keepalive: Option<crate::config::Keepalive>) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// The connect timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn address(&self) -> String {
        self.upstream.address()
    }

    /// Opens a connection, negotiating TLS per `sslmode`. The returned stream is ready for a
    /// StartupMessage (or a CancelRequest).
    pub async fn connect(&self) -> Result<Conn, UpstreamError> {
        let addr = self.address();
        let secs = self.timeout.as_secs();
        match tokio::time::timeout(self.timeout, self.connect_inner()).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout { addr, secs }),
        }
    }

    async fn connect_inner(&self) -> Result<Conn, UpstreamError> {
        let addr = self.address();
        let tcp = TcpStream::connect((self.upstream.host.as_str(), self.upstream.port))
            .await
            .map_err(|source| UpstreamError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        if let Some(keepalive) = &self.keepalive {
            let _ = keepalive.apply_upstream(&tcp);
        }
        super::bound_upload_buffer(&tcp, super::Leg::Upstream);
        let Some(tls) = &self.tls else {
            return Ok(Conn::Plain(tcp));
        };
        let required = self.upstream.sslmode != SslMode::Prefer;
        negotiate_tls(tcp, tls.clone(), &self.upstream.host, required)
            .await
            .map_err(|e| match e {
                NegotiateError::Refused => UpstreamError::TlsRefused {
                    addr,
                    mode: format!("{:?}", self.upstream.sslmode).to_lowercase(),
                },
                NegotiateError::Io(source) => UpstreamError::Connect { addr, source },
                NegotiateError::BadAnswer(byte) => UpstreamError::BadSslAnswer { addr, byte },
                NegotiateError::Handshake(reason) => UpstreamError::Handshake { addr, reason },
            })
    }

    /// Health probe: proves a PostgreSQL answers, not just that a port accepts. Opens a
    /// connection as `sslmode` says. When `sslmode` asks for TLS, connecting already exchanged
    /// an SSLRequest (answered 'S' or, for `prefer`, 'N'); otherwise the probe sends one and
    /// expects 'S' or 'N'. Never a second SSLRequest on one connection: PostgreSQL answers
    /// that with `FATAL: unsupported frontend protocol 1234.5679`. Closing before a
    /// StartupMessage leaves nothing in PostgreSQL's log.
    pub async fn probe(&self) -> bool {
        let check = async {
            match self.connect().await {
                Ok(Conn::Plain(mut tcp)) if self.tls.is_none() => {
                    let mut req = 8u32.to_be_bytes().to_vec();
                    req.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
                    let mut answer = [0u8; 1];
                    tcp.write_all(&req).await.is_ok()
                        && tcp.read_exact(&mut answer).await.is_ok()
                        && matches!(answer[0], b'S' | b'N')
                }
                Ok(_) => true,
                Err(_) => false,
            }
        };
        tokio::time::timeout(self.timeout, check)
            .await
            .unwrap_or(false)
    }

    /// Sends a CancelRequest for `key` and waits for the server to close the connection.
    pub async fn cancel(&self, key: &CancelKey) -> Result<(), UpstreamError> {
        let mut conn = self.connect().await?;
        let addr = self.address();
        let io = |source| UpstreamError::Connect {
            addr: addr.clone(),
            source,
        };
        conn.write_all(&key.cancel_request()).await.map_err(io)?;
        conn.flush().await.map_err(io)?;
        // The server closes once it has processed the request; wait for that, bounded.
        let mut sink = [0u8; 64];
        let _ = tokio::time::timeout(self.timeout, conn.read(&mut sink)).await;
        Ok(())
    }
}

#[derive(Debug)]
pub enum NegotiateError {
    Refused,
    BadAnswer(u8),
    Io(std::io::Error),
    Handshake(String),
}

impl std::fmt::Display for NegotiateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NegotiateError::Refused => write!(f, "server does not accept TLS"),
            NegotiateError::BadAnswer(b) => write!(f, "unexpected SSLRequest answer 0x{b:02x}"),
            NegotiateError::Io(e) => write!(f, "{e}"),
            NegotiateError::Handshake(r) => write!(f, "TLS handshake failed: {r}"),
        }
    }
}

/// Sends an SSLRequest on `tcp` and performs the TLS handshake if the server agrees. With
/// `required == false` a refusal falls back to plain TCP (sslmode=prefer).
pub async fn negotiate_tls(
    mut tcp: TcpStream,
    config: Arc<ClientConfig>,
    host: &str,
    required: bool,
) -> Result<Conn, NegotiateError> {
    let mut req = Vec::with_capacity(8);
    req.extend_from_slice(&8u32.to_be_bytes());
    req.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    tcp.write_all(&req).await.map_err(NegotiateError::Io)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(NegotiateError::Io)?;
    match answer[0] {
        b'S' => {}
        b'N' if !required => return Ok(Conn::Plain(tcp)),
        b'N' => return Err(NegotiateError::Refused),
        other => return Err(NegotiateError::BadAnswer(other)),
    }
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| NegotiateError::Handshake(format!("invalid server name {host:?}: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| NegotiateError::Handshake(e.to_string()))?;
    Ok(Conn::ClientTls(Box::new(tls)))
}
