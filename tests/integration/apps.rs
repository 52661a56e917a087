//! Issue 10: restricted roles run real applications and tools unchanged.
//!
//! The demo CRM, the demo's `support` role (pii and financial masked, health denied). Every check
//! runs twice, as `support` straight to PostgreSQL and as `support` through tokengate, on fresh
//! sessions: a check that reads no protected column must give exactly the same result (rows,
//! command tags, notifications, and errors down to SQLSTATE, DETAIL, HINT and position). Checks
//! that do read a protected column must get the documented refusal or transform instead.
use std::sync::{Arc, Mutex};
use tokengate::demo;
use tokio_postgres::{Client, SimpleQueryMessage};

const SUPPORT: (&str, &str) = ("support", "support-demo-pw");

/// A client whose notifications are collected, in arrival order.
struct Session {
    client: Client,
    notes: Arc<Mutex<Vec<String>>>,
}

async fn session(port: u16) -> Session {
    use futures_util::StreamExt;
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(SUPPORT.0)
        .password(SUPPORT.1)
        .dbname(demo::DATABASE);
    let (client, mut conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let notes = Arc::new(Mutex::new(Vec::new()));
    let sink = notes.clone();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(message)) = stream.next().await {
            match message {
                tokio_postgres::AsyncMessage::Notification(n) => {
                    if let Ok(mut v) = sink.lock() {
                        v.push(format!("notify {} {}", n.channel(), n.payload()));
                    }
                }
                tokio_postgres::AsyncMessage::Notice(n) => {
                    if let Ok(mut v) = sink.lock() {
                        v.push(format!("notice {} {}", n.code().code(), n.message()));
                    }
                }
                _ => {}
            }
        }
    });
    Session { client, notes }
}

/// Everything PostgreSQL says about an error a client can see.
fn render_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!(
            "ERROR {} {} | detail {:?} | hint {:?} | position {:?}",
            d.code().code(),
            d.message(),
            d.detail(),
            d.hint(),
            d.position()
        ),
        None => format!("ERROR {e}"),
    }
}

async fn simple(client: &Client, sql: &str) -> String {
    match client.simple_query(sql).await {
        Ok(messages) => {
            let mut out = String::new();
            for m in messages {
                match m {
                    SimpleQueryMessage::Row(r) => {
                        let cells: Vec<&str> =
                            (0..r.len()).map(|i| r.get(i).unwrap_or("NULL")).collect();
                        out.push_str(&cells.join("|"));
                        out.push('\n');
                    }
                    SimpleQueryMessage::CommandComplete(n) => out.push_str(&format!("ok {n}\n")),
                    _ => {}
                }
            }
            out
        }
        Err(e) => render_error(&e),
    }
}

/// Runs `steps` on a fresh session and renders every result, then the notifications seen.
async fn script(port: u16, steps: &[&str]) -> String {
    let s = session(port).await;
    let mut out = String::new();
    for step in steps {
        out.push_str(&format!("> {step}\n{}\n", simple(&s.client, step).await));
    }
    // One more round trip so every notification sent so far has been read.
    let _ = s.client.simple_query("SELECT 1").await;
    let notes = s.notes.lock().map(|v| v.clone()).unwrap_or_default();
    for n in notes {
        out.push_str(&format!("{n}\n"));
    }
    out
}

/// Ordinary work that reads no protected column: the same result as straight to PostgreSQL.
const ORDINARY: &[(&str, &[&str])] = &[
    (
        "select unprotected",
        &["SELECT id, city FROM customers ORDER BY id LIMIT 3"],
    ),
    ("count", &["SELECT count(*) FROM customers"]),
    (
        "join",
        &[
            "SELECT c.id, p.amount FROM customers c JOIN payments p ON p.customer_id = c.id ORDER BY p.id LIMIT 3",
        ],
    ),
    (
        "group by",
        &["SELECT city, count(*) FROM customers GROUP BY city ORDER BY city"],
    ),
    (
        "distinct",
        &["SELECT DISTINCT city FROM customers ORDER BY 1"],
    ),
    (
        "cte",
        &["WITH x AS (SELECT city FROM customers) SELECT count(*) FROM x"],
    ),
    (
        "string_agg",
        &["SELECT string_agg(city, ',' ORDER BY id) FROM customers WHERE id < 4"],
    ),
    (
        "TABLE t",
        &[
            "CREATE TEMP TABLE tt (id int, v text)",
            "INSERT INTO tt VALUES (1, 'a'), (2, 'b')",
            "TABLE tt",
        ],
    ),
    (
        "FROM ONLY",
        &["SELECT id FROM ONLY customers ORDER BY id LIMIT 2"],
    ),
    (
        "FOR UPDATE",
        &[
            "BEGIN",
            "SELECT id FROM customers WHERE id = 1 FOR UPDATE",
            "COMMIT",
        ],
    ),
    (
        "FOR NO KEY UPDATE",
        &[
            "BEGIN",
            "SELECT id FROM customers WHERE id = 1 FOR NO KEY UPDATE",
            "COMMIT",
        ],
    ),
    (
        "LISTEN/NOTIFY",
        &["LISTEN ch", "NOTIFY ch, 'plain'", "UNLISTEN ch"],
    ),
    (
        "NOTIFY dollar payload",
        &["LISTEN ch", "NOTIFY ch, $$payload$$"],
    ),
    (
        "pg_notify",
        &["LISTEN ch", "SELECT pg_notify('ch', 'hello')"],
    ),
    (
        "set_config",
        &[
            "SELECT set_config('application_name', 'app10', false)",
            "SHOW application_name",
        ],
    ),
    (
        "set_config local",
        &[
            "BEGIN",
            "SELECT set_config('search_path', 'public', true)",
            "SHOW search_path",
            "COMMIT",
        ],
    ),
    (
        "current_setting",
        &["SELECT current_setting('search_path')"],
    ),
    (
        "advisory locks",
        &[
            "SELECT pg_advisory_lock(42)",
            "SELECT pg_try_advisory_lock(43)",
            "SELECT pg_advisory_unlock(42)",
            "SELECT pg_advisory_unlock_all()",
        ],
    ),
    (
        "information_schema.columns",
        &[
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns WHERE table_name = 'customers' ORDER BY ordinal_position",
        ],
    ),
    (
        "information_schema.tables",
        &[
            "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
        ],
    ),
    (
        "information_schema.schemata",
        &["SELECT schema_name FROM information_schema.schemata ORDER BY 1"],
    ),
    (
        "pg_prepared_statements",
        &[
            "PREPARE s1 AS SELECT id FROM customers WHERE id = $1",
            "SELECT name, statement FROM pg_prepared_statements",
            "EXECUTE s1(2)",
            "DEALLOCATE s1",
        ],
    ),
    (
        "temp table",
        &[
            "CREATE TEMP TABLE t1 (id int PRIMARY KEY, v text DEFAULT 'x' CHECK (v <> ''))",
            "INSERT INTO t1 (id) VALUES (1), (2)",
            "SELECT * FROM t1 ORDER BY id",
            "UPDATE t1 SET v = 'y' WHERE id = 2",
            "SELECT * FROM pg_temp.t1 ORDER BY id",
        ],
    ),
    (
        "temp table from unprotected",
        &[
            "CREATE TEMP TABLE t2 AS SELECT id, city FROM customers WHERE id < 4",
            "SELECT * FROM t2 ORDER BY id",
        ],
    ),
    (
        "savepoints",
        &[
            "CREATE TEMP TABLE t3 (id int)",
            "BEGIN",
            "INSERT INTO t3 VALUES (1)",
            "SAVEPOINT a",
            "INSERT INTO t3 VALUES (2)",
            "ROLLBACK TO SAVEPOINT a",
            "RELEASE SAVEPOINT a",
            "COMMIT",
            "SELECT * FROM t3",
        ],
    ),
    (
        "cursor MOVE",
        &[
            "BEGIN",
            "DECLARE c CURSOR FOR SELECT id FROM customers ORDER BY id",
            "MOVE 2 IN c",
            "FETCH 1 FROM c",
            "CLOSE c",
            "COMMIT",
        ],
    ),
    (
        "unique violation detail",
        &["UPDATE customers SET id = 2 WHERE id = 1"],
    ),
    (
        "unique violation on temp",
        &[
            "CREATE TEMP TABLE u (id int PRIMARY KEY)",
            "INSERT INTO u VALUES (1)",
            "INSERT INTO u VALUES (1)",
        ],
    ),
    ("unknown column", &["SELECT cit FROM customers"]),
    ("unknown relation", &["SELECT * FROM custmers"]),
    ("syntax error", &["SELECT id FRM customers"]),
    ("syntax error 2", &["SELEC 1"]),
    (
        "pg_size",
        &[
            "SELECT pg_size_pretty(pg_total_relation_size('customers')) IS NOT NULL, pg_relation_size('customers') >= 0",
        ],
    ),
    (
        "pg_get_expr",
        &[
            "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'customers'::regclass ORDER BY 1",
        ],
    ),
    (
        "pg_encoding_to_char",
        &[
            "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()",
        ],
    ),
    (
        "pg_function_is_visible",
        &["SELECT count(*) > 0 FROM pg_proc WHERE pg_function_is_visible(oid)"],
    ),
    (
        "format_type",
        &[
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'customers'::regclass AND attnum > 0 ORDER BY attnum",
        ],
    ),
    (
        "pg_get_indexdef",
        &[
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = 'customers'::regclass",
        ],
    ),
    (
        "pg_get_constraintdef",
        &[
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'payments'::regclass ORDER BY 1",
        ],
    ),
    (
        "privileges",
        &[
            "SELECT has_table_privilege('customers', 'select'), has_schema_privilege('public', 'usage')",
        ],
    ),
    (
        "regclass",
        &["SELECT to_regclass('customers')::text, 'customers'::regclass::oid > 0"],
    ),
    (
        "pg_class",
        &[
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace ORDER BY 1",
        ],
    ),
    (
        "session info",
        &[
            "SELECT current_user, session_user, current_database(), pg_backend_pid() > 0, txid_current() > 0",
        ],
    ),
    (
        "search_path",
        &[
            "SHOW search_path",
            "SET search_path TO public",
            "SELECT count(*) FROM customers",
        ],
    ),
    ("values", &["VALUES (1, 'a'), (2, 'b')"]),
    (
        "intersect",
        &["SELECT city FROM customers INTERSECT SELECT city FROM customers ORDER BY 1"],
    ),
    (
        "positional order",
        &["SELECT city, id FROM customers ORDER BY 2 DESC LIMIT 2"],
    ),
    (
        "update returning",
        &[
            "BEGIN",
            "UPDATE customers SET city = city WHERE id = 1 RETURNING id, city",
            "ROLLBACK",
        ],
    ),
    (
        "explain",
        &["EXPLAIN (COSTS OFF) SELECT id FROM customers WHERE id = 1"],
    ),
    (
        "discard",
        &[
            "SET application_name = 'z'",
            "DISCARD ALL",
            "SHOW application_name",
        ],
    ),
    (
        "generate_series",
        &["SELECT sum(g) FROM generate_series(1, 10) g"],
    ),
    ("pg_sleep", &["SELECT pg_sleep(0)"]),
    (
        "pg_typeof",
        &["SELECT pg_typeof(id), pg_typeof(city) FROM customers LIMIT 1"],
    ),
    (
        "obj_description",
        &["SELECT obj_description('customers'::regclass, 'pg_class')"],
    ),
];

/// Extended-protocol work through tokio-postgres, rendered for comparison.
async fn extended(port: u16) -> String {
    use futures_util::{SinkExt, TryStreamExt};
    let mut s = session(port).await;
    let c = &mut s.client;
    let mut out = String::new();
    macro_rules! note {
        ($label:expr, $e:expr) => {
            out.push_str(&format!("{}: {}\n", $label, $e))
        };
    }
    // Prepared statement with a parameter, run twice.
    match c
        .prepare("SELECT id, city FROM customers WHERE id = $1")
        .await
    {
        Ok(stmt) => {
            for id in [1i32, 3] {
                match c.query(&stmt, &[&id]).await {
                    Ok(rows) => note!(
                        "prepared",
                        rows.iter()
                            .map(|r| format!("{}|{}", r.get::<_, i32>(0), r.get::<_, String>(1)))
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                    Err(e) => note!("prepared", render_error(&e)),
                }
            }
        }
        Err(e) => note!("prepare", render_error(&e)),
    }
    // Temp table, COPY into it, then a pipelined batch.
    let r = c
        .batch_execute("CREATE TEMP TABLE imp (id int PRIMARY KEY, name text NOT NULL)")
        .await;
    note!(
        "create temp",
        r.map_or_else(|e| render_error(&e), |_| "ok".into())
    );
    match c.copy_in("COPY imp (id, name) FROM STDIN").await {
        Ok(sink) => {
            let sink = std::pin::pin!(sink);
            let mut sink = sink;
            let send = sink
                .send(bytes::Bytes::from_static(b"1\tone\n2\ttwo\n3\tthree\n"))
                .await;
            let done = match send {
                Ok(()) => sink.as_mut().finish().await,
                Err(e) => Err(e),
            };
            note!(
                "copy in",
                done.map_or_else(|e| render_error(&e), |n| n.to_string())
            );
        }
        Err(e) => note!("copy in", render_error(&e)),
    }
    match c
        .prepare("INSERT INTO imp (id, name) VALUES ($1, $2)")
        .await
    {
        Ok(insert) => {
            let (a, b, d) = tokio::join!(
                c.execute(&insert, &[&10i32, &"ten"]),
                c.execute(&insert, &[&11i32, &"eleven"]),
                c.query("SELECT count(*)::int FROM imp", &[]),
            );
            note!(
                "pipeline",
                format!(
                    "{:?} {:?} {:?}",
                    a.map_err(|e| render_error(&e)),
                    b.map_err(|e| render_error(&e)),
                    d.map(|r| r.first().map(|r| r.get::<_, i32>(0)))
                        .map_err(|e| render_error(&e))
                )
            );
        }
        Err(e) => note!("pipeline prepare", render_error(&e)),
    }
    match c.query("SELECT id, name FROM imp ORDER BY id", &[]).await {
        Ok(rows) => note!(
            "imp",
            rows.iter()
                .map(|r| format!("{}|{}", r.get::<_, i32>(0), r.get::<_, String>(1)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Err(e) => note!("imp", render_error(&e)),
    }
    // COPY out of an unprotected projection.
    match c
        .copy_out("COPY (SELECT id, city FROM customers WHERE id < 4 ORDER BY id) TO STDOUT")
        .await
    {
        Ok(stream) => {
            let chunks: Result<Vec<bytes::Bytes>, _> = stream.try_collect().await;
            note!(
                "copy out",
                chunks.map_or_else(
                    |e| render_error(&e),
                    |c| String::from_utf8_lossy(&c.concat()).into_owned()
                )
            );
        }
        Err(e) => note!("copy out", render_error(&e)),
    }
    // A transaction with a savepoint.
    match c.transaction().await {
        Ok(mut tx) => {
            let r = tx
                .execute("INSERT INTO imp VALUES (20, 'twenty')", &[])
                .await;
            note!(
                "tx insert",
                format!("{:?}", r.map_err(|e| render_error(&e)))
            );
            if let Ok(sp) = tx.savepoint("sp").await {
                let r = sp.execute("INSERT INTO imp VALUES (21, 'x')", &[]).await;
                note!(
                    "sp insert",
                    format!("{:?}", r.map_err(|e| render_error(&e)))
                );
                let _ = sp.rollback().await;
            }
            let r = tx.commit().await;
            note!("commit", format!("{:?}", r.map_err(|e| render_error(&e))));
        }
        Err(e) => note!("tx", render_error(&e)),
    }
    let r = c.query_one("SELECT count(*)::int FROM imp", &[]).await;
    note!(
        "count",
        format!(
            "{:?}",
            r.map(|r| r.get::<_, i32>(0)).map_err(|e| render_error(&e))
        )
    );
    // A protocol-level portal, read in pieces.
    match c.transaction().await {
        Ok(tx) => {
            match tx
                .bind("SELECT id FROM customers ORDER BY id LIMIT 5", &[])
                .await
            {
                Ok(portal) => {
                    let first = tx.query_portal(&portal, 2).await;
                    let rest = tx.query_portal(&portal, 10).await;
                    note!(
                        "portal",
                        format!(
                            "{:?} {:?}",
                            first.map(|r| r.len()).map_err(|e| render_error(&e)),
                            rest.map(|r| r.len()).map_err(|e| render_error(&e))
                        )
                    );
                }
                Err(e) => note!("portal", render_error(&e)),
            }
            let _ = tx.commit().await;
        }
        Err(e) => note!("portal tx", render_error(&e)),
    }
    // Errors with parameters: the server's own message.
    let r = c
        .query("SELECT cit FROM customers WHERE id = $1", &[&1i32])
        .await;
    note!(
        "unknown column",
        format!("{:?}", r.map(|r| r.len()).map_err(|e| render_error(&e)))
    );
    out
}

/// psql meta-commands and tools, compared as whole outputs.
const PSQL: &[&str] = &[
    "\\d",
    "\\d customers",
    "\\d+ customers",
    "\\dt",
    "\\di",
    "\\dv",
    "\\df",
    "\\dn",
    "\\du",
    "\\l",
    "\\dT",
    "\\ds",
    "\\dx",
    "\\dp customers",
    "\\d payments",
];

fn psql(bindir: &std::path::Path, port: u16, command: &str) -> (bool, String, String) {
    let out = std::process::Command::new(bindir.join("psql"))
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            SUPPORT.0,
            "-d",
            demo::DATABASE,
            "-c",
            command,
        ])
        .env("PGPASSWORD", SUPPORT.1)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSSLMODE")
        .output()
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const PYTHON: &str = r#"
import sys, psycopg
port = int(sys.argv[1])
out = []
def run(label, f):
    try:
        out.append(f"{label}: {f()}")
    except psycopg.Error as e:
        d = e.diag
        out.append(f"{label}: ERROR {d.sqlstate} {d.message_primary} | {d.message_detail} | {d.message_hint}")
with psycopg.connect(host="127.0.0.1", port=port, user="support", password="support-demo-pw", dbname="crm", autocommit=True) as c:
    run("prepared", lambda: [c.execute("SELECT id, city FROM customers WHERE id = %s", (i,), prepare=True).fetchall() for i in (1, 2, 3)])
    run("temp", lambda: c.execute("CREATE TEMP TABLE py (id int PRIMARY KEY, name text)").statusmessage)
    def many():
        with c.cursor() as cur:
            cur.executemany("INSERT INTO py VALUES (%s, %s)", [(1, "a"), (2, "b"), (3, "c")])
        return c.execute("SELECT count(*) FROM py").fetchone()
    run("executemany", many)
    def copy():
        with c.cursor() as cur:
            with cur.copy("COPY py (id, name) FROM STDIN") as cp:
                cp.write_row((10, "ten"))
                cp.write_row((11, "eleven"))
        return c.execute("SELECT id, name FROM py ORDER BY id").fetchall()
    run("copy", copy)
    def pipeline():
        with c.pipeline():
            a = c.execute("SELECT count(*) FROM customers")
            b = c.execute("SELECT city FROM customers WHERE id = %s", (2,))
        return (a.fetchone(), b.fetchone())
    run("pipeline", pipeline)
    run("info", lambda: c.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1").fetchall())
    run("set_config", lambda: c.execute("SELECT set_config('application_name', 'py', false)").fetchone())
    run("unique", lambda: c.execute("INSERT INTO py VALUES (1, 'dup')").statusmessage)
    run("typo", lambda: c.execute("SELECT nme FROM py").fetchall())
    def types():
        from psycopg.types import TypeInfo
        t = TypeInfo.fetch(c, "int4")
        return (t.name, t.oid)
    run("typeinfo", types)
print("\n".join(out))
"#;

fn python(port: u16) -> Option<String> {
    let out = std::process::Command::new("python3")
        .args(["-c", PYTHON, &port.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No module named 'psycopg'") {
            return None;
        }
        return Some(format!("python failed: {err}"));
    }
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs one driver's check program (tests/clients) against a port: its transcript, or `None`
/// when the driver is not installed.
type ClientRun = fn(u16, bool) -> Option<String>;

fn clients_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn transcript(mut command: std::process::Command) -> Option<String> {
    let out = command.output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Some(text)
    } else {
        Some(format!(
            "FATAL exit {:?}\n{text}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// node-postgres (`pg`), from `TOKENGATE_NODE_MODULES` or where .ci/run installs it. With
/// `tls`, TLS to the server and SCRAM channel binding (`enableChannelBinding`).
fn node(port: u16, tls: bool) -> Option<String> {
    let modules = std::env::var_os("TOKENGATE_NODE_MODULES")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| std::path::PathBuf::from(h).join(".cache/tokengate-clients/node_modules"))
        })?;
    if !modules.join("pg").is_dir() {
        return None;
    }
    let mut c = std::process::Command::new("node");
    c.arg(clients_dir().join("node_check.js"))
        .arg(port.to_string())
        .env("NODE_PATH", modules)
        .env("TG_TLS", if tls { "1" } else { "0" });
    transcript(c)
}

/// pgjdbc at its default settings (sslmode=prefer), from `TOKENGATE_PGJDBC` or Debian's
/// libpostgresql-jdbc-java, which .ci/run installs.
fn jdbc(port: u16, _tls: bool) -> Option<String> {
    let jar = std::env::var_os("TOKENGATE_PGJDBC")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/share/java/postgresql.jar".into());
    if !jar.is_file() {
        return None;
    }
    let mut c = std::process::Command::new("java");
    c.arg("-cp")
        .arg(jar)
        .arg(clients_dir().join("JdbcCheck.java"))
        .arg(port.to_string());
    transcript(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_role_runs_applications_unchanged() {
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    // Read-path only: these checks compare with a direct connection, which would see
    // tokens in the columns the demo stores as tokens.
    let d = demo::start_with(any, None, 30, &demo::read_path_only_policy(), None)
        .await
        .expect("demo starts");
    let direct = d.pg.port();
    let bindir = d.pg.bindir().to_path_buf();
    // The demo's policy: support masks pii and financial, denies health.
    let demo_failures = differences(direct, d.server.addr.port(), &bindir, false).await;
    // A policy labelling one column no check reads (`customers.ssn`), support masking it.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("one.yaml");
    std::fs::write(
        &policy,
        "version: 1\nlabels:\n  ssn: { class: pii, mask: \"***-**-####\" }\n\
         columns:\n  public.customers.ssn: ssn\nroles:\n  support: { pii: mask }\n  \"*\": { default: deny }\n",
    )
    .unwrap();
    let keys = dir.path().join("keys.json");
    tokengate::protect::KeyRing::generate("default")
        .write_new(&keys, true)
        .unwrap();
    let mut config = tokengate::config::ServeConfig::for_upstream(
        tokengate::config::Upstream::parse(&format!(
            "postgres://127.0.0.1:{}?sslmode=disable",
            d.pg.port()
        ))
        .unwrap(),
    );
    config.listen = any;
    config.policy = Some(policy);
    config.keys = Some(keys);
    config.catalog_user = Some("postgres".into());
    config.catalog_password = Some(d.pg.superuser_password().to_string());
    let one = tokengate::server::RunningServer::start(config)
        .await
        .unwrap();
    let one_failures = differences(direct, one.addr.port(), &bindir, false).await;
    one.shutdown().await;
    assert!(
        demo_failures.is_empty() && one_failures.is_empty(),
        "demo policy: {} checks differ; one labelled column: {} differ",
        demo_failures.len(),
        one_failures.len()
    );
    d.server.shutdown().await;
    let pg = d.pg;
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap();
}

/// The same checks in the usual production setup: PostgreSQL with `ssl=on`, tokengate with
/// its own certificate and a TLS upstream, terminating SCRAM with `auth_query`, and every
/// client at its default settings (psql and psycopg: `sslmode=prefer`,
/// `channel_binding=prefer`, so SCRAM-SHA-256-PLUS over TLS on both legs; tokio-postgres
/// without a TLS connector: a plain client leg). Directly, the same clients use TLS too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_role_runs_applications_unchanged_with_tls_on_both_legs() {
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let files = crate::harness::cluster().tls_files();
    let pem = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let ssl = Some((pem(&files.cert), pem(&files.key)));
    let d = demo::start_with(any, None, 30, &demo::read_path_only_policy(), ssl)
        .await
        .expect("demo starts");
    d.pg.execute(
        demo::DATABASE,
        "CREATE ROLE tokengate_auth LOGIN PASSWORD 'auth-pw';
         CREATE SCHEMA tokengate;
         CREATE FUNCTION tokengate.get_auth(p_usename text, OUT usename name, OUT passwd text)
           RETURNS record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS
           $$ SELECT rolname, rolpassword FROM pg_authid
               WHERE rolname = p_usename AND rolcanlogin AND NOT rolsuper $$;
         REVOKE ALL ON FUNCTION tokengate.get_auth(text) FROM PUBLIC;
         GRANT USAGE ON SCHEMA tokengate TO tokengate_auth;
         GRANT EXECUTE ON FUNCTION tokengate.get_auth(text) TO tokengate_auth;",
    )
    .await
    .unwrap();
    let mut config = tokengate::config::ServeConfig::for_upstream(
        tokengate::config::Upstream::parse(&format!(
            "postgres://127.0.0.1:{}?sslmode=require",
            d.pg.port()
        ))
        .unwrap(),
    );
    config.listen = any;
    config.tls = Some(files);
    // The demo's own policy and key file.
    config.policy = Some(d.pg.socket_dir().join("demo-policy.yaml"));
    config.keys = Some(d.pg.socket_dir().join("demo-keys.json"));
    config.catalog_user = Some("postgres".into());
    config.catalog_password = Some(d.pg.superuser_password().to_string());
    config.auth_query = Some("SELECT usename, passwd FROM tokengate.get_auth($1)".into());
    config.auth_user = Some("tokengate_auth".into());
    config.auth_password = Some("auth-pw".into());
    let tls = tokengate::server::RunningServer::start(config)
        .await
        .unwrap();
    let bindir = d.pg.bindir().to_path_buf();
    // Both legs really are TLS: psql's client leg at its defaults, and the upstream leg of a
    // session through tokengate as the server sees it.
    for port in [d.pg.port(), tls.addr.port()] {
        let (ok, out, err) = psql(&bindir, port, "\\conninfo");
        assert!(ok && out.contains("SSL connection"), "{out}{err}");
    }
    let via = session(tls.addr.port()).await;
    let admin = crate::harness::connect(&{
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(d.pg.port())
            .user("postgres")
            .password(d.pg.superuser_password())
            .dbname(demo::DATABASE);
        c
    })
    .await;
    let row = admin
        .query_one(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
              WHERE a.usename = 'support'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<bool>>(0), Some(true));
    drop(via);
    let failures = differences(d.pg.port(), tls.addr.port(), &bindir, true).await;
    tls.shutdown().await;
    assert!(failures.is_empty(), "{} checks differ", failures.len());
    d.server.shutdown().await;
    let pg = d.pg;
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap();
}

/// Runs every check straight to PostgreSQL and through tokengate as `support`: the checks
/// whose results differ.
async fn differences(direct: u16, via: u16, bindir: &std::path::Path, tls: bool) -> Vec<String> {
    let mut failures = Vec::new();
    let mut total = 0;
    for (name, steps) in ORDINARY {
        total += 1;
        let (want, got) = (script(direct, steps).await, script(via, steps).await);
        if want != got {
            failures.push(format!(
                "[{name}]\n--- direct\n{want}--- via tokengate\n{got}"
            ));
        }
    }
    total += 1;
    let (want, got) = (extended(direct).await, extended(via).await);
    if want != got {
        failures.push(format!(
            "[tokio-postgres extended]\n--- direct\n{want}--- via tokengate\n{got}"
        ));
    }
    for command in PSQL {
        total += 1;
        let want = psql(bindir, direct, command);
        let got = psql(bindir, via, command);
        if want != got {
            failures.push(format!(
                "[psql {command}]\n--- direct\n{want:?}\n--- via tokengate\n{got:?}"
            ));
        }
    }
    // \conninfo names the port, which differs by design.
    total += 1;
    let got = psql(bindir, via, "\\conninfo");
    if !(got.0
        && got
            .1
            .contains("You are connected to database \"crm\" as user \"support\""))
    {
        failures.push(format!("[psql \\conninfo] {got:?}"));
    }
    match python(direct) {
        None => println!("note: psycopg is not installed; the Python driver checks are skipped"),
        Some(want) => {
            total += 1;
            let got = python(via).unwrap_or_default();
            if want != got {
                failures.push(format!(
                    "[psycopg]\n--- direct\n{want}--- via tokengate\n{got}"
                ));
            }
        }
    }
    for (name, run) in [("node-postgres", node as ClientRun), ("pgjdbc", jdbc)] {
        match run(direct, tls) {
            None => println!("note: {name} is not installed; its checks are skipped"),
            // The driver cannot run even straight to PostgreSQL (a JRE without the compiler
            // for single-file programs, a broken install): the environment, not tokengate.
            Some(want) if want.starts_with("FATAL") => {
                println!("note: {name} does not run here; its checks are skipped:\n{want}")
            }
            Some(want) => {
                total += 1;
                let got = run(via, tls).unwrap_or_default();
                if want != got {
                    failures.push(format!(
                        "[{name}]\n--- direct\n{want}--- via tokengate\n{got}"
                    ));
                }
            }
        }
    }
    for f in &failures {
        println!("{f}\n");
    }
    println!(
        "false refusals or differences: {} of {total} checks",
        failures.len()
    );
    failures
}

/// What a restricted role gets when a check does read a protected column: the documented
/// refusal (SQLSTATE 42501 and a TG code) or transform, never the clear value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_role_still_gets_no_protected_value() {
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    // Read-path only: these checks compare with a direct connection, which would see
    // tokens in the columns the demo stores as tokens.
    let d = demo::start_with(any, None, 10, &demo::read_path_only_policy(), None)
        .await
        .expect("demo starts");
    let via = d.server.addr.port();
    let admin = d.pg.connect_admin(demo::DATABASE).await.unwrap();
    let secrets: Vec<String> = admin
        .query("SELECT email FROM customers UNION ALL SELECT ssn FROM customers UNION ALL SELECT notes FROM visits", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    admin
        .batch_execute("CREATE UNIQUE INDEX customers_email ON customers (email)")
        .await
        .unwrap();
    // Extended protocol: a statement only the server can read is parsed there, then refused.
    let s = session(via).await;
    for sql in [
        "SELECT ssn FROM customers WHERE id BETWEEN SYMMETRIC 2 AND 1",
        "SELECT ssn FROM customers WHERE id = $1 AND id BETWEEN SYMMETRIC 0 AND 5",
    ] {
        let e = s.client.prepare(sql).await.err().map(|e| render_error(&e));
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("ERROR 42501 tokengate TG101")),
            "{sql}: {e:?}"
        );
        let r = s.client.query(sql, &[&1i32]).await;
        assert!(r.is_err(), "{sql}");
    }
    let e = s
        .client
        .prepare("SELECT ssn FROM custmers")
        .await
        .err()
        .map(|e| render_error(&e));
    assert!(e.is_some_and(|e| e.starts_with("ERROR 42P01 relation \"custmers\" does not exist")));
    assert_eq!(simple(&s.client, "SELECT 1").await, "1\nok 1\n");
    let refused = |out: &str, code: &str| {
        out.contains("ERROR 42501") && out.contains(code)
            || panic!("expected a {code} refusal, got:\n{out}")
    };
    for (steps, code) in [
        (
            &[
                "LISTEN ch",
                "SELECT pg_notify('ch', email) FROM customers WHERE id = 1",
            ][..],
            "TG171",
        ),
        (
            &[
                "SELECT set_config('app.x', ssn, false) FROM customers WHERE id = 1",
                "SELECT current_setting('app.x', true)",
            ][..],
            "TG171",
        ),
        (
            &["SELECT pg_advisory_lock(hashtext(ssn)) FROM customers WHERE id = 1"][..],
            "TG171",
        ),
        (
            &["SELECT query_to_xml('select ssn from customers', true, true, '')"][..],
            "TG172",
        ),
        (&["SELECT query FROM pg_stat_activity"][..], "TG172"),
        // By design: pg_stat_activity shows other sessions' statement text, so even the
        // session's own row is refused (TG172).
        (
            &["SELECT state FROM pg_stat_activity WHERE pid = pg_backend_pid()"][..],
            "TG172",
        ),
        (
            &["SELECT most_common_vals::text FROM pg_stats WHERE attname = 'ssn'"][..],
            "TG172",
        ),
        (&["DO $$ BEGIN PERFORM 1; END $$"][..], "TG170"),
        (&["SELECT notes FROM visits"][..], "TG"),
        (
            &["CREATE TEMP TABLE leak (e text CHECK (pg_notify('ch', e) IS NULL))"][..],
            "TG",
        ),
        (
            &[
                "CREATE TEMP TABLE leak2 (e text)",
                "INSERT INTO leak2 SELECT email FROM customers WHERE id = 1",
                "TABLE leak2",
            ][..],
            "TG",
        ),
        (
            &[
                "CREATE TEMP TABLE leak3 AS SELECT ssn FROM customers",
                "TABLE leak3",
            ][..],
            "TG",
        ),
        (&["TABLE visits"][..], "TG"),
        // Valid for PostgreSQL, unreadable for sqlparser: the probe parses it in the server
        // (without running it), then the refusal answers.
        (
            &["SELECT ssn FROM customers WHERE id BETWEEN SYMMETRIC 2 AND 1"][..],
            "TG",
        ),
        (
            &[
                "BEGIN",
                "SELECT ssn FROM customers WHERE id BETWEEN SYMMETRIC 2 AND 1",
                "SELECT 1",
                "ROLLBACK",
            ][..],
            "TG",
        ),
        (
            &["SELECT ssn FROM ONLY customers WHERE id = 1 FOR NO KEY UPDATE"][..],
            "***-**-",
        ),
        // A unique violation on a protected key keeps no DETAIL.
        (
            &["UPDATE customers SET email = 'dup@example.com' WHERE id IN (1, 2)"][..],
            "TG140",
        ),
    ] {
        let out = script(via, steps).await;
        for secret in &secrets {
            assert!(
                !out.contains(secret.as_str()),
                "{steps:?} leaked {secret}:\n{out}"
            );
        }
        if code == "TG" {
            assert!(refused(&out, "tokengate TG"));
        } else {
            assert!(out.contains(code), "{steps:?}: {out}");
        }
    }
    d.server.shutdown().await;
    let pg = d.pg;
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap();
}

/// Every function in the running server's pg_catalog has a class: none is "unknown".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_live_builtin_is_classified() {
    use tokengate::sql::functions::{FunctionClass, classify};
    let (client, conn) = crate::harness::pg_config(
        crate::harness::cluster().port(),
        "postgres",
        crate::harness::SUPERUSER_PW,
    )
    .connect(tokio_postgres::NoTls)
    .await
    .unwrap_or_else(|e| panic!("connect: {e}"));
    tokio::spawn(conn);
    let names: Vec<String> = client
        .query(
            "SELECT DISTINCT proname::text FROM pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(names.len() > 2000);
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| classify(Some("pg_catalog"), n) == FunctionClass::Untraceable)
        .collect();
    assert!(unknown.is_empty(), "unclassified built-ins: {unknown:?}");
    for refused in [
        "query_to_xml",
        "lo_get",
        "pg_read_file",
        "ts_stat",
        "pg_stat_get_activity",
    ] {
        assert!(
            names.iter().any(|n| n == refused),
            "{refused} is not a live built-in"
        );
        assert_eq!(
            classify(Some("pg_catalog"), refused),
            FunctionClass::DataExposing
        );
    }
}
