//! The usability corpus: what restricted roles of `policies/demo.yaml` must still be able to do
//! through tokengate (counts, joins on unprotected keys, their own writes, well-formed tokens and
//! masks, clear values for app_admin, a usable session after a refusal).
use crate::crm::*;

use tokengate::demo::data::luhn_valid;

/// All values of a simple-protocol query (NULL as None), failing on any error.
async fn rows(s: &Session, sql: &str) -> Vec<Vec<Option<String>>> {
    crate::harness::simple_rows(&s.client, sql).await
}

/// The refusal's SQLSTATE, without ever printing what came back instead (it may be plaintext).
fn refused_code<T>(what: &str, result: Result<T, tokio_postgres::Error>) -> String {
    match result {
        Ok(_) => panic!("{what}: expected a refusal, the statement succeeded"),
        Err(e) => e
            .as_db_error()
            .map(|d| d.code().code().to_string())
            .unwrap_or_else(|| format!("not an ErrorResponse: {e}")),
    }
}

fn column(rows: &[Vec<Option<String>>], i: usize) -> Vec<String> {
    rows.iter()
        .map(|r| r[i].clone().expect("a protected value, not NULL"))
        .collect()
}

/// Asserts that none of the received values leaks (the same oracle as the leak corpus).
fn assert_clean(what: &str, rows: &[Vec<Option<String>>]) {
    let mut seen = Seen::default();
    for v in rows.iter().flatten().flatten() {
        seen.push("row", v.clone());
    }
    let leaks = crm().oracle.leaks(&seen);
    assert!(leaks.is_empty(), "{what}: {leaks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usability_counts_groups_and_joins_on_unprotected_columns() {
    crm();
    let proxy = crm_proxy().await;
    let admin = direct("app_admin").await;
    for role in ["support", "analyst", "auditor"] {
        let s = via(&proxy, role).await;
        for sql in [
            "SELECT count(*) FROM customers",
            "SELECT city, count(*) FROM customers GROUP BY city ORDER BY city",
            "SELECT c.city, count(p.id), sum(p.amount)::text FROM customers c \
             JOIN payments p ON p.customer_id = c.id GROUP BY c.city ORDER BY c.city",
            "SELECT count(*) FROM visits",
            "SELECT id, city FROM customers WHERE city = 'Salem' ORDER BY id",
        ] {
            assert_eq!(
                rows(&s, sql).await,
                rows(&admin, sql).await,
                "{role}: {sql} must equal the direct answer"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usability_support_sees_masks_in_the_documented_format() {
    crm();
    let proxy = crm_proxy().await;
    let s = via(&proxy, "support").await;
    let admin = direct("app_admin").await;
    let sql = "SELECT full_name, email, phone, ssn, birth_date FROM customers ORDER BY id LIMIT 20";
    let masked = rows(&s, sql).await;
    let clear = rows(&admin, sql).await;
    assert_eq!(masked.len(), 20);
    assert_clean("support masks", &masked);
    for (m, c) in masked.iter().zip(&clear) {
        let (name, email, phone, ssn) = (
            m[0].clone().unwrap(),
            m[1].clone().unwrap(),
            m[2].clone().unwrap(),
            m[3].clone().unwrap(),
        );
        let (cname, cemail, cphone, cssn) = (
            c[0].clone().unwrap(),
            c[1].clone().unwrap(),
            c[2].clone().unwrap(),
            c[3].clone().unwrap(),
        );
        // first:1 keeps the first character.
        assert_eq!(name.chars().next(), cname.chars().next(), "name mask");
        assert_ne!(name, cname);
        // email: first character of the local part, then ***, domain kept.
        let domain = cemail.split('@').nth(1).unwrap();
        assert!(
            email.ends_with(&format!("@{domain}")),
            "email mask keeps the domain"
        );
        assert_eq!(email.chars().next(), cemail.chars().next());
        assert!(email.contains("***"), "email mask hides the local part");
        // last4 on the phone: only the last four digits remain visible.
        let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
        let clear_digits: String = cphone.chars().filter(char::is_ascii_digit).collect();
        assert_eq!(
            digits,
            clear_digits[clear_digits.len() - 4..],
            "phone last4"
        );
        assert!(phone.ends_with(&cphone[cphone.len() - 4..]));
        // ***-**-#### on the SSN.
        assert_eq!(ssn, format!("***-**-{}", &cssn[7..]), "ssn mask");
        // birth_date: mask null.
        assert_eq!(m[4], None, "birth_date is masked to NULL");
    }
    let cards = rows(&s, "SELECT card_number FROM payments ORDER BY id LIMIT 20").await;
    let clear_cards = rows(
        &admin,
        "SELECT card_number FROM payments ORDER BY id LIMIT 20",
    )
    .await;
    for (m, c) in column(&cards, 0).iter().zip(column(&clear_cards, 0)) {
        assert!(m.ends_with(&c[c.len() - 4..]), "card mask keeps the last 4");
        let visible: String = m.chars().filter(char::is_ascii_digit).collect();
        assert_eq!(visible.len(), 4, "card mask shows only the last 4 digits");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usability_analyst_tokens_keep_their_formats() {
    crm();
    let proxy = crm_proxy().await;
    let s = via(&proxy, "analyst").await;
    let admin = direct("app_admin").await;
    let sql = "SELECT email, phone, ssn, birth_date FROM customers ORDER BY id LIMIT 50";
    let tokens = rows(&s, sql).await;
    let clear = rows(&admin, sql).await;
    assert_eq!(tokens.len(), 50);
    assert_clean("analyst tokens", &tokens);
    for (t, c) in tokens.iter().zip(&clear) {
        let (email, phone, ssn, birth) = (
            t[0].clone().unwrap(),
            t[1].clone().unwrap(),
            t[2].clone().unwrap(),
            t[3].clone().unwrap(),
        );
        let (local, domain) = email.split_once('@').expect("email token is an address");
        assert!(
            !local.is_empty() && domain.contains('.'),
            "email token shape"
        );
        let digits = |v: &str| v.chars().filter(char::is_ascii_digit).count();
        assert_eq!(
            digits(&phone),
            digits(c[1].as_deref().unwrap()),
            "phone digit count"
        );
        let is_ssn = ssn.len() == 11
            && ssn.char_indices().all(|(i, ch)| {
                if i == 3 || i == 6 {
                    ch == '-'
                } else {
                    ch.is_ascii_digit()
                }
            });
        assert!(is_ssn, "ssn token matches ^\\d{{3}}-\\d{{2}}-\\d{{4}}$");
        assert_ne!(ssn, c[2].clone().unwrap());
        assert!(
            tokengate::protect::column::parse_date_text(birth.as_bytes()).is_some(),
            "birth_date token is a date"
        );
    }
    let cards = rows(&s, "SELECT card_number FROM payments ORDER BY id LIMIT 50").await;
    let clear_cards = rows(
        &admin,
        "SELECT card_number FROM payments ORDER BY id LIMIT 50",
    )
    .await;
    for (t, c) in column(&cards, 0).iter().zip(column(&clear_cards, 0)) {
        assert_eq!(t.len(), c.len());
        assert!(luhn_valid(t), "card token passes Luhn");
        assert_eq!(
            t[t.len() - 4..],
            c[c.len() - 4..],
            "card token keeps the last 4"
        );
        assert_ne!(*t, c);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usability_tokens_are_deterministic_and_stable_for_joins_and_groups() {
    crm();
    let proxy = crm_proxy().await;
    let a = via(&proxy, "analyst").await;
    let b = via(&proxy, "analyst").await;
    let sql = "SELECT id, email, ssn, phone FROM customers ORDER BY id";
    let first = rows(&a, sql).await;
    assert_clean("analyst tokens", &first);
    assert_eq!(first, rows(&b, sql).await, "same tokens in two sessions");
    assert_eq!(
        first,
        rows(&a, sql).await,
        "same tokens twice in one session"
    );
    // The same customer's token through a join equals the one read directly.
    let joined = rows(
        &b,
        "SELECT c.id, c.email FROM payments p JOIN customers c ON c.id = p.customer_id ORDER BY p.id",
    )
    .await;
    let by_id: std::collections::HashMap<_, _> =
        first.iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    for r in &joined {
        assert_eq!(by_id[&r[0]], r[1], "a join yields the same token");
    }
    // Equal plaintexts give equal tokens: grouping on the token agrees with grouping on the
    // plaintext.
    let admin = direct("app_admin").await;
    let names = rows(&a, "SELECT full_name FROM customers ORDER BY id").await;
    let clear_names = rows(&admin, "SELECT full_name FROM customers ORDER BY id").await;
    let mut pairs = std::collections::HashMap::new();
    for (t, c) in names.iter().zip(&clear_names) {
        let prev = pairs.insert(c[0].clone(), t[0].clone());
        assert!(
            prev.is_none() || prev == Some(t[0].clone()),
            "one token per name"
        );
    }
    let distinct_tokens: std::collections::HashSet<_> = pairs.values().collect();
    assert_eq!(
        distinct_tokens.len(),
        pairs.len(),
        "distinct names, distinct tokens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usability_support_writes_and_reads_back_its_own_row_masked() {
    crm();
    let proxy = crm_proxy().await;
    let s = via(&proxy, "support").await;
    s.client.simple_query("BEGIN").await.unwrap();
    let inserted = rows(
        &s,
        "INSERT INTO customers (full_name, email, phone, ssn, birth_date, city) VALUES \
         ('Quentin Usability', 'quentin.usability@example.com', '+1 (555) 010-4242', \
         '555-12-3456', '1980-06-15', 'Fairview') RETURNING id",
    )
    .await;
    let id = inserted[0][0].clone().unwrap();
    rows(
        &s,
        &format!("UPDATE customers SET city = 'Madison' WHERE id = {id}"),
    )
    .await;
    let back = rows(
        &s,
        &format!("SELECT full_name, email, ssn, city FROM customers WHERE id = {id}"),
    )
    .await;
    s.client.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(back.len(), 1);
    let r = &back[0];
    assert!(
        r[1].as_deref().unwrap().starts_with("q***"),
        "email mask keeps the first letter"
    );
    assert!(r[1].as_deref().unwrap().ends_with("@example.com"));
    assert_ne!(r[1].as_deref(), Some("quentin.usability@example.com"));
    assert_eq!(r[2].as_deref(), Some("***-**-3456"));
    assert_eq!(
        r[3].as_deref(),
        Some("Madison"),
        "unprotected columns are clear"
    );
    assert_ne!(r[0].as_deref(), Some("Quentin Usability"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usability_app_admin_sees_what_a_direct_connection_sees() {
    crm();
    let proxy = crm_proxy().await;
    let via_admin = via(&proxy, "app_admin").await;
    let admin = direct("app_admin").await;
    for sql in [
        "SELECT * FROM customers ORDER BY id",
        "SELECT * FROM payments ORDER BY id",
        "SELECT * FROM visits ORDER BY id",
        "SELECT lower(email), row_to_json(c)::text FROM customers c ORDER BY id",
        "SELECT * FROM customer_contacts ORDER BY id",
        "SELECT leak_ssn(1)",
    ] {
        assert_eq!(
            rows(&via_admin, sql).await,
            rows(&admin, sql).await,
            "{sql}"
        );
    }
    let binary = via_admin
        .client
        .query(
            "SELECT ssn, birth_date::text FROM customers WHERE id = $1",
            &[&1i32],
        )
        .await
        .unwrap();
    let direct_binary = admin
        .client
        .query(
            "SELECT ssn, birth_date::text FROM customers WHERE id = $1",
            &[&1i32],
        )
        .await
        .unwrap();
    assert_eq!(
        binary[0].get::<_, String>(0),
        direct_binary[0].get::<_, String>(0)
    );
    assert_eq!(
        binary[0].get::<_, String>(1),
        direct_binary[0].get::<_, String>(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usability_auditor_row_limit_does_not_affect_small_queries() {
    crm();
    let proxy = crm_proxy().await;
    let s = via(&proxy, "auditor").await;
    let ten = rows(&s, "SELECT id, email FROM customers ORDER BY id LIMIT 10").await;
    assert_eq!(ten.len(), 10);
    assert_clean("auditor tokens", &ten);
    // Exactly at the limit is fine as well: 1000 unprotected rows.
    let thousand = rows(
        &s,
        "SELECT c.id FROM customers c CROSS JOIN payments p ORDER BY c.id, p.id LIMIT 1000",
    )
    .await;
    assert_eq!(thousand.len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usability_session_survives_a_refusal() {
    crm();
    let proxy = crm_proxy().await;
    let s = via(&proxy, "support").await;
    // Outside a transaction block: refused, then the next statement works.
    let err = match s
        .client
        .simple_query("SELECT lower(email) FROM customers")
        .await
    {
        Ok(_) => panic!("a derived value must be refused; the statement succeeded"),
        Err(e) => e,
    };
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "42501");
    assert!(
        db.message().starts_with("tokengate TG1"),
        "{}",
        db.message()
    );
    assert!(
        db.hint().is_some_and(|h| !h.is_empty()),
        "a refusal has a hint"
    );
    assert_eq!(
        rows(&s, "SELECT count(*) FROM customers").await[0][0].as_deref(),
        Some("200")
    );
    // The same through the extended protocol.
    let result = s
        .client
        .query("SELECT md5(ssn) FROM customers WHERE id = $1", &[&1i32])
        .await;
    assert_eq!(refused_code("md5(ssn), extended", result), "42501");
    let n: i64 = s
        .client
        .query_one("SELECT count(*) FROM payments", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, (CUSTOMERS * 2) as i64);
    // Inside a transaction block: the transaction is aborted until ROLLBACK, as PostgreSQL does.
    s.client.simple_query("BEGIN").await.unwrap();
    let result = s
        .client
        .simple_query("SELECT row_to_json(c) FROM customers c")
        .await;
    assert_eq!(
        refused_code("row_to_json in a transaction", result),
        "42501"
    );
    let result = s.client.simple_query("SELECT 1").await;
    assert_eq!(
        refused_code("after a refusal in a transaction", result),
        "25P02"
    );
    s.client.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(rows(&s, "SELECT 1").await[0][0].as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usability_analyst_may_filter_on_email_and_phone_only() {
    crm();
    let proxy = crm_proxy().await;
    let s = via(&proxy, "analyst").await;
    let admin = direct("app_admin").await;
    // filter_on: [email, phone]: predicates on the plaintext work (and return tokens).
    let sql = "SELECT id FROM customers WHERE email LIKE 'a%' ORDER BY id";
    assert_eq!(rows(&s, sql).await, rows(&admin, sql).await);
    let sql = "SELECT id FROM customers WHERE phone LIKE '+1 (2%' ORDER BY id";
    assert_eq!(rows(&s, sql).await, rows(&admin, sql).await);
    // Equality with a token it was shown finds that row (tokengate decrypts the compared
    // value; tests/integration/lookups.rs covers every form), the plaintext finds nothing.
    let token = rows(&s, "SELECT email FROM customers WHERE id = 1").await[0][0]
        .clone()
        .unwrap();
    let found = rows(
        &s,
        &format!("SELECT id FROM customers WHERE email = '{token}'"),
    )
    .await;
    assert_eq!(found, vec![vec![Some("1".to_string())]]);
    let plain = rows(&admin, "SELECT email FROM customers WHERE id = 1").await[0][0]
        .clone()
        .unwrap();
    let found = rows(
        &s,
        &format!("SELECT id FROM customers WHERE email = '{plain}'"),
    )
    .await;
    assert!(found.is_empty());
    // ssn is not in filter_on.
    let result = s
        .client
        .simple_query("SELECT id FROM customers WHERE ssn LIKE '1%'")
        .await;
    assert_eq!(refused_code("WHERE ssn as analyst", result), "42501");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usability_ana2_reads_unprotected_columns_only() {
    crm();
    let proxy = crm_proxy().await;
    let s = via(&proxy, "ana2").await;
    let admin = direct("app_admin").await;
    let sql = "SELECT id, city FROM customers ORDER BY id";
    assert_eq!(rows(&s, sql).await, rows(&admin, sql).await);
    let result = s.client.simple_query("SELECT email FROM customers").await;
    assert_eq!(refused_code("\"*\": default deny", result), "42501");
}

/// Settings changed by ordinary statements are reported in ParameterStatus just before
/// ReadyForQuery (after the last CommandComplete, or at the Sync of the extended protocol):
/// that must not end a restricted role's session, while a setting computed from a protected
/// column must (the attack corpus covers that side).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usability_settings_changed_by_ordinary_statements_keep_the_session() {
    crm();
    let proxy = crm_proxy().await;
    for role in ["support", "analyst", "auditor"] {
        let s = via(&proxy, role).await;
        // Simple protocol, one statement and several in one message.
        rows(&s, "SET application_name = 'usability-simple'").await;
        rows(&s, "SET TimeZone = 'UTC'; SELECT 1").await;
        // Extended protocol: the ParameterStatus arrives at the Sync.
        s.client
            .execute("SET application_name = 'usability-extended'", &[])
            .await
            .unwrap_or_else(|e| panic!("{role}: extended SET: {e}"));
        let got = rows(&s, "SELECT count(*) FROM customers").await;
        assert_eq!(got.len(), 1, "{role}: the session is still usable");
    }
}

/// `allow:` lets a role receive named derived uses of a protected column, exactly: the same
/// numbers as PostgreSQL gives directly, and nothing else (an expression inside, or a role
/// without the allowance, stays TG106).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usability_allowed_derived_uses_return_the_real_numbers() {
    crm();
    let dir = tempfile::tempdir().unwrap();
    let path = demo_policy_with_support(
        dir.path(),
        "support:   { pii: mask, financial: mask, health: deny, allow: { pii: [count, count_distinct, is_null, length], financial: [count] } }",
    );
    let proxy = crm_proxy_with_policy(path.clone()).await;
    let support = via(&proxy, "support").await;
    let admin = direct("app_admin").await;
    for sql in [
        "SELECT count(ssn), count(DISTINCT email) FROM customers",
        "SELECT count(c.*), count(c.phone) FROM customers c",
        "SELECT count(p.*) FROM payments p",
        "SELECT count(*) FILTER (WHERE email IS NULL), sum(length(ssn)), max(char_length(full_name)) FROM customers",
        "SELECT id, phone IS NULL FROM customers ORDER BY id LIMIT 20",
        "SELECT count(*) FROM customers WHERE birth_date IS NOT NULL",
    ] {
        let expected = rows(&admin, sql).await;
        assert!(!expected.is_empty(), "{sql}");
        assert_eq!(rows(&support, sql).await, expected, "{sql}");
    }
    // The numbers are real: 200 customers, each with an SSN.
    let counts = rows(&support, "SELECT count(ssn), count(c.*) FROM customers c").await;
    assert_eq!(
        counts[0][0].as_deref(),
        Some(CUSTOMERS.to_string().as_str())
    );
    let tg = |e: tokio_postgres::Error| {
        let db = e
            .as_db_error()
            .map(|d| (d.code().code().to_string(), d.message().to_string()));
        db.unwrap_or_else(|| panic!("not an ErrorResponse: {e}"))
    };
    for sql in [
        "SELECT count(lower(ssn)) FROM customers",
        "SELECT length(ssn || 'x') FROM customers",
        "SELECT max(ssn) FROM customers",
        "SELECT length(ssn) || ssn FROM customers",
    ] {
        let (code, message) = tg(support
            .client
            .simple_query(sql)
            .await
            .map(|_| ())
            .unwrap_err());
        assert_eq!(code, "42501", "{sql}");
        assert!(message.contains("TG106"), "{sql}: {message}");
    }
    // The session stays usable, and a role without the allowance keeps TG106.
    assert_eq!(
        rows(&support, "SELECT count(ssn) FROM customers").await,
        counts
            .iter()
            .map(|r| vec![r[0].clone()])
            .collect::<Vec<_>>()
    );
    let analyst = via(&proxy, "analyst").await;
    for sql in [
        "SELECT count(ssn), count(DISTINCT email) FROM customers",
        "SELECT count(c.*) FROM customers c",
    ] {
        let (code, message) = tg(analyst
            .client
            .simple_query(sql)
            .await
            .map(|_| ())
            .unwrap_err());
        assert_eq!(code, "42501", "{sql}");
        assert!(message.contains("TG106"), "{sql}: {message}");
    }
}

/// `see_activity: true` lets a role read other sessions' activity (`pg_stat_activity`, whose
/// statement text may quote protected literals); without it the view is refused (TG172), and
/// the switch waives nothing else (`pg_stats` stays refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usability_see_activity_switch_opens_only_session_activity() {
    crm();
    let dir = tempfile::tempdir().unwrap();
    let path = demo_policy_with_support(
        dir.path(),
        "support:   { pii: mask, financial: mask, health: deny, see_activity: true }",
    );
    let proxy = crm_proxy_with_policy(path.clone()).await;
    let code = |r: Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>| match r {
        Ok(_) => "ok".to_string(),
        Err(e) => e
            .as_db_error()
            .map(|d| d.message().chars().take(15).collect())
            .unwrap_or_else(|| e.to_string()),
    };
    let activity = "SELECT pid, query FROM pg_stat_activity WHERE pid = pg_backend_pid()";
    // With the switch: the role's own row, with its own statement text, as directly.
    let support = via(&proxy, "support").await;
    let got = rows(&support, activity).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0][1].as_deref(), Some(activity));
    assert_eq!(
        code(support.client.simple_query("SELECT * FROM pg_stats").await),
        "tokengate TG172"
    );
    // Without it (analyst, and the shared demo proxy's support): refused.
    let analyst = via(&proxy, "analyst").await;
    assert_eq!(
        code(analyst.client.simple_query(activity).await),
        "tokengate TG172"
    );
    let demo_proxy = crm_proxy().await;
    let plain = via(&demo_proxy, "support").await;
    assert_eq!(
        code(plain.client.simple_query(activity).await),
        "tokengate TG172"
    );
}

/// The analysis cache files statements by their literal-normalised text. A `U&''` string is
/// refused (it lexes differently when standard_conforming_strings is off), and filed under
/// the same key as the plain statement it refused every later plain statement of that shape,
/// in every session: one client could make a query refused for all. The kind of string is
/// part of the key now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usability_a_refused_unicode_string_does_not_poison_the_plain_statement() {
    crm();
    let proxy = crm_proxy().await;
    let attacker = via(&proxy, "support").await;
    let victim = via(&proxy, "support").await;
    let admin = direct("app_admin").await;
    let refused = attacker
        .client
        .simple_query("SELECT id FROM customers WHERE city = U&'Q-poison' ORDER BY id")
        .await;
    assert_eq!(refused_code("U& string", refused), "42501");
    let sql = "SELECT id FROM customers WHERE city = 'Q-poison' ORDER BY id";
    assert_eq!(rows(&victim, sql).await, rows(&admin, sql).await);
    let sql = "SELECT id, city FROM customers WHERE city <> 'Q-poison' ORDER BY id";
    assert!(!rows(&victim, sql).await.is_empty());
}

/// tokengate's own reads on a session's connection (its search path and temp schema, before a
/// restricted statement after a SET) send the client none of their notices: with
/// `debug_print_plan` and `client_min_messages = log` a client gets one plan dump per statement
/// it ran, the same count as directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usability_internal_reads_send_the_client_no_notices() {
    crm();
    let proxy = crm_proxy().await;
    let mut counts = Vec::new();
    for mut s in [direct("support").await, via(&proxy, "support").await] {
        rows(&s, "SET client_min_messages = log").await;
        rows(&s, "SET debug_print_plan = on").await;
        rows(&s, "SELECT id FROM customers WHERE id = 1").await;
        rows(&s, "SET search_path = public").await;
        rows(&s, "SELECT count(*) FROM customers").await;
        // The notices arrive on the connection task: wait for the last statement's plan.
        let mut seen = Seen::default();
        for _ in 0..50 {
            s.drain_notices(&mut seen);
            let plans = seen
                .values
                .iter()
                .filter(|(_, v)| v.starts_with(b"plan:"))
                .count();
            if plans >= 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        s.drain_notices(&mut seen);
        counts.push(
            seen.values
                .iter()
                .filter(|(_, v)| v.starts_with(b"plan:"))
                .count(),
        );
    }
    assert_eq!(
        counts,
        [2, 2],
        "plan dumps directly, then through tokengate"
    );
}
