//! Message-level relaying: FunctionCall, NotificationResponse, NoticeResponse,
//! ParameterStatus, Terminate, protocol 3.2 negotiation and GSSENCRequest.
use crate::harness::*;
use std::net::SocketAddr;

fn direct_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], cluster().port()))
}

/// Strips BackendKeyData (which tokengate replaces by design) for comparisons.
fn without_keys(msgs: &[Msg]) -> Vec<(u8, Vec<u8>)> {
    msgs.iter()
        .filter(|m| m.tag != b'K')
        .map(|m| (m.tag, m.body.clone()))
        .collect()
}

#[tokio::test]
async fn function_call_matches_direct() {
    let proxy = proxy().await;
    let (direct, _) = pair(&proxy, "scram_user", "scram-pw").await;
    let oid: u32 = direct
        .query_one("SELECT 'int4abs'::regproc::oid", &[])
        .await
        .unwrap()
        .get(0);
    // FunctionCall: oid, 1 arg format (binary), 1 arg (-7 as int4), result format binary.
    let mut body = oid.to_be_bytes().to_vec();
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&4i32.to_be_bytes());
    body.extend_from_slice(&(-7i32).to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    let call = frame(b'F', &body);
    let mut results = Vec::new();
    for addr in [direct_addr(), proxy.addr] {
        let (mut raw, _) = Raw::login(addr, "trust_user", &[]).await;
        raw.send(&call).await;
        results.push(raw.until_ready().await);
    }
    assert_eq!(results[1], results[0]);
    let v = results[1]
        .iter()
        .find(|m| m.tag == b'V')
        .expect("FunctionCallResponse");
    assert_eq!(&v.body[4..], &7i32.to_be_bytes());
}

#[tokio::test]
async fn notifications_notices_and_parameter_status_are_relayed() {
    let proxy = proxy().await;
    let (mut listener, _) = Raw::login(proxy.addr, "trust_user", &[]).await;
    listener.query("LISTEN tg_channel").await;
    let (mut other, _) = Raw::login(proxy.addr, "trust_user", &[]).await;
    other
        .query("NOTIFY tg_channel, 'hello through tokengate'")
        .await;
    let n = listener.recv().await.expect("NotificationResponse");
    assert_eq!(n.tag, b'A');
    assert!(String::from_utf8_lossy(&n.body).contains("hello through tokengate"));

    let msgs = listener
        .query("DO $$BEGIN RAISE NOTICE 'notice from server'; END$$")
        .await;
    let notice = msgs.iter().find(|m| m.tag == b'N').expect("NoticeResponse");
    assert_eq!(notice.field(b'M').as_deref(), Some("notice from server"));

    let msgs = listener.query("SET application_name = 'tg-test-app'").await;
    let status = msgs
        .iter()
        .find(|m| m.tag == b'S')
        .expect("ParameterStatus");
    assert_eq!(status.body, b"application_name\0tg-test-app\0");
}

#[tokio::test]
async fn terminate_closes_both_legs() {
    let proxy = proxy().await;
    let (mut raw, _) = Raw::login(
        proxy.addr,
        "trust_user",
        &[("application_name", "tg-terminate")],
    )
    .await;
    raw.send(&frame(b'X', b"")).await;
    assert_eq!(raw.recv().await, None, "tokengate closes after Terminate");
    let (admin, _) = pair(&proxy, "scram_user", "scram-pw").await;
    let gone = eventually(10, async || {
        admin
            .query_one("SELECT count(*)::int FROM pg_stat_activity WHERE application_name = 'tg-terminate'", &[])
            .await
            .unwrap()
            .get::<_, i32>(0)
            == 0
    })
    .await;
    assert!(gone, "the upstream backend ended too");
    let series = "tokengate_connections_total{outcome=\"completed\"}";
    assert!(metric_reaching(&proxy, series, 1.0).await >= 1.0);
}

#[tokio::test]
async fn startup_is_relayed_like_direct_for_protocol_3_0_and_3_2() {
    let proxy = proxy().await;
    for version in [196_608u32, 196_610] {
        let mut seen = Vec::new();
        for addr in [direct_addr(), proxy.addr] {
            let mut raw = Raw::tcp(addr).await;
            raw.send(&startup_packet(
                version,
                &[
                    ("user", "trust_user"),
                    ("database", DB),
                    ("_pq_.unknown_option", "x"),
                ],
            ))
            .await;
            let msgs = raw.until_ready().await;
            let key = msgs.iter().find(|m| m.tag == b'K').expect("BackendKeyData");
            assert!(key.body.len() >= 8);
            seen.push(msgs);
        }
        // Everything but the cancel key is identical (ParameterStatus values included).
        assert_eq!(
            without_keys(&seen[1]),
            without_keys(&seen[0]),
            "version {version:#x}"
        );
        if version == 196_610 || !seen[0].iter().any(|m| m.tag == b'v') {
            // PostgreSQL answers an unknown minor version or _pq_ option with
            // NegotiateProtocolVersion; tokengate relays it untouched.
            assert!(
                seen[1].iter().any(|m| m.tag == b'v'),
                "NegotiateProtocolVersion relayed"
            );
        }
    }
}

#[tokio::test]
async fn gssenc_request_is_declined_and_startup_continues() {
    let proxy = proxy().await;
    let mut raw = Raw::tcp(proxy.addr).await;
    let mut req = 8u32.to_be_bytes().to_vec();
    req.extend_from_slice(&80_877_104u32.to_be_bytes());
    raw.send(&req).await;
    assert_eq!(raw.recv_byte().await, b'N');
    raw.send(&startup_packet(
        196_608,
        &[("user", "trust_user"), ("database", DB)],
    ))
    .await;
    let msgs = raw.until_ready().await;
    assert_eq!(msgs.last().map(|m| m.tag), Some(b'Z'));
    let rows = raw.query("SELECT current_user").await;
    let row = rows.iter().find(|m| m.tag == b'D').unwrap();
    assert!(row.body.ends_with(b"trust_user"));
}
