//! Simple and extended query protocol, binary formats, pipelining, portals and COPY.
use crate::harness::*;
use futures_util::{SinkExt, StreamExt};
use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::types::Type;

fn render(msgs: &[SimpleQueryMessage]) -> Vec<String> {
    msgs.iter()
        .map(|m| match m {
            SimpleQueryMessage::Row(r) => (0..r.len())
                .map(|i| r.get(i).unwrap_or("NULL").to_string())
                .collect::<Vec<_>>()
                .join("|"),
            SimpleQueryMessage::CommandComplete(n) => format!("complete {n}"),
            SimpleQueryMessage::RowDescription(d) => d
                .iter()
                .map(|c| c.name().to_string())
                .collect::<Vec<_>>()
                .join(","),
            _ => "other".into(),
        })
        .collect()
}

#[tokio::test]
async fn simple_query_with_several_statements_matches_direct() {
    let proxy = proxy().await;
    let (direct, via) = pair(&proxy, "scram_user", "scram-pw").await;
    let sql = "SELECT id, name, price FROM items WHERE id <= 3 ORDER BY id; SELECT 'two'::text AS t; SELECT count(*) FROM items";
    let d = render(&direct.simple_query(sql).await.unwrap());
    let v = render(&via.simple_query(sql).await.unwrap());
    assert_eq!(v, d);
    assert!(v.contains(&"1|item 1|1.25".to_string()), "{v:?}");
    assert!(v.contains(&"1000".to_string()), "{v:?}");
}

#[tokio::test]
async fn empty_query_is_relayed() {
    let proxy = proxy().await;
    let (mut raw, _) = Raw::login(proxy.addr, "trust_user", &[]).await;
    let msgs = raw.query("").await;
    let tags: Vec<u8> = msgs.iter().map(|m| m.tag).collect();
    assert_eq!(
        tags,
        vec![b'I', b'Z'],
        "EmptyQueryResponse then ReadyForQuery"
    );
}

#[tokio::test]
async fn extended_protocol_binary_results_match_direct() {
    let proxy = proxy().await;
    let (direct, via) = pair(&proxy, "scram_user", "scram-pw").await;
    let sql =
        "SELECT id, name, payload, created::text, tags FROM items WHERE id = ANY($1) ORDER BY id";
    let ids: Vec<i32> = vec![1, 500, 1000];
    let rows = |rs: Vec<tokio_postgres::Row>| {
        rs.iter()
            .map(|r| {
                (
                    r.get::<_, i32>(0),
                    r.get::<_, String>(1),
                    r.get::<_, Vec<u8>>(2),
                    r.get::<_, String>(3),
                    r.get::<_, Vec<String>>(4),
                )
            })
            .collect::<Vec<_>>()
    };
    let d = rows(direct.query(sql, &[&ids]).await.unwrap());
    let v = rows(via.query(sql, &[&ids]).await.unwrap());
    assert_eq!(v, d);
    assert_eq!(v.len(), 3);
    assert_eq!(v[1].1, "item 500");
    assert_eq!(v[1].2.len(), 16);
}

#[tokio::test]
async fn named_prepared_statements_are_reused() {
    let proxy = proxy().await;
    let (_, via) = pair(&proxy, "md5_user", "md5-pw").await;
    let stmt = via
        .prepare_typed("SELECT name FROM items WHERE id = $1", &[Type::INT4])
        .await
        .unwrap();
    for id in [7, 8, 9] {
        let row = via.query_one(&stmt, &[&id]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), format!("item {id}"));
    }
}

#[tokio::test]
async fn pipelined_queries_complete_in_order() {
    let proxy = proxy().await;
    let (_, via) = pair(&proxy, "scram_user", "scram-pw").await;
    let s = via
        .prepare("SELECT name FROM items WHERE id = $1")
        .await
        .unwrap();
    // tokio-postgres pipelines requests issued concurrently on one connection.
    let (a, b, c, d) = tokio::join!(
        via.query_one(&s, &[&1i32]),
        via.query_one(&s, &[&2i32]),
        via.query_one("SELECT count(*)::int FROM items", &[]),
        via.query_one(&s, &[&3i32]),
    );
    assert_eq!(a.unwrap().get::<_, String>(0), "item 1");
    assert_eq!(b.unwrap().get::<_, String>(0), "item 2");
    assert_eq!(c.unwrap().get::<_, i32>(0), 1000);
    assert_eq!(d.unwrap().get::<_, String>(0), "item 3");
}

#[tokio::test]
async fn portals_with_row_limits_suspend_and_resume() {
    let proxy = proxy().await;
    let (mut direct, mut via) = pair(&proxy, "scram_user", "scram-pw").await;
    let mut results = Vec::new();
    for client in [&mut direct, &mut via] {
        let tx = client.transaction().await.unwrap();
        let portal = tx
            .bind("SELECT id FROM items WHERE id <= $1 ORDER BY id", &[&25i32])
            .await
            .unwrap();
        let mut chunks = Vec::new();
        loop {
            let rows = tx.query_portal(&portal, 10).await.unwrap();
            if rows.is_empty() {
                break;
            }
            chunks.push(rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>());
        }
        tx.commit().await.unwrap();
        results.push(chunks);
    }
    assert_eq!(results[1], results[0]);
    assert_eq!(
        results[1].iter().map(Vec::len).collect::<Vec<_>>(),
        vec![10, 10, 5]
    );
}

#[tokio::test]
async fn errors_leave_the_session_usable() {
    let proxy = proxy().await;
    let (direct, via) = pair(&proxy, "scram_user", "scram-pw").await;
    let d = direct.simple_query("SELECT 1/0").await.unwrap_err();
    let v = via.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(v.code(), d.code());
    assert_eq!(v.as_db_error().unwrap().message(), "division by zero");
    let row = via.query_one("SELECT 41 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}

async fn copy_round_trip(format: &str, table: &str) {
    use bytes::Bytes;
    let proxy = proxy().await;
    let (direct, via) = pair(&proxy, "scram_user", "scram-pw").await;
    direct
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int, name text, payload bytea)"
        ))
        .await
        .unwrap();
    // COPY TO through tokengate, then COPY FROM through tokengate, then compare directly.
    let out_sql = format!(
        "COPY (SELECT id, name, payload FROM items WHERE id <= 300 ORDER BY id) TO STDOUT {format}"
    );
    let data = collect_copy(&via, &out_sql).await;
    let direct_data = collect_copy(&direct, &out_sql).await;
    assert_eq!(data, direct_data, "COPY TO bytes differ");
    assert!(data.len() > 300 * 10);

    let sink = via
        .copy_in::<_, Bytes>(&format!("COPY {table} FROM STDIN {format}"))
        .await
        .unwrap();
    let mut sink = std::pin::pin!(sink);
    for chunk in data.chunks(1000) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let n = sink.as_mut().finish().await.unwrap();
    assert_eq!(n, 300);
    let check = format!(
        "SELECT count(*)::int, sum(id)::int, bool_and(payload = decode(md5(id::text), 'hex')) FROM {table}"
    );
    let row = direct.query_one(&check, &[]).await.unwrap();
    assert_eq!(
        (
            row.get::<_, i32>(0),
            row.get::<_, i32>(1),
            row.get::<_, bool>(2)
        ),
        (300, 45150, true)
    );
}

async fn collect_copy(client: &tokio_postgres::Client, sql: &str) -> Vec<u8> {
    let stream = client.copy_out(sql).await.unwrap();
    let mut stream = std::pin::pin!(stream);
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk.unwrap());
    }
    data
}

#[tokio::test]
async fn copy_text_round_trips() {
    copy_round_trip("", "copy_text").await;
}

#[tokio::test]
async fn copy_csv_round_trips() {
    copy_round_trip("(FORMAT csv)", "copy_csv").await;
}

#[tokio::test]
async fn copy_binary_round_trips() {
    copy_round_trip("(FORMAT binary)", "copy_binary").await;
}

#[tokio::test]
async fn copy_fail_from_the_client_aborts_the_copy() {
    let proxy = proxy().await;
    let (mut raw, _) = Raw::login(proxy.addr, "trust_user", &[]).await;
    raw.query("CREATE TEMP TABLE cf (id int)").await;
    raw.send(&frame(b'Q', b"COPY cf FROM STDIN\0")).await;
    let m = raw.recv().await.unwrap();
    assert_eq!(m.tag, b'G', "CopyInResponse");
    raw.send(&frame(b'd', b"1\n2\n")).await;
    raw.send(&frame(b'f', b"client gave up\0")).await;
    let msgs = raw.until_ready().await;
    let err = msgs.iter().find(|m| m.tag == b'E').expect("an error");
    assert_eq!(err.field(b'C').as_deref(), Some("57014"));
    assert!(err.field(b'M').unwrap().contains("client gave up"));
    let msgs = raw.query("SELECT count(*) FROM cf").await;
    let row = msgs.iter().find(|m| m.tag == b'D').unwrap();
    assert_eq!(&row.body[row.body.len() - 1..], b"0");
}
