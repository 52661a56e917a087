//! Sockets and TLS for both legs. [`Conn`] is a client or upstream connection that may be TLS;
//! its halves let the two relay pumps read and write independently.
pub mod direct;
pub mod pg_error;
pub mod tls;
pub mod upstream;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;
type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// The kernel buffer tokengate allows on the upload path (client → upstream), per socket:
/// the receive buffer of a client connection and the send buffer of an upstream one. Linux
/// otherwise grows both to many MiB, so a client could push megabytes into tokengate that the
/// server has not asked for; a driver that watches for the server's error while it streams
/// (asyncpg's executemany) would then see the error later than it does directly. The
/// download direction keeps the kernel's autotuning. See the relay's module docs.
pub const UPLOAD_SOCKET_BUFFER: usize = 64 * 1024;

/// Which side of tokengate a socket faces.
#[derive(Debug, Clone, Copy)]
pub enum Leg {
    Client,
    Upstream,
}

/// Caps the upload-path kernel buffer of `tcp` (best effort: a refusal leaves the default).
pub fn bound_upload_buffer(tcp: &TcpStream, leg: Leg) {
    let sock = socket2::SockRef::from(tcp);
    let _ = match leg {
        Leg::Client => sock.set_recv_buffer_size(UPLOAD_SOCKET_BUFFER),
        Leg::Upstream => sock.set_send_buffer_size(UPLOAD_SOCKET_BUFFER),
    };
}

/// A connection on either leg.
pub enum Conn {
    Plain(TcpStream),
    /// Client leg, TLS terminated by tokengate.
    ServerTls(Box<ServerTls>),
    /// Upstream leg, TLS originated by tokengate.
    ClientTls(Box<ClientTls>),
}

impl Conn {
    pub fn is_tls(&self) -> bool {
        !matches!(self, Conn::Plain(_))
    }

    /// Splits into halves. Plain TCP splits without a lock; TLS needs tokio's locked split.
    pub fn into_split(self) -> (ConnRead, ConnWrite) {
        match self {
            Conn::Plain(s) => {
                let (r, w) = s.into_split();
                (ConnRead::Plain(r), ConnWrite::Plain(w))
            }
            Conn::ServerTls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ConnRead::ServerTls(r), ConnWrite::ServerTls(w))
            }
            Conn::ClientTls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ConnRead::ClientTls(r), ConnWrite::ClientTls(w))
            }
        }
    }
}

pub enum ConnRead {
    Plain(OwnedReadHalf),
    ServerTls(tokio::io::ReadHalf<ServerTls>),
    ClientTls(tokio::io::ReadHalf<ClientTls>),
}

pub enum ConnWrite {
    Plain(OwnedWriteHalf),
    ServerTls(tokio::io::WriteHalf<ServerTls>),
    ClientTls(tokio::io::WriteHalf<ClientTls>),
}

macro_rules! dispatch {
    ($self:expr, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Self::Plain($s) => $e,
            Self::ServerTls($s) => $e,
            Self::ClientTls($s) => $e,
        }
    };
}

/// The read and write impls for the stream types: each variant forwards to its inner stream.
macro_rules! impl_async_read {
    ($t:ty) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                dispatch!(self, s => Pin::new(s).poll_read(cx, buf))
            }
        }
    };
}

macro_rules! impl_async_write {
    ($t:ty) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                dispatch!(self, s => Pin::new(s).poll_write(cx, buf))
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                dispatch!(self, s => Pin::new(s).poll_flush(cx))
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                dispatch!(self, s => Pin::new(s).poll_shutdown(cx))
            }
        }
    };
}

impl_async_read!(Conn);
impl_async_write!(Conn);
impl_async_read!(ConnRead);
impl_async_write!(ConnWrite);
