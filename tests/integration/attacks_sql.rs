//! The attacker's corpus for the SQL-analysis classes of issue 9 (lexer differentials,
//! inference, code the analyser never sees, COPY formats) and issue 12 item 1 (statements
//! deep enough to overflow a stack). Each attack is data: a role, setup statements run first in
//! the same session, the attack, how it is shown to leak against PostgreSQL directly, and what
//! tokengate must do with it. One runner per client path runs every class that applies to it.
//!
//! Every attack is first run straight against PostgreSQL, as the same role: the test fails if
//! the attack does not leak there (plaintext in the result, or a result that depends on a
//! guessed protected value), so a passing tokengate run means the attack was stopped.
use crate::crm::*;
use crate::harness::*;
use Expect::{NoLeak, Protected, Refused};

/// How an attack is shown to leak against PostgreSQL directly.
#[derive(Clone, Copy)]
enum Proof {
    /// The oracle finds a protected plaintext in what the role receives.
    Plaintext,
    /// `{SSN}`/`{EMAIL}` hold a real value: the result differs from the same statement with a
    /// wrong guess (an equality oracle).
    Guess,
    /// The result differs from this other statement's (an ordering oracle).
    Differs(&'static str),
}

struct Attack {
    role: &'static str,
    setup: &'static [&'static str],
    sql: &'static str,
    proof: Proof,
    expect: Expect,
}

const fn attack(
    role: &'static str,
    setup: &'static [&'static str],
    sql: &'static str,
    proof: Proof,
    expect: Expect,
) -> Attack {
    Attack {
        role,
        setup,
        sql,
        proof,
        expect,
    }
}

/// Class 1: text that PostgreSQL splits differently from the analyser (or from the cache key).
const LEXER: &[Attack] = &[
    // The old cache key ended `--` comments at LF only: the benign statement's plan was reused
    // for a statement that also returns a protected column.
    attack(
        "support",
        &["SELECT id FROM customers"],
        "SELECT id --\r, ssn\nFROM customers",
        Proof::Plaintext,
        Protected,
    ),
    attack(
        "support",
        &["SELECT id, city FROM customers"],
        "SELECT id, city --\r, email\nFROM customers",
        Proof::Plaintext,
        Protected,
    ),
    attack(
        "analyst",
        &["SELECT id FROM customers WHERE id < 5"],
        "SELECT id --\r, phone\nFROM customers WHERE id < 5",
        Proof::Plaintext,
        Protected,
    ),
    // standard_conforming_strings = off: `\'` escapes the quote, so PostgreSQL runs
    // `SELECT id, '…' , ssn AS x FROM customers` where the analyser saw three literals.
    attack(
        "support",
        &["SET standard_conforming_strings = off"],
        r"SELECT id, '\', ' , ssn AS x FROM customers --', 'y' FROM customers",
        Proof::Plaintext,
        Refused,
    ),
    attack(
        "analyst",
        &["SET standard_conforming_strings TO off"],
        r"SELECT id, '\', ' , ssn AS x FROM customers --', 'y' FROM customers",
        Proof::Plaintext,
        Refused,
    ),
    attack(
        "support",
        &["BEGIN", "SET LOCAL standard_conforming_strings = off"],
        r"SELECT id, '\', ' , email AS x FROM customers --', 'y' FROM customers",
        Proof::Plaintext,
        Refused,
    ),
    attack(
        "auditor",
        &["SET standard_conforming_strings = off"],
        r"SELECT id, '\', ' , birth_date AS x FROM customers --', 'y' FROM customers",
        Proof::Plaintext,
        Refused,
    ),
];

/// Class 7: comparisons of plaintext that were not recorded as uses, and expressions that
/// `filter_on` allowed although they make PostgreSQL quote the value in an error.
const INFERENCE: &[Attack] = &[
    attack(
        "support",
        &[],
        "SELECT 1 FROM (SELECT ssn FROM customers INTERSECT SELECT '{SSN}') s",
        Proof::Guess,
        Refused,
    ),
    attack(
        "support",
        &[],
        "SELECT count(*) FROM (SELECT ssn FROM customers EXCEPT SELECT '{SSN}') s",
        Proof::Guess,
        Refused,
    ),
    attack(
        "support",
        &[],
        "SELECT count(*) FROM (SELECT ssn FROM customers UNION SELECT '{SSN}') s",
        Proof::Guess,
        Refused,
    ),
    attack(
        "support",
        &[],
        "SELECT count(*) FROM (SELECT DISTINCT ssn FROM (SELECT ssn FROM customers UNION ALL SELECT '{SSN}') u) d",
        Proof::Guess,
        Refused,
    ),
    attack(
        "support",
        &[],
        "SELECT id, ssn FROM customers WHERE id IN (1, 2) ORDER BY (2) LIMIT 1",
        Proof::Differs(
            "SELECT id, ssn FROM customers WHERE id IN (1, 2) ORDER BY (2) DESC LIMIT 1",
        ),
        Refused,
    ),
    attack(
        "support",
        &[],
        "SELECT email, count(*) FROM (SELECT email FROM customers UNION ALL SELECT '{EMAIL}') u GROUP BY 1 ORDER BY 2 DESC LIMIT 1",
        Proof::Guess,
        Refused,
    ),
    attack(
        "analyst",
        &[],
        "SELECT id FROM customers WHERE phone::int = 1",
        Proof::Plaintext,
        Refused,
    ),
    attack(
        "analyst",
        &[],
        "SELECT id FROM customers WHERE email::date IS NULL",
        Proof::Plaintext,
        Refused,
    ),
    attack(
        "analyst",
        &[],
        "SELECT id FROM customers ORDER BY email::numeric",
        Proof::Plaintext,
        Refused,
    ),
];

/// Class 5: code created by the role, then run by statements that never name it.
const CODE: &[Attack] = &[
    attack(
        "support",
        &[
            "CREATE FUNCTION pg_temp.f(int, int) RETURNS text AS 'SELECT ssn FROM public.customers WHERE id = $1' LANGUAGE sql",
            "CREATE OPERATOR pg_temp.+ (LEFTARG = int, RIGHTARG = int, FUNCTION = pg_temp.f)",
        ],
        "SELECT id OPERATOR(pg_temp.+) 0 FROM customers",
        Proof::Plaintext,
        Refused,
    ),
    attack(
        "support",
        &[
            "CREATE FUNCTION pg_temp.s(int) RETURNS text AS 'SELECT ssn FROM public.customers WHERE id = $1' LANGUAGE sql",
            "CREATE DOMAIN pg_temp.d AS int CHECK (pg_temp.s(VALUE)::int > 0)",
        ],
        "SELECT 1::pg_temp.d",
        Proof::Plaintext,
        Refused,
    ),
    attack(
        "support",
        &["CREATE TEMP TABLE t1 (id int, v text DEFAULT public.leak_ssn(1))"],
        // The setup is refused (a user function in a DEFAULT is code), so t1 does not exist:
        // tokengate refuses the INSERT, or lets the server say so (issue 10's parse probe).
        "INSERT INTO t1 (id) VALUES (1) RETURNING v",
        Proof::Plaintext,
        NoLeak,
    ),
    attack(
        "analyst",
        &[
            "CREATE TEMP TABLE tt (id int, v text)",
            "CREATE FUNCTION pg_temp.trg() RETURNS trigger AS $$ BEGIN NEW.v := (SELECT ssn FROM public.customers WHERE id = NEW.id); RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER x BEFORE INSERT ON tt FOR EACH ROW EXECUTE FUNCTION pg_temp.trg()",
        ],
        "INSERT INTO tt (id) VALUES (1) RETURNING v",
        Proof::Plaintext,
        NoLeak,
    ),
    attack(
        "support",
        &[
            "CREATE TEMP TABLE t2 (id int, v text)",
            "ALTER TABLE t2 ALTER COLUMN v SET DEFAULT public.leak_ssn(2)",
        ],
        "INSERT INTO t2 (id) VALUES (1) RETURNING v",
        Proof::Plaintext,
        NoLeak,
    ),
];

/// Class 8: COPY rows split by the option the statement really uses.
const COPY: &[Attack] = &[
    attack(
        "support",
        &[],
        "COPY (SELECT 'p,q,s' AS csv, ssn, 'r' FROM customers) TO STDOUT",
        Proof::Plaintext,
        Protected,
    ),
    attack(
        "support",
        &[],
        "COPY (SELECT 'p,q,s' AS csv, email, 'r' FROM customers) TO STDOUT",
        Proof::Plaintext,
        Protected,
    ),
    attack(
        "support",
        &[],
        "COPY (SELECT 'x,y,w', ssn, 'z' FROM customers) TO STDOUT WITH (FORMAT csv, DELIMITER '|')",
        Proof::Plaintext,
        Protected,
    ),
    attack(
        "analyst",
        &[],
        "COPY (SELECT 'x,y,w', phone, 'z' FROM customers) TO STDOUT CSV DELIMITER '|'",
        Proof::Plaintext,
        Protected,
    ),
    attack(
        "support",
        &[],
        "COPY (SELECT 'p,q,s' AS csv, phone, 'r' FROM customers) TO STDOUT WITH (DELIMITER '|')",
        Proof::Plaintext,
        Protected,
    ),
    // A custom NULL marker equal to a value: PostgreSQL writes the value as the marker.
    attack(
        "support",
        &[],
        "COPY (SELECT ssn FROM customers) TO STDOUT WITH (NULL '{SSN}')",
        Proof::Plaintext,
        Refused,
    ),
    attack(
        "support",
        &[],
        "COPY (SELECT id, ssn FROM customers) TO STDOUT WITH (ENCODING 'LATIN1')",
        Proof::Plaintext,
        Refused,
    ),
];

/// The client paths an attack can take.
#[derive(Clone, Copy, Debug)]
enum Path {
    /// tokio-postgres simple_query.
    Simple,
    /// tokio-postgres prepared statement, binary results.
    Extended,
    /// A raw simple-protocol client (also sees CopyData).
    Raw,
    /// tokio-postgres copy_out (extended-protocol COPY).
    CopyOut,
}

/// Real values for the `{SSN}` / `{EMAIL}` guesses, and wrong ones.
struct Guesses {
    ssn: String,
    email: String,
}

async fn guesses() -> Guesses {
    let admin = cluster().pg.connect_admin(CRM_DB).await.unwrap();
    let row = admin
        .query_one("SELECT ssn, email FROM customers WHERE id = 7", &[])
        .await
        .unwrap();
    Guesses {
        ssn: row.get(0),
        email: row.get(1),
    }
}

fn render(sql: &str, g: Option<&Guesses>) -> String {
    match g {
        Some(g) => sql.replace("{SSN}", &g.ssn).replace("{EMAIL}", &g.email),
        None => sql
            .replace("{SSN}", "000-00-0000")
            .replace("{EMAIL}", "nobody@nowhere.invalid"),
    }
}

/// Runs setup then the attack through `path` on a session at `port`; what the role received.
async fn attempt(port: u16, path: Path, role: &str, setup: &[&str], sql: &str) -> Seen {
    let mut s = if port == cluster().port() {
        direct(role).await
    } else {
        session_at(port, role).await
    };
    let mut ignored = Seen::default();
    for statement in setup {
        ignored.simple(&mut s, statement).await;
    }
    let mut seen = Seen::default();
    match path {
        Path::Simple => seen.simple(&mut s, sql).await,
        Path::Extended => {
            let none: [&(dyn tokio_postgres::types::ToSql + Sync); 0] = [];
            match s.client.query_raw(sql, none).await {
                Ok(rows) => seen.absorb_rows(rows).await,
                Err(e) => seen.error(&e),
            }
            s.drain_notices(&mut seen);
        }
        Path::Raw => {
            let mut raw = raw_as(std::net::SocketAddr::from(([127, 0, 0, 1], port)), role).await;
            for statement in setup {
                raw.query(statement).await;
            }
            seen.absorb(&raw.query(sql).await);
        }
        Path::CopyOut => {
            use futures_util::StreamExt;
            match s.client.copy_out(sql).await {
                Err(e) => seen.error(&e),
                Ok(stream) => {
                    let mut stream = std::pin::pin!(stream);
                    while let Some(chunk) = stream.next().await {
                        match chunk {
                            Ok(bytes) => {
                                seen.copy_messages += 1;
                                seen.copy_data(&bytes);
                            }
                            Err(e) => {
                                seen.error(&e);
                                break;
                            }
                        }
                    }
                }
            }
            s.drain_notices(&mut seen);
        }
    }
    seen
}

/// Shows the attack leaks against PostgreSQL directly; `Some(why)` when it does not.
async fn leaks_directly(path: Path, a: &Attack, g: &Guesses) -> Option<String> {
    let port = cluster().port();
    let oracle = &crm().oracle;
    let sql = render(a.sql, Some(g));
    let seen = attempt(port, path, a.role, a.setup, &sql).await;
    let leaked = match a.proof {
        Proof::Plaintext => !oracle.leaks(&seen).is_empty(),
        Proof::Guess => {
            let wrong = attempt(port, path, a.role, a.setup, &render(a.sql, None)).await;
            seen.errors.is_empty() && seen.values != wrong.values
        }
        Proof::Differs(other) => {
            let other = attempt(port, path, a.role, a.setup, other).await;
            seen.errors.is_empty() && seen.values != other.values
        }
    };
    (!leaked).then(|| {
        format!(
            "{}: {} does not leak against PostgreSQL directly",
            a.role, a.sql
        )
    })
}

async fn run(path: Path, classes: &[(&str, &[Attack])]) {
    crm();
    let proxy = crm_proxy().await;
    let port = proxy.addr.port();
    let oracle = &crm().oracle;
    let g = guesses().await;
    let mut failures = Vec::new();
    let mut total = 0;
    for (class, attacks) in classes {
        for a in *attacks {
            total += 1;
            if let Some(f) = leaks_directly(path, a, &g).await {
                failures.push(format!("[{class}] {f}"));
                continue;
            }
            let sql = render(a.sql, Some(&g));
            let seen = attempt(port, path, a.role, a.setup, &sql).await;
            let name = format!("[{class}] {}: {} ({path:?})", a.role, a.sql);
            if let Some(f) = judge(&name, a.expect, &seen, oracle) {
                failures.push(f);
            }
        }
    }
    report(&format!("SQL attack corpus, {path:?}"), total, &failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_sql_simple_protocol() {
    run(
        Path::Simple,
        &[("lexer", LEXER), ("inference", INFERENCE), ("code", CODE)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_sql_extended_protocol() {
    run(
        Path::Extended,
        &[("lexer", LEXER), ("inference", INFERENCE), ("code", CODE)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_sql_copy_raw_and_copy_out() {
    run(Path::Raw, &[("copy", COPY)]).await;
    run(Path::CopyOut, &[("copy", COPY)]).await;
}

/// Issue 12 item 1: statements whose syntax tree is deep enough to overflow a 2 MiB worker
/// stack are refused (TG120) and the session and the process go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_sql_deep_statements_are_refused_and_the_session_survives() {
    crm();
    let proxy = crm_proxy().await;
    let or_chain: Vec<String> = (0..2000).map(|i| format!("id={i}")).collect();
    let and_chain: Vec<String> = (0..2000).map(|i| format!("id<>{i}")).collect();
    let params: Vec<String> = (1..=3000).map(|i| format!("id=${i}")).collect();
    let simple = [
        format!(
            "SELECT email FROM customers WHERE {}",
            or_chain.join(" OR ")
        ),
        format!(
            "SELECT email FROM customers WHERE {}",
            and_chain.join(" AND ")
        ),
        format!("SELECT id{} FROM customers", " + 1".repeat(3000)),
        format!("SELECT 'a'{} FROM customers", " || 'b'".repeat(3000)),
        format!("SELECT {}1{}", "(".repeat(3000), ")".repeat(3000)),
    ];
    let s = via(&proxy, "support").await;
    for sql in &simple {
        let err = s
            .client
            .simple_query(sql)
            .await
            .expect_err("a deep statement must be refused");
        let db = err
            .as_db_error()
            .expect("a refusal, not a dropped connection");
        assert_eq!(db.code().code(), "42501");
        assert!(
            db.message().starts_with("tokengate TG1"),
            "{}",
            db.message()
        );
        // The session is still usable.
        assert_eq!(select_one(&s).await, "1");
    }
    let sql = format!("SELECT email FROM customers WHERE {}", params.join(" OR "));
    let values: Vec<i32> = (1..=3000).collect();
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
        .iter()
        .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let err = s
        .client
        .query(&sql, &refs)
        .await
        .expect_err("3000 OR-ed parameters must be refused");
    let db = err
        .as_db_error()
        .expect("a refusal, not a dropped connection");
    assert!(
        db.message().starts_with("tokengate TG120"),
        "{}",
        db.message()
    );
    // An IN list of 3000 parameters is a list, not a chain: analysed and answered.
    let list: Vec<String> = (1..=3000).map(|i| format!("${i}")).collect();
    let sql = format!("SELECT id FROM customers WHERE id IN ({})", list.join(","));
    let rows = s.client.query(&sql, &refs).await.unwrap();
    assert_eq!(rows.len(), CUSTOMERS);
    // Other sessions and the process are fine.
    let other = via(&proxy, "analyst").await;
    assert_eq!(select_one(&other).await, "1");
}

async fn select_one(s: &Session) -> String {
    let messages = s.client.simple_query("SELECT 1").await.unwrap();
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default()
}

/// `standard_conforming_strings` set where tokengate cannot follow it in time: in the startup
/// `options`, or by a SET pipelined with the attack before its ParameterStatus arrives. Statements
/// whose literals end elsewhere under the other setting are refused whatever the session says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_sql_standard_conforming_strings_without_parameter_status() {
    crm();
    let proxy = crm_proxy().await;
    let oracle = &crm().oracle;
    let attack = r"SELECT id, '\', ' , ssn AS x FROM customers --', 'y' FROM customers";
    let mut failures = Vec::new();
    // Startup options.
    for (port, through) in [(cluster().port(), false), (proxy.addr.port(), true)] {
        let mut config = crm_config(port, "support");
        config.options("-c standard_conforming_strings=off");
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        // A benign statement with the same shape under the stale setting primes the cache.
        client
            .simple_query("SELECT id, 'a', 'b', 'c' FROM customers")
            .await
            .unwrap();
        let mut seen = Seen::default();
        match client.simple_query(attack).await {
            Ok(messages) => {
                for m in messages {
                    if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
                        seen.rows += 1;
                        for i in 0..row.len() {
                            if let Some(v) = row.get(i) {
                                seen.push("DataRow (simple)", v);
                            }
                        }
                    }
                }
            }
            Err(e) => seen.error(&e),
        }
        if !through {
            assert!(
                !oracle.leaks(&seen).is_empty(),
                "the attack must leak directly"
            );
        } else if let Some(f) = judge("startup options", Refused, &seen, oracle) {
            failures.push(f);
        }
    }
    // A SET pipelined with the attack in one write (raw simple protocol).
    for (port, through) in [(cluster().port(), false), (proxy.addr.port(), true)] {
        let mut raw = raw_as(
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            "support",
        )
        .await;
        let mut bytes = Vec::new();
        for sql in ["SET standard_conforming_strings = off", attack] {
            let mut body = sql.as_bytes().to_vec();
            body.push(0);
            bytes.extend_from_slice(&frame(b'Q', &body));
        }
        raw.send(&bytes).await;
        let mut msgs = raw.until_ready().await;
        msgs.extend(raw.until_ready().await);
        let mut seen = Seen::default();
        seen.absorb(&msgs);
        if !through {
            assert!(
                !oracle.leaks(&seen).is_empty(),
                "the attack must leak directly"
            );
        } else if let Some(f) = judge("pipelined SET", Refused, &seen, oracle) {
            failures.push(f);
        }
    }
    // client_encoding SJIS: "\u{c1}" is C3 81 in UTF-8; with the backslash after it, SJIS
    // reads C3 and then 81 5C as one character, so the server sees no backslash and the E''
    // literal ends before `, ssn`.
    let sjis = "SELECT E'\u{c1}\\', ssn FROM customers --'";
    for (port, through) in [(cluster().port(), false), (proxy.addr.port(), true)] {
        let mut raw = raw_as(
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            "support",
        )
        .await;
        raw.query("SET client_encoding = 'SJIS'").await;
        let mut seen = Seen::default();
        seen.absorb(&raw.query(sjis).await);
        if !through {
            assert!(
                !oracle.leaks(&seen).is_empty(),
                "the attack must leak directly"
            );
        } else if let Some(f) = judge("client_encoding SJIS", Refused, &seen, oracle) {
            failures.push(f);
        }
    }
    report(
        "session lexing settings without ParameterStatus",
        3,
        &failures,
    );
}

/// Parity with the real server: for text built to split differently in a careless lexer,
/// tokengate's lexer must find the statements and select-list widths PostgreSQL reports
/// (RowDescription per statement), with `standard_conforming_strings` on and off. A text our
/// lexer rejects must be rejected by the server too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_sql_lexer_agrees_with_the_server() {
    use tokengate::sql::LexSettings;
    use tokengate::sql::lexer::{Kind, statements, tokenize};
    const CORPUS: &[&str] = &[
        "SELECT 1, 2; SELECT 3",
        "SELECT 'a;b', 2 -- x;\r, 3",
        "SELECT $$a,b$$, $t$;$t$, 3; SELECT E'x\\',y', 2",
        "SELECT 'a'\n'b', 2",
        "SELECT 'a' -- c\n 'b', 2",
        "SELECT /* a /* b */ , */ 1, 2",
        "SELECT \"a,b\" FROM (SELECT 1 AS \"a,b\") s; SELECT 1",
        "SELECT B'01', X'FF', N'x'",
        "SELECT 1.5e3, .5, 5., 2",
        "SELECT 'a\\', 2",
        "SELECT 'a\\'', 2",
        "SELECT 'a\\\\', 2, 3",
        "SELECT E'a\\'', 2",
        "SELECT 1 /* , */ , 2 --, 3\n, 4",
        "SELECT $a$ $b$ , $a$, 2",
        "SELECT 1, 2 /* unterminated , 3",
        "SELECT 'x'||'y', 2, 3",
        "SELECT 2 +-1, 3",
    ];
    crm();
    let mut failures = Vec::new();
    for scs in [true, false] {
        let settings = LexSettings {
            standard_conforming_strings: scs,
        };
        let mut raw = raw_as(
            std::net::SocketAddr::from(([127, 0, 0, 1], cluster().port())),
            "support",
        )
        .await;
        raw.query(if scs {
            "SET standard_conforming_strings = on"
        } else {
            "SET standard_conforming_strings = off"
        })
        .await;
        for sql in CORPUS {
            let tokens = tokenize(sql, settings);
            let ours: Option<Vec<usize>> =
                if tokens.iter().any(|t| matches!(t.kind, Kind::Error(_))) {
                    None
                } else {
                    Some(
                        statements(&tokens, sql)
                            .into_iter()
                            .map(|r| {
                                let mut depth = 0i32;
                                let mut width = 1;
                                for t in &tokens[r] {
                                    match t.text(sql) {
                                        "(" => depth += 1,
                                        ")" => depth -= 1,
                                        "," if depth == 0 => width += 1,
                                        _ if depth == 0 && t.is_word(sql, "from") => break,
                                        _ => {}
                                    }
                                }
                                width
                            })
                            .collect(),
                    )
                };
            let msgs = raw.query(sql).await;
            let server: Option<Vec<usize>> = if msgs.iter().any(|m| m.tag == b'E') {
                None
            } else {
                Some(
                    msgs.iter()
                        .filter(|m| m.tag == b'T')
                        .map(|m| usize::from(u16::from_be_bytes([m.body[0], m.body[1]])))
                        .collect(),
                )
            };
            if ours != server {
                failures.push(format!(
                    "scs {scs}: {sql:?}: tokengate {ours:?}, PostgreSQL {server:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
