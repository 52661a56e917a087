//! The attacker's corpus for the session and protocol classes of issue 9, kept as data with one
//! runner per client path:
//!
//! - class 2, bookkeeping before the server agrees: message scripts where the server refuses a
//!   re-definition (the name exists, the transaction is aborted) and keeps the protected one;
//! - class 3, lost track of replies: Syncs the server ignores during COPY FROM STDIN, then
//!   protected reads (tokio-postgres `copy_in`, and raw scripts);
//! - class 4, name resolution: temp views, the role's own schema, `SET [LOCAL] search_path`,
//!   `set_config`, startup options and role defaults shadowing `customers`;
//! - class 6, side channels: trigger notices and errors, notification payloads, error messages
//!   that quote values outside the `: "value"` form, settings set from values.
//!
//! Every case runs in `crm_names`, a copy of the `crm` data with the attack objects an
//! administrator (or an earlier policy) left there, so the shared `crm` database stays clean.
//! Each corpus is first run straight against PostgreSQL, where every case must leak (so the
//! case means something), then through tokengate, where none may.
use crate::crm::*;
use crate::harness::*;
use Expect::{NoLeak, Protected};

const DB: &str = "crm_names";

static SETUP: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// The attack objects: a schema with a view named like the protected table (its `city` is the
/// SSN), the same in analyst's own schema, a role default search path for auditor, a COPY
/// sink, a table without protected columns, and a trigger that puts the SSN in a notice, a
/// notification and (for city 'raise') an error message.
const ATTACK_SETUP: &str = r#"
CREATE SCHEMA attack;
CREATE VIEW attack.customers AS
  SELECT id, full_name, email, phone, ssn, birth_date, ssn AS city, created_at FROM public.customers;
GRANT USAGE ON SCHEMA attack TO support, analyst, auditor;
GRANT SELECT ON attack.customers TO support, analyst, auditor;
CREATE FUNCTION attack.upper(text) RETURNS text LANGUAGE sql AS $$ SELECT ssn FROM public.customers WHERE id = 1 $$;
CREATE FUNCTION attack.lower(integer) RETURNS text LANGUAGE sql AS $$ SELECT ssn FROM public.customers WHERE id = $1 $$;
CREATE SCHEMA analyst AUTHORIZATION analyst;
CREATE VIEW analyst.customers AS SELECT id, ssn AS city FROM public.customers;
GRANT SELECT ON analyst.customers TO analyst;
ALTER ROLE auditor IN DATABASE crm_names SET search_path = attack, public;
CREATE TABLE public.copy_sink (a int, b text);
CREATE TABLE public.plain (id int PRIMARY KEY, note text);
GRANT ALL ON public.copy_sink, public.plain TO support, analyst;
CREATE FUNCTION public.row_echo() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE NOTICE 'row %', NEW.ssn;
  PERFORM pg_notify('crm_chan', NEW.ssn);
  IF NEW.city = 'raise' THEN RAISE EXCEPTION 'bad row %', NEW.ssn; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER row_echo BEFORE UPDATE ON public.customers FOR EACH ROW EXECUTE FUNCTION public.row_echo();
"#;

async fn setup() {
    crm();
    SETUP
        .get_or_init(|| async {
            let pg = &cluster().pg;
            pg.execute("postgres", &format!("CREATE DATABASE {DB}"))
                .await
                .expect("create crm_names");
            let schema = format!(
                "{}\n{}\n{ROLE_SETUP}\n{ATTACK_SETUP}\nANALYZE;",
                tokengate::demo::data::SCHEMA,
                tokengate::demo::data::inserts(CUSTOMERS, 2026)
            );
            pg.execute(DB, &schema).await.expect("crm_names schema");
        })
        .await;
}

fn config(port: u16, role: &str, options: Option<&str>) -> tokio_postgres::Config {
    let mut c = crm_config(port, role);
    c.dbname(DB);
    if let Some(o) = options {
        c.options(o);
    }
    c
}

// ---------------------------------------------------------------------------------------------
// SQL-level corpora (classes 4 and 6): statements run in order in one session.

/// (role, startup options, statements, expectation for what the client receives).
type Steps = (
    &'static str,
    Option<&'static str>,
    &'static [&'static str],
    Expect,
);

/// Class 4: names that resolve to something else than tokengate used to think.
const NAMES: &[Steps] = &[
    (
        "support",
        None,
        &[
            "CREATE TEMP VIEW customers AS SELECT id, ssn AS city FROM public.customers",
            "SELECT city FROM customers",
        ],
        NoLeak,
    ),
    ("analyst", None, &["SELECT city FROM customers"], Protected),
    (
        "support",
        None,
        &[
            "SET search_path = attack, public",
            "SELECT city FROM customers",
        ],
        Protected,
    ),
    (
        "support",
        None,
        &[
            "SELECT set_config('search_path', 'attack, public', false)",
            "SELECT city FROM customers",
        ],
        NoLeak,
    ),
    (
        "support",
        Some("-csearch_path=attack,public"),
        &["SELECT city FROM customers"],
        Protected,
    ),
    ("auditor", None, &["SELECT city FROM customers"], Protected),
    (
        "support",
        None,
        &[
            "BEGIN",
            "SET LOCAL search_path = attack, public",
            "SELECT city FROM customers",
            "ROLLBACK",
            "SELECT city FROM customers",
        ],
        NoLeak,
    ),
    (
        "support",
        None,
        &["SET search_path = attack, public; SELECT city FROM customers"],
        Protected,
    ),
    // Functions: a path listing pg_catalog late shadows a built-in outright; any path schema
    // can offer a better-matching overload.
    (
        "support",
        None,
        &[
            "SET search_path = attack, pg_catalog, public",
            "SELECT upper(city) FROM public.customers WHERE id <= 3",
        ],
        NoLeak,
    ),
    (
        "support",
        None,
        &[
            "SET search_path = public, attack",
            "SELECT lower(id) FROM customers WHERE id <= 3",
        ],
        NoLeak,
    ),
];

/// Class 6: values leaving by errors, notices, notifications and settings.
const SIDE_CHANNELS: &[Steps] = &[
    (
        "support",
        None,
        &["UPDATE customers SET city = city WHERE id = 1"],
        NoLeak,
    ),
    (
        "support",
        None,
        &["UPDATE customers SET city = 'raise' WHERE id = 2"],
        NoLeak,
    ),
    (
        "analyst",
        None,
        &["SELECT id FROM public.customers WHERE xmlparse(document email) IS NOT NULL"],
        NoLeak,
    ),
    (
        "analyst",
        None,
        &["SELECT id FROM public.customers WHERE phone::int > 0"],
        NoLeak,
    ),
    (
        "analyst",
        None,
        &[
            "SELECT id FROM public.customers WHERE set_config('application_name', email, false) IS NOT NULL AND id = 3",
            "SHOW application_name",
        ],
        NoLeak,
    ),
];

/// Statement splits the server sees differently than the analyser might (a `--` comment ends
/// at CR for PostgreSQL): whatever the lexer decides, the server may not run a statement
/// tokengate did not analyse (it would end the session, TG020) and nothing leaks.
const SPLITS: &[Steps] = &[
    (
        "support",
        None,
        &["SELECT 1; --x\rSELECT ssn FROM customers WHERE id <= 5"],
        NoLeak,
    ),
    (
        "support",
        None,
        &["SELECT 1 --x\r; SELECT ssn FROM customers WHERE id <= 5 --\r"],
        NoLeak,
    ),
];

/// Runs every statement with the simple protocol; everything received lands in `seen`.
async fn run_simple(port: u16, (role, options, steps, _): &Steps) -> Seen {
    let mut s = session_with(config(port, role, *options)).await;
    let mut seen = Seen::default();
    for sql in *steps {
        seen.errors.clear();
        seen.simple(&mut s, sql).await;
    }
    seen
}

/// Runs every statement with the extended protocol (tokio-postgres, binary results).
async fn run_extended(port: u16, (role, options, steps, _): &Steps) -> Seen {
    let mut s = session_with(config(port, role, *options)).await;
    let mut seen = Seen::default();
    for sql in *steps {
        seen.errors.clear();
        match s.client.query_raw(*sql, std::iter::empty::<i32>()).await {
            Ok(stream) => seen.absorb_rows(stream).await,
            Err(e) => seen.error(&e),
        }
        s.drain_notices(&mut seen);
    }
    seen
}

/// Runs every statement as a raw simple Query: every byte counts (notifications too).
async fn run_raw(addr: std::net::SocketAddr, (role, _, steps, _): &Steps) -> Seen {
    let mut raw = raw_in(addr, role, DB).await;
    let mut seen = Seen::default();
    for sql in *steps {
        seen.errors.clear();
        let msgs = raw.query(sql).await;
        seen.absorb(&msgs);
    }
    seen
}

async fn corpus(name: &str, cases: &[Steps], with_options: bool) {
    setup().await;
    let oracle = &crm().oracle;
    // Straight to PostgreSQL every case leaks, or it would prove nothing.
    for case in cases {
        let seen = run_simple(cluster().port(), case).await;
        assert!(
            !oracle.leaks(&seen).is_empty(),
            "{name}: {:?} does not leak against PostgreSQL directly ({} rows, errors {:?}, values {:?})",
            case.2,
            seen.rows,
            seen.errors,
            seen.values
                .iter()
                .map(|(p, v)| (p, String::from_utf8_lossy(v)))
                .collect::<Vec<_>>()
        );
    }
    let proxy = crm_proxy().await;
    let mut failures = Vec::new();
    for case in cases {
        let label = format!("{} {:?}", case.0, case.2);
        let seen = run_simple(proxy.addr.port(), case).await;
        failures.extend(judge(&format!("{label} (simple)"), case.3, &seen, oracle));
        let seen = run_extended(proxy.addr.port(), case).await;
        failures.extend(judge(&format!("{label} (extended)"), NoLeak, &seen, oracle));
        if !with_options || case.1.is_none() {
            let seen = run_raw(proxy.addr, case).await;
            failures.extend(judge(&format!("{label} (raw)"), NoLeak, &seen, oracle));
        }
    }
    report(name, cases.len() * 3, &failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_name_resolution() {
    corpus("name resolution", NAMES, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_statement_splits() {
    corpus("statement splits", SPLITS, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_side_channels() {
    corpus("side channels", SIDE_CHANNELS, false).await;
    // Notifications: the payload a trigger chose never reaches a restricted listener.
    let proxy = crm_proxy().await;
    let mut raw = raw_in(proxy.addr, "support", DB).await;
    raw.query("LISTEN crm_chan").await;
    let msgs = raw
        .query("UPDATE customers SET city = city WHERE id = 4")
        .await;
    let notification = msgs.iter().find(|m| m.tag == b'A').expect("a notification");
    assert!(
        notification.body.ends_with(b"crm_chan\0\0"),
        "payload emptied"
    );
    let mut seen = Seen::default();
    seen.absorb(&msgs);
    assert!(crm().oracle.leaks(&seen).is_empty());
}

/// Statements no protected column reaches keep the server's own error text: a unique
/// violation's DETAIL, a division by zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_pass_unchanged_when_no_protected_column_is_involved() {
    setup().await;
    let proxy = crm_proxy().await;
    let s = session_with(config(proxy.addr.port(), "support", None)).await;
    let d = session_with(config(cluster().port(), "support", None)).await;
    for c in [&s.client, &d.client] {
        c.batch_execute("DELETE FROM plain WHERE id = 77")
            .await
            .unwrap();
    }
    let sql = "INSERT INTO plain VALUES (77, 'a')";
    s.client.batch_execute(sql).await.unwrap();
    let via = s.client.batch_execute(sql).await.unwrap_err();
    let direct = d.client.batch_execute(sql).await.unwrap_err();
    let (via, direct) = (via.as_db_error().unwrap(), direct.as_db_error().unwrap());
    assert_eq!(via.code().code(), "23505");
    assert_eq!(via.message(), direct.message());
    assert_eq!(via.detail(), direct.detail());
    assert!(via.detail().unwrap().contains("(id)=(77)"));
    let e = s.client.batch_execute("SELECT 1/0").await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().message(), "division by zero");
    // The same kind of error about a protected column is rebuilt (TG140), SQLSTATE kept.
    let e = s
        .client
        .batch_execute("UPDATE customers SET city = 'raise' WHERE id = 5")
        .await
        .unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "P0001");
    assert!(
        db.message().starts_with("tokengate TG140"),
        "{}",
        db.message()
    );
}

// ---------------------------------------------------------------------------------------------
// Message-level corpora (classes 2 and 3): scripts of frontend messages sent at once.

/// A frontend message of a script.
#[derive(Clone, Copy)]
enum M {
    /// Parse(statement, sql)
    P(&'static str, &'static str),
    /// Bind(portal, statement), text results
    B(&'static str, &'static str),
    /// Execute(portal)
    E(&'static str),
    S,
    /// Flush
    H,
    Q(&'static str),
    /// CopyData
    Cd(&'static str),
    CopyDone,
    CopyFail,
}

fn encode(script: &[M]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in script {
        match *m {
            M::P(name, sql) => out.extend(parse_msg(name, sql)),
            M::B(portal, stmt) => out.extend(bind_msg(portal, stmt, &[], 0)),
            M::E(portal) => out.extend(execute_msg(portal, 0)),
            M::S => out.extend(sync_msg()),
            M::H => out.extend(flush_msg()),
            M::Q(sql) => {
                let mut body = sql.as_bytes().to_vec();
                body.push(0);
                out.extend(frame(b'Q', &body));
            }
            M::Cd(data) => out.extend(frame(b'd', data.as_bytes())),
            M::CopyDone => out.extend(frame(b'c', &[])),
            M::CopyFail => out.extend(frame(b'f', b"stop\0")),
        }
    }
    out
}

/// (role, script, ReadyForQuery messages the server sends for it). Each script ends by
/// reading protected rows, which must arrive masked.
type Script = (&'static str, &'static [M], usize);

const SSN: &str = "SELECT ssn FROM customers WHERE id <= 5";
const BENIGN: &str = "SELECT city AS ssn FROM customers WHERE id <= 5";

/// Class 2: the server keeps the protected definition; tokengate must too.
const BOOKKEEPING: &[Script] = &[
    // A named statement re-Parsed: "already exists", the old one runs.
    (
        "support",
        &[
            M::P("s1", SSN),
            M::S,
            M::P("s1", BENIGN),
            M::S,
            M::B("", "s1"),
            M::E(""),
            M::S,
        ],
        3,
    ),
    // PREPARE twice: the second fails, EXECUTE runs the first.
    (
        "support",
        &[
            M::Q("PREPARE p2 AS SELECT ssn FROM customers WHERE id <= 5"),
            M::Q("PREPARE p2 AS SELECT city AS ssn FROM customers WHERE id <= 5"),
            M::Q("EXECUTE p2"),
        ],
        3,
    ),
    // A cursor re-declared inside a savepoint that is rolled back.
    (
        "support",
        &[
            M::Q("BEGIN"),
            M::Q("DECLARE c3 CURSOR FOR SELECT ssn FROM customers WHERE id <= 5"),
            M::Q("SAVEPOINT a"),
            M::Q("DECLARE c3 CURSOR FOR SELECT city AS ssn FROM customers"),
            M::Q("ROLLBACK TO a"),
            M::Q("FETCH ALL FROM c3"),
            M::Q("COMMIT"),
        ],
        7,
    ),
    // DEALLOCATE and PREPARE in an aborted transaction both fail.
    (
        "support",
        &[
            M::Q("PREPARE p4 AS SELECT ssn FROM customers WHERE id <= 5"),
            M::Q("BEGIN"),
            M::Q("SELECT 1/0"),
            M::Q("DEALLOCATE p4"),
            M::Q("PREPARE p4 AS SELECT city AS ssn FROM customers WHERE id <= 5"),
            M::Q("ROLLBACK"),
            M::Q("EXECUTE p4"),
        ],
        7,
    ),
    // A named portal re-bound inside a rolled-back savepoint: "already exists".
    (
        "support",
        &[
            M::Q("BEGIN"),
            M::P("s5", SSN),
            M::P("s5b", BENIGN),
            M::B("p5", "s5"),
            M::S,
            M::Q("SAVEPOINT a"),
            M::B("p5", "s5b"),
            M::S,
            M::Q("ROLLBACK TO a"),
            M::E("p5"),
            M::S,
            M::Q("COMMIT"),
        ],
        7,
    ),
    // The same name re-Parsed in one pipeline, before any reply.
    (
        "support",
        &[
            M::P("s6", "SELECT ssn, birth_date FROM customers WHERE id <= 5"),
            M::P(
                "s6",
                "SELECT city AS ssn, created_at::date AS birth_date FROM customers WHERE id <= 5",
            ),
            M::S,
            M::B("", "s6"),
            M::E(""),
            M::S,
        ],
        2,
    ),
];

/// Class 3: the server ignores Sync and Flush during COPY FROM STDIN.
const COPY_REPLIES: &[Script] = &[
    // tokio-postgres copy_in's order: Bind, Execute, Sync, CopyData, CopyDone, Sync.
    (
        "support",
        &[
            M::P("", "COPY copy_sink FROM STDIN"),
            M::B("", ""),
            M::E(""),
            M::S,
            M::Cd("1\tx\n"),
            M::CopyDone,
            M::S,
            M::Q(SSN),
        ],
        2,
    ),
    (
        "support",
        &[
            M::P("", "COPY copy_sink FROM STDIN"),
            M::B("", ""),
            M::E(""),
            M::H,
            M::S,
            M::Cd("2\ty\n"),
            M::H,
            M::S,
            M::CopyDone,
            M::S,
            M::P("", SSN),
            M::B("", ""),
            M::E(""),
            M::S,
        ],
        2,
    ),
    (
        "support",
        &[
            M::P("", "COPY copy_sink FROM STDIN"),
            M::B("", ""),
            M::E(""),
            M::S,
            M::Cd("3\tz\n"),
            M::CopyFail,
            M::S,
            M::Q(SSN),
        ],
        2,
    ),
    (
        "support",
        &[
            M::Q("COPY copy_sink FROM STDIN"),
            M::S,
            M::Cd("4\tw\n"),
            M::CopyDone,
            M::Q(SSN),
        ],
        2,
    ),
    (
        "analyst",
        &[
            M::P("", "COPY copy_sink FROM STDIN"),
            M::B("", ""),
            M::E(""),
            M::S,
            M::CopyDone,
            M::S,
            M::P("", "COPY copy_sink FROM STDIN"),
            M::B("", ""),
            M::E(""),
            M::S,
            M::Cd("5\tv\n"),
            M::CopyDone,
            M::S,
            M::Q("SELECT ssn, phone FROM public.customers WHERE id <= 5"),
        ],
        3,
    ),
];

async fn run_script(addr: std::net::SocketAddr, (role, script, readies): &Script) -> Seen {
    let mut raw = raw_in(addr, role, DB).await;
    raw.send(&encode(script)).await;
    let mut seen = Seen::default();
    for _ in 0..*readies {
        let msgs = raw.until_ready().await;
        seen.absorb(&msgs);
    }
    seen
}

async fn scripts(name: &str, cases: &[Script]) {
    setup().await;
    let oracle = &crm().oracle;
    for case in cases {
        let seen = run_script(
            std::net::SocketAddr::from(([127, 0, 0, 1], cluster().port())),
            case,
        )
        .await;
        assert!(
            !oracle.leaks(&seen).is_empty() && seen.rows > 0,
            "{name}: script {} does not read protected rows directly ({} rows, errors {:?})",
            cases
                .iter()
                .position(|c| std::ptr::eq(c, case))
                .unwrap_or(0),
            seen.rows,
            seen.errors
        );
    }
    let proxy = crm_proxy().await;
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let seen = run_script(proxy.addr, case).await;
        let label = format!("{name} script {i} as {}", case.0);
        failures.extend(judge(&label, NoLeak, &seen, oracle));
        if seen.rows == 0 {
            failures.push(format!(
                "[{label}] the protected rows did not arrive (masked)"
            ));
        }
    }
    report(name, cases.len(), &failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_bookkeeping_before_confirmation() {
    scripts("bookkeeping", BOOKKEEPING).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_syncs_ignored_during_copy() {
    scripts("copy replies", COPY_REPLIES).await;
}

/// tokio-postgres `copy_in` sends a Sync the server ignores; the statements after it must still
/// be protected, on the simple and the extended protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_then_protected_reads_stay_protected() {
    use futures_util::SinkExt;
    setup().await;
    let proxy = crm_proxy().await;
    let oracle = &crm().oracle;
    let mut s = session_with(config(proxy.addr.port(), "support", None)).await;
    for round in 0..2 {
        let sink = s
            .client
            .copy_in("COPY copy_sink FROM STDIN")
            .await
            .expect("copy_in");
        let mut sink = std::pin::pin!(sink);
        sink.send(bytes::Bytes::from_static(b"9\tcopied\n"))
            .await
            .unwrap();
        assert_eq!(sink.finish().await.unwrap(), 1, "round {round}");
        let mut seen = Seen::default();
        seen.simple(&mut s, "SELECT ssn, email FROM customers WHERE id <= 20")
            .await;
        let rows = s
            .client
            .query_raw(
                "SELECT ssn, phone FROM customers WHERE id <= 20",
                std::iter::empty::<i32>(),
            )
            .await
            .unwrap();
        seen.absorb_rows(rows).await;
        assert_eq!(seen.rows, 40);
        assert!(
            oracle.leaks(&seen).is_empty(),
            "round {round}: {:?}",
            oracle.leaks(&seen)
        );
    }
}

/// Cache hits and misses, and clear roles' statements and rows, are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_cache_use_and_clear_roles() {
    setup().await;
    let proxy = crm_proxy().await;
    let admin = session_with(config(proxy.addr.port(), "app_admin", None)).await;
    let rows = admin
        .client
        .query("SELECT email FROM customers WHERE id <= 3", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    admin
        .client
        .simple_query("SELECT id FROM customers WHERE id <= 2")
        .await
        .unwrap();
    let support = session_with(config(proxy.addr.port(), "support", None)).await;
    for _ in 0..2 {
        support
            .client
            .simple_query("SELECT email FROM customers WHERE id = 7")
            .await
            .unwrap();
    }
    let text = metrics_text(&proxy).await;
    assert!(
        metric(
            &text,
            "tokengate_statements_by_role_total{role=\"app_admin\",decision=\"clear\"}"
        ) >= 2.0,
        "{text}"
    );
    assert!(metric(&text, "tokengate_rows_total{role=\"app_admin\"}") >= 5.0);
    assert!(metric(&text, "tokengate_rows_total{role=\"support\"}") >= 2.0);
    assert!(metric(&text, "tokengate_analysis_cache_hits_total") >= 1.0);
    assert!(metric(&text, "tokengate_analysis_cache_misses_total") >= 1.0);
}

/// TG110 on every path: the server's description of a result (simple Query RowDescription,
/// and the Describe tokengate sends before each restricted Execute) must agree with the
/// analysis. Here the catalog tokengate loaded is stale on purpose: an administrator swaps two
/// column names behind the session's back, so the analysis thinks `open` is unprotected while
/// the server returns the protected column under that name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptions_are_cross_checked_on_the_extended_protocol() {
    setup().await;
    let pg = &cluster().pg;
    pg.execute(
        DB,
        "CREATE TABLE public.swapped (id int, secret text, open text);
         INSERT INTO public.swapped SELECT id, ssn, city FROM public.customers WHERE id <= 10;
         GRANT SELECT ON public.swapped TO support;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "version: 1\nlabels:\n  ssn: { class: pii, token: digits, mask: \"***-**-####\" }\n\
         columns:\n  public.swapped.secret: ssn\n  public.customers.ssn: ssn\n\
         roles:\n  support: { pii: mask }\n  \"*\": { default: deny }\n",
    )
    .unwrap();
    let keys = crm().keys.clone();
    let proxy = proxy_with(|c| {
        c.policy = Some(policy.clone());
        c.keys = Some(keys);
        c.catalog_user = Some("postgres".into());
        c.catalog_password = Some(SUPERUSER_PW.into());
    })
    .await;
    let s = session_with(config(proxy.addr.port(), "support", None)).await;
    // The session has its catalog; now the columns trade names.
    s.client.simple_query("SELECT 1").await.unwrap();
    pg.execute(
        DB,
        "ALTER TABLE public.swapped RENAME secret TO tmp;
         ALTER TABLE public.swapped RENAME open TO secret;
         ALTER TABLE public.swapped RENAME tmp TO open;",
    )
    .await
    .unwrap();
    let oracle = &crm().oracle;
    let mut seen = Seen::default();
    let mut session = s;
    seen.simple(&mut session, "SELECT open FROM swapped").await;
    assert!(
        seen.errors.iter().any(|e| e.message.contains("TG110")),
        "{:?}",
        seen.errors
    );
    let mut ext = Seen::default();
    match session
        .client
        .query_raw("SELECT open FROM swapped", std::iter::empty::<i32>())
        .await
    {
        Ok(rows) => ext.absorb_rows(rows).await,
        Err(e) => ext.error(&e),
    }
    assert!(
        ext.errors.iter().any(|e| e.message.contains("TG110")),
        "{:?}",
        ext.errors
    );
    assert!(oracle.leaks(&seen).is_empty() && oracle.leaks(&ext).is_empty());
    // Directly, the same statement returns the SSNs.
    let d = session_with(config(cluster().port(), "support", None)).await;
    let rows = d
        .client
        .query("SELECT open FROM swapped", &[])
        .await
        .unwrap();
    let mut direct = Seen::default();
    for r in &rows {
        direct.row(r, "direct");
    }
    assert!(!oracle.leaks(&direct).is_empty());
}

/// ParameterStatus: settings set from literals work for restricted roles; a reported setting
/// that changes in a message that also ran a statement involving protected columns ends the
/// session (PostgreSQL reports changes just before ReadyForQuery, so the change cannot be tied
/// to one statement, and `set_config(name, <protected value>)` would otherwise be read back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_settings_cannot_carry_protected_values() {
    setup().await;
    let proxy = crm_proxy().await;
    let s = session_with(config(proxy.addr.port(), "support", None)).await;
    s.client
        .batch_execute("SET application_name = 'tg-app'")
        .await
        .unwrap();
    let rows = s
        .client
        .simple_query("SHOW application_name")
        .await
        .unwrap();
    let shown = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(shown.as_deref(), Some("tg-app"));
    s.client
        .execute("SET application_name = 'tg-app2'", &[])
        .await
        .unwrap();
    let mut raw = raw_in(proxy.addr, "support", DB).await;
    let msgs = raw
        .query("SELECT email FROM customers WHERE id = 1; SET application_name = 'y'")
        .await;
    let e = msgs
        .iter()
        .find(|m| m.tag == b'E')
        .expect("the session is ended");
    assert!(
        e.field(b'M').unwrap().contains("TG021"),
        "{:?}",
        e.field(b'M')
    );
    assert!(msgs.last().is_some_and(|m| m.tag != b'Z'));
    assert!(raw.recv().await.is_none(), "the connection is closed");
}

/// An attacker who read the own-notification rule (a payload the session itself wrote as a
/// literal is delivered whole) sends the value it guesses as a literal first, then makes a
/// DBA's trigger notify the stored value on the same channel from the same backend. The
/// trigger's notification must still arrive empty: a literal is delivered whole once, so it
/// cannot stand as a guess that a later notification confirms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_own_notification_literal_is_no_standing_guess() {
    setup().await;
    let admin = session_with(config(cluster().port(), "app_admin", None)).await;
    let ssn: String = admin
        .client
        .query_one("SELECT ssn FROM customers WHERE id = 4", &[])
        .await
        .unwrap()
        .get(0);
    let proxy = crm_proxy().await;
    let mut raw = raw_in(proxy.addr, "support", DB).await;
    raw.query("LISTEN crm_chan").await;
    // The session's own literal comes back whole (nothing in it is from the database).
    let msgs = raw.query(&format!("NOTIFY crm_chan, '{ssn}'")).await;
    let own = msgs
        .iter()
        .find(|m| m.tag == b'A')
        .expect("own notification");
    assert!(own.body.ends_with(format!("crm_chan\0{ssn}\0").as_bytes()));
    // The trigger's notification with the same (correctly guessed) value: empty.
    let msgs = raw
        .query("UPDATE customers SET city = city WHERE id = 4")
        .await;
    let notification = msgs.iter().find(|m| m.tag == b'A').expect("a notification");
    assert!(
        notification.body.ends_with(b"crm_chan\0\0"),
        "a guessed payload must not be confirmed"
    );
}
