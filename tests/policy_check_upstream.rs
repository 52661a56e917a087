//! `tokengate policy check --upstream` and `policy explain --upstream` against a real,
//! throwaway PostgreSQL 15.
use std::process::Command;
use tokengate::embedded_pg::{EmbeddedPostgres, PgOptions};

/// The shared throwaway PostgreSQL (removed on drop), trusting the `postgres` user on
/// loopback so URLs need no password.
fn start_pg() -> EmbeddedPostgres {
    EmbeddedPostgres::start(&PgOptions {
        superuser_password: "unused".into(),
        hba: vec!["host all postgres 127.0.0.1/32 trust".into()],
        ..PgOptions::default()
    })
    .expect("start PostgreSQL")
}

fn url(pg: &EmbeddedPostgres, user: &str) -> String {
    format!("postgres://{user}@127.0.0.1:{}/postgres", pg.port())
}

/// Runs the tokengate binary; returns its exit code and stdout.
fn tokengate(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.code(), format!("{stdout}{stderr}"))
}

async fn setup_schema(url: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(
            r#"
            CREATE TABLE public.customers (
                id serial PRIMARY KEY, full_name text, email text, phone text, ssn text,
                birth_date date, city text, created_at timestamptz DEFAULT now());
            CREATE TABLE public.payments (
                id serial PRIMARY KEY, customer_id int, card_number text, amount numeric,
                paid_at timestamptz DEFAULT now());
            CREATE TABLE public."Odd Table" ("Contact" text);
            INSERT INTO public.customers (full_name, email, phone, ssn, birth_date, city)
            SELECT 'Ada Lovelace', 'ada' || g || '@example.com', '+1 555 013 ' || (1000 + g),
                   '123-45-' || (6000 + g), DATE '1980-01-01' + g, 'Paris'
              FROM generate_series(1, 60) g;
            INSERT INTO public.payments (customer_id, card_number, amount)
            SELECT g, '4111111111111111', 10 FROM generate_series(1, 20) g;
            INSERT INTO public."Odd Table" VALUES ('x1@example.org'), ('x2@example.org'), ('x3@example.org');
            CREATE ROLE analysts NOLOGIN;
            CREATE ROLE team NOLOGIN;
            CREATE ROLE bob LOGIN;
            GRANT team TO bob;
            GRANT analysts TO team;
            "#,
        )
        .await
        .unwrap();
}

const POLICY: &str = r#"version: 1
labels:
  email: { class: pii, token: email }
  ssn:   { class: pii, token: digits, mask: "***-**-####" }
columns:
  public.customers.email: email
  public.customers.ssn: ssn
  public.customers.fax: email
roles:
  analysts: { pii: token, row_limit: 10 }
  "*": { default: deny }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_explain_against_a_live_database() {
    let pg = start_pg();
    let url = url(&pg, "postgres");
    setup_schema(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();

    let (code, out) = tokengate(&[
        "policy",
        "check",
        policy.to_str().unwrap(),
        "--upstream",
        &url,
    ]);
    assert_eq!(code, Some(1), "{out}");
    let expect = [
        "column public.customers.fax does not exist in the database",
        "  public.customers.full_name: person_name   # looks like person names (50/50 sampled values)",
        "  public.customers.phone: phone   # looks like phone numbers (50/50 sampled values)",
        "  public.customers.birth_date: birth_date   # name suggests birth dates",
        "  public.payments.card_number: card   # looks like card numbers (Luhn-valid) (20/20 sampled values)",
        "  public.\"Odd Table\".\"Contact\": email   # looks like email addresses (3/3 sampled values)",
    ];
    for line in expect {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(!out.contains("public.customers.city"), "{out}");
    assert!(!out.contains("public.customers.email:"), "labelled: {out}");

    // With SQL, explain runs the proxy's own planning against the live catalog.
    let explain_sql = |sql: &str| {
        tokengate(&[
            "policy",
            "explain",
            "--policy",
            policy.to_str().unwrap(),
            "--role",
            "bob",
            "--upstream",
            &url,
            sql,
        ])
    };
    let (code, out) = explain_sql("SELECT id, email FROM customers WHERE city = 'Paris'");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("column 2 \"email\" <- [public.customers.email]: token (roles.analysts.pii"),
        "{out}"
    );
    assert!(
        out.contains("column 1 \"id\" <- [public.customers.id]: clear"),
        "{out}"
    );
    assert!(out.contains("ALLOWED"), "{out}");
    // A refused statement is a failure (exit 1), so scripts and CI can test statements.
    let (code, out) = explain_sql("SELECT lower(ssn) FROM customers");
    assert!(out.contains("REFUSED TG106 (SQLSTATE 42501)"), "{out}");
    assert!(out.contains("via lower"), "{out}");
    assert_eq!(code, Some(1), "{out}");
    let (code, out) = explain_sql("SELECT id FROM customers WHERE ssn = '1'");
    assert!(out.contains("REFUSED TG103"), "{out}");
    assert_eq!(code, Some(1), "{out}");

    // Once the database matches the policy, check is clean.
    let clean = dir.path().join("clean.yaml");
    std::fs::write(
        &clean,
        "version: 1\nlabels:\n  x: { class: pii }\ncolumns:\n  public.payments.amount: x\nroles:\n  \"*\": { default: deny }\n",
    )
    .unwrap();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(
            "DROP TABLE public.customers, public.\"Odd Table\"; \
             UPDATE public.payments SET card_number = 'n/a'",
        )
        .await
        .unwrap();
    let (code, out) = tokengate(&[
        "policy",
        "check",
        clean.to_str().unwrap(),
        "--upstream",
        &url,
    ]);
    // card_number's name still suggests cards even though the values don't.
    assert!(
        out.contains("public.payments.card_number: card   # name suggests"),
        "{out}"
    );
    assert_eq!(code, Some(1));
    client
        .batch_execute("ALTER TABLE public.payments RENAME card_number TO reference")
        .await
        .unwrap();
    let (code, out) = tokengate(&[
        "policy",
        "check",
        clean.to_str().unwrap(),
        "--upstream",
        &url,
    ]);
    assert_eq!(code, Some(0), "{out}");

    // explain resolves bob -> team -> analysts through pg_auth_members.
    let (code, out) = tokengate(&[
        "policy",
        "explain",
        "--policy",
        policy.to_str().unwrap(),
        "--role",
        "bob",
        "--upstream",
        &url,
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("role:       bob (groups: analysts, team)"),
        "{out}"
    );
    assert!(
        out.contains("row limit:  10 (roles.analysts.row_limit (policy.yaml:10))"),
        "{out}"
    );
}

/// A failed catalog read names its cause: the server's own message (not "db error") and the
/// address for connection errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_errors_show_the_servers_message_and_address() {
    let pg = start_pg();
    let (client, conn) = tokio_postgres::connect(&url(&pg, "postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("SET password_encryption = 'scram-sha-256'; CREATE ROLE pw_user LOGIN PASSWORD 'right';")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let check = |url: String| {
        let (code, out) = tokengate(&[
            "policy",
            "check",
            policy.to_str().unwrap(),
            "--upstream",
            &url,
        ]);
        assert_eq!(code, Some(1), "{out}");
        assert!(!out.contains("db error\n"), "{out}");
        out
    };
    let address = format!("127.0.0.1:{}", pg.port());
    let out = check(format!("postgres://pw_user:wrong@{address}/postgres"));
    assert!(
        out.contains(&address)
            && out.contains("password authentication failed for user \"pw_user\"")
            && out.contains("28P01"),
        "{out}"
    );
    let out = check(format!("postgres://postgres@{address}/no_such_db"));
    assert!(
        out.contains("database \"no_such_db\" does not exist"),
        "{out}"
    );
    // Nothing listens on port 1: the address and the OS's reason.
    let out = check("postgres://postgres@127.0.0.1:1/postgres".to_string());
    assert!(
        out.contains("127.0.0.1:1") && out.contains("refused"),
        "{out}"
    );
}

/// `policy check --upstream` reports each column stored as tokens with its recorded state
/// and key version, and fails while one is not usable through tokengate; `tokengate migrate`
/// and `rekey` (the binary) move it along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_at_rest_states() {
    let pg = start_pg();
    let url = url(&pg, "postgres");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(
            "CREATE TABLE public.vault (id int PRIMARY KEY, ssn text);
             INSERT INTO public.vault SELECT g, '123-45-' || (1000 + g) FROM generate_series(1, 30) g;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "version: 1\nlabels:\n  ssn: { class: pii, token: digits, at_rest: token }\ncolumns:\n  public.vault.ssn: ssn\nroles:\n  \"*\": { default: deny }\n",
    )
    .unwrap();
    let keys = dir.path().join("keys.json");
    let keys = keys.to_str().unwrap();
    let (code, out) = tokengate(&["keygen", "--out", keys]);
    assert_eq!(code, Some(0), "{out}");
    let check = || {
        tokengate(&[
            "policy",
            "check",
            policy.to_str().unwrap(),
            "--upstream",
            &url,
        ])
    };
    let (code, out) = check();
    assert!(
        out.contains("at rest: public.vault.ssn: plaintext (never migrated; refused through tokengate until `tokengate migrate --column public.vault.ssn`)"),
        "{out}"
    );
    assert_eq!(code, Some(1), "{out}");

    let run = |verb: &str, extra: &[&str]| {
        let args = [
            &[
                verb,
                "--policy",
                policy.to_str().unwrap(),
                "--keys",
                keys,
                "--upstream",
                &url,
                "--quiet",
            ][..],
            extra,
        ]
        .concat();
        tokengate(&args)
    };
    let (code, out) = run("migrate", &["--batch-size", "7"]);
    assert_eq!(code, Some(0), "{out}");
    let plaintext: i64 = client
        .query_one(
            "SELECT count(*) FROM public.vault WHERE ssn LIKE '123-45-%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plaintext, 0);
    assert!(
        out.contains("public.vault.ssn: migrate done, 30 values in"),
        "{out}"
    );
    let (code, out) = check();
    assert!(
        out.contains("at rest: public.vault.ssn: tokenized, key version 1"),
        "{out}"
    );
    assert_eq!(code, Some(0), "{out}");
    // Again: nothing to do.
    let (code, out) = run("migrate", &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("public.vault.ssn: already tokenized, key version 1; nothing to do"),
        "{out}"
    );

    // Rotate and rekey to version 2.
    let (code, out) = tokengate(&["keygen", "--out", keys, "--add"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run("rekey", &["--grace", "0s"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("rekey done, 30 values"), "{out}");
    let (_, out) = check();
    assert!(
        out.contains("at rest: public.vault.ssn: tokenized, key version 2"),
        "{out}"
    );
    // An interrupted rekey and migration show as such (and fail the check).
    client
        .batch_execute(
            "UPDATE tokengate.at_rest_columns SET state = 'rekeying', target_version = 3, rows_done = 12",
        )
        .await
        .unwrap();
    let (code, out) = check();
    assert!(
        out.contains("at rest: public.vault.ssn: rekeying 2→3 (12 rows done)"),
        "{out}"
    );
    assert_eq!(code, Some(1), "{out}");
    client
        .batch_execute(
            "UPDATE tokengate.at_rest_columns SET state = 'migrating', target_version = NULL",
        )
        .await
        .unwrap();
    let (_, out) = check();
    assert!(
        out.contains("at rest: public.vault.ssn: migrating to key version 2 (12 rows done)"),
        "{out}"
    );
}

/// `policy check --upstream` names a partition labelled unlike its parent (the proxy refuses
/// statements touching that family's column, TG189) with the line to paste.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_partitions_labelled_unlike_their_parent() {
    let pg = start_pg();
    let (client, conn) = tokio_postgres::connect(&url(&pg, "postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(
            "CREATE TABLE accounts (id int, ssn text, note text) PARTITION BY RANGE (id);
             CREATE TABLE accounts_a PARTITION OF accounts FOR VALUES FROM (0) TO (100);
             CREATE TABLE accounts_b PARTITION OF accounts FOR VALUES FROM (100) TO (200);",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    let write = |columns: &str| {
        std::fs::write(
            &policy,
            format!(
                "version: 1\nlabels:\n  ssn: {{ class: pii, token: digits }}\ncolumns:\n{columns}roles:\n  \"*\": {{ default: deny }}\n"
            ),
        )
        .unwrap();
    };
    let check = || {
        tokengate(&[
            "policy",
            "check",
            policy.to_str().unwrap(),
            "--upstream",
            &url(&pg, "postgres"),
        ])
    };
    write("  public.accounts.ssn: ssn\n  public.accounts_a.ssn: ssn\n");
    let (code, out) = check();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("  public.accounts_b.ssn: ssn   # public.accounts.ssn of its inheritance family is labelled ssn")
            && out.contains("TG189"),
        "{out}"
    );
    assert!(!out.contains("public.accounts_a.ssn: ssn   #"), "{out}");
    write(
        "  public.accounts.ssn: ssn\n  public.accounts_a.ssn: ssn\n  public.accounts_b.ssn: ssn\n",
    );
    let (code, out) = check();
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("TG189"), "{out}");
}
