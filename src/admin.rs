//! The admin HTTP endpoint on its own listener: `/metrics` (Prometheus/OpenMetrics text),
//! `/healthz` (the process is alive) and `/readyz` (the upstream is reachable and tokengate is
//! not draining).
use crate::observe::metrics::Metrics;
use crate::session::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Binds `addr` and serves in the background; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    ctx: Arc<Context>,
    registry: Arc<Registry>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        // One descriptor in reserve: when the process runs out (EMFILE), it is given up so
        // that /healthz and /readyz can still be accepted, then taken back.
        let mut reserve = reserve_fd();
        loop {
            if reserve.is_none() {
                reserve = reserve_fd();
            }
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) if is_out_of_fds(&e) && reserve.is_some() => {
                    reserve = None;
                    continue;
                }
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let ctx = ctx.clone();
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let r = respond(&req, &ctx, &registry);
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
                let io = hyper_util::rt::TokioIo::new(tcp);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    Ok(bound)
}

fn reserve_fd() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// EMFILE (process limit) or ENFILE (system limit).
fn is_out_of_fds(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

fn respond(req: &Request<Incoming>, ctx: &Context, registry: &Registry) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Metrics::render(registry),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" => {
            if ctx.health.draining() {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "draining\n".to_string(),
                )
            } else if !ctx.health.upstream_up() {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("upstream {} unreachable\n", ctx.connector.address()),
                )
            } else {
                (StatusCode::OK, "text/plain", "ready\n".to_string())
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}
