//! Relations created inside an open transaction and used in it (`BEGIN; CREATE TEMP TABLE t;
//! INSERT INTO t ...; SELECT ... FROM t; COMMIT`), the pattern node-postgres and pgjdbc
//! applications use. The metadata connection cannot see the uncommitted table, so before
//! tokengate read it on the session's own connection this failed: TG180 for any role while
//! columns are stored as tokens, TG101 for a restricted role. Runs `tokengate demo` (policy
//! `policies/demo.yaml`, ssn and card stored as tokens).
use std::net::SocketAddr;
use tokengate::demo;

async fn connect(port: u16, role: &str) -> tokio_postgres::Client {
    let password = demo::ROLES
        .iter()
        .find(|(r, _)| *r == role)
        .map(|(_, p)| *p)
        .unwrap();
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(role)
        .password(password)
        .dbname(demo::DATABASE);
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

use crate::harness::simple_rows as rows;

/// The tokengate code of a refusal (TGnnn), without printing what came back otherwise.
fn tg<T>(what: &str, r: Result<T, tokio_postgres::Error>) -> String {
    match r {
        Ok(_) => panic!("{what}: expected a refusal, it succeeded"),
        Err(e) => e
            .as_db_error()
            .map(|d| {
                d.message()
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .trim_end_matches(':')
                    .to_string()
            })
            .unwrap_or_else(|| format!("not an ErrorResponse: {e}")),
    }
}

/// The pattern, simple and extended protocol, as `role`; returns what the SELECTs returned.
async fn pattern(c: &tokio_postgres::Client) -> Vec<Vec<Option<String>>> {
    let mut out = Vec::new();
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("CREATE TEMP TABLE t2 (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO t2 VALUES (1, 'a')")
        .await
        .unwrap_or_else(|e| panic!("simple INSERT into t2: {e:?}"));
    c.execute("INSERT INTO t2 VALUES ($1, $2)", &[&2i32, &"b"])
        .await
        .unwrap_or_else(|e| panic!("extended INSERT into t2: {e:?}"));
    c.execute("UPDATE t2 SET v = $1 WHERE id = $2", &[&"bb", &2i32])
        .await
        .unwrap();
    // Pipelined (one batch of Bind/Execute messages, as pgjdbc's executeBatch sends).
    let insert = c.prepare("INSERT INTO t2 VALUES ($1, $2)").await.unwrap();
    let values: Vec<(i32, String)> = (10..14).map(|i| (i, format!("p{i}"))).collect();
    let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 2]> =
        values.iter().map(|(i, v)| [i as _, v as _]).collect();
    futures_util::future::try_join_all(params.iter().map(|p| c.execute(&insert, p)))
        .await
        .unwrap_or_else(|e| panic!("pipelined INSERTs into t2: {e:?}"));
    c.execute("DELETE FROM t2 WHERE id >= $1", &[&10i32])
        .await
        .unwrap();
    out.extend(rows(c, "SELECT id, v FROM t2 ORDER BY id").await);
    for r in c
        .query("SELECT * FROM t2 WHERE id >= $1 ORDER BY id", &[&1i32])
        .await
        .unwrap_or_else(|e| panic!("extended SELECT from t2: {e:?}"))
    {
        out.push(vec![
            Some(r.get::<_, i32>(0).to_string()),
            r.get::<_, Option<String>>(1),
        ]);
    }
    // Joined with a known table: the protected column keeps its protection.
    out.extend(
        rows(
            c,
            "SELECT t2.v, c.city FROM t2 JOIN customers c ON c.id = t2.id ORDER BY t2.id",
        )
        .await,
    );
    c.batch_execute("COMMIT").await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_tables_created_in_the_transaction_are_usable_in_it() {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    // app_admin may also create code (views, functions, triggers), so the attacks on the
    // learned tables below can be tried; support keeps the default rules (no code).
    let policy = demo::POLICY.replace(
        "app_admin: { default: clear }",
        "app_admin: { default: clear, statements: { allow: [select, insert, update, delete, copy, ddl, utility, code] } }",
    );
    assert_ne!(policy, demo::POLICY);
    let d = demo::start_with(any, None, 20, &policy, None)
        .await
        .expect("demo starts");
    let proxy = d.server.addr.port();
    let direct = d.pg.port();

    // Directly against PostgreSQL: the reference answer.
    let expected = pattern(&connect(direct, "app_admin").await).await;
    assert_eq!(expected.len(), 6);
    assert_eq!(expected[1], vec![Some("2".into()), Some("bb".into())]);
    for role in ["app_admin", "support", "analyst"] {
        let c = connect(proxy, role).await;
        assert_eq!(pattern(&c).await, expected, "{role} through tokengate");
        // Committed: the catalog refresh knows it now, outside any transaction.
        assert_eq!(
            rows(&c, "SELECT count(*) FROM t2").await,
            vec![vec![Some("2".into())]],
            "{role}"
        );

        // After ROLLBACK the name is unknown again.
        c.batch_execute("BEGIN; CREATE TEMP TABLE gone (id int)")
            .await
            .unwrap();
        c.batch_execute("INSERT INTO gone VALUES (1)")
            .await
            .unwrap();
        c.batch_execute("ROLLBACK").await.unwrap();
        let e = c.batch_execute("INSERT INTO gone VALUES (1)").await;
        assert!(e.is_err(), "{role}: gone was rolled back");
        // The session is still usable.
        assert_eq!(rows(&c, "SELECT 1").await, vec![vec![Some("1".into())]]);

        // ROLLBACK TO SAVEPOINT undoes the CREATE; a view reusing the name is not the table.
        c.batch_execute("BEGIN; CREATE TEMP TABLE keep (id int)")
            .await
            .unwrap();
        c.batch_execute("SAVEPOINT s").await.unwrap();
        c.batch_execute("CREATE TEMP TABLE undone (id int, v text)")
            .await
            .unwrap();
        c.batch_execute("INSERT INTO undone VALUES (1, 'x')")
            .await
            .unwrap();
        c.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
        c.batch_execute("INSERT INTO keep VALUES (7)")
            .await
            .unwrap_or_else(|e| panic!("{role}: keep survives the rollback to s: {e:?}"));
        let e = c.batch_execute("INSERT INTO undone VALUES (2, 'y')").await;
        assert!(e.is_err(), "{role}: undone was rolled back");
        c.batch_execute("ROLLBACK").await.unwrap();
        drop(c);
    }

    // While columns are stored as tokens, a view reusing a created table's name is not taken
    // for the table: writes through it are refused (PostgreSQL would accept them).
    let admin = connect(proxy, "app_admin").await;
    admin
        .batch_execute("BEGIN; CREATE TEMP TABLE base1 (id int, v text)")
        .await
        .unwrap();
    admin
        .batch_execute("CREATE TEMP TABLE reused (id int, v text)")
        .await
        .unwrap();
    admin
        .batch_execute("INSERT INTO reused VALUES (1, 'a')")
        .await
        .unwrap();
    admin.batch_execute("DROP TABLE reused").await.unwrap();
    admin
        .batch_execute("CREATE TEMP VIEW reused AS SELECT id, v FROM base1")
        .await
        .unwrap();
    let code = tg(
        "a view reusing the name",
        admin
            .batch_execute("INSERT INTO reused VALUES (2, 'b')")
            .await,
    );
    assert_eq!(code, "TG180");
    admin.batch_execute("ROLLBACK").await.unwrap();
    // A table given a trigger in the transaction is not learned any more.
    admin
        .batch_execute("BEGIN; CREATE TEMP TABLE trg_t (id int, v text)")
        .await
        .unwrap();
    admin
        .batch_execute("INSERT INTO trg_t VALUES (1, 'a')")
        .await
        .unwrap();
    admin
        .batch_execute(
            "CREATE FUNCTION pg_temp.trg_f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
        )
        .await
        .unwrap();
    admin
        .batch_execute(
            "CREATE TRIGGER trg BEFORE INSERT ON trg_t FOR EACH ROW EXECUTE FUNCTION pg_temp.trg_f()",
        )
        .await
        .unwrap();
    let code = tg(
        "a table with a trigger",
        admin
            .batch_execute("INSERT INTO trg_t VALUES (2, 'b')")
            .await,
    );
    assert_eq!(code, "TG180");
    admin.batch_execute("ROLLBACK").await.unwrap();
    // Tables of an inheritance family are not learned (nor is the parent, learned before).
    admin
        .batch_execute("BEGIN; CREATE TEMP TABLE parent1 (id int, v text)")
        .await
        .unwrap();
    admin
        .batch_execute("INSERT INTO parent1 VALUES (1, 'a')")
        .await
        .unwrap();
    admin
        .batch_execute("CREATE TEMP TABLE kid (w text) INHERITS (parent1)")
        .await
        .unwrap();
    for t in ["kid", "parent1"] {
        let code = tg(
            "a family member",
            admin
                .batch_execute(&format!("INSERT INTO {t} VALUES (2, 'b')"))
                .await,
        );
        assert_eq!(code, "TG180", "{t}");
    }
    admin.batch_execute("ROLLBACK").await.unwrap();
    // Statements sent in the same message as the CREATE TABLE were analysed before the
    // server created it: the table is still unknown to them (what every statement met
    // before, one batch at a time as well).
    let code = tg(
        "the same message",
        admin
            .batch_execute("BEGIN; CREATE TEMP TABLE same (id int); INSERT INTO same VALUES (1)")
            .await,
    );
    assert!(code == "TG180" || code == "TG141", "{code}");
    admin.batch_execute("ROLLBACK").await.unwrap();
    // A learned table is still other stored data: copying at-rest tokens into it is refused
    // as before (TG182), and a plaintext written to it stays in it (it is not labelled).
    admin
        .batch_execute("BEGIN; CREATE TEMP TABLE copy_t (id int, ssn text)")
        .await
        .unwrap();
    for sql in [
        "INSERT INTO copy_t SELECT id, ssn FROM customers",
        "UPDATE copy_t SET ssn = c.ssn FROM customers c WHERE c.id = copy_t.id",
        "INSERT INTO copy_t (id, ssn) SELECT id, ssn FROM customers WHERE ssn = '000-00-0000'",
    ] {
        let code = tg(sql, admin.batch_execute(sql).await);
        assert!(code.starts_with("TG18"), "{sql}: {code}");
        admin.batch_execute("ROLLBACK").await.unwrap();
        admin
            .batch_execute("BEGIN; CREATE TEMP TABLE copy_t (id int, ssn text)")
            .await
            .unwrap();
    }
    admin
        .batch_execute("INSERT INTO copy_t VALUES (1, '123-45-6789')")
        .await
        .unwrap();
    assert_eq!(
        rows(&admin, "SELECT ssn FROM copy_t").await,
        vec![vec![Some("123-45-6789".into())]]
    );
    admin.batch_execute("ROLLBACK").await.unwrap();
    // A view over customers cannot be created through tokengate (DDL naming an at-rest table).
    admin.batch_execute("BEGIN").await.unwrap();
    let code = tg(
        "a view over customers",
        admin
            .batch_execute("CREATE TEMP VIEW cv AS SELECT id, ssn FROM customers")
            .await,
    );
    assert_eq!(code, "TG180", "DDL naming an at-rest table");
    admin.batch_execute("ROLLBACK").await.unwrap();
    // A view created directly (tokengate refuses its DDL) over customers, then named in the
    // transaction: writes through it stay refused.
    let pg = d.pg.connect_admin(demo::DATABASE).await.unwrap();
    pg.batch_execute(
        "CREATE VIEW public.cust_v AS SELECT id, ssn FROM customers; \
         GRANT ALL ON public.cust_v TO app_admin",
    )
    .await
    .unwrap();
    admin.batch_execute("BEGIN").await.unwrap();
    admin
        .batch_execute("CREATE TEMP TABLE cust_t (id int)")
        .await
        .unwrap();
    let code = tg(
        "a write through a view",
        admin
            .batch_execute("INSERT INTO cust_v VALUES (9999, '111-22-3333')")
            .await,
    );
    assert_eq!(code, "TG180");
    admin.batch_execute("ROLLBACK").await.unwrap();
    let stored: i64 = pg
        .query_one("SELECT count(*) FROM customers WHERE id = 9999", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0);

    // A restricted role cannot copy a protected column into a table of its own and read it
    // there: CREATE TABLE AS and INSERT ... SELECT of ssn are refused as before.
    let support = connect(proxy, "support").await;
    support.batch_execute("BEGIN").await.unwrap();
    let e = support
        .batch_execute("CREATE TEMP TABLE x AS SELECT ssn FROM customers")
        .await;
    assert!(e.is_err(), "support: CREATE TABLE AS SELECT ssn");
    support.batch_execute("ROLLBACK").await.unwrap();
    support
        .batch_execute("BEGIN; CREATE TEMP TABLE y (id int, s text)")
        .await
        .unwrap();
    let e = support
        .batch_execute("INSERT INTO y SELECT id, ssn FROM customers")
        .await;
    assert!(
        e.is_err(),
        "support: INSERT ... SELECT ssn into its own table"
    );
    support.batch_execute("ROLLBACK").await.unwrap();
    // Triggers (code) on the new table are still refused for support (statements rules).
    support
        .batch_execute("BEGIN; CREATE TEMP TABLE z (id int)")
        .await
        .unwrap();
    let code = tg(
        "support: CREATE FUNCTION",
        support
            .batch_execute(
                "CREATE FUNCTION pg_temp.f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
            )
            .await,
    );
    assert_eq!(code, "TG102");
    support.batch_execute("ROLLBACK").await.unwrap();
}
