//! The leak corpus: attacks on tokengate's read-path enforcement by restricted roles of
//! `policies/demo.yaml`, through every client path (simple protocol, extended text and binary,
//! named statements, pipelining, COPY, cursors, portals, RETURNING). Each case names its role,
//! its statement and whether it must be refused or rewritten; the oracle in `crm.rs` fails a
//! case if any protected plaintext (or a trivially reversible form of it) reached the client.
use crate::crm::*;
use crate::harness::*;
use Expect::{NoLeak, Protected, Refused, Rewritten};

/// (role, statement, expectation). The statement is the case's name in failure messages.
type Case = (&'static str, &'static str, Expect);

/// Statements sent with the simple protocol (tokio-postgres `simple_query`, streamed).
const SIMPLE: &[Case] = &[
    // Plain reads: rewritten (masked for support, tokens for analyst/auditor).
    ("support", "SELECT email FROM customers", Rewritten),
    ("support", "SELECT ssn FROM customers", Rewritten),
    (
        "support",
        "SELECT full_name, phone FROM customers",
        Rewritten,
    ),
    (
        "support",
        "SELECT * FROM customers WHERE id <= 10",
        Rewritten,
    ),
    (
        "analyst",
        "SELECT * FROM customers WHERE id <= 10",
        Rewritten,
    ),
    (
        "auditor",
        "SELECT ssn, email, birth_date FROM customers WHERE id <= 10",
        Rewritten,
    ),
    ("support", "SELECT card_number FROM payments", Rewritten),
    (
        "analyst",
        "SELECT card_number, amount FROM payments",
        Rewritten,
    ),
    // Expressions over protected columns: refused.
    ("support", "SELECT lower(email) FROM customers", Refused),
    ("support", "SELECT upper(full_name) FROM customers", Refused),
    ("support", "SELECT email || '' FROM customers", Refused),
    (
        "support",
        "SELECT substr(ssn, 1, 11) FROM customers",
        Refused,
    ),
    ("support", "SELECT ssn::text FROM customers", Refused),
    (
        "analyst",
        "SELECT email::varchar(200) FROM customers",
        Refused,
    ),
    (
        "analyst",
        "SELECT birth_date::text FROM customers WHERE id <= 10",
        Refused,
    ),
    ("support", "SELECT row_to_json(c) FROM customers c", Refused),
    ("support", "SELECT c::text FROM customers c", Refused),
    ("analyst", "SELECT to_jsonb(c) FROM customers c", Refused),
    (
        "support",
        "SELECT format('%s', ssn) FROM customers",
        Refused,
    ),
    (
        "support",
        "SELECT string_agg(email, ',') FROM customers",
        Refused,
    ),
    ("analyst", "SELECT array_agg(phone) FROM customers", Refused),
    ("support", "SELECT md5(ssn) FROM customers", Refused),
    (
        "support",
        "SELECT encode(convert_to(email, 'UTF8'), 'base64') FROM customers",
        Refused,
    ),
    (
        "support",
        "SELECT encode(ssn::bytea, 'hex') FROM customers",
        Refused,
    ),
    ("support", "SELECT reverse(ssn) FROM customers", Refused),
    (
        "support",
        "SELECT regexp_replace(phone, '\\D', '', 'g') FROM customers",
        Refused,
    ),
    (
        "support",
        "SELECT translate(ssn, '0123456789', 'abcdefghij') FROM customers",
        Refused,
    ),
    (
        "support",
        "SELECT json_build_object('e', email) FROM customers",
        Refused,
    ),
    (
        "support",
        "SELECT ARRAY[ssn, phone] FROM customers",
        Refused,
    ),
    ("analyst", "SELECT jsonb_agg(c.*) FROM customers c", Refused),
    ("support", "SELECT length(ssn) FROM customers", Refused),
    (
        "support",
        "SELECT coalesce(ssn, '') FROM customers",
        Refused,
    ),
    (
        "support",
        "SELECT pg_catalog.lower(email) FROM customers",
        Refused,
    ),
    (
        "support",
        "SELECT xmlelement(name x, ssn) FROM customers",
        Refused,
    ),
    (
        "support",
        "SELECT convert_from(convert_to(card_number, 'UTF8'), 'UTF8') FROM payments",
        Refused,
    ),
    (
        "support",
        "SELECT CASE WHEN ssn LIKE '1%' THEN 'a' ELSE 'b' END FROM customers",
        Refused,
    ),
    (
        "support",
        "SELECT t.x FROM unnest((SELECT array_agg(ssn) FROM customers)) t(x)",
        Refused,
    ),
    ("support", "SELECT (SELECT c) FROM customers c", Refused),
    // Uses of protected columns outside the select list (inference channels).
    (
        "analyst",
        "SELECT id FROM customers WHERE ssn LIKE '1%'",
        Refused,
    ),
    (
        "analyst",
        "SELECT id FROM customers WHERE ssn BETWEEN '100' AND '300'",
        Refused,
    ),
    (
        "support",
        "SELECT id FROM customers WHERE email LIKE 'a%'",
        Refused,
    ),
    (
        "analyst",
        "SELECT id FROM customers ORDER BY ssn LIMIT 5",
        Refused,
    ),
    (
        "analyst",
        "SELECT count(*) FROM customers GROUP BY birth_date",
        Refused,
    ),
    (
        "analyst",
        "SELECT city, count(*) FROM customers GROUP BY city HAVING max(ssn) > '5'",
        Refused,
    ),
    (
        "analyst",
        "SELECT id, row_number() OVER (ORDER BY ssn) FROM customers",
        Refused,
    ),
    (
        "analyst",
        "SELECT DISTINCT ON (ssn) id FROM customers",
        Refused,
    ),
    (
        "analyst",
        "SELECT c.id FROM customers c JOIN customers d ON c.ssn = d.ssn",
        Refused,
    ),
    (
        "analyst",
        "SELECT p.id FROM payments p WHERE p.card_number LIKE '4%'",
        Refused,
    ),
    (
        "support",
        "EXPLAIN ANALYZE SELECT id FROM customers WHERE ssn LIKE '12%'",
        Refused,
    ),
    // Lineage through CTEs, subqueries, set operations, LATERAL, views.
    (
        "support",
        "WITH x AS (SELECT ssn AS s FROM customers) SELECT s FROM x",
        Rewritten,
    ),
    (
        "support",
        "WITH x AS (SELECT lower(email) AS e FROM customers) SELECT e FROM x",
        Refused,
    ),
    (
        "support",
        "SELECT s FROM (SELECT ssn AS s FROM customers) sub",
        Rewritten,
    ),
    (
        "support",
        "SELECT ssn FROM customers c WHERE c.id IN (SELECT customer_id FROM payments)",
        Rewritten,
    ),
    (
        "support",
        "SELECT (SELECT ssn FROM customers WHERE id = 1)",
        Protected,
    ),
    (
        "support",
        "SELECT email FROM customers UNION SELECT ssn FROM customers",
        Protected,
    ),
    (
        "support",
        "SELECT city FROM customers UNION ALL SELECT ssn FROM customers",
        Protected,
    ),
    (
        "support",
        "SELECT x.s FROM customers c, LATERAL (SELECT c.ssn AS s) x",
        Protected,
    ),
    ("support", "SELECT * FROM customer_contacts", Rewritten),
    (
        "analyst",
        "SELECT name, email FROM public.customer_contacts WHERE id <= 10",
        Rewritten,
    ),
    (
        "support",
        "SELECT lower(email) FROM customer_contacts",
        Refused,
    ),
    (
        "support",
        "VALUES ((SELECT ssn FROM customers LIMIT 1))",
        Protected,
    ),
    // Functions the analyser cannot see into, unparseable or unresolvable statements.
    ("support", "SELECT leak_ssn(1)", Refused),
    ("analyst", "SELECT id, leak_ssn(id) FROM customers", Refused),
    (
        "support",
        "SELECT query_to_xml('select ssn from customers', true, true, '')",
        Refused,
    ),
    // `TABLE t` is read as `SELECT * FROM t` (issue 10): masked, like the SELECT.
    ("support", "TABLE customers", Rewritten),
    (
        "support",
        "DO $$ BEGIN RAISE NOTICE '%', (SELECT string_agg(ssn, ',') FROM customers); END $$",
        Refused,
    ),
    (
        "analyst",
        "DO $$ BEGIN RAISE EXCEPTION '%', (SELECT email FROM customers WHERE id = 1); END $$",
        Refused,
    ),
    (
        "support",
        "SELECT attname, most_common_vals::text FROM pg_stats WHERE tablename = 'customers'",
        Refused,
    ),
    (
        "analyst",
        "SELECT * FROM pg_stats WHERE tablename = 'payments'",
        Refused,
    ),
    // Spelling: quoting, case, qualification, comments, aliases.
    (
        "support",
        "SELECT \"email\" FROM \"customers\" WHERE id <= 5",
        Rewritten,
    ),
    (
        "support",
        "SELECT EMAIL, SSN FROM PUBLIC.CUSTOMERS WHERE ID <= 5",
        Rewritten,
    ),
    (
        "support",
        "SELECT public.customers.ssn FROM public.customers",
        Rewritten,
    ),
    (
        "support",
        "SELECT c.\"ssn\" FROM public.\"customers\" AS c",
        Rewritten,
    ),
    (
        "support",
        "SELECT /* email */ ssn -- ssn\n FROM customers",
        Rewritten,
    ),
    ("support", "select/**/ssn/**/from/**/customers", Rewritten),
    (
        "support",
        "SELECT ssn AS \"email\", email AS city FROM customers",
        Rewritten,
    ),
    // `ONLY` is dropped before parsing (issue 10): the same columns as without it, masked.
    ("support", "SELECT ssn FROM ONLY customers", Rewritten),
    (
        "support",
        "SELECT ssn FROM ONLY customers FOR NO KEY UPDATE",
        Rewritten,
    ),
    ("support", "TABLE visits", Refused),
    (
        "support",
        "SELECT email FROM customers WHERE id = 1 FOR UPDATE",
        Rewritten,
    ),
    // Multi-statement strings whose later statement leaks.
    (
        "support",
        "SELECT id, city FROM customers WHERE id < 3; SELECT ssn FROM customers",
        Rewritten,
    ),
    (
        "support",
        "SELECT 1; SELECT lower(ssn) FROM customers",
        Refused,
    ),
    (
        "analyst",
        "SET application_name = 'x'; SELECT upper(email) FROM customers",
        Refused,
    ),
    // The policy follows the login role, whatever SET ROLE does.
    // SET ROLE may change what "$user" names: the rest of the message is refused (TG141)
    // until tokengate has re-read the session's search path.
    (
        "support",
        "SET ROLE app_admin; SELECT ssn, email FROM customers",
        Protected,
    ),
    (
        "support",
        "SET ROLE app_admin; SELECT lower(email) FROM customers",
        Refused,
    ),
    (
        "analyst",
        "SET ROLE app_admin; SELECT ssn FROM customers",
        NoLeak,
    ),
    (
        "support",
        "SET SESSION AUTHORIZATION app_admin; SELECT ssn FROM customers",
        NoLeak,
    ),
    // Copying protected values somewhere they are not protected (rolled back either way).
    (
        "support",
        "BEGIN; CREATE TABLE loot_ctas AS SELECT ssn FROM customers; SELECT * FROM loot_ctas; ROLLBACK",
        Refused,
    ),
    (
        "support",
        "BEGIN; SELECT ssn INTO TEMP loot_into FROM customers; SELECT * FROM loot_into; ROLLBACK",
        Refused,
    ),
    (
        "analyst",
        "BEGIN; CREATE TEMP TABLE loot_ins (v text); INSERT INTO loot_ins SELECT email FROM customers; SELECT v FROM loot_ins; ROLLBACK",
        Refused,
    ),
    (
        "support",
        "BEGIN; UPDATE customers SET city = ssn WHERE id <= 3; SELECT city FROM customers WHERE id <= 3; ROLLBACK",
        Refused,
    ),
    (
        "support",
        "PREPARE p1 AS SELECT lower(ssn) FROM customers; EXECUTE p1",
        Refused,
    ),
    (
        "support",
        "PREPARE p2 AS SELECT ssn FROM customers; EXECUTE p2",
        Protected,
    ),
    // health: deny.
    ("support", "SELECT diagnosis FROM visits", Refused),
    ("analyst", "SELECT notes FROM visits", Refused),
    ("auditor", "SELECT * FROM visits", Refused),
    (
        "analyst",
        "SELECT count(*) FROM visits WHERE diagnosis LIKE 'A%'",
        Refused,
    ),
    (
        "support",
        "SELECT v.id FROM visits v ORDER BY notes",
        Refused,
    ),
    // auditor: statement kinds and derived values.
    ("auditor", "SELECT lower(email) FROM customers", Refused),
    (
        "auditor",
        "BEGIN; INSERT INTO customers (full_name, email, phone, ssn, birth_date, city) SELECT full_name, email, phone, ssn, birth_date, city FROM customers WHERE id = 1; ROLLBACK",
        Refused,
    ),
    (
        "auditor",
        "BEGIN; DELETE FROM payments WHERE id = 1 RETURNING card_number; ROLLBACK",
        Refused,
    ),
    // ana2 is matched by "*": default deny.
    ("ana2", "SELECT email FROM customers", Refused),
    ("ana2", "SELECT * FROM customers", Refused),
    ("ana2", "SELECT card_number FROM payments", Refused),
    (
        "ana2",
        "SET ROLE analysts; SELECT ssn FROM customers",
        Refused,
    ),
];

async fn run_simple(proxy: &tokengate::server::RunningServer, cases: &[Case]) -> Vec<String> {
    let oracle = &crm().oracle;
    let mut failures = Vec::new();
    for (role, sql, expect) in cases {
        let mut s = via(proxy, role).await;
        let mut seen = Seen::default();
        seen.simple(&mut s, sql).await;
        if let Some(f) = judge(&format!("{role}: {sql}"), *expect, &seen, oracle) {
            failures.push(f);
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaks_simple_protocol() {
    crm();
    let proxy = crm_proxy().await;
    let failures = run_simple(&proxy, SIMPLE).await;
    report("simple protocol", SIMPLE.len(), &failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaks_app_admin_sees_clear_values_through_the_same_oracle() {
    // The oracle must actually catch plaintext: app_admin (default: clear) reads everything,
    // and every kind is found. This guards against an oracle that never fires.
    crm();
    let proxy = crm_proxy().await;
    let mut s = via(&proxy, "app_admin").await;
    let mut seen = Seen::default();
    seen.simple(
        &mut s,
        "SELECT full_name, email, phone, ssn, birth_date FROM customers; \
         SELECT card_number FROM payments; SELECT diagnosis, notes FROM visits",
    )
    .await;
    assert!(seen.errors.is_empty(), "{:?}", seen.errors);
    let kinds: std::collections::HashSet<Kind> = crm()
        .oracle
        .leaks(&seen)
        .into_iter()
        .map(|l| l.kind)
        .collect();
    for k in [
        Kind::FullName,
        Kind::Email,
        Kind::Phone,
        Kind::Ssn,
        Kind::BirthDate,
        Kind::Card,
        Kind::Diagnosis,
        Kind::Notes,
    ] {
        assert!(kinds.contains(&k), "the oracle missed clear {k:?}");
    }
}

/// Extended protocol through tokio-postgres (`query_raw`: unnamed statements, binary results),
/// with an optional int parameter.
const BINARY: &[(&str, &str, Option<i32>, Expect)] = &[
    (
        "support",
        "SELECT email, ssn, phone FROM customers WHERE id <= $1",
        Some(20),
        Rewritten,
    ),
    (
        "support",
        "SELECT * FROM customers WHERE id = $1",
        Some(7),
        Rewritten,
    ),
    (
        "analyst",
        "SELECT * FROM customers WHERE id <= $1",
        Some(10),
        Rewritten,
    ),
    (
        "analyst",
        "SELECT id, birth_date FROM customers WHERE id <= $1",
        Some(5),
        Rewritten,
    ),
    (
        "auditor",
        "SELECT full_name, birth_date FROM customers WHERE id <= $1",
        Some(5),
        Rewritten,
    ),
    (
        "support",
        "SELECT card_number FROM payments WHERE customer_id = $1",
        Some(3),
        Rewritten,
    ),
    (
        "analyst",
        "SELECT c.full_name, p.card_number FROM customers c JOIN payments p ON p.customer_id = c.id WHERE c.id <= $1",
        Some(10),
        Rewritten,
    ),
    (
        "support",
        "SELECT lower(email) FROM customers WHERE id = $1",
        Some(1),
        Refused,
    ),
    (
        "support",
        "SELECT row_to_json(c) FROM customers c WHERE id = $1",
        Some(1),
        Refused,
    ),
    (
        "analyst",
        "SELECT to_jsonb(c)::text FROM customers c WHERE id = $1",
        Some(1),
        Refused,
    ),
    (
        "analyst",
        "SELECT id FROM customers WHERE ssn > $1::text",
        None,
        Refused,
    ),
    ("support", "SELECT leak_ssn($1)", Some(1), Refused),
    (
        "support",
        "SELECT array_agg(ssn) FROM customers WHERE id < $1",
        Some(50),
        Refused,
    ),
    (
        "ana2",
        "SELECT ssn FROM customers WHERE id = $1",
        Some(1),
        Refused,
    ),
    (
        "support",
        "SELECT diagnosis FROM visits WHERE id = $1",
        Some(1),
        Refused,
    ),
    (
        "analyst",
        "SELECT notes FROM visits WHERE customer_id = $1",
        Some(1),
        Refused,
    ),
    (
        "auditor",
        "SELECT ssn::text FROM customers WHERE id = $1",
        Some(1),
        Refused,
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaks_extended_binary() {
    crm();
    let proxy = crm_proxy().await;
    let oracle = &crm().oracle;
    let mut failures = Vec::new();
    for (role, sql, param, expect) in BINARY {
        let mut s = via(&proxy, role).await;
        let mut seen = Seen::default();
        let result = match param {
            Some(p) => {
                s.client
                    .query_raw(*sql, [p as &(dyn tokio_postgres::types::ToSql + Sync)])
                    .await
            }
            None => {
                s.client
                    .query_raw(*sql, [&"5" as &(dyn tokio_postgres::types::ToSql + Sync)])
                    .await
            }
        };
        match result {
            Ok(rows) => seen.absorb_rows(rows).await,
            Err(e) => seen.error(&e),
        }
        s.drain_notices(&mut seen);
        if let Some(f) = judge(&format!("{role}: {sql}"), *expect, &seen, oracle) {
            failures.push(f);
        }
    }
    report("extended protocol, binary results", BINARY.len(), &failures);
}

/// A named prepared statement prepared once and executed twice (binary results): the second
/// execution must be rewritten too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaks_named_prepared_statement_reused() {
    crm();
    let proxy = crm_proxy().await;
    let oracle = &crm().oracle;
    let mut failures = Vec::new();
    let cases: &[Case] = &[
        (
            "support",
            "SELECT full_name, email, phone, ssn FROM customers WHERE id <= $1",
            Rewritten,
        ),
        (
            "analyst",
            "SELECT ssn, birth_date FROM customers WHERE id <= $1",
            Rewritten,
        ),
        (
            "support",
            "SELECT upper(email) FROM customers WHERE id <= $1",
            Refused,
        ),
    ];
    for (role, sql, expect) in cases {
        let mut s = via(&proxy, role).await;
        let mut seen = Seen::default();
        match s.client.prepare(sql).await {
            Err(e) => seen.error(&e),
            Ok(stmt) => {
                for limit in [5i32, 10] {
                    match s
                        .client
                        .query_raw(
                            &stmt,
                            [&limit as &(dyn tokio_postgres::types::ToSql + Sync)],
                        )
                        .await
                    {
                        Ok(rows) => seen.absorb_rows(rows).await,
                        Err(e) => seen.error(&e),
                    }
                }
            }
        }
        s.drain_notices(&mut seen);
        if let Some(f) = judge(
            &format!("{role}: {sql} (prepared, run twice)"),
            *expect,
            &seen,
            oracle,
        ) {
            failures.push(f);
        }
    }
    report("named prepared statements", cases.len(), &failures);
}

/// The raw client: every byte received counts, multi-statement strings included.
const RAW_SIMPLE: &[Case] = &[
    (
        "support",
        "SELECT full_name, email, phone, ssn, birth_date FROM customers",
        Rewritten,
    ),
    (
        "analyst",
        "SELECT * FROM customers WHERE id <= 10",
        Rewritten,
    ),
    ("support", "SELECT * FROM payments", Rewritten),
    (
        "support",
        "SELECT 1; SELECT ssn FROM customers; SELECT 2",
        Rewritten,
    ),
    (
        "support",
        "SELECT id FROM customers LIMIT 1; SELECT row_to_json(c) FROM customers c",
        Refused,
    ),
    ("analyst", "SELECT c::text FROM customers c", Refused),
    (
        "support",
        "DO $$ BEGIN RAISE NOTICE '%', (SELECT string_agg(email, ' ') FROM customers); END $$",
        Refused,
    ),
    (
        "support",
        "DO $$ DECLARE r record; BEGIN FOR r IN SELECT ssn FROM customers LOOP RAISE WARNING '%', r.ssn; END LOOP; END $$",
        Refused,
    ),
    (
        "support",
        "SELECT 1/0 FROM customers WHERE ssn = 'x' OR email IS NOT NULL",
        Refused,
    ),
    ("support", "SELECT CAST(ssn AS int) FROM customers", Refused),
    ("analyst", "SELECT email::int FROM customers", Refused),
    (
        "support",
        "SELECT to_date(ssn, 'YYYY') FROM customers",
        Refused,
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaks_raw_simple_protocol() {
    crm();
    let proxy = crm_proxy().await;
    let oracle = &crm().oracle;
    let mut failures = Vec::new();
    for (role, sql, expect) in RAW_SIMPLE {
        let mut raw = raw_as(proxy.addr, role).await;
        let mut seen = Seen::default();
        let msgs = raw.query(sql).await;
        seen.absorb(&msgs);
        if let Some(f) = judge(&format!("{role}: {sql} (raw)"), *expect, &seen, oracle) {
            failures.push(f);
        }
    }
    report("raw simple protocol", RAW_SIMPLE.len(), &failures);
}

/// Raw extended protocol: Parse (named), Bind with text (0) or binary (1) results, Describe,
/// Execute, Sync.
const RAW_EXTENDED: &[(&str, &str, i16, Expect)] = &[
    (
        "support",
        "SELECT full_name, email, phone, ssn, birth_date FROM customers WHERE id <= 20",
        0,
        Rewritten,
    ),
    (
        "support",
        "SELECT full_name, email, phone, ssn, birth_date FROM customers WHERE id <= 20",
        1,
        Rewritten,
    ),
    (
        "analyst",
        "SELECT ssn, birth_date, phone FROM customers WHERE id <= 10",
        0,
        Rewritten,
    ),
    (
        "analyst",
        "SELECT ssn, birth_date, phone FROM customers WHERE id <= 10",
        1,
        Rewritten,
    ),
    (
        "support",
        "SELECT card_number FROM payments WHERE id <= 20",
        0,
        Rewritten,
    ),
    (
        "auditor",
        "SELECT card_number FROM payments WHERE id <= 20",
        1,
        Rewritten,
    ),
    ("support", "SELECT lower(email) FROM customers", 0, Refused),
    ("support", "SELECT md5(ssn) FROM customers", 1, Refused),
    (
        "analyst",
        "SELECT string_agg(ssn, ';') FROM customers",
        0,
        Refused,
    ),
    ("support", "TABLE customers", 0, Rewritten),
    ("ana2", "SELECT phone FROM customers", 0, Refused),
    ("support", "SELECT notes FROM visits", 1, Refused),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaks_raw_extended_text_and_binary() {
    crm();
    let proxy = crm_proxy().await;
    let oracle = &crm().oracle;
    let mut failures = Vec::new();
    for (role, sql, format, expect) in RAW_EXTENDED {
        let mut raw = raw_as(proxy.addr, role).await;
        let mut seen = Seen::default();
        let mut out = parse_msg("leak_stmt", sql);
        out.extend(bind_msg("", "leak_stmt", &[], *format));
        out.extend(describe_portal_msg(""));
        out.extend(execute_msg("", 0));
        out.extend(sync_msg());
        raw.send(&out).await;
        seen.absorb(&raw.until_ready().await);
        let name = format!("{role}: {sql} (raw extended, result format {format})");
        if let Some(f) = judge(&name, *expect, &seen, oracle) {
            failures.push(f);
        }
    }
    report("raw extended protocol", RAW_EXTENDED.len(), &failures);
}

/// Pipelined requests: several Parse/Bind/Execute groups before a single Sync, and several
/// simple queries written at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaks_pipelined_requests() {
    crm();
    let proxy = crm_proxy().await;
    let oracle = &crm().oracle;
    let mut failures = Vec::new();

    // Harmless first, leaking statements after it, one Sync: the whole batch is one transaction.
    let batches: &[PipelineBatch] = &[
        (
            "support",
            &[
                ("SELECT id FROM customers WHERE id = 1", 0),
                ("SELECT ssn, email FROM customers", 0),
                ("SELECT phone FROM customers", 1),
            ],
            Rewritten,
        ),
        (
            "analyst",
            &[
                ("SELECT count(*) FROM customers", 1),
                ("SELECT row_to_json(c) FROM customers c", 0),
                ("SELECT ssn FROM customers", 0),
            ],
            Refused,
        ),
        (
            "support",
            &[
                ("SELECT email FROM customers", 1),
                ("SELECT lower(email) FROM customers", 1),
            ],
            Refused,
        ),
    ];
    for (role, stmts, expect) in batches {
        let mut raw = raw_as(proxy.addr, role).await;
        let mut out = Vec::new();
        for (i, (sql, format)) in stmts.iter().enumerate() {
            let name = format!("pipe{i}");
            out.extend(parse_msg(&name, sql));
            out.extend(bind_msg(&name, &name, &[], *format));
            out.extend(describe_portal_msg(&name));
            out.extend(execute_msg(&name, 0));
        }
        out.extend(sync_msg());
        raw.send(&out).await;
        let mut seen = Seen::default();
        seen.absorb(&raw.until_ready().await);
        let name = format!(
            "{role}: pipelined {:?}",
            stmts.iter().map(|s| s.0).collect::<Vec<_>>()
        );
        if let Some(f) = judge(&name, *expect, &seen, oracle) {
            failures.push(f);
        }
    }

    // Three simple queries in one write; the session answers all three.
    let mut raw = raw_as(proxy.addr, "support").await;
    let mut out = Vec::new();
    for sql in [
        "SELECT 1",
        "SELECT ssn FROM customers",
        "SELECT email, phone FROM customers",
    ] {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        out.extend(frame(b'Q', &body));
    }
    raw.send(&out).await;
    let mut seen = Seen::default();
    for _ in 0..3 {
        seen.absorb(&raw.until_ready().await);
    }
    if let Some(f) = judge(
        "support: three pipelined simple queries",
        Rewritten,
        &seen,
        oracle,
    ) {
        failures.push(f);
    }
    report("pipelined requests", batches.len() + 1, &failures);
}

/// (role, [(statement, result format)], expectation) sent before one Sync.
type PipelineBatch = (&'static str, &'static [(&'static str, i16)], Expect);

/// A portal read in chunks with raw Execute row limits (PortalSuspended between chunks), text
/// and binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaks_raw_portal_in_chunks() {
    crm();
    let proxy = crm_proxy().await;
    let oracle = &crm().oracle;
    let mut failures = Vec::new();
    let cases: &[(&str, &str, i16, Expect)] = &[
        (
            "support",
            "SELECT id, full_name, email, ssn FROM customers ORDER BY id",
            0,
            Rewritten,
        ),
        (
            "analyst",
            "SELECT id, phone, birth_date FROM customers ORDER BY id",
            1,
            Rewritten,
        ),
        (
            "support",
            "SELECT card_number FROM payments ORDER BY id",
            1,
            Rewritten,
        ),
        (
            "support",
            "SELECT reverse(email) FROM customers",
            0,
            Refused,
        ),
    ];
    for (role, sql, format, expect) in cases {
        let mut raw = raw_as(proxy.addr, role).await;
        let mut seen = Seen::default();
        let mut out = parse_msg("", sql);
        out.extend(bind_msg("chunked", "", &[], *format));
        out.extend(describe_portal_msg("chunked"));
        out.extend(execute_msg("chunked", 7));
        out.extend(flush_msg());
        raw.send(&out).await;
        // Read chunk by chunk: each ends with PortalSuspended ('s'), the last with
        // CommandComplete; an error ends it too. Bounded: 200 customers / 7 + slack.
        let mut done = false;
        for _ in 0..100 {
            let mut chunk = Vec::new();
            while let Some(m) = raw.recv().await {
                let tag = m.tag;
                chunk.push(m);
                if matches!(tag, b's' | b'C' | b'E' | b'I') {
                    break;
                }
            }
            let last = chunk.last().map(|m| m.tag);
            seen.absorb(&chunk);
            match last {
                Some(b's') => {
                    let mut next = execute_msg("chunked", 7);
                    next.extend(flush_msg());
                    raw.send(&next).await;
                }
                _ => {
                    done = true;
                    break;
                }
            }
        }
        raw.send(&sync_msg()).await;
        seen.absorb(&raw.until_ready().await);
        if !done {
            failures.push(format!("[{role}: {sql}] portal never completed"));
        }
        let name = format!("{role}: {sql} (portal, 7-row chunks, format {format})");
        if let Some(f) = judge(&name, *expect, &seen, oracle) {
            failures.push(f);
        }
    }
    report("raw portals in chunks", cases.len(), &failures);
}

/// COPY TO STDOUT through the raw client: text and CSV are rewritten, binary COPY of protected
/// columns and COPY of derived values are refused.
const COPY: &[Case] = &[
    ("support", "COPY customers TO STDOUT", Rewritten),
    (
        "analyst",
        "COPY customers (id, full_name, email, phone, ssn) TO STDOUT",
        Rewritten,
    ),
    (
        "support",
        "COPY (SELECT ssn, phone FROM customers) TO STDOUT (FORMAT csv, HEADER)",
        Rewritten,
    ),
    (
        "analyst",
        "COPY (SELECT card_number FROM payments) TO STDOUT WITH (FORMAT csv, DELIMITER '|')",
        Rewritten,
    ),
    (
        "support",
        "COPY payments TO STDOUT (FORMAT text, NULL 'x')",
        Rewritten,
    ),
    (
        "support",
        "COPY (SELECT * FROM customer_contacts) TO STDOUT",
        Rewritten,
    ),
    (
        "support",
        "COPY (SELECT lower(email) FROM customers) TO STDOUT",
        Refused,
    ),
    (
        "analyst",
        "COPY (SELECT row_to_json(c) FROM customers c) TO STDOUT",
        Refused,
    ),
    (
        "support",
        "COPY (SELECT full_name, ssn FROM customers) TO STDOUT (FORMAT binary)",
        Refused,
    ),
    (
        "analyst",
        "COPY (SELECT birth_date FROM customers) TO STDOUT (FORMAT binary)",
        Refused,
    ),
    (
        "support",
        "COPY customers TO STDOUT (FORMAT binary)",
        Refused,
    ),
    ("support", "COPY visits TO STDOUT", Refused),
    (
        "analyst",
        "COPY (SELECT notes FROM visits) TO STDOUT (FORMAT csv)",
        Refused,
    ),
    (
        "auditor",
        "COPY (SELECT id FROM customers) TO STDOUT",
        Refused,
    ),
    ("auditor", "COPY customers TO STDOUT", Refused),
    ("ana2", "COPY customers (email) TO STDOUT", Refused),
    (
        "support",
        "SELECT 1; COPY (SELECT ssn FROM customers) TO STDOUT",
        Rewritten,
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaks_copy_to_stdout() {
    crm();
    let proxy = crm_proxy().await;
    let oracle = &crm().oracle;
    let mut failures = Vec::new();
    for (role, sql, expect) in COPY {
        let mut raw = raw_as(proxy.addr, role).await;
        let mut seen = Seen::default();
        seen.absorb(&raw.query(sql).await);
        if let Some(f) = judge(&format!("{role}: {sql} (raw)"), *expect, &seen, oracle) {
            failures.push(f);
        }
    }
    // tokio-postgres copy_out (extended protocol COPY).
    let tokio_cases: &[Case] = &[
        (
            "support",
            "COPY (SELECT email, ssn FROM customers) TO STDOUT",
            Rewritten,
        ),
        (
            "analyst",
            "COPY customers (phone, birth_date) TO STDOUT (FORMAT csv)",
            Rewritten,
        ),
        (
            "support",
            "COPY (SELECT md5(email) FROM customers) TO STDOUT",
            Refused,
        ),
    ];
    for (role, sql, expect) in tokio_cases {
        use futures_util::StreamExt;
        let mut s = via(&proxy, role).await;
        let mut seen = Seen::default();
        match s.client.copy_out(*sql).await {
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
        if let Some(f) = judge(&format!("{role}: {sql} (copy_out)"), *expect, &seen, oracle) {
            failures.push(f);
        }
    }
    report("COPY TO STDOUT", COPY.len() + tokio_cases.len(), &failures);
}

/// Cursors: DECLARE/FETCH in a transaction block, fetched in chunks, as separate statements on
/// one session (simple protocol) and with FETCH through the extended protocol (binary).
const CURSORS: &[(&str, &[&str], Expect)] = &[
    (
        "support",
        &[
            "BEGIN",
            "DECLARE c1 CURSOR FOR SELECT full_name, email, phone, ssn FROM customers",
            "FETCH 5 FROM c1",
            "FETCH 50 FROM c1",
            "FETCH ALL FROM c1",
            "COMMIT",
        ],
        Rewritten,
    ),
    (
        "analyst",
        &[
            "BEGIN",
            "DECLARE c2 SCROLL CURSOR FOR SELECT ssn, birth_date FROM customers WHERE id <= 20",
            "FETCH 3 FROM c2",
            "MOVE 5 IN c2",
            "FETCH BACKWARD 2 FROM c2",
            "FETCH ABSOLUTE 1 FROM c2",
            "COMMIT",
        ],
        Rewritten,
    ),
    (
        "support",
        &[
            "DECLARE c3 CURSOR WITH HOLD FOR SELECT card_number FROM payments",
            "FETCH 100 FROM c3",
            "FETCH 1000 FROM c3",
            "CLOSE c3",
        ],
        Rewritten,
    ),
    (
        "support",
        &[
            "BEGIN",
            "DECLARE c4 BINARY CURSOR FOR SELECT ssn, email FROM customers",
            "FETCH ALL FROM c4",
            "COMMIT",
        ],
        Protected,
    ),
    (
        "support",
        &[
            "BEGIN",
            "DECLARE c5 CURSOR FOR SELECT lower(email) FROM customers",
            "FETCH ALL FROM c5",
            "COMMIT",
        ],
        Refused,
    ),
    (
        "analyst",
        &[
            "BEGIN",
            "DECLARE c6 CURSOR FOR SELECT id FROM customers ORDER BY ssn",
            "FETCH ALL FROM c6",
            "COMMIT",
        ],
        Refused,
    ),
    (
        "support",
        &[
            "BEGIN",
            "DECLARE c7 CURSOR FOR SELECT diagnosis FROM visits",
            "FETCH ALL FROM c7",
            "COMMIT",
        ],
        Refused,
    ),
    (
        "ana2",
        &[
            "BEGIN",
            "DECLARE c8 CURSOR FOR SELECT email FROM customers",
            "FETCH ALL FROM c8",
            "COMMIT",
        ],
        Refused,
    ),
    (
        "support",
        &[
            "BEGIN; DECLARE c9 CURSOR FOR SELECT ssn, phone FROM customers; FETCH 10 FROM c9; FETCH 10 FROM c9; COMMIT",
        ],
        Rewritten,
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaks_cursors() {
    crm();
    let proxy = crm_proxy().await;
    let oracle = &crm().oracle;
    let mut failures = Vec::new();
    for (role, steps, expect) in CURSORS {
        let mut s = via(&proxy, role).await;
        let mut seen = Seen::default();
        for step in *steps {
            seen.simple(&mut s, step).await;
        }
        if let Some(f) = judge(
            &format!("{role}: {}", steps.join("; ")),
            *expect,
            &seen,
            oracle,
        ) {
            failures.push(f);
        }
    }
    // FETCH through the extended protocol (binary results) on a cursor declared with the simple
    // protocol.
    let cases: &[(&str, &str, Expect)] = &[
        (
            "support",
            "SELECT full_name, email, ssn FROM customers",
            Rewritten,
        ),
        (
            "analyst",
            "SELECT phone, birth_date FROM customers",
            Rewritten,
        ),
        ("support", "SELECT upper(email) FROM customers", Refused),
    ];
    for (role, query, expect) in cases {
        let mut s = via(&proxy, role).await;
        let mut seen = Seen::default();
        seen.simple(&mut s, "BEGIN").await;
        seen.simple(&mut s, &format!("DECLARE xc CURSOR FOR {query}"))
            .await;
        for _ in 0..3 {
            match s
                .client
                .query_raw("FETCH 20 FROM xc", std::iter::empty::<i32>())
                .await
            {
                Ok(rows) => seen.absorb_rows(rows).await,
                Err(e) => seen.error(&e),
            }
        }
        seen.simple(&mut s, "ROLLBACK").await;
        let name = format!("{role}: DECLARE xc CURSOR FOR {query}; FETCH 20 (extended, binary) x3");
        if let Some(f) = judge(&name, *expect, &seen, oracle) {
            failures.push(f);
        }
    }
    report("cursors", CURSORS.len() + cases.len(), &failures);
}

/// Portals with row limits through tokio-postgres (`bind` + `query_portal`, binary results).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaks_portals_with_row_limits() {
    crm();
    let proxy = crm_proxy().await;
    let oracle = &crm().oracle;
    let mut failures = Vec::new();
    let cases: &[Case] = &[
        (
            "support",
            "SELECT id, full_name, email, phone, ssn FROM customers ORDER BY id",
            Rewritten,
        ),
        ("analyst", "SELECT * FROM customers ORDER BY id", Rewritten),
        (
            "auditor",
            "SELECT p.card_number, c.email FROM payments p JOIN customers c ON c.id = p.customer_id",
            Rewritten,
        ),
        ("support", "SELECT row_to_json(c) FROM customers c", Refused),
        (
            "analyst",
            "SELECT id FROM customers WHERE ssn LIKE '2%'",
            Refused,
        ),
    ];
    for (role, sql, expect) in cases {
        let mut s = via(&proxy, role).await;
        let mut seen = Seen::default();
        let tx = s.client.transaction().await.unwrap();
        match tx.prepare(sql).await {
            Err(e) => seen.error(&e),
            Ok(stmt) => match tx.bind(&stmt, &[]).await {
                Err(e) => seen.error(&e),
                Ok(portal) => {
                    // Bounded: 400 rows at most in 9-row chunks.
                    for _ in 0..60 {
                        match tx.query_portal(&portal, 9).await {
                            Ok(rows) if rows.is_empty() => break,
                            Ok(rows) => rows.iter().for_each(|r| seen.row(r, "DataRow (portal)")),
                            Err(e) => {
                                seen.error(&e);
                                break;
                            }
                        }
                    }
                }
            },
        }
        drop(tx);
        s.drain_notices(&mut seen);
        if let Some(f) = judge(
            &format!("{role}: {sql} (portal, 9-row chunks)"),
            *expect,
            &seen,
            oracle,
        ) {
            failures.push(f);
        }
    }
    report("portals with row limits", cases.len(), &failures);
}

/// RETURNING from INSERT/UPDATE/DELETE, all rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaks_returning() {
    crm();
    let proxy = crm_proxy().await;
    // Values written by the test itself are protected too once stored.
    let oracle = crm().oracle.with(&[
        (Kind::FullName, "Zebulon Quarterfield".into()),
        (Kind::Email, "zebulon.quarterfield@example.com".into()),
        (Kind::Phone, "+1 (555) 010-9876".into()),
        (Kind::Ssn, "987-65-4320".into()),
        (Kind::BirthDate, "1990-01-02".into()),
        (Kind::Card, "4000056655665556".into()),
    ]);
    let insert = "INSERT INTO customers (full_name, email, phone, ssn, birth_date, city) VALUES \
                  ('Zebulon Quarterfield', 'zebulon.quarterfield@example.com', '+1 (555) 010-9876', \
                  '987-65-4320', '1990-01-02', 'Salem')";
    let cases: Vec<(&str, String, Expect)> = vec![
        ("support", format!("{insert} RETURNING *"), Rewritten),
        ("analyst", format!("{insert} RETURNING id, email, ssn, birth_date"), Rewritten),
        ("support", format!("{insert} RETURNING lower(email)"), Refused),
        ("support", format!("{insert} RETURNING row_to_json(customers)"), Refused),
        ("support", "UPDATE customers SET city = city WHERE id <= 5 RETURNING ssn, email, phone".into(), Rewritten),
        ("analyst", "UPDATE customers SET city = 'Salem' WHERE id <= 5 RETURNING *".into(), Rewritten),
        ("support", "UPDATE customers SET city = city WHERE id <= 5 RETURNING ssn || ''".into(), Refused),
        ("support", "UPDATE customers SET city = ssn WHERE id <= 5 RETURNING city".into(), Refused),
        ("support", "UPDATE customers SET phone = phone WHERE ssn LIKE '1%' RETURNING id".into(), Refused),
        ("support", "DELETE FROM payments WHERE id <= 3 RETURNING card_number, amount".into(), Rewritten),
        ("analyst", "DELETE FROM payments WHERE id <= 3 RETURNING *".into(), Rewritten),
        ("support", "DELETE FROM visits WHERE id <= 3 RETURNING notes".into(), Refused),
        ("analyst", "DELETE FROM visits WHERE id <= 3 RETURNING diagnosis".into(), Refused),
        ("support", "WITH u AS (UPDATE customers SET city = city WHERE id <= 3 RETURNING ssn) SELECT ssn FROM u".into(), Protected),
        ("support", "WITH u AS (UPDATE customers SET city = city WHERE id <= 3 RETURNING ssn) SELECT md5(ssn) FROM u".into(), Refused),
        ("ana2", "UPDATE customers SET city = city WHERE id = 1 RETURNING email".into(), Refused),
    ];
    let mut failures = Vec::new();
    for (role, sql, expect) in &cases {
        // Simple protocol.
        let mut s = via(&proxy, role).await;
        let mut seen = Seen::default();
        seen.simple(&mut s, "BEGIN").await;
        seen.simple(&mut s, sql).await;
        seen.simple(&mut s, "ROLLBACK").await;
        if let Some(f) = judge(&format!("{role}: {sql} (simple)"), *expect, &seen, &oracle) {
            failures.push(f);
        }
        // Extended protocol, binary results.
        let mut s = via(&proxy, role).await;
        let mut seen = Seen::default();
        seen.simple(&mut s, "BEGIN").await;
        match s
            .client
            .query_raw(sql.as_str(), std::iter::empty::<i32>())
            .await
        {
            Ok(rows) => seen.absorb_rows(rows).await,
            Err(e) => seen.error(&e),
        }
        seen.simple(&mut s, "ROLLBACK").await;
        if let Some(f) = judge(
            &format!("{role}: {sql} (extended)"),
            *expect,
            &seen,
            &oracle,
        ) {
            failures.push(f);
        }
    }
    report("RETURNING", cases.len() * 2, &failures);
}

/// auditor: read-only statement kinds and the 1000-row limit (stopped with an error, never
/// silently truncated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaks_auditor_statement_kinds_and_row_limit() {
    crm();
    let proxy = crm_proxy().await;
    let oracle = &crm().oracle;
    let mut failures = Vec::new();
    let kinds: &[Case] = &[
        (
            "auditor",
            "INSERT INTO payments (customer_id, card_number, amount, paid_at) VALUES (1, '4000056655665556', 1, now())",
            Refused,
        ),
        (
            "auditor",
            "UPDATE customers SET city = city WHERE id = 1",
            Refused,
        ),
        ("auditor", "DELETE FROM payments WHERE id = -1", Refused),
        (
            "auditor",
            "CREATE TEMP TABLE audit_copy AS SELECT id FROM customers",
            Refused,
        ),
        (
            "auditor",
            "COPY (SELECT id FROM payments) TO STDOUT",
            Refused,
        ),
    ];
    for (role, sql, expect) in kinds {
        let mut s = via(&proxy, role).await;
        let mut seen = Seen::default();
        seen.simple(&mut s, "BEGIN").await;
        seen.simple(&mut s, sql).await;
        seen.simple(&mut s, "ROLLBACK").await;
        if let Some(f) = judge(&format!("{role}: {sql}"), *expect, &seen, oracle) {
            failures.push(f);
        }
    }
    // 200 x 400 = 80,000 rows of unprotected values: over the limit, so an error, and no more
    // than 1000 rows delivered before it. Simple and extended protocol.
    let big = "SELECT c.id, p.id FROM customers c CROSS JOIN payments p";
    let mut s = via(&proxy, "auditor").await;
    let mut seen = Seen::default();
    seen.simple(&mut s, big).await;
    if !seen.refused() || seen.rows > 1000 {
        failures.push(format!(
            "[auditor: {big} (simple)] expected the row limit to stop it with a refusal after at most 1000 rows, got {} rows, refused: {}",
            seen.rows,
            seen.refused()
        ));
    }
    let mut seen = Seen::default();
    match s.client.query_raw(big, std::iter::empty::<i32>()).await {
        Ok(rows) => seen.absorb_rows(rows).await,
        Err(e) => seen.error(&e),
    }
    if !seen.refused() || seen.rows > 1000 {
        failures.push(format!(
            "[auditor: {big} (extended)] expected the row limit to stop it with a refusal after at most 1000 rows, got {} rows, refused: {}",
            seen.rows,
            seen.refused()
        ));
    }
    report(
        "auditor statement kinds and row limit",
        kinds.len() + 2,
        &failures,
    );
}

/// A statement prepared while the role was fully clear must not keep running without a plan
/// after a policy reload restricts the role: the reload applies from the next statement on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_prepared_before_a_restricting_reload_are_not_run_in_clear() {
    crm();
    let dir = tempfile::tempdir().unwrap();
    let path = demo_policy_with_support(dir.path(), "support:   { default: clear }");
    let proxy = crm_proxy_with_policy(path.clone()).await;
    let s = via(&proxy, "support").await;
    let admin = direct("app_admin").await;
    let ssn: String = admin
        .client
        .query_one("SELECT ssn FROM customers WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    let stmt = s
        .client
        .prepare("SELECT ssn FROM customers WHERE id = 1")
        .await
        .unwrap();
    let clear: String = s.client.query_one(&stmt, &[]).await.unwrap().get(0);
    assert_eq!(clear, ssn, "fully clear before the reload");

    let demo = crm_policy_text();
    std::fs::write(&path, &demo).unwrap();
    let series = "tokengate_policy_generation";
    assert_eq!(metric_reaching(&proxy, series, 2.0).await, 2.0);
    // The old statement: refused, never the plaintext.
    match s.client.query_one(&stmt, &[]).await {
        Ok(row) => assert_ne!(
            row.get::<_, String>(0),
            ssn,
            "plaintext after a restricting reload"
        ),
        Err(e) => assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e}"),
    }
    // Prepared again, it is analysed under the new policy and masked.
    let stmt = s
        .client
        .prepare("SELECT ssn FROM customers WHERE id = 1")
        .await
        .unwrap();
    let masked: String = s.client.query_one(&stmt, &[]).await.unwrap().get(0);
    assert_eq!(masked, format!("***-**-{}", &ssn[7..]));
}
