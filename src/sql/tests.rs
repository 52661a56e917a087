//! Analysis tests over the demo schema. Each attack-style test asserts that a protected value
//! is reported as passthrough (rewritten), derived (refused), a use, or a problem.

use super::*;

const C: &str = "public.customers";

fn demo() -> StaticCatalog {
    StaticCatalog::demo()
        .with_table("public", "notes_copy", &["id", "txt"])
        .with_table("public", "Mixed", &["Email", "id"])
        .with_view(
            "public",
            "contact_emails",
            &["email", "upper_name"],
            "SELECT customer_contacts.email, upper(customer_contacts.name) AS upper_name \
             FROM customer_contacts",
        )
        .with_view("public", "loop_a", &["x"], "SELECT x FROM loop_b")
        .with_view("public", "loop_b", &["x"], "SELECT x FROM loop_a")
        .with_table(
            "pg_catalog",
            "pg_stats",
            &["schemaname", "tablename", "attname", "most_common_vals"],
        )
        .with_table("pg_catalog", "pg_class", &["oid", "relname"])
}

fn one(sql: &str) -> StatementAnalysis {
    let mut analyses = analyze(sql, &demo());
    assert_eq!(analyses.len(), 1, "{sql}: {analyses:#?}");
    analyses.remove(0)
}

fn col(name: &str) -> String {
    if name.contains('.') && name.split('.').count() == 3 {
        name.to_owned()
    } else {
        format!("{C}.{name}")
    }
}

fn pt(name: &str) -> Source {
    Source::passthrough(col(name))
}

fn dv(name: &str, via: &str) -> Source {
    Source {
        column: col(name),
        passthrough: false,
        via: Some(via.to_owned()),
        allowance: None,
    }
}

fn sorted(mut sources: Vec<Source>) -> Vec<Source> {
    sources.sort();
    sources
}

fn output(analysis: &StatementAnalysis, i: usize) -> Vec<Source> {
    sorted(analysis.outputs[i].sources.clone())
}

fn names(analysis: &StatementAnalysis) -> Vec<&str> {
    analysis.outputs.iter().map(|o| o.name.as_str()).collect()
}

fn has_use(analysis: &StatementAnalysis, name: &str, clause: Clause) -> bool {
    analysis
        .uses
        .iter()
        .any(|u| u.column == col(name) && u.clause == clause)
}

fn has_problem(analysis: &StatementAnalysis, kind: ProblemKind) -> bool {
    analysis.problems.iter().any(|p| p.kind == kind)
}

fn proven(analysis: &StatementAnalysis) {
    assert!(analysis.problems.is_empty(), "{:#?}", analysis.problems);
}

// ------------------------------------------------------------------ basic lineage

#[test]
fn plain_select_is_passthrough() {
    let a = one("SELECT id, email FROM customers");
    proven(&a);
    assert_eq!(a.kind, StatementKind::Select);
    assert_eq!(names(&a), ["id", "email"]);
    assert_eq!(output(&a, 1), [pt("email")]);
}

#[test]
fn aliases_keep_passthrough() {
    let a = one("SELECT c.email AS contact, c.ssn s FROM customers AS c");
    proven(&a);
    assert_eq!(names(&a), ["contact", "s"]);
    assert_eq!(output(&a, 0), [pt("email")]);
    assert_eq!(output(&a, 1), [pt("ssn")]);
}

#[test]
fn schema_qualified_names() {
    let a = one("SELECT public.customers.email FROM public.customers");
    proven(&a);
    assert_eq!(output(&a, 0), [pt("email")]);
}

#[test]
fn star_expands_from_catalog() {
    let a = one("SELECT * FROM customers");
    proven(&a);
    assert_eq!(a.outputs.len(), 8);
    assert_eq!(a.outputs[4].name, "ssn");
    assert_eq!(output(&a, 4), [pt("ssn")]);
}

#[test]
fn qualified_star_expands_one_relation() {
    let a = one("SELECT p.*, c.email FROM payments p JOIN customers c ON c.id = p.customer_id");
    proven(&a);
    assert_eq!(a.outputs.len(), 6);
    assert_eq!(output(&a, 2), [pt("public.payments.card_number")]);
    assert_eq!(output(&a, 5), [pt("email")]);
}

#[test]
fn join_on_columns_are_uses() {
    let a = one("SELECT c.full_name FROM customers c JOIN payments p \
         ON p.customer_id = c.id AND p.card_number LIKE '4%'");
    proven(&a);
    assert!(has_use(&a, "public.payments.card_number", Clause::JoinOn));
    assert!(has_use(&a, "id", Clause::JoinOn));
}

#[test]
fn join_using_merges_and_uses() {
    let a = one("SELECT * FROM customers JOIN customer_contacts USING (email)");
    proven(&a);
    assert_eq!(a.outputs[0].name, "email");
    assert_eq!(output(&a, 0), [pt("email")]);
    assert!(has_use(&a, "email", Clause::JoinOn));
    // email appears once, then the remaining columns of both sides.
    assert_eq!(a.outputs.len(), 1 + 7 + 2);
}

#[test]
fn ambiguous_column_is_a_problem() {
    let a = one("SELECT id FROM customers, payments");
    assert!(has_problem(&a, ProblemKind::AmbiguousColumn));
}

#[test]
fn unknown_table_and_column_are_problems() {
    assert!(has_problem(
        &one("SELECT * FROM nowhere"),
        ProblemKind::UnknownRelation
    ));
    assert!(has_problem(
        &one("SELECT nope FROM customers"),
        ProblemKind::UnknownColumn
    ));
    assert!(has_problem(
        &one("SELECT x.email FROM customers"),
        ProblemKind::UnknownColumn
    ));
}

#[test]
fn quoted_identifiers_keep_case() {
    let a = one("SELECT \"Email\" FROM \"Mixed\"");
    proven(&a);
    assert_eq!(
        a.outputs[0].sources,
        [Source::passthrough("public.Mixed.Email")]
    );
    // Unquoted folds to lower case, which does not exist.
    assert!(has_problem(
        &one("SELECT Email FROM \"Mixed\""),
        ProblemKind::UnknownColumn
    ));
    assert!(has_problem(
        &one("SELECT id FROM Mixed"),
        ProblemKind::UnknownRelation
    ));
}

// ----------------------------------------------------- subqueries, CTEs, set operations

#[test]
fn subquery_in_from_passes_through() {
    let a = one("SELECT s.e FROM (SELECT email AS e FROM customers WHERE ssn > '5') AS s");
    proven(&a);
    assert_eq!(output(&a, 0), [pt("email")]);
    assert!(has_use(&a, "ssn", Clause::Where));
}

#[test]
fn scalar_subquery_in_select_list_contributes_sources() {
    let a = one(
        "SELECT p.id, (SELECT c.ssn FROM customers c WHERE c.id = p.customer_id) FROM payments p",
    );
    proven(&a);
    assert_eq!(a.outputs[1].name, "ssn");
    assert_eq!(output(&a, 1), [pt("ssn")]);
    assert!(has_use(&a, "public.payments.customer_id", Clause::Where));
}

#[test]
fn cte_passes_through() {
    let a = one("WITH x AS (SELECT email FROM customers) SELECT email FROM x");
    proven(&a);
    assert_eq!(output(&a, 0), [pt("email")]);
}

#[test]
fn cte_column_aliases() {
    let a = one("WITH x(e) AS (SELECT email FROM customers) SELECT e FROM x");
    proven(&a);
    assert_eq!(output(&a, 0), [pt("email")]);
}

#[test]
fn recursive_cte_unions_branches() {
    let a = one("WITH RECURSIVE r(n, v) AS (SELECT 1, email FROM customers \
         UNION ALL SELECT n + 1, ssn FROM r JOIN customers ON true WHERE n < 3) \
         SELECT v, n FROM r");
    proven(&a);
    assert_eq!(output(&a, 0), sorted(vec![pt("email"), pt("ssn")]));
}

#[test]
fn set_operations_merge_columns_by_position() {
    for op in ["UNION", "UNION ALL", "INTERSECT", "EXCEPT"] {
        let a = one(&format!(
            "SELECT email FROM customers {op} SELECT card_number FROM payments"
        ));
        proven(&a);
        assert_eq!(
            output(&a, 0),
            sorted(vec![pt("email"), pt("public.payments.card_number")]),
            "{op}"
        );
    }
}

#[test]
fn lateral_subquery_sees_left_items() {
    let a = one("SELECT l.x FROM customers c, LATERAL (SELECT c.ssn AS x) l");
    proven(&a);
    assert_eq!(output(&a, 0), [pt("ssn")]);
}

#[test]
fn values_lists() {
    let a = one("SELECT column1 FROM (VALUES (1), (2)) AS v");
    proven(&a);
    assert!(a.outputs[0].sources.is_empty());
    let a = one("SELECT v.a FROM customers c, LATERAL (VALUES (c.email)) AS v(a)");
    proven(&a);
    assert_eq!(output(&a, 0), [pt("email")]);
}

#[test]
fn views_resolve_to_base_columns() {
    let a = one("SELECT name, email FROM customer_contacts");
    proven(&a);
    assert_eq!(output(&a, 0), [pt("full_name")]);
    assert_eq!(output(&a, 1), [pt("email")]);
    let a = one("SELECT * FROM contact_emails");
    proven(&a);
    assert_eq!(output(&a, 0), [pt("email")]);
    assert_eq!(output(&a, 1), [dv("full_name", "upper")]);
}

#[test]
fn cyclic_views_are_unresolved() {
    let a = one("SELECT x FROM loop_a");
    assert!(has_problem(&a, ProblemKind::UnresolvedView));
}

// --------------------------------------------------------------------- derivations

#[test]
fn every_derivation_is_reported_derived() {
    let cases: &[(&str, &str, &str)] = &[
        ("lower(email)", "email", "lower"),
        ("email || ''", "email", "||"),
        ("email::text", "email", "::text"),
        ("CAST(ssn AS varchar(20))", "ssn", "::varchar(20)"),
        ("count(email)", "email", "count"),
        ("max(ssn)", "ssn", "max"),
        ("string_agg(email, ',')", "email", "string_agg"),
        ("array_agg(phone)", "phone", "array_agg"),
        ("md5(ssn)", "ssn", "md5"),
        ("encode(email::bytea, 'base64')", "email", "encode"),
        ("format('%s', ssn)", "ssn", "format"),
        ("coalesce(email, 'none')", "email", "coalesce"),
        ("substring(ssn from 1 for 3)", "ssn", "substring"),
        ("ARRAY[email]", "email", "ARRAY"),
        (
            "json_build_object('e', email)",
            "email",
            "json_build_object",
        ),
        ("to_jsonb(email)", "email", "to_jsonb"),
        ("ssn > '5'", "ssn", ">"),
        ("email LIKE 'a%'", "email", "LIKE"),
        ("ssn IN ('1', '2')", "ssn", "IN"),
        ("length(ssn) BETWEEN 1 AND 9", "ssn", "BETWEEN"),
        ("email COLLATE \"C\"", "email", "COLLATE"),
        ("(email)", "email", ""),
    ];
    for (expr, column, via) in cases {
        let a = one(&format!("SELECT {expr} FROM customers"));
        proven(&a);
        let expected = if via.is_empty() {
            pt(column)
        } else {
            dv(column, via)
        };
        // Named derived uses are checked in `named_derived_uses_are_marked`.
        let got: Vec<Source> = output(&a, 0)
            .iter()
            .map(|s| Source {
                allowance: None,
                ..s.clone()
            })
            .collect();
        assert_eq!(got, [expected], "{expr}");
    }
}

#[test]
fn named_derived_uses_are_marked() {
    use super::types::DerivedUse as D;
    let cases: &[(&str, Option<D>)] = &[
        ("count(email)", Some(D::Count)),
        ("count(c.email)", Some(D::Count)),
        ("count(DISTINCT (email))", Some(D::CountDistinct)),
        ("pg_catalog.length(email)", Some(D::Length)),
        ("octet_length(email) + 1", Some(D::Length)),
        ("email IS NOT NULL", Some(D::IsNull)),
        ("count(lower(email))", None),
        ("length(email || 'x')", None),
        ("length(email, 'UTF8')", None),
        ("count(email ORDER BY email)", None),
        ("lower(email) IS NULL", None),
        ("max(email)", None),
    ];
    for (expr, want) in cases {
        let a = one(&format!("SELECT {expr} FROM customers c"));
        let got: Vec<Option<D>> = output(&a, 0).iter().map(|s| s.allowance).collect();
        assert_eq!(got, [*want], "{expr}");
    }
    let a = one("SELECT id FROM customers WHERE email IS NULL AND length(ssn) > 3");
    let mut uses: Vec<(String, bool, Option<D>)> = a
        .uses
        .iter()
        .map(|u| (u.column.clone(), u.direct, u.allowance))
        .collect();
    uses.sort();
    assert_eq!(
        uses,
        [
            (col("email"), true, Some(D::IsNull)),
            (col("ssn"), false, Some(D::Length)),
        ]
    );
}

#[test]
fn whole_row_references_are_every_column_derived() {
    for expr in [
        "c",
        "row_to_json(c)",
        "c::text",
        "to_json(c.*)",
        "ROW(c.*)",
        "(c).email",
    ] {
        let a = one(&format!("SELECT {expr} FROM customers c"));
        proven(&a);
        let sources = &a.outputs[0].sources;
        assert!(
            sources
                .iter()
                .any(|s| s.column == col("ssn") && !s.passthrough),
            "{expr}: {sources:?}"
        );
        assert!(sources.iter().all(|s| !s.passthrough), "{expr}");
    }
}

#[test]
fn subscript_and_field_access_are_derived() {
    let a = one("SELECT (array_agg(ssn))[1] FROM customers");
    proven(&a);
    assert!(a.outputs[0].sources.iter().all(|s| !s.passthrough));
    assert_eq!(a.outputs[0].sources.len(), 1);
}

#[test]
fn case_branches_pass_through_and_conditions_are_uses() {
    let a = one("SELECT CASE WHEN ssn LIKE '1%' THEN email ELSE phone END FROM customers");
    proven(&a);
    assert_eq!(output(&a, 0), sorted(vec![pt("email"), pt("phone")]));
    assert!(has_use(&a, "ssn", Clause::Case));
    let a = one("SELECT CASE ssn WHEN '1' THEN 'a' END FROM customers");
    assert!(a.outputs[0].sources.is_empty());
    assert!(has_use(&a, "ssn", Clause::Case));
}

#[test]
fn within_group_returns_the_ordered_value() {
    let a = one("SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY ssn) FROM customers");
    proven(&a);
    assert_eq!(output(&a, 0), [dv("ssn", "percentile_disc")]);
}

#[test]
fn count_star_reads_nothing_but_filter_is_a_use() {
    let a = one("SELECT count(*) FILTER (WHERE ssn LIKE '1%') FROM customers");
    proven(&a);
    assert!(a.outputs[0].sources.is_empty());
    assert!(has_use(&a, "ssn", Clause::Filter));
}

#[test]
fn exists_and_in_subqueries_record_uses() {
    let a = one("SELECT id FROM customers c WHERE EXISTS \
         (SELECT 1 FROM payments p WHERE p.customer_id = c.id AND p.card_number LIKE '4%')");
    proven(&a);
    assert!(has_use(&a, "public.payments.card_number", Clause::Where));
    let a = one("SELECT id FROM customers WHERE ssn IN (SELECT ssn FROM customers)");
    assert!(has_use(&a, "ssn", Clause::Where));
}

// ------------------------------------------------------------------------- uses

#[test]
fn clause_uses() {
    let a = one(
        "SELECT city, count(*) FROM customers WHERE birth_date > '2000-01-01' \
         GROUP BY city HAVING max(ssn) > '5' ORDER BY 1",
    );
    proven(&a);
    assert!(has_use(&a, "birth_date", Clause::Where));
    assert!(has_use(&a, "city", Clause::GroupBy));
    assert!(has_use(&a, "ssn", Clause::Having));
    assert!(has_use(&a, "city", Clause::OrderBy));
}

#[test]
fn order_by_ordinal_names_the_output() {
    let a = one("SELECT id, ssn FROM customers ORDER BY 2");
    assert!(has_use(&a, "ssn", Clause::OrderBy));
    assert!(!has_use(&a, "id", Clause::OrderBy));
    let a = one("SELECT id, ssn AS s FROM customers ORDER BY s");
    assert!(has_use(&a, "ssn", Clause::OrderBy));
    let a = one("SELECT id, email FROM customers GROUP BY 2, 1");
    assert!(has_use(&a, "email", Clause::GroupBy));
    let a = one("SELECT id FROM customers ORDER BY ssn DESC");
    assert!(has_use(&a, "ssn", Clause::OrderBy));
}

#[test]
fn order_by_over_union_uses_outputs() {
    let a = one("SELECT email FROM customers UNION SELECT ssn FROM customers ORDER BY 1");
    assert!(has_use(&a, "ssn", Clause::OrderBy));
    assert!(has_use(&a, "email", Clause::OrderBy));
}

#[test]
fn window_clauses_are_uses() {
    let a = one("SELECT id, row_number() OVER (PARTITION BY ssn ORDER BY phone) FROM customers");
    proven(&a);
    assert!(has_use(&a, "ssn", Clause::Window));
    assert!(has_use(&a, "phone", Clause::Window));
    let a = one("SELECT rank() OVER w FROM customers WINDOW w AS (ORDER BY email)");
    assert!(has_use(&a, "email", Clause::Window));
}

#[test]
fn distinct_on_is_a_use() {
    let a = one("SELECT DISTINCT ON (ssn) id FROM customers");
    proven(&a);
    assert!(has_use(&a, "ssn", Clause::DistinctOn));
}

#[test]
fn limit_subquery_is_a_use() {
    let a = one("SELECT id FROM customers LIMIT (SELECT length(ssn) FROM customers LIMIT 1)");
    assert!(has_use(&a, "ssn", Clause::Limit));
}

// -------------------------------------------------------------------- statements

#[test]
fn returning_is_output() {
    let a = one("UPDATE customers SET city = 'x' WHERE ssn = '1' RETURNING email, ssn");
    proven(&a);
    assert_eq!(a.kind, StatementKind::Update);
    assert_eq!(output(&a, 0), [pt("email")]);
    assert!(has_use(&a, "ssn", Clause::Where));
    let a = one("DELETE FROM customers WHERE id = 1 RETURNING *");
    assert_eq!(a.kind, StatementKind::Delete);
    assert_eq!(a.outputs.len(), 8);
    let a = one("INSERT INTO customers (id, email) VALUES (1, 'a') RETURNING ssn");
    proven(&a);
    assert_eq!(a.kind, StatementKind::Insert);
    assert_eq!(output(&a, 0), [pt("ssn")]);
}

#[test]
fn writes_from_queries() {
    let a = one("INSERT INTO notes_copy (id, txt) SELECT id, ssn FROM customers");
    proven(&a);
    assert!(a.writes.contains(&pt("ssn")));
    assert_eq!(a.write_targets, ["public.notes_copy"]);
    let a = one("CREATE TABLE leak AS SELECT lower(email) AS e FROM customers");
    assert_eq!(a.kind, StatementKind::Ddl);
    assert!(a.is_ddl);
    assert!(a.writes.contains(&dv("email", "lower")));
    let a = one("SELECT email INTO leak FROM customers");
    assert_eq!(a.kind, StatementKind::Ddl);
    assert!(a.outputs.is_empty());
    assert!(a.writes.contains(&pt("email")));
    let a = one("UPDATE notes_copy n SET txt = c.ssn FROM customers c WHERE c.id = n.id");
    proven(&a);
    assert!(a.writes.contains(&pt("ssn")));
}

#[test]
fn values_and_array_subqueries_carry_sources() {
    let a = one("INSERT INTO notes_copy VALUES (1, (SELECT ssn FROM customers LIMIT 1))");
    proven(&a);
    assert!(a.writes.contains(&pt("ssn")));
    let a = one("SELECT ARRAY(SELECT email FROM customers)");
    proven(&a);
    assert_eq!(output(&a, 0), [dv("email", "array")]);
}

#[test]
fn value_channels_through_predicates_are_uses() {
    // Timing, error and row-count oracles all go through a condition: reported as uses.
    for sql in [
        "SELECT pg_sleep(CASE WHEN ssn LIKE '1%' THEN 1 ELSE 0 END) FROM customers",
        "SELECT 1 / (CASE WHEN ssn LIKE '1%' THEN 0 ELSE 1 END) FROM customers",
        "SELECT id FROM customers GROUP BY ROLLUP (ssn)",
        "SELECT string_agg(full_name, ',' ORDER BY ssn) FROM customers",
    ] {
        let a = one(sql);
        proven(&a);
        assert!(
            a.uses.iter().any(|u| u.column == col("ssn")),
            "{sql}: {:?}",
            a.uses
        );
    }
}

#[test]
fn merge_writes_and_uses() {
    let a = one("MERGE INTO notes_copy n USING customers c ON n.id = c.id \
         WHEN MATCHED THEN UPDATE SET txt = c.email \
         WHEN NOT MATCHED THEN INSERT (id, txt) VALUES (c.id, c.phone)");
    proven(&a);
    assert_eq!(a.kind, StatementKind::Merge);
    assert!(a.writes.contains(&pt("email")));
    assert!(a.writes.contains(&pt("phone")));
    assert!(has_use(&a, "id", Clause::JoinOn));
}

#[test]
fn copy_table_and_query() {
    let a = one("COPY customers TO STDOUT");
    proven(&a);
    assert_eq!(a.kind, StatementKind::Copy);
    assert_eq!(a.outputs.len(), 8);
    assert_eq!(output(&a, 4), [pt("ssn")]);
    let a = one("COPY customers (email, city) TO STDOUT WITH (FORMAT csv)");
    assert_eq!(names(&a), ["email", "city"]);
    let a = one("COPY (SELECT upper(email) FROM customers) TO STDOUT");
    assert_eq!(output(&a, 0), [dv("email", "upper")]);
    let a = one("COPY customers FROM STDIN");
    proven(&a);
    assert_eq!(a.kind, StatementKind::Copy);
    assert!(a.outputs.is_empty());
    let a = one("COPY customers TO '/tmp/x.csv'");
    assert!(has_problem(&a, ProblemKind::ServerSideCopy));
}

#[test]
fn cursors() {
    let a = one("DECLARE c1 CURSOR FOR SELECT ssn FROM customers");
    proven(&a);
    assert_eq!(a.kind, StatementKind::DeclareCursor);
    assert_eq!(a.name.as_deref(), Some("c1"));
    assert_eq!(output(&a, 0), [pt("ssn")]);
    let a = one("FETCH 10 FROM C1");
    assert_eq!(a.kind, StatementKind::Fetch);
    assert_eq!(a.name.as_deref(), Some("c1"));
    let a = one("MOVE NEXT FROM c1");
    assert_eq!(a.kind, StatementKind::Fetch);
    assert_eq!(a.name.as_deref(), Some("c1"));
    // MOVE returns no rows; it is proven (the cursor must still be known to the session).
    let a = one("MOVE 5 IN c2");
    assert!(a.is_proven(), "{a:#?}");
    assert_eq!(a.name.as_deref(), Some("c2"));
    // Anything that is not a bare MOVE stays unparseable.
    assert!(!one("MOVE 5 IN c2 (select ssn from customers)").is_proven());
}

#[test]
fn prepare_and_execute() {
    let a = one("PREPARE p1 (int) AS SELECT email FROM customers WHERE id = $1");
    proven(&a);
    assert_eq!(a.kind, StatementKind::Prepare);
    assert_eq!(a.inner_kind, Some(StatementKind::Select));
    assert_eq!(a.name.as_deref(), Some("p1"));
    assert_eq!(output(&a, 0), [pt("email")]);
    assert_eq!(a.parameters, 1);
    let a = one("EXECUTE p1(5)");
    assert_eq!(a.kind, StatementKind::Execute);
    assert_eq!(a.name.as_deref(), Some("p1"));
}

#[test]
fn explain_analyze_outputs_become_uses() {
    let a = one("EXPLAIN ANALYZE SELECT ssn FROM customers WHERE email = 'a'");
    proven(&a);
    assert_eq!(a.kind, StatementKind::Explain);
    assert!(a.outputs.iter().all(|o| o.sources.is_empty()));
    assert!(has_use(&a, "ssn", Clause::Explain));
    assert!(has_use(&a, "email", Clause::Where));
}

#[test]
fn utility_and_ddl_kinds() {
    for (sql, kind) in [
        ("SET search_path = public", StatementKind::Utility),
        ("SHOW search_path", StatementKind::Utility),
        ("BEGIN", StatementKind::Utility),
        ("COMMIT", StatementKind::Utility),
        ("LISTEN ch", StatementKind::Utility),
        ("DISCARD ALL", StatementKind::Utility),
        ("CREATE INDEX i ON customers (email)", StatementKind::Ddl),
        ("DROP TABLE notes_copy", StatementKind::Ddl),
        ("ALTER TABLE customers ADD COLUMN x int", StatementKind::Ddl),
    ] {
        let a = one(sql);
        assert_eq!(a.kind, kind, "{sql}");
        assert_eq!(a.is_ddl, kind == StatementKind::Ddl, "{sql}");
    }
}

// ---------------------------------------------------------------- fail closed

#[test]
fn untraceable_functions_are_problems() {
    let a = one("SELECT my_decrypt(ssn) FROM customers");
    assert!(has_problem(&a, ProblemKind::UntraceableFunction));
    let a = one("SELECT public.lower(email) FROM customers");
    assert!(has_problem(&a, ProblemKind::UntraceableFunction));
    let a = one("SELECT * FROM my_srf()");
    assert!(has_problem(&a, ProblemKind::UntraceableFunction));
    let a = one("SELECT id FROM customers WHERE my_check(ssn)");
    assert!(has_problem(&a, ProblemKind::UntraceableFunction));
}

#[test]
fn data_exposing_functions_and_catalogs() {
    for sql in [
        "SELECT lo_get(1234)",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT * FROM dblink('host=x', 'select ssn from customers') AS t(s text)",
        "SELECT query_to_xml('select ssn from customers', true, true, '')",
    ] {
        assert!(
            has_problem(&one(sql), ProblemKind::DataExposingFunction),
            "{sql}"
        );
    }
    // Sinks: a protected argument is a side-channel use (refused by the planner), a plain one
    // is not.
    for sql in [
        "SELECT pg_notify('ch', email) FROM customers",
        "SELECT set_config('x.y', ssn, false) FROM customers",
        "SELECT pg_advisory_lock(hashtext(ssn)) FROM customers",
        "SELECT 1 FROM customers WHERE pg_notify('ch', email) IS NULL",
    ] {
        let a = one(sql);
        assert!(a.problems.is_empty(), "{sql}: {:?}", a.problems);
        assert!(
            a.uses
                .iter()
                .any(|u| u.clause == Clause::SideChannel && !u.direct),
            "{sql}: {:?}",
            a.uses
        );
    }
    let a = one("SELECT pg_notify('ch', 'hello'), set_config('application_name', 'x', false)");
    proven(&a);
    assert!(a.uses.is_empty());
    let a = one("SELECT most_common_vals FROM pg_stats WHERE attname = 'ssn'");
    assert!(has_problem(&a, ProblemKind::DataExposingRelation));
    let a = one("SELECT relname FROM pg_class");
    proven(&a);
}

#[test]
fn unparseable_statements() {
    let a = one("DO $$ BEGIN PERFORM 1; END $$");
    assert!(has_problem(&a, ProblemKind::Unparseable));
    assert!(has_problem(&a, ProblemKind::ProceduralCode));
    let a = one("TABLE customers");
    proven(&a);
    assert_eq!(a.kind, StatementKind::Select);
    let a = one("SELEKT 1");
    assert!(has_problem(&a, ProblemKind::Unparseable));
    let a = one("CALL my_proc()");
    assert!(has_problem(&a, ProblemKind::ProceduralCode));
}

#[test]
fn multi_statement_strings() {
    let analyses = analyze(
        "SELECT email FROM customers; SELECT ssn FROM customers;",
        &demo(),
    );
    assert_eq!(analyses.len(), 2);
    assert_eq!(analyses[1].outputs[0].sources, [pt("ssn")]);
    // One bad statement does not hide the others.
    let analyses = analyze("SELECT ssn FROM customers; DO $$ x $$; SELECT 1", &demo());
    assert_eq!(analyses.len(), 3);
    assert_eq!(analyses[0].outputs[0].sources, [pt("ssn")]);
    assert!(has_problem(&analyses[1], ProblemKind::Unparseable));
}

#[test]
fn data_modifying_cte_is_a_problem() {
    let a = one("WITH d AS (DELETE FROM customers RETURNING ssn) SELECT ssn FROM d");
    assert!(has_problem(&a, ProblemKind::NestedWrite));
    assert_eq!(output(&a, 0), [pt("ssn")]);
}

#[test]
fn set_returning_functions_derive_from_arguments() {
    let a = one("SELECT u FROM customers c, unnest(ARRAY[c.ssn]) AS u");
    proven(&a);
    assert!(
        a.outputs[0]
            .sources
            .iter()
            .any(|s| s.column == col("ssn") && !s.passthrough)
    );
    let a = one("SELECT g FROM generate_series(1, 3) AS g");
    proven(&a);
    assert!(a.outputs[0].sources.is_empty());
}

#[test]
fn composite_expansion_is_not_proven() {
    // sqlparser 0.63 cannot parse `(c).*`: either way it must not come back proven.
    let a = one("SELECT (c).* FROM customers c");
    assert!(!a.is_proven());
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn analyze_never_panics(sql in "\\PC{0,120}") {
            let _ = analyze(&sql, &demo());
            let _ = fingerprint(&sql);
        }

        #[test]
        fn analyze_never_panics_on_sqlish(sql in "(SELECT|FROM|WHERE|customers|c|email|\\*|,|\\(|\\)|'x'|1|ORDER BY|UNION|JOIN|ON|=|;| )*") {
            let _ = analyze(&sql, &demo());
        }
    }
}

// ------------------------------------------------------------ issue 9 / issue 12 additions

fn has_direct_use(analysis: &StatementAnalysis, name: &str, clause: Clause, direct: bool) -> bool {
    analysis
        .uses
        .iter()
        .any(|u| u.column == col(name) && u.clause == clause && u.direct == direct)
}

/// Runs `f` on a thread with a tokio worker's default stack (2 MiB).
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("the analysis thread must not die")
}

#[test]
fn depth_bound_is_exact_at_the_limit() {
    // `SELECT id + 1 + … FROM customers`: depth = number of `+` plus one.
    let chain = |n: usize| format!("SELECT id{} FROM customers", " + 1".repeat(n));
    let below = chain(MAX_DEPTH - 1);
    let above = chain(MAX_DEPTH);
    let (below, above) = on_small_stack(move || (one(&below), one(&above)));
    assert!(
        !has_problem(&below, ProblemKind::TooDeep),
        "{:?}",
        below.problems
    );
    proven(&below);
    assert!(
        has_problem(&above, ProblemKind::TooDeep),
        "{:?}",
        above.problems
    );
    assert_eq!(above.problems[0].kind.code(), crate::errors::Code::TooDeep);
}

#[test]
fn long_chains_and_many_parameters_never_overflow() {
    let or_chain: Vec<String> = (0..2000).map(|i| format!("id={i}")).collect();
    let params: Vec<String> = (1..=3000).map(|i| format!("id=${i}")).collect();
    let in_list: Vec<String> = (1..=3000).map(|i| format!("${i}")).collect();
    let statements = vec![
        format!(
            "SELECT email FROM customers WHERE {}",
            or_chain.join(" OR ")
        ),
        format!(
            "SELECT email FROM customers WHERE {}",
            or_chain.join(" AND ")
        ),
        format!("SELECT email FROM customers WHERE {}", params.join(" OR ")),
        format!("SELECT 'a'{} FROM customers", " || 'b'".repeat(5000)),
        format!("SELECT id{} FROM customers", "::int".repeat(5000)),
        format!("SELECT 1{}", " UNION SELECT 1".repeat(3000)),
        format!("SELECT {}1{}", "(".repeat(100_000), ")".repeat(100_000)),
        format!(
            "SELECT {}1{} FROM customers",
            "(SELECT ".repeat(5000),
            ")".repeat(5000)
        ),
        format!("SELECT {}1", "NOT ".repeat(5000)),
        format!("SELECT {}1", "- ".repeat(5000)),
    ];
    let results = on_small_stack(move || {
        statements
            .iter()
            .map(|s| (s.len(), one(s)))
            .collect::<Vec<_>>()
    });
    for (len, analysis) in results {
        assert!(
            !analysis.is_proven(),
            "a {len}-byte deep statement was proven"
        );
    }
    let list = format!(
        "SELECT email FROM customers WHERE id IN ({})",
        in_list.join(",")
    );
    let analysis = on_small_stack(move || one(&list));
    proven(&analysis);
    assert_eq!(analysis.parameters, 3000);
}

#[test]
fn parenthesised_positions_are_positions() {
    for sql in [
        "SELECT id, ssn FROM customers ORDER BY (2)",
        "SELECT id, ssn FROM customers ORDER BY ((2))",
        "SELECT id, ssn FROM customers GROUP BY 1, (2)",
        "SELECT DISTINCT ON (2) id, ssn FROM customers",
        "SELECT id, ssn FROM customers GROUP BY ROLLUP (1, 2)",
    ] {
        let a = one(sql);
        assert!(
            a.uses.iter().any(|u| u.column == col("ssn")),
            "{sql}: {:?}",
            a.uses
        );
    }
}

#[test]
fn comparing_operations_are_uses() {
    for (sql, clause) in [
        (
            "SELECT ssn FROM customers INTERSECT SELECT '123-45-6789'",
            Clause::SetOperation,
        ),
        (
            "SELECT ssn FROM customers EXCEPT SELECT '123-45-6789'",
            Clause::SetOperation,
        ),
        (
            "SELECT birth_date FROM customers INTERSECT ALL SELECT DATE '1980-01-01'",
            Clause::SetOperation,
        ),
        (
            "SELECT ssn FROM customers UNION SELECT 'x'",
            Clause::SetOperation,
        ),
        ("SELECT DISTINCT ssn FROM customers", Clause::Distinct),
    ] {
        let a = one(sql);
        let name = if sql.contains("birth_date") {
            "birth_date"
        } else {
            "ssn"
        };
        assert!(
            has_direct_use(&a, name, clause, true),
            "{sql}: {:?}",
            a.uses
        );
    }
    // UNION ALL keeps every row: no comparison.
    let a = one("SELECT ssn FROM customers UNION ALL SELECT 'x'");
    assert!(a.uses.is_empty(), "{:?}", a.uses);
}

#[test]
fn only_the_column_itself_is_a_direct_use() {
    for sql in [
        "SELECT id FROM customers WHERE ssn = '1'",
        "SELECT id FROM customers WHERE ssn IN ('1', '2')",
        "SELECT id FROM customers WHERE ssn IS NULL",
        "SELECT id FROM customers WHERE NOT (ssn <> '1') AND id = 3",
        "SELECT id FROM customers WHERE ssn = ANY(ARRAY['1'])",
        "SELECT id FROM customers WHERE ssn IN (SELECT ssn FROM customers)",
    ] {
        let a = one(sql);
        assert!(
            has_direct_use(&a, "ssn", Clause::Where, true),
            "{sql}: {:?}",
            a.uses
        );
        assert!(
            !has_direct_use(&a, "ssn", Clause::Where, false),
            "{sql}: {:?}",
            a.uses
        );
    }
    for sql in [
        "SELECT id FROM customers WHERE ssn::int = 1",
        "SELECT id FROM customers WHERE lower(ssn) = '1'",
        "SELECT id FROM customers WHERE length(ssn) > 3",
        "SELECT id FROM customers WHERE (ssn || 'x') = 'x'",
        "SELECT id FROM customers WHERE ssn ~ '^1'",
        "SELECT id FROM customers WHERE CASE WHEN ssn::int > 0 THEN true END",
    ] {
        let a = one(sql);
        assert!(
            a.uses.iter().any(|u| u.column == col("ssn") && !u.direct),
            "{sql}: {:?}",
            a.uses
        );
    }
}

#[test]
fn code_creating_statements_have_their_own_kind() {
    for sql in [
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
        "CREATE OR REPLACE FUNCTION pg_temp.f(text) RETURNS text AS 'select $1' LANGUAGE sql",
        "CREATE TEMP VIEW v AS SELECT 1",
        "CREATE VIEW customers AS SELECT 1 AS id",
        "CREATE DOMAIN d AS text CHECK (VALUE <> '')",
        "CREATE TYPE mood AS ENUM ('a')",
        "CREATE TRIGGER t BEFORE INSERT ON notes_copy FOR EACH ROW EXECUTE FUNCTION f()",
        "CREATE SCHEMA me",
        "CREATE TEMP TABLE x (a text DEFAULT current_setting('x'))",
        "CREATE TEMP TABLE x (a int CHECK (my_check(a)))",
        "CREATE TEMP TABLE x (a text, CHECK (pg_notify('c', a) IS NULL))",
        "CREATE TEMP TABLE x (a int DEFAULT (SELECT 1))",
        "CREATE TEMP TABLE x (a text DEFAULT 'a'::d)",
        "CREATE TEMP TABLE x (a d)",
        "ALTER TABLE notes_copy ALTER COLUMN txt SET DEFAULT lower('x')",
        "ALTER TABLE notes_copy ADD COLUMN y int DEFAULT my_random()",
        "ALTER TABLE notes_copy ADD COLUMN y int GENERATED ALWAYS AS (id * 2) STORED",
        "CREATE INDEX ON notes_copy ((txt::int))",
        "ALTER ROLE support SET search_path = me",
        "CREATE TEMP TABLE x (LIKE customers INCLUDING DEFAULTS)",
        "CREATE TEMP TABLE x () INHERITS (customers)",
    ] {
        assert_eq!(one(sql).kind, StatementKind::Code, "{sql}");
    }
    for sql in [
        "CREATE TEMP TABLE x (id int, name text DEFAULT 'n', n numeric(10,2) NOT NULL)",
        "CREATE TABLE y (id bigint PRIMARY KEY, at timestamp with time zone, tags text[])",
        "CREATE TEMP TABLE x (a int CHECK (a > 0), t timestamptz DEFAULT now(), CHECK (a < 10))",
        "CREATE TEMP TABLE x (v text DEFAULT 'x' CHECK (v <> ''))",
        "DROP TABLE notes_copy",
        "ALTER TABLE notes_copy ADD COLUMN z int",
        "ALTER TABLE notes_copy ADD COLUMN y int DEFAULT random()",
        "CREATE INDEX ON notes_copy (txt)",
        "ALTER ROLE support WITH PASSWORD 'x'",
        "ALTER INDEX i RENAME TO j",
    ] {
        let a = one(sql);
        assert_eq!(a.kind, StatementKind::Ddl, "{sql}");
    }
}

#[test]
fn operators_types_and_casts_must_be_built_in() {
    for sql in [
        "SELECT id FROM customers WHERE id OPERATOR(pg_temp.+) 1",
        "SELECT id FROM customers WHERE id OPERATOR(public.=) 1",
        "SELECT id FROM customers WHERE id OPERATOR(=) 1 AND id <=> 2",
        "SELECT id::mydomain FROM customers",
        "SELECT CAST(id AS public.mytype) FROM customers",
    ] {
        let a = one(sql);
        assert!(
            has_problem(&a, ProblemKind::NotBuiltin),
            "{sql}: {:?}",
            a.problems
        );
    }
    // Operators sqlparser splits differently are refused by the parity gate.
    assert!(!one("SELECT id FROM customers WHERE id OPERATOR(pg_temp.===) 1").is_proven());
    // `type 'text'` is a typed literal to PostgreSQL, a string alias to sqlparser.
    let a = one("SELECT email 'x' FROM customers");
    assert!(
        has_problem(&a, ProblemKind::Unsupported),
        "{:?}",
        a.problems
    );
    for sql in [
        "SELECT id FROM customers WHERE id OPERATOR(pg_catalog.=) 1",
        "SELECT id::text, id::bigint, CAST(id AS numeric(10,2)), created_at::date FROM customers",
        "SELECT ARRAY[id]::int[] FROM customers",
        "SELECT id FROM customers WHERE email LIKE 'a%' AND id <> 1 AND id >= 2",
    ] {
        proven(&one(sql));
    }
}

#[test]
fn copy_format_comes_from_the_statement() {
    let a = one("COPY customers (id, email) TO STDOUT WITH (FORMAT csv, DELIMITER ';')");
    let format = a.copy.expect("copy format");
    assert_eq!((format.kind, format.delimiter), (CopyKind::Csv, b';'));
    let a = one("COPY (SELECT 'p,q,s' AS csv, ssn, 'r' FROM customers) TO STDOUT");
    assert_eq!(a.copy.expect("copy format").kind, CopyKind::Text);
    let a = one("COPY customers TO STDOUT WITH (ENCODING 'LATIN1')");
    assert!(has_problem(&a, ProblemKind::CopyOption));
    let a = one("COPY customers TO STDOUT WITH (DELIMITER E'\\x7c')");
    assert!(has_problem(&a, ProblemKind::CopyOption), "{:?}", a.problems);
    // pgbench -i: PostgreSQL's booleans accept on/off/1/0.
    let a = one("copy notes_copy from stdin with (freeze on)");
    proven(&a);
    assert_eq!(
        (a.kind, a.write_targets.clone()),
        (StatementKind::Copy, vec!["public.notes_copy".to_string()])
    );
    let a = one("COPY customers TO STDOUT WITH (FORMAT csv, HEADER off)");
    assert!(!a.copy.expect("copy format").header);
    let a = one("COPY customers TO STDOUT WITH (FORMAT csv, HEADER 1)");
    assert!(a.copy.expect("copy format").header);
}

#[test]
fn lexer_differentials_are_refused() {
    let off = LexSettings {
        standard_conforming_strings: false,
    };
    // With standard_conforming_strings off, PostgreSQL runs `, ssn FROM customers --'`.
    let sql = r"SELECT 'a\', ssn FROM customers --'";
    let a = analyze_with(sql, &demo(), off);
    assert!(
        has_problem(&a[0], ProblemKind::LexerMismatch),
        "{:?}",
        a[0].problems
    );
    for sql in [
        "SELECT 'a'\n'b' FROM customers",
        "SELECT 0x1F FROM customers",
        "SELECT 1_000 FROM customers",
        "SELECT 123abc FROM customers",
    ] {
        assert!(has_problem(&one(sql), ProblemKind::LexerMismatch), "{sql}");
    }
    // In SJIS, "Á" (C3 81) then "\" reads as C3 + one double-byte character: no backslash.
    let a = one("SELECT E'\u{c1}\\', ssn FROM customers --'");
    assert!(
        has_problem(&a, ProblemKind::LexerMismatch),
        "{:?}",
        a.problems
    );
    // A CR-terminated comment: both lexers see the column after it.
    let a = one("SELECT id --\r, ssn FROM customers");
    assert_eq!(a.outputs.len(), 2);
}
