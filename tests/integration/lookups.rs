//! Lookups by token in read-path-only mode (issue 14): `analyst` is shown tokens of `email` and
//! `phone` (stored in clear, `filter_on: [email, phone]`; the CRM policy stores nothing as
//! tokens, at_rest.rs covers token roles' lookups at rest). An equality comparison with a token
//! it was shown finds exactly that row (tokengate decrypts the compared value before
//! PostgreSQL compares it with the plaintext), and the decrypted value never comes back to it
//! (errors, notices, current_query(), statement texts).
use crate::crm::*;
use crate::harness::{cluster, frame};

type Rows = Vec<Vec<Option<String>>>;

async fn rows(s: &Session, sql: &str) -> Rows {
    crate::harness::simple_rows(&s.client, sql).await
}

/// Ids of an extended-protocol query (binary results).
async fn ids(
    s: &Session,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<i32> {
    s.client
        .query(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .map(|r| r.get::<_, i32>(0))
        .collect()
}

/// The tokengate code and SQLSTATE of a refusal (never the text of anything else).
fn refusal<T>(what: &str, result: Result<T, tokio_postgres::Error>) -> (String, String) {
    match result {
        Ok(_) => panic!("{what}: expected a refusal, the statement succeeded"),
        Err(e) => {
            let db = e
                .as_db_error()
                .unwrap_or_else(|| panic!("{what}: not an ErrorResponse"));
            let code = db
                .message()
                .split_whitespace()
                .find(|w| w.starts_with("TG"))
                .unwrap_or("")
                .trim_end_matches(':')
                .to_string();
            (code, db.code().code().to_string())
        }
    }
}

/// (id, plaintext as app_admin reads it directly, token as analyst is shown it) of `column`.
async fn samples(
    analyst: &Session,
    admin: &Session,
    column: &str,
    n: usize,
) -> Vec<(String, String, String)> {
    let sql = format!("SELECT id, {column} FROM customers ORDER BY id LIMIT {n}");
    let plain = rows(admin, &sql).await;
    let shown = rows(analyst, &sql).await;
    plain
        .into_iter()
        .zip(shown)
        .map(|(p, t)| {
            let (id, p, t) = (
                p[0].clone().unwrap(),
                p[1].clone().unwrap(),
                t[1].clone().unwrap(),
            );
            assert_ne!(p, t, "analyst is shown a token of {column}");
            (id, p, t)
        })
        .collect()
}

/// Every equality form finds exactly the rows app_admin finds with the plaintext; the
/// plaintext itself finds nothing; `<>` and `NOT IN` give the complement; a value that is not
/// a token is refused (TG124) and the session stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_by_shown_tokens_find_exactly_their_rows() {
    crm();
    let proxy = crm_proxy().await;
    let s = via(&proxy, "analyst").await;
    let admin = direct("app_admin").await;
    for column in ["email", "phone"] {
        let sample = samples(&s, &admin, column, 3).await;
        let (id, plain, token) = &sample[0];
        let (id2, plain2, token2) = &sample[1];
        let same = |sql: &str| sql.replace("{v}", plain).replace("{w}", plain2);
        let tok = |sql: &str| sql.replace("{v}", token).replace("{w}", token2);
        for sql in [
            "SELECT id FROM customers WHERE {c} = '{v}' ORDER BY id",
            "SELECT id FROM customers WHERE '{v}' = {c} ORDER BY id",
            "SELECT id FROM customers WHERE ({c}) = ('{v}'::text) ORDER BY id",
            "SELECT id FROM customers WHERE {c} IN ('{v}', '{w}') ORDER BY id",
            "SELECT id FROM customers WHERE {c} = ANY('{\"{v}\",\"{w}\"}') ORDER BY id",
            "SELECT id FROM customers WHERE {c} = ANY(ARRAY['{v}', NULL]) ORDER BY id",
            "SELECT count(*) FROM customers WHERE {c} <> '{v}'",
            "SELECT count(*) FROM customers WHERE {c} NOT IN ('{v}', '{w}')",
        ] {
            let sql = sql.replace("{c}", column);
            let want = rows(&admin, &same(&sql)).await;
            assert!(!want.is_empty(), "{sql}");
            assert_eq!(rows(&s, &tok(&sql)).await, want, "{column}: {sql}");
        }
        let found = rows(
            &s,
            &format!("SELECT id FROM customers WHERE {column} = '{token}'"),
        )
        .await;
        assert_eq!(found, vec![vec![Some(id.clone())]], "{column}");
        // Extended protocol: a text parameter, and a text[] parameter (binary array).
        let want: Vec<i32> = vec![id.parse().unwrap(), id2.parse().unwrap()];
        let sql = format!("SELECT id FROM customers WHERE {column} = $1 ORDER BY id");
        assert_eq!(ids(&s, &sql, &[token]).await, want[..1]);
        let sql = format!("SELECT id FROM customers WHERE {column} = ANY($1) ORDER BY id");
        let tokens = vec![token.clone(), token2.clone()];
        assert_eq!(ids(&s, &sql, &[&tokens]).await, want);
        let sql = format!("SELECT id FROM customers WHERE {column} IN ($1, $2) ORDER BY id");
        assert_eq!(ids(&s, &sql, &[token, token2]).await, want);
        let sql = format!("SELECT count(*)::int FROM customers WHERE {column} <> $1");
        let all = rows(&admin, "SELECT count(*) FROM customers").await[0][0]
            .clone()
            .unwrap();
        let all: i32 = all.parse().unwrap();
        assert_eq!(ids(&s, &sql, &[token]).await, [all - 1]);
        // The plaintext, which analyst is never shown, finds nothing (it decrypts to another
        // value), by literal and by parameter.
        let sql = format!("SELECT id FROM customers WHERE {column} = '{plain}'");
        assert!(rows(&s, &sql).await.is_empty(), "{column}: plaintext guess");
        let sql = format!("SELECT id FROM customers WHERE {column} = $1");
        assert!(ids(&s, &sql, &[plain]).await.is_empty(), "{column}");
        // A parameter in a write: the same row.
        let sql = format!("UPDATE customers SET city = city WHERE {column} = $1");
        assert_eq!(s.client.execute(&sql, &[token]).await.unwrap(), 1);
    }
    // Not a token of the format (an email without '@', a phone without digits): refused with
    // TG124, never compared as written; the session goes on.
    for (sql, what) in [
        (
            "SELECT id FROM customers WHERE email = 'no at sign'",
            "literal",
        ),
        (
            "SELECT id FROM customers WHERE phone IN ('555-0100', 'none')",
            "IN",
        ),
        (
            "SELECT id FROM customers WHERE email = ANY('{x}')",
            "array literal",
        ),
    ] {
        let got = refusal(what, s.client.simple_query(sql).await);
        assert_eq!(got, ("TG124".into(), "22023".into()), "{sql}");
        assert_eq!(rows(&s, "SELECT 1").await.len(), 1);
    }
    let got = s
        .client
        .query(
            "SELECT id FROM customers WHERE email = $1",
            &[&"no at sign"],
        )
        .await;
    assert_eq!(refusal("bind", got), ("TG124".into(), "22023".into()));
    let got = s
        .client
        .query(
            "SELECT id FROM customers WHERE phone = ANY($1)",
            &[&vec!["x".to_string()]],
        )
        .await;
    assert_eq!(refusal("bind array", got), ("TG124".into(), "22023".into()));
    assert_eq!(ids(&s, "SELECT 1", &[]).await, [1]);
    // LIKE still compares the stored plaintext, as filter_on allows.
    let sql = "SELECT id FROM customers WHERE email LIKE 'a%' ORDER BY id";
    assert_eq!(rows(&s, sql).await, rows(&admin, sql).await);
}

/// Whether anything received holds `plain`, as text or as the decimal bytes of a datum in a
/// node dump (`:constvalue 21 [ 84 0 0 0 97 ... ]`, wrapped across lines).
fn quotes(seen: &Seen, plain: &str) -> bool {
    let bytes: Vec<String> = plain.bytes().map(|b| b.to_string()).collect();
    let dumped = bytes.join(" ");
    seen.values.iter().any(|(_, v)| {
        let v = String::from_utf8_lossy(v);
        let flat = v.split_whitespace().collect::<Vec<_>>().join(" ");
        v.contains(plain) || flat.contains(&dumped)
    })
}

/// The decrypted value is in the statement PostgreSQL runs. An attacker who read the code
/// tries to get it back: error CONTEXT with bind parameters, plan dumps as notices,
/// current_query() (also from another statement of the message), a SQL EXECUTE or PREPARE
/// that skips decryption, EXPLAIN, pg_stat_activity. Each attack is first shown to leak the
/// value straight from PostgreSQL (app_admin sending the plaintext), then to return no
/// plaintext through tokengate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_by_token_never_return_the_decrypted_value() {
    crm();
    let proxy = crm_proxy().await;
    let mut s = via(&proxy, "analyst").await;
    let mut admin = direct("app_admin").await;
    let sample = samples(&s, &admin, "email", 1).await;
    let (_, plain, token) = &sample[0];

    // 1. An error's CONTEXT quotes bind parameters (log_parameter_max_length_on_error).
    let set = "SET log_parameter_max_length_on_error = -1";
    let sql = "SELECT id FROM customers WHERE email = $1 AND 1 / (id - id) = 1";
    let mut direct_seen = Seen::default();
    rows(&admin, set).await;
    if let Err(e) = admin.client.query(sql, &[plain]).await {
        direct_seen.error(&e);
    }
    assert!(quotes(&direct_seen, plain), "the error leaks directly");
    let mut seen = Seen::default();
    rows(&s, set).await;
    if let Err(e) = s.client.query(sql, &[token]).await {
        seen.error(&e);
    }
    assert_eq!(seen.errors.len(), 1);
    assert!(
        !quotes(&seen, plain),
        "an error through tokengate quotes the plaintext"
    );

    // 2. Plan dumps sent as notices quote the compared constant.
    let setup = "SET client_min_messages = log; SET debug_print_plan = on";
    let sql = "SELECT id FROM customers WHERE email = '{v}'";
    let mut direct_seen = Seen::default();
    direct_seen.simple(&mut admin, setup).await;
    direct_seen
        .simple(&mut admin, &sql.replace("{v}", plain))
        .await;
    assert!(quotes(&direct_seen, plain), "the plan dump leaks directly");
    let mut seen = Seen::default();
    seen.simple(&mut s, setup).await;
    seen.simple(&mut s, &sql.replace("{v}", token)).await;
    assert!(seen.rows == 1 && seen.errors.is_empty(), "the lookup works");
    assert!(
        !quotes(&seen, plain),
        "a notice through tokengate quotes the plaintext"
    );
    seen.simple(&mut s, "RESET debug_print_plan; RESET client_min_messages")
        .await;

    // 3. current_query() returns the text PostgreSQL runs (for a simple query, all of it).
    // 4. SQL EXECUTE of a statement prepared through Parse would compare the token as
    //    written; PREPARE and EXPLAIN hold a lookup tokengate does not decrypt.
    for (attack, leaks_directly) in [
        (
            "SELECT current_query() FROM customers WHERE email = '{v}'",
            true,
        ),
        (
            "SELECT id FROM customers WHERE email = '{v}'; SELECT current_query()",
            true,
        ),
        (
            "SELECT id, current_query() FROM customer_contacts WHERE email = '{v}'",
            true,
        ),
        (
            "UPDATE customers SET city = city WHERE email = '{v}' RETURNING id",
            false,
        ),
        (
            "PREPARE lk AS SELECT id FROM customers WHERE email = $1",
            false,
        ),
        ("EXPLAIN SELECT id FROM customers WHERE email = '{v}'", true),
    ] {
        let mut direct_seen = Seen::default();
        direct_seen
            .simple(&mut admin, &attack.replace("{v}", plain))
            .await;
        if leaks_directly {
            assert!(quotes(&direct_seen, plain), "{attack} leaks directly");
        }
        rows(&admin, "DEALLOCATE ALL").await;
        let mut seen = Seen::default();
        seen.simple(&mut s, &attack.replace("{v}", token)).await;
        assert!(!quotes(&seen, plain), "{attack}");
        assert!(
            seen.errors.iter().any(|e| e.message.contains("TG125")),
            "{attack}: {:?}",
            seen.errors
        );
        assert_eq!(rows(&s, "SELECT 1").await.len(), 1);
    }
    let mut raw = raw_as(proxy.addr, "analyst").await;
    let mut bytes = frame(b'P', b"lk\0SELECT id FROM customers WHERE email = $1\0\0\0");
    bytes.extend_from_slice(&frame(b'S', &[]));
    raw.send(&bytes).await;
    let msgs = raw.until_ready().await;
    assert!(msgs.iter().any(|m| m.tag == b'1'), "ParseComplete");
    let msgs = raw.query(&format!("EXECUTE lk('{token}')")).await;
    let mut seen = Seen::default();
    seen.absorb(&msgs);
    let refused = msgs
        .iter()
        .find(|m| m.tag == b'E')
        .and_then(|m| m.field(b'M'))
        .unwrap_or_default();
    assert!(refused.contains("TG125"), "EXECUTE: {refused}");
    assert!(!quotes(&seen, plain));

    // 5. Other sessions' statement texts carry the decrypted value: refused (TG172).
    let got = s
        .client
        .simple_query("SELECT query FROM pg_stat_activity")
        .await;
    assert_eq!(refusal("pg_stat_activity", got).0, "TG172");
}

/// psql, the real client: a shown token typed in a query finds its row; a non-token is
/// refused with TG124.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_looks_rows_up_by_shown_tokens() {
    crm();
    let proxy = crm_proxy().await;
    let s = via(&proxy, "analyst").await;
    let admin = direct("app_admin").await;
    let sample = samples(&s, &admin, "email", 3).await;
    let (id, _, token) = &sample[2];
    let port = proxy.addr.port().to_string();
    let psql = |sql: String| {
        let out = std::process::Command::new(crate::harness::cluster().pg.bindir().join("psql"))
            .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p", &port])
            .args(["-U", "analyst", "-d", CRM_DB, "-c", &sql])
            .env("PGPASSWORD", password("analyst"))
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (out, err) = psql(format!(
        "SELECT id FROM customers WHERE email IN ('{token}') ORDER BY id"
    ));
    assert_eq!(out, *id, "{err}");
    let (out, err) = psql("SELECT id FROM customers WHERE email = 'nope'".into());
    assert!(out.is_empty() && err.contains("TG124"), "{err}");
}

/// The decrypted value of a lookup is in the statement PostgreSQL runs, so whatever resolves
/// its cast or its `=` sees the plaintext. tokengate refuses user types and operators that
/// shadow built-ins on the session's search path, but only those in the catalog it last read.
/// An attacker who gets a domain named `text` created after that (directly against PostgreSQL,
/// with a CHECK that records its value) and puts its schema before pg_catalog would read every
/// plaintext it looks up by token. Lookups therefore need pg_catalog first (TG125); with the
/// default path they work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_refuse_a_search_path_a_new_user_type_could_shadow() {
    crm();
    let proxy = crm_proxy().await;
    // The proxy reads its catalog now, before the domain exists.
    let s = via(&proxy, "analyst").await;
    let admin = direct("app_admin").await;
    let sample = samples(&s, &admin, "email", 1).await;
    let (id, plain, token) = &sample[0];
    let superuser = cluster().pg.connect_admin(CRM_DB).await.unwrap();
    superuser
        .batch_execute(
            "CREATE SCHEMA lookup_shadow;
             GRANT USAGE ON SCHEMA lookup_shadow TO analyst, app_admin;
             CREATE TABLE lookup_shadow.seen (v pg_catalog.text);
             GRANT INSERT ON lookup_shadow.seen TO analyst, app_admin;
             CREATE FUNCTION lookup_shadow.record(v pg_catalog.text) RETURNS bool
               LANGUAGE plpgsql AS $$ BEGIN INSERT INTO lookup_shadow.seen VALUES (v); RETURN true; END $$;
             CREATE DOMAIN lookup_shadow.text AS pg_catalog.text CHECK (lookup_shadow.record(VALUE));",
        )
        .await
        .unwrap();
    let seen = async || -> Vec<String> {
        superuser
            .query("SELECT v FROM lookup_shadow.seen", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let path = "SET search_path = lookup_shadow, pg_catalog, public";
    let sql = |v: &str| format!("SELECT id FROM customers WHERE email = '{v}'::text");
    // Directly, the domain records what is compared.
    rows(&admin, path).await;
    assert_eq!(rows(&admin, &sql(plain)).await.len(), 1);
    assert!(seen().await.contains(plain), "the domain records the value");
    superuser
        .batch_execute("TRUNCATE lookup_shadow.seen")
        .await
        .unwrap();
    // Through tokengate, with the domain unknown to its catalog: refused, nothing recorded.
    rows(&s, path).await;
    let (code, _) = refusal(
        "lookup under a shadowing path",
        s.client.simple_query(&sql(token)).await,
    );
    assert_eq!(code, "TG125");
    let (code, _) = refusal(
        "parameter lookup under a shadowing path",
        s.client
            .query("SELECT id FROM customers WHERE email = $1", &[token])
            .await,
    );
    assert_eq!(code, "TG125");
    assert!(
        !seen().await.contains(plain),
        "the plaintext reached the domain"
    );
    // The default path: the lookup works.
    rows(&s, "RESET search_path").await;
    assert_eq!(rows(&s, &sql(token)).await, [[Some(id.clone())]]);
    superuser
        .batch_execute("DROP SCHEMA lookup_shadow CASCADE")
        .await
        .unwrap();
}
