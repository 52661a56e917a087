//! Cancel requests: tokengate maps its own keys to the upstream's; unknown keys are dropped.
use crate::harness::*;
use std::time::Duration;

#[tokio::test]
async fn cancel_reaches_the_right_backend() {
    let proxy = proxy().await;
    let (_, via) = pair(&proxy, "scram_user", "scram-pw").await;
    let (_, bystander) = pair(&proxy, "scram_user", "scram-pw").await;
    let token = via.cancel_token();
    let slow = tokio::spawn(async move { via.simple_query("SELECT pg_sleep(30)").await });
    let other = tokio::spawn(async move {
        bystander
            .simple_query("SELECT pg_sleep(1), 'bystander'")
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = slow.await.unwrap().unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    // The other session's query was not cancelled.
    assert!(other.await.unwrap().is_ok());
}

#[tokio::test]
async fn cancel_with_an_unknown_key_is_dropped() {
    let proxy = proxy().await;
    let (mut raw, msgs) = Raw::login(proxy.addr, "trust_user", &[]).await;
    let key = msgs.iter().find(|m| m.tag == b'K').unwrap().body.clone();
    let running = tokio::spawn(async move { raw.query("SELECT pg_sleep(1), 'done'").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Right pid, wrong secret.
    let mut bogus = key.clone();
    bogus[4] ^= 0xff;
    let mut packet = 16u32.to_be_bytes().to_vec();
    packet.extend_from_slice(&80_877_102u32.to_be_bytes());
    packet.extend_from_slice(&bogus);
    let mut c = Raw::tcp(proxy.addr).await;
    c.send(&packet).await;
    assert_eq!(
        c.recv().await,
        None,
        "cancel connections are closed without a reply"
    );
    let msgs = running.await.unwrap();
    assert!(
        msgs.iter().all(|m| m.tag != b'E'),
        "query was not cancelled"
    );
    assert!(msgs.iter().any(|m| m.tag == b'D'));
}

/// BackendKeyData carries the backend's real pid (only the secret is tokengate's), so the pid
/// a driver reports agrees with `pg_backend_pid()`, NotificationResponse and
/// `pg_terminate_backend`.
#[tokio::test]
async fn clients_see_the_real_backend_pid() {
    let proxy = proxy().await;
    let (mut raw, msgs) = Raw::login(proxy.addr, "trust_user", &[]).await;
    let key = msgs.iter().find(|m| m.tag == b'K').unwrap();
    assert_eq!(key.body.len(), 8, "protocol 3.0: pid and a 4-byte secret");
    let pid = u32::from_be_bytes(key.body[..4].try_into().unwrap());
    let first_value = |msgs: &[Msg]| -> String {
        let d = msgs.iter().find(|m| m.tag == b'D').unwrap();
        String::from_utf8_lossy(&d.body[6..]).into_owned()
    };
    let backend = raw.query("SELECT pg_backend_pid()").await;
    assert_eq!(first_value(&backend).parse::<u32>().unwrap(), pid);

    let notified = raw.query("LISTEN tg_pid; NOTIFY tg_pid, 'hello'").await;
    let a = notified.iter().find(|m| m.tag == b'A').unwrap();
    assert_eq!(u32::from_be_bytes(a.body[..4].try_into().unwrap()), pid);

    // Another session of the same role terminates this backend by the pid the client got.
    let (mut other, _) = Raw::login(proxy.addr, "trust_user", &[]).await;
    let done = other
        .query(&format!("SELECT pg_terminate_backend({pid})"))
        .await;
    assert_eq!(first_value(&done), "t");
    let fatal = raw.recv().await.unwrap();
    assert_eq!(fatal.tag, b'E');
    assert_eq!(fatal.field(b'C').as_deref(), Some("57P01"));
}
