//! No stalls with TLS on either leg: every batch the relay writes is flushed, so the last TLS
//! records of a pipelined burst or a large result never wait in tokengate for a write that
//! does not come. Each test bounds its wait, so a stall is a failure, not a hang.
use crate::harness::*;
use std::time::Duration;
use tokengate::config::Upstream;

fn tls_upstream() -> Upstream {
    Upstream::parse(&format!(
        "postgres://127.0.0.1:{}?sslmode=require",
        cluster().port()
    ))
    .unwrap()
}

fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    frame(b'Q', &body)
}

/// Reads `n` ReadyForQuery messages; returns the DataRow bodies seen.
async fn results(raw: &mut Raw, n: usize) -> Vec<Vec<u8>> {
    let mut rows = Vec::new();
    for _ in 0..n {
        for m in raw.until_ready().await {
            assert_ne!(m.tag, b'E', "{:?}", m.field(b'M'));
            if m.tag == b'D' {
                rows.push(m.body);
            }
        }
    }
    rows
}

/// The upstream leg is TLS and the backend reads slowly (each statement sleeps), so the socket
/// to it is full when the last bytes of the pipeline are written. Before the flush, those bytes
/// stayed encrypted in tokengate's TLS buffer and the backend waited for them forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_burst_over_a_tls_upstream_completes() {
    let proxy = proxy_with(|c| c.upstream = tls_upstream()).await;
    let (mut raw, msgs) = Raw::login(proxy.addr, "trust_user", &[]).await;
    assert!(msgs.iter().any(|m| m.tag == b'Z'));
    let payload = "x".repeat(1 << 20);
    let n = 16;
    let burst: Vec<u8> = (0..n)
        .flat_map(|i| {
            query(&format!(
                "SELECT {i}, pg_sleep(0.05), length('{payload}') FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl"
            ))
        })
        .collect();
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        raw.send(&burst).await;
        results(&mut raw, n).await
    })
    .await
    .expect("the session stalled: the last pipelined bytes never reached the server");
    assert_eq!(
        done.len(),
        n,
        "one row per statement, each over TLS upstream"
    );
    let last = String::from_utf8_lossy(&done[n - 1]);
    assert!(last.contains("1048576"), "{last}");
}

/// The client leg is TLS and the client reads more slowly than tokengate writes. A guard for
/// the download direction: with the kernel's autotuned send buffer, the last small write
/// usually fits when the socket reports space, so this passes without the flush too; the
/// upload test above is the one that reproduces the stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_result_over_a_tls_client_leg_completes() {
    use tokio::io::AsyncReadExt;
    let files = cluster().tls_files();
    let proxy = proxy_with(|c| {
        c.tls = Some(files);
        c.upstream = tls_upstream();
    })
    .await;
    let tls = tokengate::net::tls::client_config_trusting(&cluster().ca()).unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    let conn = tokengate::net::upstream::negotiate_tls(
        socket.connect(proxy.addr).await.unwrap(),
        tls,
        "localhost",
        true,
    )
    .await
    .unwrap();
    let mut raw = Raw::over(conn);
    raw.send(&startup_packet(
        196_608,
        &[("user", "trust_user"), ("database", DB)],
    ))
    .await;
    assert!(raw.until_ready().await.iter().any(|m| m.tag == b'Z'));
    let size = 4 << 20;
    raw.send(&query(&format!("SELECT repeat('x', {size})")))
        .await;
    // A slow reader: 16 KiB per millisecond at most.
    let mut received = Vec::new();
    let read_all = async {
        let mut chunk = vec![0u8; 16 * 1024];
        while !received.ends_with(b"Z\0\0\0\x05I") {
            let n = raw.conn.read(&mut chunk).await.unwrap();
            assert!(n > 0, "tokengate closed the connection");
            received.extend_from_slice(&chunk[..n]);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read_all)
        .await
        .expect("the session stalled: the end of the result never reached the client");
    // RowDescription, then the DataRow: tag, length, column count, value length, value.
    let d = received.iter().position(|&b| b == b'D').unwrap();
    assert!(received.len() > d + 11 + size);
    assert!(received[d + 11..d + 11 + size].iter().all(|&b| b == b'x'));
}
