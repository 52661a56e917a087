//! Bad input, upstream outages, replication refusal, shutdown and metrics.
use crate::harness::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokengate::config::Upstream;

async fn assert_fatal(raw: &mut Raw, sqlstate: &str, code: &str) {
    let m = raw.recv().await.expect("an ErrorResponse");
    assert_eq!(m.tag, b'E', "{m:?}");
    assert_eq!(m.field(b'S').as_deref(), Some("FATAL"));
    assert_eq!(m.field(b'C').as_deref(), Some(sqlstate));
    assert!(m.field(b'M').unwrap().contains(code), "{m:?}");
    assert!(m.field(b'H').is_some(), "a hint");
    assert_eq!(raw.recv().await, None, "the session is closed");
}

#[tokio::test]
async fn malformed_messages_end_only_their_session() {
    let proxy = proxy_with(|c| c.max_message_bytes = 4096).await;
    let (_, healthy) = pair(&proxy, "scram_user", "scram-pw").await;
    let bad_inputs: Vec<Vec<u8>> = vec![
        b"Q\0\0\0\x02".to_vec(),          // length shorter than itself
        frame(b'z', b"what is this"),     // unknown message type
        frame(b'Q', &vec![b'x'; 10_000]), // over max_message_bytes
    ];
    for (i, bad) in bad_inputs.iter().enumerate() {
        let (mut raw, _) = Raw::login(proxy.addr, "trust_user", &[]).await;
        raw.send(bad).await;
        let code = if i == 2 { "TG004" } else { "TG003" };
        assert_fatal(&mut raw, "08P01", code).await;
        let row = healthy.query_one("SELECT 1", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 1);
    }
    let series = "tokengate_connections_total{outcome=\"protocol_error\"}";
    assert_eq!(metric_reaching(&proxy, series, 3.0).await, 3.0);
}

#[tokio::test]
async fn garbage_startup_packets_are_rejected() {
    let proxy = proxy().await;
    for bad in [
        vec![0, 0, 0, 2],       // impossible length
        vec![0, 0, 0x7f, 0xff], // longer than PostgreSQL allows
        [
            vec![0, 0, 0, 12],
            196_608u32.to_be_bytes().to_vec(),
            b"us".to_vec(),
            vec![0, 0],
        ]
        .concat(),
    ] {
        let mut raw = Raw::tcp(proxy.addr).await;
        raw.send(&bad).await;
        assert_fatal(&mut raw, "08P01", "TG003").await;
    }
}

#[tokio::test]
async fn slow_startup_times_out() {
    let proxy = proxy_with(|c| c.startup_timeout = Duration::from_millis(500)).await;
    // Half a startup packet, then silence.
    let mut raw = Raw::tcp(proxy.addr).await;
    raw.send(&[0, 0, 0, 40, 0, 3]).await;
    assert_eq!(raw.recv().await, None, "closed by the startup timeout");
    let series = "tokengate_connections_total{outcome=\"startup_timeout\"}";
    assert_eq!(metric_reaching(&proxy, series, 1.0).await, 1.0);
}

#[tokio::test]
async fn replication_connections_are_refused_unless_enabled() {
    let proxy = proxy().await;
    let mut raw = Raw::tcp(proxy.addr).await;
    raw.send(&startup_packet(
        196_608,
        &[
            ("user", "postgres"),
            ("database", DB),
            ("replication", "true"),
        ],
    ))
    .await;
    assert_fatal(&mut raw, "42501", "TG006").await;

    // Enabled: a physical replication stream flows through as CopyBoth.
    let proxy = proxy_with(|c| c.allow_replication = true).await;
    let mut raw = Raw::tcp(proxy.addr).await;
    raw.send(&startup_packet(
        196_608,
        &[("user", "postgres"), ("replication", "true")],
    ))
    .await;
    let msgs = raw.until_ready().await;
    assert_eq!(msgs.last().unwrap().tag, b'Z', "{msgs:?}");
    let ident = raw.query("IDENTIFY_SYSTEM").await;
    let row = ident
        .iter()
        .find(|m| m.tag == b'D')
        .expect("IDENTIFY_SYSTEM row");
    // Columns: systemid, timeline, xlogpos, dbname. Take xlogpos (third field).
    let mut fields = Vec::new();
    let mut i = 2;
    while i + 4 <= row.body.len() {
        let len = i32::from_be_bytes(row.body[i..i + 4].try_into().unwrap());
        i += 4;
        if len < 0 {
            fields.push(String::new());
            continue;
        }
        fields.push(String::from_utf8_lossy(&row.body[i..i + len as usize]).into_owned());
        i += len as usize;
    }
    let start = format!("START_REPLICATION PHYSICAL {}\0", fields[2]);
    raw.send(&frame(b'Q', start.as_bytes())).await;
    let w = raw.recv().await.unwrap();
    assert_eq!(w.tag, b'W', "CopyBothResponse: {:?}", w.field(b'M'));
    raw.send(&frame(b'c', b"")).await; // CopyDone from the client ends the stream
    let mut saw_done = false;
    while let Some(m) = raw.recv().await {
        if m.tag == b'c' {
            saw_done = true;
        }
        if m.tag == b'Z' {
            break;
        }
    }
    assert!(saw_done, "server answered CopyDone");
}

#[tokio::test]
async fn upstream_outage_is_reported_and_recovered_from() {
    let target = SocketAddr::from(([127, 0, 0, 1], cluster().port()));
    let fwd = Forwarder::start(target).await;
    let proxy = proxy_with(|c| {
        c.upstream = Upstream::parse(&format!("postgres://{}?sslmode=disable", fwd.addr)).unwrap();
        c.connect_timeout = Duration::from_secs(2);
    })
    .await;
    let admin = proxy.admin_addr.unwrap();
    let (_, before) = pair(&proxy, "scram_user", "scram-pw").await;
    assert_eq!(
        before
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    assert_eq!(http_get(admin, "/readyz").await.0, 200);

    fwd.outage();
    // The open session learns its upstream is gone (08006), naming the upstream.
    let err = before.simple_query("SELECT 1").await.unwrap_err();
    let msg = err.to_string();
    assert!(
        err.as_db_error().map(|d| d.code().code()) == Some("08006") || err.is_closed(),
        "{msg}"
    );
    // New sessions get 08001 naming the upstream.
    let err = pg_config(proxy.addr.port(), "scram_user", "scram-pw")
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .unwrap();
    let db = err
        .as_db_error()
        .expect("an ErrorResponse, not a dropped socket");
    assert!(["08001", "08006"].contains(&db.code().code()), "{db:?}");
    assert!(
        db.message().contains(&fwd.addr.to_string()),
        "{}",
        db.message()
    );
    assert!(eventually(10, async || http_get(admin, "/readyz").await.0 == 503).await);

    fwd.restore();
    assert!(eventually(10, async || http_get(admin, "/readyz").await.0 == 200).await);
    let (_, after) = pair(&proxy, "scram_user", "scram-pw").await;
    assert_eq!(
        after
            .query_one("SELECT 2", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );
    let text = metrics_text(&proxy).await;
    assert!(
        metric(&text, "tokengate_upstream_errors_total") >= 1.0,
        "{text}"
    );
}

#[tokio::test]
async fn unreachable_upstream_names_itself() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = proxy_with(|c| {
        c.upstream =
            Upstream::parse(&format!("postgres://127.0.0.1:{port}?sslmode=disable")).unwrap();
    })
    .await;
    let err = pg_config(proxy.addr.port(), "scram_user", "scram-pw")
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .unwrap();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "08001");
    assert!(
        db.message().contains(&format!("127.0.0.1:{port}")),
        "{}",
        db.message()
    );
    assert!(db.hint().is_some());
}

#[tokio::test]
async fn shutdown_drains_then_closes_sessions() {
    let proxy = proxy_with(|c| c.drain_timeout = Duration::from_millis(300)).await;
    let addr = proxy.addr;
    let (mut raw, _) = Raw::login(addr, "trust_user", &[]).await;
    let stopping = tokio::spawn(proxy.shutdown());
    // Idle past the drain period: told why, then closed.
    assert_fatal(&mut raw, "57P01", "TG007").await;
    stopping.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn metrics_cover_the_core_set() {
    let proxy = proxy().await;
    let (_, via) = pair(&proxy, "scram_user", "scram-pw").await;
    for _ in 0..3 {
        via.simple_query("SELECT 1").await.unwrap();
    }
    via.query("SELECT $1::int", &[&5i32]).await.unwrap();
    let text = metrics_text(&proxy).await;
    for name in [
        "tokengate_connections_active",
        "tokengate_connections_total",
        "tokengate_bytes_total{direction=\"client_to_upstream\"}",
        "tokengate_bytes_total{direction=\"upstream_to_client\"}",
        "tokengate_statements_total",
        "tokengate_statement_duration_seconds_bucket",
        "tokengate_upstream_errors_total",
        "tokengate_build_info",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    assert_eq!(metric(&text, "tokengate_connections_active"), 1.0);
    assert!(metric(&text, "tokengate_statements_total") >= 4.0);
    assert!(metric(&text, "tokengate_statement_duration_seconds_count") >= 4.0);
    assert!(
        metric(
            &text,
            "tokengate_bytes_total{direction=\"upstream_to_client\"}"
        ) > 100.0
    );
    let (status, body) = http_get(proxy.admin_addr.unwrap(), "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

/// Under the default `sslmode=prefer` against a PostgreSQL without TLS, the readiness probe
/// stays ready and sends no second SSLRequest (which PostgreSQL logs as
/// `FATAL: unsupported frontend protocol 1234.5679`).
#[tokio::test]
async fn readyz_is_steady_against_a_plain_upstream_with_sslmode_prefer() {
    let pg = tokio::task::spawn_blocking(|| {
        tokengate::embedded_pg::EmbeddedPostgres::start(&tokengate::embedded_pg::PgOptions {
            superuser_password: "pw".into(),
            hba: vec![],
            ssl: None,
            settings: vec![],
        })
    })
    .await
    .unwrap()
    .expect("start a PostgreSQL without TLS");
    let up = Upstream::parse(&format!(
        "postgres://127.0.0.1:{}?sslmode=prefer",
        pg.port()
    ))
    .unwrap();
    let proxy = proxy_with(|c| c.upstream = up).await;
    let admin = proxy.admin_addr.unwrap();
    // Let several probes run (every 2 s); each answer must be ready.
    for _ in 0..6 {
        let (status, body) = http_get(admin, "/readyz").await;
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }
    let log = pg.log();
    assert!(!log.contains("unsupported frontend protocol"), "{log}");
}
