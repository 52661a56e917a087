//! TLS on both legs: termination via SSLRequest and PostgreSQL 17 direct TLS (ALPN), removal of
//! SCRAM-SHA-256-PLUS, and upstream sslmode semantics.
use crate::harness::*;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use tokengate::config::Upstream;
use tokengate::net::Conn;
use tokio::net::TcpStream;

fn upstream(mode: &str) -> Upstream {
    Upstream::parse(&format!(
        "postgres://127.0.0.1:{}?sslmode={mode}&sslrootcert={}",
        cluster().port(),
        cluster().ca().display()
    ))
    .unwrap()
}

#[tokio::test]
async fn client_tls_via_sslrequest_works_with_scram() {
    let tls = cluster().tls_files();
    let proxy = proxy_with(|c| c.tls = Some(tls)).await;
    let client = connect_tls(
        &pg_config(proxy.addr.port(), "scram_user", "scram-pw"),
        proxy.addr,
    )
    .await
    .unwrap();
    let row = client
        .query_one("SELECT 'over tls'::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "over tls");
}

#[tokio::test]
async fn sslrequest_is_declined_without_a_certificate() {
    let proxy = proxy().await;
    let mut raw = Raw::tcp(proxy.addr).await;
    let mut req = 8u32.to_be_bytes().to_vec();
    req.extend_from_slice(&80_877_103u32.to_be_bytes());
    raw.send(&req).await;
    assert_eq!(raw.recv_byte().await, b'N');
}

async fn direct_tls(addr: std::net::SocketAddr, alpn: Option<&[u8]>) -> std::io::Result<Conn> {
    let mut config =
        (*tokengate::net::tls::client_config_trusting(&cluster().ca()).unwrap()).clone();
    config.alpn_protocols = alpn.map(|a| vec![a.to_vec()]).unwrap_or_default();
    let tcp = TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    Ok(Conn::ClientTls(Box::new(tls)))
}

#[tokio::test]
async fn direct_tls_with_alpn_postgresql() {
    let tls = cluster().tls_files();
    let proxy = proxy_with(|c| c.tls = Some(tls)).await;
    let conn = direct_tls(proxy.addr, Some(b"postgresql")).await.unwrap();
    let (client, connection) = pg_config(proxy.addr.port(), "scram_user", "scram-pw")
        .connect_raw(conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client.query_one("SELECT 2 + 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 4);

    // Without ALPN the connection is refused, as PostgreSQL 17 does.
    let refused = match direct_tls(proxy.addr, None).await {
        Err(_) => true,
        Ok(conn) => {
            let mut raw = Raw::over(conn);
            raw.send(&startup_packet(
                196_608,
                &[("user", "trust_user"), ("database", DB)],
            ))
            .await;
            raw.recv().await.is_none()
        }
    };
    assert!(refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_plus_is_not_offered_through_a_terminating_proxy() {
    // Upstream over TLS offers SCRAM-SHA-256-PLUS directly...
    let tls = tokengate::net::tls::client_config_trusting(&cluster().ca()).unwrap();
    let direct = tokengate::net::upstream::negotiate_tls(
        TcpStream::connect(("127.0.0.1", cluster().port()))
            .await
            .unwrap(),
        tls.clone(),
        "localhost",
        true,
    )
    .await
    .unwrap();
    let mut raw = Raw::over(direct);
    raw.send(&startup_packet(
        196_608,
        &[("user", "scram_user"), ("database", DB)],
    ))
    .await;
    let sasl = raw.recv().await.unwrap();
    assert!(String::from_utf8_lossy(&sasl.body).contains("SCRAM-SHA-256-PLUS"));

    // ...but not through tokengate terminating the client leg.
    let files = cluster().tls_files();
    let proxy = proxy_with(|c| {
        c.tls = Some(files);
        c.upstream = upstream("require");
    })
    .await;
    let conn = tokengate::net::upstream::negotiate_tls(
        TcpStream::connect(proxy.addr).await.unwrap(),
        tls,
        "localhost",
        true,
    )
    .await
    .unwrap();
    let mut raw = Raw::over(conn);
    raw.send(&startup_packet(
        196_608,
        &[("user", "scram_user"), ("database", DB)],
    ))
    .await;
    let sasl = raw.recv().await.unwrap();
    assert_eq!(sasl.tag, b'R');
    assert_eq!(&sasl.body[4..], b"SCRAM-SHA-256\0\0");

    // libpq with channel_binding=disable logs in over TLS on both legs...
    let port = proxy.addr.port();
    let sql = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let run = |binding: &'static str| {
        tokio::task::block_in_place(|| {
            psql(
                port,
                "scram_user",
                "scram-pw",
                &["-At", "-c", sql],
                &[("PGSSLMODE", "require"), ("PGCHANNELBINDING", binding)],
            )
        })
    };
    let (ok, out, err) = run("disable");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "t", "the upstream leg is TLS too");
    // ...while its default (prefer) gets a clear explanation instead of PostgreSQL's
    // "channel binding negotiation error", which would otherwise end the login.
    let (ok, _, err) = run("prefer");
    assert!(!ok);
    assert!(
        err.contains("TG009") && err.contains("channel_binding=disable"),
        "{err}"
    );

    // With a plain upstream leg (e.g. on a trusted network) libpq's default just works.
    let files = cluster().tls_files();
    let plain_upstream = proxy_with(|c| c.tls = Some(files)).await;
    let port = plain_upstream.addr.port();
    let (ok, out, err) = tokio::task::block_in_place(|| {
        psql(
            port,
            "scram_user",
            "scram-pw",
            &["-At", "-c", "SELECT 'ok'"],
            &[("PGSSLMODE", "require"), ("PGCHANNELBINDING", "prefer")],
        )
    });
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "ok");
}

#[tokio::test]
async fn upstream_verify_full_reaches_a_hostssl_only_role() {
    let proxy = proxy_with(|c| c.upstream = upstream("verify-full")).await;
    let via = connect(&pg_config(proxy.addr.port(), "tls_user", "tls-pw")).await;
    let row = via
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
}

#[tokio::test]
async fn upstream_sslmode_disable_gets_the_servers_refusal() {
    let proxy = proxy_with(|c| c.upstream = upstream("disable")).await;
    let err = pg_config(proxy.addr.port(), "tls_user", "tls-pw")
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .unwrap();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "28000");
    assert!(db.message().contains("no encryption"), "{}", db.message());
}

#[tokio::test]
async fn upstream_verify_full_rejects_an_untrusted_server() {
    // A CA that did not sign the server certificate.
    let other = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&key).unwrap();
    let path = other.path().join("other-ca.pem");
    std::fs::write(&path, ca.pem()).unwrap();
    let up = Upstream::parse(&format!(
        "postgres://127.0.0.1:{}?sslmode=verify-full&sslrootcert={}",
        cluster().port(),
        path.display()
    ))
    .unwrap();
    let proxy = proxy_with(|c| c.upstream = up).await;
    let err = pg_config(proxy.addr.port(), "scram_user", "scram-pw")
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .unwrap();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "08001");
    assert!(
        db.message().contains("TG001") && db.message().contains("TLS handshake"),
        "{}",
        db.message()
    );
}
