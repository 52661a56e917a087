//! `tokengate migrate` and `tokengate rekey` (the real binary) on a table with existing
//! plaintext, killed with SIGKILL at random points and resumed, and the proxy obeying the
//! recorded state: TG185 for a column never migrated or being migrated (every role), the
//! recorded key version (never the key file's active one) for reads after a rekey, TG185 when
//! the key file lacks that version, TG188 for writes to the tokengate schema.
use crate::harness::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokengate::protect::keys::{DEFAULT_KEY_NAME, Key, KeyRing};
use tokengate::protect::{Action, ColumnTransform, Output, TransformSpec};
use tokengate::server::RunningServer;

const MIG_DB: &str = "atmig";
const ROWS: i32 = 6000;

const POLICY: &str = "version: 1
labels:
  ssn: { class: pii, token: digits, mask: \"***-**-####\", at_rest: token }
columns:
  public.accounts.ssn: ssn
roles:
  mig_admin: { default: clear }
  mig_token: { default: token, filter_on: [ssn] }
  \"*\": { default: deny }
";

/// Row `i`'s plaintext (every 10th row NULL).
fn plaintext(i: i32) -> Option<String> {
    (i % 10 != 0).then(|| format!("{:03}-{:02}-{:04}", i % 1000, i % 97, i))
}

fn region(i: i32) -> &'static str {
    if i % 2 == 0 { "eu" } else { "us" }
}

fn ring(versions: &[u32]) -> KeyRing {
    let mut ring = KeyRing::default();
    for &v in versions {
        ring.insert(DEFAULT_KEY_NAME, v, Key::from_bytes([0x40 + v as u8; 32]));
    }
    ring
}

fn token(ring: &KeyRing, version: u32, plain: &str) -> String {
    let mut spec = TransformSpec::new(Action::Token("digits".parse().unwrap()), "ssn");
    spec.key_version = Some(version);
    let t = ColumnTransform::new(&spec, 25, 0, ring).unwrap();
    let mut out = Vec::new();
    assert_eq!(t.apply(plain.as_bytes(), &mut out).unwrap(), Output::Value);
    String::from_utf8(out).unwrap()
}

async fn proxy(policy: &Path, keys: &Path) -> RunningServer {
    let (policy, keys) = (policy.to_path_buf(), keys.to_path_buf());
    proxy_with(|c| {
        c.policy = Some(policy);
        c.keys = Some(keys);
        c.catalog_user = Some("postgres".into());
        c.catalog_password = Some(SUPERUSER_PW.into());
        // Consistent with the tools' --grace 1s below (grace > max age).
        c.at_rest_refresh = Duration::from_millis(100);
        c.at_rest_max_age = Duration::from_millis(500);
    })
    .await
}

async fn via(proxy: &RunningServer, role: &str) -> tokio_postgres::Client {
    let mut c = pg_config(proxy.addr.port(), role, &format!("{role}-pw"));
    c.dbname(MIG_DB);
    connect(&c).await
}

fn upstream() -> String {
    format!(
        "postgres://postgres:{SUPERUSER_PW}@127.0.0.1:{}/{MIG_DB}",
        cluster().port()
    )
}

fn tool(verb: &str, policy: &Path, keys: &Path, extra: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"));
    c.args([
        verb,
        "--policy",
        policy.to_str().unwrap(),
        "--keys",
        keys.to_str().unwrap(),
        "--upstream",
        &upstream(),
        "--quiet",
    ])
    .args(extra)
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    c
}

/// Starts the tool and SIGKILLs it after a random delay, `times` times; then runs it to
/// completion and returns its output.
async fn kill_and_resume(
    verb: &str,
    policy: &Path,
    keys: &Path,
    extra: &[&str],
    delays_ms: std::ops::Range<u64>,
    times: usize,
) -> String {
    let mut interrupted = 0;
    for _ in 0..times {
        let mut child = tool(verb, policy, keys, extra).spawn().unwrap();
        let delay = rand::random_range(delays_ms.clone());
        tokio::time::sleep(Duration::from_millis(delay)).await;
        // kill() is SIGKILL on Unix: no cleanup runs in the tool.
        let _ = child.kill();
        if child.wait().is_ok_and(|s| !s.success()) {
            interrupted += 1;
        }
    }
    eprintln!("{verb}: {interrupted} of {times} runs killed before they finished");
    let out = tool(verb, policy, keys, extra).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{verb} failed: {text}");
    text
}

/// Every row stored directly is exactly the token of its plaintext under `version` (so none
/// was tokenized twice or skipped), NULLs stay NULL.
async fn assert_stored(direct: &tokio_postgres::Client, ring: &KeyRing, version: u32) {
    let rows = direct
        .query("SELECT id, ssn FROM accounts ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), ROWS as usize);
    for r in rows {
        let id: i32 = r.get(0);
        let stored: Option<String> = r.get(1);
        let expected = plaintext(id).map(|p| token(ring, version, &p));
        assert_eq!(stored, expected, "row {id}");
    }
}

/// Every row read through tokengate as a clear role is its plaintext.
async fn assert_clear(proxy: &RunningServer) {
    let admin = via(proxy, "mig_admin").await;
    let rows = admin
        .query("SELECT id, ssn FROM accounts ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), ROWS as usize);
    for r in rows {
        let id: i32 = r.get(0);
        assert_eq!(r.get::<_, Option<String>>(1), plaintext(id), "row {id}");
    }
}

fn refusal(e: &tokio_postgres::Error) -> String {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e:?}"));
    format!("{} {}", db.code().code(), db.message())
}

async fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let pg = &cluster().pg;
    pg.execute("postgres", &format!("CREATE DATABASE {MIG_DB}"))
        .await
        .unwrap();
    pg.execute(
        "postgres",
        "CREATE ROLE mig_admin LOGIN PASSWORD 'mig_admin-pw';
         CREATE ROLE mig_token LOGIN PASSWORD 'mig_token-pw';",
    )
    .await
    .unwrap();
    pg.execute(
        MIG_DB,
        "CREATE TABLE accounts (region text, id int, ssn varchar(20), PRIMARY KEY (region, id));
         GRANT ALL ON accounts TO mig_admin, mig_token;",
    )
    .await
    .unwrap();
    let direct = pg.connect_admin(MIG_DB).await.unwrap();
    fill_accounts(&direct, ROWS).await;
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let keys = dir.join("keys.json");
    ring(&[1]).write_new(&keys, false).unwrap();
    (policy, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_and_rekey_survive_kill_9_and_the_proxy_obeys_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let (policy, keys) = setup(dir.path()).await;
    let direct = cluster().pg.connect_admin(MIG_DB).await.unwrap();
    let proxy_v1 = proxy(&policy, &keys).await;

    // Never migrated: the column may hold plaintext, so every role is refused (TG185).
    for role in ["mig_admin", "mig_token"] {
        let c = via(&proxy_v1, role).await;
        let e = c
            .query("SELECT ssn FROM accounts WHERE id = 1", &[])
            .await
            .unwrap_err();
        let r = refusal(&e);
        assert!(r.starts_with("55000 tokengate TG185"), "{role}: {r}");
        assert!(
            r.contains("never migrated")
                && r.contains("tokengate migrate --column public.accounts.ssn"),
            "{r}"
        );
        // Statements not touching the column still run.
        let n: i64 = c
            .query_one("SELECT count(*) FROM accounts", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, i64::from(ROWS));
    }

    // Interrupted migrations: the state says migrating, and tokengate refuses every role.
    let mut child = tool("migrate", &policy, &keys, &["--batch-size", "2"])
        .spawn()
        .unwrap();
    let seen = eventually(20, async || {
        let c = via(&proxy_v1, "mig_token").await;
        match c.query("SELECT ssn FROM accounts WHERE id = 1", &[]).await {
            Err(e) => refusal(&e).contains("is being migrated to tokens"),
            Ok(_) => false,
        }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen, "the proxy never reported the migration");
    let admin = via(&proxy_v1, "mig_admin").await;
    let e = admin
        .query("SELECT ssn FROM accounts WHERE id = 1", &[])
        .await
        .unwrap_err();
    assert!(refusal(&e).contains("TG185"), "{}", refusal(&e));
    let out = kill_and_resume(
        "migrate",
        &policy,
        &keys,
        &["--batch-size", "2"],
        20..700,
        4,
    )
    .await;
    assert!(
        out.contains("public.accounts.ssn: migrate done")
            || out.contains("public.accounts.ssn: already tokenized, key version 1"),
        "{out}"
    );
    let ring_v1 = ring(&[1]);
    assert_stored(&direct, &ring_v1, 1).await;
    // The proxy picks up the new state within its refresh interval.
    assert!(
        eventually(10, async || {
            let c = via(&proxy_v1, "mig_admin").await;
            c.query("SELECT ssn FROM accounts WHERE id = 1", &[])
                .await
                .is_ok()
        })
        .await
    );
    assert_clear(&proxy_v1).await;
    // Lookups compare tokens; the token role sees the stored token.
    let token_role = via(&proxy_v1, "mig_token").await;
    let p7 = plaintext(7).unwrap();
    let t7 = token(&ring_v1, 1, &p7);
    let r = token_role
        .query_one("SELECT ssn FROM accounts WHERE ssn = $1", &[&t7])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), t7);
    // Running it again is a no-op.
    let out = tool("migrate", &policy, &keys, &[]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("already tokenized, key version 1; nothing to do")
    );

    // Nobody changes the recorded state through tokengate (TG188).
    for sql in [
        "UPDATE tokengate.at_rest_columns SET key_version = 2",
        "DELETE FROM tokengate.at_rest_columns",
        "TRUNCATE tokengate.at_rest_columns",
        "SET search_path = tokengate, public",
    ] {
        let e = admin.batch_execute(sql).await.unwrap_err();
        assert!(refusal(&e).contains("TG188"), "{sql}: {}", refusal(&e));
    }

    // Rotate: version 2 becomes active; rekey (killed, resumed) moves every token to it.
    let ring_v12 = ring(&[1, 2]);
    let keys_v12 = dir.path().join("keys-v12.json");
    ring_v12.write_new(&keys_v12, false).unwrap();
    // While a rekey waits out its grace period the state is rekeying: every role refused.
    let mut child = tool("rekey", &policy, &keys_v12, &["--grace", "60s"])
        .spawn()
        .unwrap();
    for role in ["mig_token", "mig_admin"] {
        let seen = eventually(20, async || {
            let c = via(&proxy_v1, role).await;
            match c.query("SELECT ssn FROM accounts WHERE id = 1", &[]).await {
                Err(e) => {
                    let r = refusal(&e);
                    r.contains("TG185") && r.contains("being rekeyed from key version 1 to 2")
                }
                Ok(_) => false,
            }
        })
        .await;
        assert!(seen, "{role}: the proxy never reported the rekey");
    }
    let _ = child.kill();
    let _ = child.wait();
    let rekey_args = ["--batch-size", "2", "--grace", "1s"];
    let out = kill_and_resume("rekey", &policy, &keys_v12, &rekey_args, 300..3000, 4).await;
    assert!(out.contains("key version 2"), "{out}");
    assert_stored(&direct, &ring_v12, 2).await;

    // The proxy whose key file lacks version 2 refuses rather than decrypting with version 1.
    assert!(
        eventually(10, async || {
            let c = via(&proxy_v1, "mig_admin").await;
            match c.query("SELECT ssn FROM accounts WHERE id = 1", &[]).await {
                Err(e) => refusal(&e).contains("does not hold"),
                Ok(_) => false,
            }
        })
        .await
    );
    // One with both versions decrypts with the recorded version 2.
    let proxy_v12 = proxy(&policy, &keys_v12).await;
    assert_clear(&proxy_v12).await;
    // A statement prepared under one state generation is refused at Bind once the state
    // changed (TG187), and works prepared again.
    let admin2 = via(&proxy_v12, "mig_admin").await;
    let by_key = "SELECT ssn FROM accounts WHERE region = $1 AND id = $2";
    let prepared = admin2.prepare(by_key).await.unwrap();
    let r = admin2.query_one(&prepared, &[&"us", &7i32]).await.unwrap();
    assert_eq!(r.get::<_, Option<String>>(0), plaintext(7));
    direct
        .batch_execute("UPDATE tokengate.at_rest_columns SET generation = generation + 1")
        .await
        .unwrap();
    assert!(
        eventually(10, async || {
            match admin2.query(&prepared, &[&"us", &7i32]).await {
                Err(e) => refusal(&e).starts_with("55000 tokengate TG187"),
                Ok(_) => false,
            }
        })
        .await
    );
    let r = admin2.query_one(by_key, &[&"us", &7i32]).await.unwrap();
    assert_eq!(r.get::<_, Option<String>>(0), plaintext(7));
    // Writes go in under the recorded version 2.
    admin2
        .execute(
            "UPDATE accounts SET ssn = $1 WHERE region = 'us' AND id = 1",
            &[&"555-12-3456"],
        )
        .await
        .unwrap();
    let stored: String = direct
        .query_one(
            "SELECT ssn FROM accounts WHERE region = 'us' AND id = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, token(&ring_v12, 2, "555-12-3456"));

    // Fail closed: a proxy that cannot read the state table refuses statements touching the
    // column (TG186) and runs the others; once it can read it again, it goes on.
    cluster()
        .pg
        .execute(
            "postgres",
            "CREATE ROLE mig_catalog LOGIN PASSWORD 'mig_catalog-pw'",
        )
        .await
        .unwrap();
    let (p, k) = (policy.clone(), keys_v12.clone());
    let proxy_cat = proxy_with(|c| {
        c.policy = Some(p);
        c.keys = Some(k);
        c.catalog_user = Some("mig_catalog".into());
        c.catalog_password = Some("mig_catalog-pw".into());
        c.at_rest_refresh = Duration::from_millis(100);
        c.at_rest_max_age = Duration::from_millis(500);
    })
    .await;
    let read = async |expect_ok: bool| {
        let c = via(&proxy_cat, "mig_admin").await;
        match c
            .query(
                "SELECT ssn FROM accounts WHERE region = 'us' AND id = 3",
                &[],
            )
            .await
        {
            Ok(rows) => expect_ok && rows[0].get::<_, Option<String>>(0) == plaintext(3),
            Err(e) => !expect_ok && refusal(&e).starts_with("55000 tokengate TG186"),
        }
    };
    assert!(eventually(10, async || read(true).await).await);
    direct
        .batch_execute("REVOKE SELECT ON tokengate.at_rest_columns FROM PUBLIC")
        .await
        .unwrap();
    assert!(eventually(10, async || read(false).await).await);
    let c = via(&proxy_cat, "mig_admin").await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, i64::from(ROWS));
    direct
        .batch_execute("GRANT SELECT ON tokengate.at_rest_columns TO PUBLIC")
        .await
        .unwrap();
    assert!(eventually(10, async || read(true).await).await);
}

/// A value the token format cannot take stops the run naming the row's key (never its
/// value) and leaves the state resumable; a table without a primary key is refused.
#[tokio::test]
async fn a_bad_value_stops_the_run_resumably_and_a_table_needs_a_primary_key() {
    let pg = &cluster().pg;
    pg.execute("postgres", "CREATE DATABASE atbad")
        .await
        .unwrap();
    pg.execute(
        "atbad",
        "CREATE TABLE cards (id int PRIMARY KEY, ssn text);
         INSERT INTO cards SELECT g, '123-45-' || (1000 + g) FROM generate_series(1, 40) g;
         UPDATE cards SET ssn = 'secret-words' WHERE id = 13;
         CREATE TABLE loose (ssn text);
         INSERT INTO loose VALUES (NULL), ('123-45-6789');
         CREATE TABLE fresh (ssn text);
         INSERT INTO fresh VALUES (NULL);",
    )
    .await
    .unwrap();
    let policy = tokengate::policy::Policy::from_yaml(
        "version: 1\nlabels:\n  ssn: { class: pii, token: digits, at_rest: token }\ncolumns:\n  public.cards.ssn: ssn\n  public.loose.ssn: ssn\n  public.fresh.ssn: ssn\nroles:\n  \"*\": { default: deny }\n",
        "p.yaml",
    )
    .unwrap();
    let keys = ring(&[1]);
    let mut client = pg.connect_admin("atbad").await.unwrap();
    let options = tokengate::atrest::Options {
        batch_size: 4,
        ..Default::default()
    };
    let quiet = tokengate::atrest::Quiet;
    let columns = tokengate::atrest::columns(&policy, None).unwrap();
    let cards = columns.iter().find(|c| c.table == "cards").unwrap();
    let loose = columns.iter().find(|c| c.table == "loose").unwrap();

    let e = tokengate::atrest::migrate(&mut client, &keys, loose, &options, &quiet)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("has no primary key"), "{e}");
    // A table without a primary key whose column holds no value yet has nothing to walk:
    // it is recorded tokenized (with the table locked against writes meanwhile).
    let fresh = columns.iter().find(|c| c.table == "fresh").unwrap();
    let done = tokengate::atrest::migrate(&mut client, &keys, fresh, &options, &quiet)
        .await
        .unwrap();
    assert!(
        matches!(
            done,
            tokengate::atrest::Outcome::Done {
                rows: 0,
                key_version: 1,
                ..
            }
        ),
        "{done:?}"
    );
    let states = tokengate::atrest::load_states(&client).await.unwrap();
    assert_eq!(
        states["public.fresh.ssn"].describe(),
        "tokenized, key version 1"
    );
    assert!(!states.contains_key("public.loose.ssn"));

    let e = tokengate::atrest::migrate(&mut client, &keys, cards, &options, &quiet)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("the row with key (13)"), "{e}");
    assert!(!e.contains("secret-words"), "{e}");
    // Rows before the bad one's batch are done; the state says migrating with them counted.
    let states = tokengate::atrest::load_states(&client).await.unwrap();
    let s = &states["public.cards.ssn"];
    assert_eq!(s.describe(), "migrating to key version 1 (12 rows done)");
    client
        .batch_execute("UPDATE cards SET ssn = '123-45-1013' WHERE id = 13")
        .await
        .unwrap();
    let done = tokengate::atrest::migrate(&mut client, &keys, cards, &options, &quiet)
        .await
        .unwrap();
    assert!(
        matches!(
            done,
            tokengate::atrest::Outcome::Done {
                rows: 28,
                key_version: 1,
                ..
            }
        ),
        "{done:?}"
    );
    for r in client
        .query("SELECT id, ssn FROM cards", &[])
        .await
        .unwrap()
    {
        let id: i32 = r.get(0);
        let plain = format!("123-45-{}", 1000 + id);
        assert_eq!(r.get::<_, String>(1), token(&keys, 1, &plain), "row {id}");
    }
}

/// A column that already holds tokens but has no state row (written by a tokengate without the
/// state table) is recorded with `migrate --already-tokenized N`: no row changes (a plain
/// migrate would tokenize the tokens again), the proxy then decrypts with version N, and a
/// second `--already-tokenized` with another version is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn already_tokenized_columns_are_recorded_without_touching_a_row() {
    let pg = &cluster().pg;
    pg.execute("postgres", "CREATE DATABASE atadopt")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys_path = dir.path().join("keys.json");
    let keys = ring(&[1, 2]);
    keys.write_new(&keys_path, false).unwrap();
    let plains: Vec<String> = (1..=20).map(|i| format!("123-45-{}", 6000 + i)).collect();
    // Tokens made with version 1 while version 2 is active: only the recorded version can
    // decrypt them.
    let stored: Vec<String> = plains.iter().map(|p| token(&keys, 1, p)).collect();
    let direct = pg.connect_admin("atadopt").await.unwrap();
    direct
        .batch_execute(
            "CREATE ROLE adopt_admin LOGIN PASSWORD 'adopt_admin-pw';
             CREATE TABLE accounts (region text, id int, ssn varchar(20), PRIMARY KEY (region, id));
             GRANT ALL ON accounts TO adopt_admin;",
        )
        .await
        .unwrap();
    direct
        .execute(
            "INSERT INTO accounts SELECT 'eu', g, ($1::text[])[g] FROM generate_series(1, 20) g",
            &[&stored],
        )
        .await
        .unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY.replace("mig_admin", "adopt_admin")).unwrap();
    let url = upstream().replace(&format!("/{MIG_DB}"), "/atadopt");
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(["migrate", "--policy", policy.to_str().unwrap()])
            .args([
                "--keys",
                keys_path.to_str().unwrap(),
                "--upstream",
                &url,
                "--quiet",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&["--already-tokenized", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("recorded as tokenized with key version 1"),
        "{stdout}"
    );
    let after: Vec<String> = direct
        .query("SELECT ssn FROM accounts ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(after, stored, "no row changed");
    // Another version for the same column is refused; the same one is a no-op.
    let out = run(&["--already-tokenized", "2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already recorded"));
    assert!(run(&["--already-tokenized", "1"]).status.success());
    let states = tokengate::atrest::load_states(&direct).await.unwrap();
    assert_eq!(
        states["public.accounts.ssn"].describe(),
        "tokenized, key version 1"
    );
    // Through tokengate the clear role reads the plaintext: version 1, not the active 2.
    let proxy = proxy(&policy, &keys_path).await;
    let mut c = pg_config(proxy.addr.port(), "adopt_admin", "adopt_admin-pw");
    c.dbname("atadopt");
    let admin = connect(&c).await;
    let clear: Vec<String> = admin
        .query("SELECT ssn FROM accounts ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(clear, plains);
}

/// A parent reads its partitions' rows and a write may go to a partition directly: a policy
/// that labels the parent but not a partition would show that partition's rows in clear to a
/// restricted role, and, with the column stored as tokens, let plaintext be written into it
/// and handed to a token role as if it were a token. Any statement touching such a family's
/// column is refused (TG189); labelling every member makes it work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_labelled_unlike_their_parent_are_refused() {
    let pg = &cluster().pg;
    pg.execute("postgres", "CREATE DATABASE atpart")
        .await
        .unwrap();
    let direct = pg.connect_admin("atpart").await.unwrap();
    direct
        .batch_execute(
            "CREATE ROLE part_token LOGIN PASSWORD 'part_token-pw';
             CREATE ROLE part_admin LOGIN PASSWORD 'part_admin-pw';
             CREATE TABLE people (id int PRIMARY KEY, ssn text) PARTITION BY RANGE (id);
             CREATE TABLE people_a PARTITION OF people FOR VALUES FROM (0) TO (100);
             CREATE TABLE people_b PARTITION OF people FOR VALUES FROM (100) TO (200);
             INSERT INTO people VALUES (1, '123-45-6789'), (150, '987-65-4321');
             GRANT ALL ON ALL TABLES IN SCHEMA public TO part_token, part_admin;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    ring(&[1]).write_new(&keys, false).unwrap();
    let policy_text = |columns: &str, at_rest: &str| {
        format!(
            "version: 1\nlabels:\n  ssn: {{ class: pii, token: digits{at_rest} }}\ncolumns:\n{columns}roles:\n  part_admin: {{ default: clear }}\n  part_token: {{ default: token }}\n  \"*\": {{ default: deny }}\n"
        )
    };
    let parent_only = "  public.people.ssn: ssn\n  public.people_a.ssn: ssn\n";
    let every =
        "  public.people.ssn: ssn\n  public.people_a.ssn: ssn\n  public.people_b.ssn: ssn\n";
    let query = |proxy: &RunningServer, role: &'static str, sql: &'static str| {
        let port = proxy.addr.port();
        async move {
            let mut c = pg_config(port, role, &format!("{role}-pw"));
            c.dbname("atpart");
            let client = connect(&c).await;
            client.query(sql, &[]).await
        }
    };

    // Read path: the partition left unlabelled would be read in clear.
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, policy_text(parent_only, "")).unwrap();
    let p = proxy(&policy, &keys).await;
    for sql in [
        "SELECT ssn FROM people_b",
        "SELECT ssn FROM people",
        "SELECT ssn FROM people_a",
    ] {
        let e = query(&p, "part_token", sql).await.unwrap_err();
        assert!(refusal(&e).contains("TG189"), "{sql}: {}", refusal(&e));
    }
    // The same statement directly: the partition's plaintext.
    let leaked: String = direct
        .query_one("SELECT ssn FROM people_b", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(leaked, "987-65-4321");
    // Unrelated statements still run.
    let n: i64 = query(&p, "part_token", "SELECT count(*) FROM people")
        .await
        .unwrap()[0]
        .get(0);
    assert_eq!(n, 2);
    p.shutdown().await;

    // Labelled everywhere: tokens for the token role, from the parent and the partition.
    std::fs::write(&policy, policy_text(every, "")).unwrap();
    let p = proxy(&policy, &keys).await;
    let rows = query(&p, "part_token", "SELECT ssn FROM people ORDER BY id")
        .await
        .unwrap();
    let seen: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(seen.len(), 2);
    assert!(
        !seen.contains(&"123-45-6789".to_string()) && !seen.contains(&"987-65-4321".to_string())
    );
    p.shutdown().await;

    // Stored as tokens with one partition unlabelled: a clear role may not write it either.
    std::fs::write(&policy, policy_text(parent_only, ", at_rest: token")).unwrap();
    let p = proxy(&policy, &keys).await;
    let e = query(
        &p,
        "part_admin",
        "INSERT INTO people_b VALUES (151, '111-22-3333') RETURNING id",
    )
    .await
    .unwrap_err();
    assert!(refusal(&e).contains("TG189"), "{}", refusal(&e));
    p.shutdown().await;
}

/// A transaction whose snapshot predates a migrate or rekey would read the rows as they were
/// then (plaintext, or tokens of the old key version) while tokengate treats them by the new
/// state: plaintext handed to a token role as if it were a token, or a clear role shown the
/// old tokens "decrypted" with the new version. Such a transaction is refused (TG142) once
/// the proxy has seen the state change, for every role; a cursor held across the change is
/// refused (TG144); an imported snapshot is always refused (TG143). Sessions that were idle
/// across the change, pipelining ones included, work as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_snapshots_spanning_a_migrate_or_rekey_are_refused() {
    const DB: &str = "atsnap";
    let pg = &cluster().pg;
    pg.execute("postgres", &format!("CREATE DATABASE {DB}"))
        .await
        .unwrap();
    let direct = pg.connect_admin(DB).await.unwrap();
    direct
        .batch_execute(
            "CREATE ROLE snap_admin LOGIN PASSWORD 'snap_admin-pw';
             CREATE ROLE snap_token LOGIN PASSWORD 'snap_token-pw';
             CREATE TABLE accounts (region text, id int, ssn varchar(20), PRIMARY KEY (region, id));
             CREATE TABLE notes (id int PRIMARY KEY, body text);
             INSERT INTO notes VALUES (1, 'hello');
             GRANT ALL ON accounts, notes TO snap_admin, snap_token, trust_user;",
        )
        .await
        .unwrap();
    fill_accounts(&direct, 40).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        POLICY
            .replace("mig_admin", "snap_admin")
            .replace(
                "  mig_token: { default: token, filter_on: [ssn] }\n",
                "  snap_token: { default: token, filter_on: [ssn] }\n  trust_user: { default: token, filter_on: [ssn] }\n",
            ),
    )
    .unwrap();
    let keys_v1 = dir.path().join("keys-v1.json");
    ring(&[1]).write_new(&keys_v1, false).unwrap();
    let ring_v12 = ring(&[1, 2]);
    let keys_v12 = dir.path().join("keys-v12.json");
    ring_v12.write_new(&keys_v12, false).unwrap();
    let url = upstream().replace(&format!("/{MIG_DB}"), &format!("/{DB}"));
    let run = |verb: &str, keys: &Path, extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args([verb, "--policy", policy.to_str().unwrap()])
            .args(["--keys", keys.to_str().unwrap(), "--upstream", &url])
            .arg("--quiet")
            .args(extra)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{verb}: {text}");
        text
    };
    // The proxy holds both versions throughout (so only the recorded state decides).
    let proxy = proxy(&policy, &keys_v12).await;
    let via = async |role: &str| {
        let mut c = pg_config(proxy.addr.port(), role, &format!("{role}-pw"));
        c.dbname(DB);
        connect(&c).await
    };
    let p7 = plaintext(7).unwrap();
    let read7 = "SELECT ssn FROM accounts WHERE region = 'us' AND id = 7";
    // The state the proxy serves has reached `expected` (a fresh session reads it).
    let refreshed = async |expected: &str| {
        eventually(20, async || {
            let c = via("snap_admin").await;
            match c.query_one(read7, &[]).await {
                Ok(r) => r.get::<_, Option<String>>(0).as_deref() == Some(expected),
                Err(_) => false,
            }
        })
        .await
    };
    let expect_refused =
        |r: Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>,
         code: &str,
         what: &str|
         -> String {
            match r {
                Ok(msgs) => {
                    let values: Vec<String> = msgs
                        .iter()
                        .filter_map(|m| match m {
                            tokio_postgres::SimpleQueryMessage::Row(r) => {
                                Some(r.get(0).unwrap_or("NULL").to_string())
                            }
                            _ => None,
                        })
                        .collect();
                    panic!("{what}: not refused, it returned {values:?}");
                }
                Err(e) => {
                    let r = refusal(&e);
                    assert!(r.contains(code), "{what}: {r}");
                    r
                }
            }
        };

    // --- migrate ---
    // Snapshots taken before the migration, by a statement that touches no column stored as
    // tokens (the column is refused, TG185, until it is migrated).
    direct
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .await
        .unwrap();
    let old_token = via("snap_token").await;
    old_token
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .await
        .unwrap();
    let old_admin = via("snap_admin").await;
    old_admin
        .batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT body FROM notes")
        .await
        .unwrap();
    // Sessions idle across the migration (each ran a statement before it).
    let idle_token = via("snap_token").await;
    let idle_admin = via("snap_admin").await;
    for c in [&idle_token, &idle_admin] {
        c.batch_execute("SELECT 1").await.unwrap();
    }
    // An exported snapshot, to import through tokengate later.
    let exporter = pg.connect_admin(DB).await.unwrap();
    exporter
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let exported: String = exporter
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .unwrap()
        .get(0);

    // Outside a transaction block: an extended-protocol implicit transaction (no Sync yet)
    // under a REPEATABLE READ default keeps one snapshot, taken by its first Execute. The same
    // messages directly and through tokengate.
    let mut implicit = Vec::new();
    for addr in [
        std::net::SocketAddr::from(([127, 0, 0, 1], cluster().port())),
        proxy.addr,
    ] {
        let mut raw = Raw::tcp(addr).await;
        raw.send(&startup_packet(
            196_608,
            &[("user", "trust_user"), ("database", DB)],
        ))
        .await;
        raw.until_ready().await;
        let set = raw
            .query("SET default_transaction_isolation = 'repeatable read'")
            .await;
        assert!(set.iter().all(|m| m.tag != b'E'), "{set:?}");
        raw.send(&extended("SELECT 1", false)).await;
        while let Some(m) = raw.recv().await {
            assert_ne!(m.tag, b'E', "{:?}", m.field(b'M'));
            if m.tag == b'C' {
                break;
            }
        }
        implicit.push(raw);
    }

    let out = run("migrate", &keys_v1, &[]);
    assert!(out.contains("public.accounts.ssn: migrate done"), "{out}");
    // The leak is real in PostgreSQL: the old snapshot still shows the plaintext, while the
    // table now holds tokens.
    let t7 = token(&ring_v12, 1, &p7);
    let seen: String = direct.query_one(read7, &[]).await.unwrap().get(0);
    assert_eq!(seen, p7, "the old snapshot reads the plaintext");
    direct.batch_execute("COMMIT").await.unwrap();
    let now: String = direct.query_one(read7, &[]).await.unwrap().get(0);
    assert_eq!(now, t7);
    assert!(refreshed(&p7).await, "the proxy never served the new state");

    // The implicit transaction: directly it reads the plaintext; through tokengate, refused.
    let mut proxied = implicit.pop().unwrap();
    let mut raw_direct = implicit.pop().unwrap();
    raw_direct.send(&extended(read7, true)).await;
    let rows: Vec<String> = raw_direct
        .until_ready()
        .await
        .iter()
        .filter(|m| m.tag == b'D')
        .map(|m| first_value(&m.body))
        .collect();
    assert_eq!(
        rows,
        vec![p7.clone()],
        "the implicit transaction's snapshot"
    );
    proxied.send(&extended(read7, true)).await;
    let replies = proxied.until_ready().await;
    assert!(
        replies.iter().all(|m| m.tag != b'D'),
        "token role, implicit transaction: {:?}",
        replies
            .iter()
            .filter(|m| m.tag == b'D')
            .map(|m| first_value(&m.body))
            .collect::<Vec<_>>()
    );
    let error = replies.iter().find(|m| m.tag == b'E').expect("an error");
    assert_eq!(error.field(b'C').as_deref(), Some("40001"));
    assert!(error.field(b'M').unwrap_or_default().contains("TG142"));
    // The next implicit transaction reads the token.
    proxied.send(&extended(read7, true)).await;
    let rows: Vec<String> = proxied
        .until_ready()
        .await
        .iter()
        .filter(|m| m.tag == b'D')
        .map(|m| first_value(&m.body))
        .collect();
    assert_eq!(rows, vec![t7.clone()]);

    // Through tokengate the old transactions are refused: no plaintext to the token role, no
    // "decrypted" plaintext to the clear role.
    let r = expect_refused(
        old_token.simple_query(read7).await,
        "TG142",
        "token role, old snapshot",
    );
    assert!(r.starts_with("40001 tokengate TG142"), "{r}");
    assert!(r.contains("public.accounts.ssn"), "{r}");
    assert!(!r.contains(&p7), "{r}");
    // The extended protocol is refused alike (at Bind).
    match old_admin.query(read7, &[]).await {
        Ok(rows) => panic!(
            "clear role, old snapshot: not refused, it returned {:?}",
            rows.iter()
                .map(|r| r.get::<_, Option<String>>(0))
                .collect::<Vec<_>>()
        ),
        Err(e) => assert!(
            refusal(&e).starts_with("40001 tokengate TG142"),
            "{}",
            refusal(&e)
        ),
    }
    // PostgreSQL's transaction rules hold: the refusal aborted the transaction.
    for c in [&old_token, &old_admin] {
        let e = c.batch_execute("SELECT 1").await.unwrap_err();
        assert!(refusal(&e).starts_with("25P02"), "{}", refusal(&e));
    }
    for c in [&old_token, &old_admin] {
        c.batch_execute("ROLLBACK").await.unwrap();
    }
    // A new transaction reads the state as it is.
    let r = old_token.query_one(read7, &[]).await.unwrap();
    assert_eq!(r.get::<_, String>(0), t7);
    let r = old_admin.query_one(read7, &[]).await.unwrap();
    assert_eq!(r.get::<_, String>(0), p7);
    // Statements not touching the column run in old transactions too.
    old_admin
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let n: i64 = old_admin
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 40);
    old_admin.batch_execute("COMMIT").await.unwrap();

    // Idle across the migration: no refusal, the right values.
    let r = idle_token.query_one(read7, &[]).await.unwrap();
    assert_eq!(r.get::<_, String>(0), t7);
    let r = idle_admin.query_one(read7, &[]).await.unwrap();
    assert_eq!(r.get::<_, String>(0), p7);
    // A pipelining client: several queries in flight on one connection.
    let pipelined = via("snap_admin").await;
    let by_id = "SELECT ssn FROM accounts WHERE region = $1 AND id = $2";
    let statement = pipelined.prepare(by_id).await.unwrap();
    let (a, b, c, d) = tokio::join!(
        pipelined.query_one(&statement, &[&"us", &7i32]),
        pipelined.query_one(&statement, &[&"eu", &8i32]),
        pipelined.query_one(by_id, &[&"us", &9i32]),
        pipelined.query_one("SELECT body FROM notes WHERE id = 1", &[]),
    );
    assert_eq!(a.unwrap().get::<_, Option<String>>(0), plaintext(7));
    assert_eq!(b.unwrap().get::<_, Option<String>>(0), plaintext(8));
    assert_eq!(c.unwrap().get::<_, Option<String>>(0), plaintext(9));
    assert_eq!(d.unwrap().get::<_, String>(0), "hello");

    // Importing a snapshot is refused for every role, in every form.
    for (role, sql) in [
        (
            "snap_admin",
            format!("BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{exported}'"),
        ),
        (
            "snap_token",
            format!(
                "START TRANSACTION ISOLATION LEVEL REPEATABLE READ; SET LOCAL TRANSACTION /* x */ SNAPSHOT '{exported}'"
            ),
        ),
    ] {
        let c = via(role).await;
        let r = expect_refused(c.simple_query(&sql).await, "TG143", &sql);
        assert!(r.starts_with("0A000 tokengate TG143"), "{r}");
        // The session stays usable.
        c.batch_execute("ROLLBACK").await.unwrap();
        assert!(c.query_one(read7, &[]).await.is_ok());
        c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .unwrap();
        let e = c
            .execute(&format!("SET TRANSACTION SNAPSHOT '{exported}'"), &[])
            .await
            .unwrap_err();
        assert!(refusal(&e).contains("TG143"), "{}", refusal(&e));
        c.batch_execute("ROLLBACK").await.unwrap();
    }
    exporter.batch_execute("COMMIT").await.unwrap();

    // --- rekey ---
    direct
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .await
        .unwrap();
    old_token
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .await
        .unwrap();
    old_admin
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT body FROM notes")
        .await
        .unwrap();
    // A cursor held past its transaction: its rows are materialized under key version 1.
    let holder = via("snap_admin").await;
    holder
        .batch_execute(
            "BEGIN; DECLARE h CURSOR WITH HOLD FOR SELECT ssn FROM accounts ORDER BY region, id; COMMIT",
        )
        .await
        .unwrap();
    let token_holder = via("snap_token").await;
    token_holder
        .batch_execute(
            "BEGIN; DECLARE t CURSOR WITH HOLD FOR SELECT ssn FROM accounts WHERE region = 'us' ORDER BY id; COMMIT",
        )
        .await
        .unwrap();
    let first: String = token_holder
        .query_one("FETCH 1 FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(first, token(&ring_v12, 1, &plaintext(1).unwrap()));
    let first = holder.simple_query("FETCH 1 FROM h").await.unwrap();
    assert!(
        first
            .iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))),
        "{first:?}"
    );

    let out = run("rekey", &keys_v12, &["--grace", "1s"]);
    assert!(out.contains("key version 2"), "{out}");
    let seen: String = direct.query_one(read7, &[]).await.unwrap().get(0);
    assert_eq!(seen, t7, "the old snapshot reads the version 1 token");
    direct.batch_execute("COMMIT").await.unwrap();
    let t7v2 = token(&ring_v12, 2, &p7);
    let now: String = direct.query_one(read7, &[]).await.unwrap().get(0);
    assert_eq!(now, t7v2);
    // The proxy now decrypts with version 2: wait until it does (a fresh session reads the
    // plaintext, so it decrypts the stored version 2 token).
    assert!(refreshed(&p7).await);
    expect_refused(
        old_admin.simple_query(read7).await,
        "TG142",
        "clear role, snapshot from before the rekey",
    );
    expect_refused(
        old_token.simple_query(read7).await,
        "TG142",
        "token role, snapshot from before the rekey",
    );
    let r = expect_refused(
        holder.simple_query("FETCH 1 FROM h").await,
        "TG144",
        "cursor held across the rekey",
    );
    assert!(r.starts_with("55000 tokengate TG144"), "{r}");
    expect_refused(
        holder.simple_query("MOVE 1 IN h").await,
        "TG144",
        "MOVE in a cursor held across the rekey",
    );
    expect_refused(
        token_holder.simple_query("FETCH 1 FROM t").await,
        "TG144",
        "token role's cursor held across the rekey",
    );
    // Through the extended protocol alike.
    let e = token_holder.query("FETCH 1 FROM t", &[]).await.unwrap_err();
    assert!(refusal(&e).contains("TG144"), "{}", refusal(&e));
    token_holder.batch_execute("CLOSE t").await.unwrap();
    holder.batch_execute("CLOSE h").await.unwrap();
    for c in [&old_token, &old_admin] {
        c.batch_execute("ROLLBACK").await.unwrap();
    }
    let r = old_token.query_one(read7, &[]).await.unwrap();
    assert_eq!(r.get::<_, String>(0), t7v2);
    let r = old_admin.query_one(read7, &[]).await.unwrap();
    assert_eq!(r.get::<_, String>(0), p7);
    let r = idle_token.query_one(read7, &[]).await.unwrap();
    assert_eq!(r.get::<_, String>(0), t7v2);
    let r = holder.query_one(read7, &[]).await.unwrap();
    assert_eq!(r.get::<_, String>(0), p7);
}

/// Parse, Bind and Execute of `sql` (unnamed), then Sync or Flush.
fn extended(sql: &str, sync: bool) -> Vec<u8> {
    let mut parse = vec![0];
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    let mut out = frame(b'P', &parse);
    out.extend(frame(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
    out.extend(frame(b'E', &[0, 0, 0, 0, 0]));
    out.extend(frame(if sync { b'S' } else { b'H' }, &[]));
    out
}

/// The first value of a DataRow body, as text.
fn first_value(body: &[u8]) -> String {
    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
    String::from_utf8_lossy(&body[6..6 + len.max(0) as usize]).into_owned()
}

/// Rows 1..=n of `accounts`, with their region and plaintext (every 10th NULL).
async fn fill_accounts(direct: &tokio_postgres::Client, n: i32) {
    let ids: Vec<i32> = (1..=n).collect();
    let regions: Vec<&str> = ids.iter().map(|&i| region(i)).collect();
    let plains: Vec<Option<String>> = ids.iter().map(|&i| plaintext(i)).collect();
    direct
        .execute(
            "INSERT INTO accounts SELECT * FROM unnest($1::text[], $2::int[], $3::text[])",
            &[&regions, &ids, &plains],
        )
        .await
        .unwrap();
}
