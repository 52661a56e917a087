//! Read-path decisions: from a statement's analysis and the role's view of the policy to a plan
//! (which result columns to rewrite, how) or a refusal. Pure: no I/O, no session: the proxy's
//! session applies plans, and `policy explain` prints them.
//!
//! Fail closed: a statement that cannot be proven safe for a restricted role is refused.
use crate::catalog::Snapshot;
use crate::errors::Code;
use crate::policy::{Action, ColumnDecision, DerivedUse, RoleView, StatementKind as PolicyKind};
use crate::sql::{Clause, ProblemKind, StatementAnalysis, StatementKind};
use std::collections::HashMap;
use std::sync::Arc;

pub mod at_rest_state;
pub mod write;

/// Why a statement is refused: the catalogue code and a message naming the column and rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    pub message: String,
    /// The statement could not be read at all (it does not parse, or names a relation or
    /// column tokengate's catalog lacks): the server may be asked to parse it, without running
    /// it, so that its own error (SQLSTATE, message, hint, position) reaches the client.
    pub server_may_explain: bool,
}

impl Refusal {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            server_may_explain: false,
        }
    }

    /// The `tokengate_refusals_total{reason}` label.
    pub fn reason(&self) -> &'static str {
        match self.code {
            Code::Unproven => "unproven",
            Code::StatementKindDenied => "statement_kind",
            Code::FilterDenied => "filter",
            Code::WriteDenied => "write",
            Code::ColumnDenied => "column_denied",
            Code::DerivedDenied => "derived",
            Code::AmbiguousColumn => "ambiguous",
            Code::RowLimit => "row_limit",
            Code::UnsupportedValue => "unsupported_value",
            Code::LineageMismatch => "lineage_mismatch",
            Code::CatalogUnavailable => "catalog_unavailable",
            Code::TooDeep => "too_deep",
            Code::LexerMismatch => "lexer_mismatch",
            Code::NotBuiltin => "not_builtin",
            Code::CopyOption => "copy_option",
            _ => "other",
        }
    }
}

/// A protected result column: its position and the decision that applies to it.
#[derive(Debug, Clone)]
pub struct ProtectedColumn {
    pub index: usize,
    pub decision: ColumnDecision,
    /// The source column's type from the catalog (0 if unknown).
    pub type_oid: u32,
    /// For a column stored as tokens: the key version its tokens use, from the column's
    /// recorded state (filled in by the session when it checks that state).
    pub key_version: Option<u32>,
}

/// How to rewrite one result: which columns, and the row limit.
#[derive(Debug, Clone, Default)]
pub struct ResultPlan {
    pub width: usize,
    pub protected: Vec<ProtectedColumn>,
    pub row_limit: Option<(u64, String)>,
    /// For COPY ... TO: the format CopyData lines are in (from the parsed options).
    pub copy_format: Option<crate::sql::CopyFormat>,
    /// COPY ... TO: rows are CopyData in COPY's own text format, whatever Bind asked for.
    pub copy: bool,
    /// The columns stored as tokens the statement touched, with the state it was planned
    /// under: a cursor's rows were read under it (FETCH checks it is still current, TG144).
    pub at_rest: Vec<write::ColumnVersion>,
}

impl ResultPlan {
    pub fn is_clear(&self) -> bool {
        self.protected.is_empty() && self.row_limit.is_none()
    }

    pub fn protected_at(&self, index: usize) -> Option<&ProtectedColumn> {
        self.protected.iter().find(|p| p.index == index)
    }
}

/// The decision for one statement.
#[derive(Debug, Clone, Default)]
pub struct StatementPlan {
    /// How to rewrite its result rows (None: nothing to rewrite). For DECLARE and PREPARE,
    /// which return no rows themselves, the plan FETCH / EXECUTE of that name will use.
    pub result: Option<Arc<ResultPlan>>,
    /// DECLARE name CURSOR / PREPARE name: the plan FETCH / EXECUTE will use.
    pub names: Option<(StatementKind, String)>,
    pub is_ddl: bool,
    /// A protected column is read, used or written (or the statement writes a table that has
    /// one): the server's errors and notices about it may quote protected values.
    pub sensitive: bool,
}

/// The plans of cursors (portals) and prepared statements a statement may name.
pub trait Named {
    /// `Some(plan)` when the cursor is known (`Some(None)`: nothing to rewrite).
    fn cursor(&self, name: &str) -> Option<Option<Arc<ResultPlan>>>;
    fn prepared(&self, name: &str) -> Option<Option<Arc<ResultPlan>>>;
}

/// Cursor and SQL-level prepared statement plans, by name (`policy explain`, and a message's
/// own declarations before the server has confirmed them).
#[derive(Debug, Default)]
pub struct NamedPlans {
    pub cursors: HashMap<String, Option<Arc<ResultPlan>>>,
    pub prepared: HashMap<String, Option<Arc<ResultPlan>>>,
}

impl Named for NamedPlans {
    fn cursor(&self, name: &str) -> Option<Option<Arc<ResultPlan>>> {
        self.cursors.get(name).cloned()
    }
    fn prepared(&self, name: &str) -> Option<Option<Arc<ResultPlan>>> {
        self.prepared.get(name).cloned()
    }
}

/// A message's own declarations first, then what the session knows.
pub struct Overlay<'a> {
    pub local: &'a NamedPlans,
    pub session: &'a dyn Named,
}

impl Named for Overlay<'_> {
    fn cursor(&self, name: &str) -> Option<Option<Arc<ResultPlan>>> {
        self.local
            .cursor(name)
            .or_else(|| self.session.cursor(name))
    }
    fn prepared(&self, name: &str) -> Option<Option<Arc<ResultPlan>>> {
        self.local
            .prepared(name)
            .or_else(|| self.session.prepared(name))
    }
}

fn policy_kind(kind: StatementKind, inner: Option<StatementKind>) -> PolicyKind {
    match kind {
        StatementKind::Select | StatementKind::DeclareCursor | StatementKind::Fetch => {
            PolicyKind::Select
        }
        StatementKind::Insert => PolicyKind::Insert,
        StatementKind::Update | StatementKind::Merge => PolicyKind::Update,
        StatementKind::Delete => PolicyKind::Delete,
        StatementKind::Copy => PolicyKind::Copy,
        StatementKind::Ddl => PolicyKind::Ddl,
        StatementKind::Code => PolicyKind::Code,
        // PREPARE x AS INSERT ... is judged by what it prepares.
        StatementKind::Prepare => inner.map_or(PolicyKind::Utility, |k| policy_kind(k, None)),
        _ => PolicyKind::Utility,
    }
}

/// Not plain clear: rewritten on output, or stored as tokens (`at_rest: token`, which makes
/// every use and write of the column something to check, even for clear roles).
fn is_protected(d: &ColumnDecision) -> bool {
    d.action != Action::Clear || d.at_rest
}

/// Whether the role may receive a named derived use of the column (`allow:`). `length` of a
/// column stored as tokens would measure the token, so it stays refused there.
fn allowed_derived(d: &ColumnDecision, use_: DerivedUse) -> bool {
    d.allows(use_) && !(d.at_rest && use_ == DerivedUse::Length)
}

/// Whether a result value of this column must be rewritten on its way to the client. Stored
/// tokens are rewritten for every action but `token` (the stored token is what a token role
/// sees); other columns for every action but `clear`.
pub fn needs_transform(d: &ColumnDecision) -> bool {
    if d.at_rest {
        d.action != Action::Token
    } else {
        d.action != Action::Clear
    }
}

/// Decides one statement for a restricted role.
pub fn plan_statement(
    a: &StatementAnalysis,
    view: &RoleView,
    catalog: &dyn PlanCatalog,
    named: &dyn Named,
) -> Result<StatementPlan, Refusal> {
    // A code block's own code says more than "cannot parse".
    // `see_activity: true` waives only the refusal of other sessions' activity views.
    let waived =
        |p: &&crate::sql::Problem| p.kind == ProblemKind::SessionActivity && view.see_activity();
    let first = a
        .problems
        .iter()
        .filter(|p| !waived(p))
        .find(|p| p.kind == ProblemKind::ProceduralCode)
        .or(a.problems.iter().find(|p| !waived(p)));
    if let Some(p) = first {
        let mut refusal = Refusal::new(p.kind.code(), p.message.clone());
        refusal.server_may_explain = a.problems.iter().filter(|p| !waived(p)).all(|p| {
            matches!(
                p.kind,
                ProblemKind::Unparseable
                    | ProblemKind::UnknownRelation
                    | ProblemKind::UnknownColumn
            )
        });
        return Err(refusal);
    }
    // A parent reads its children's rows and a write may land in either: one label for the
    // whole family, or the weaker one would apply to rows written through the other.
    if catalog.has_inheritance() {
        let columns = a
            .outputs
            .iter()
            .flat_map(|o| o.sources.iter().map(|s| s.column.as_str()))
            .chain(a.uses.iter().map(|u| u.column.as_str()))
            .chain(a.writes.iter().map(|w| w.column.as_str()));
        // A write target's columns all count: an INSERT stores values in columns no lineage
        // names (VALUES lists, defaults).
        let targets: Vec<String> = a
            .write_targets
            .iter()
            .flat_map(|t| catalog.table_columns(t))
            .collect();
        for column in columns.chain(targets.iter().map(String::as_str)) {
            // Stored as tokens: a parent's reads and a migration's walk would span members
            // whose recorded states and key versions may differ. Not supported: refused.
            if view.column(column).is_some_and(|d| d.at_rest)
                && let Some(other) = catalog.relative_column(column)
            {
                return Err(Refusal::new(
                    Code::AtRestUnsupported,
                    format!(
                        "column {column} is stored as tokens in a table of an inheritance or partition family (with {other}), which is not supported"
                    ),
                ));
            }
            if let Some(other) = catalog.differently_labelled_relative(column, view) {
                return Err(Refusal::new(
                    Code::InheritedLabels,
                    format!(
                        "column {column} and {other} belong to one inheritance or partition family but the policy labels them differently"
                    ),
                ));
            }
        }
    }
    let kind = policy_kind(a.kind, a.inner_kind);
    if !view.statement_allowed(kind) {
        let rule = view
            .statement_rule(kind)
            .unwrap_or("the role's statements rule");
        return Err(Refusal::new(
            Code::StatementKindDenied,
            format!("{kind:?} statements are not allowed for this role ({rule})").to_lowercase(),
        ));
    }
    for u in &a.uses {
        if let Some(d) = view.column(&u.column)
            && d.at_rest
            && d.action != Action::Deny
            && !u.direct
            && !u.allowance.is_some_and(|a| allowed_derived(d, a))
        {
            return Err(Refusal::new(
                Code::AtRestComputation,
                format!(
                    "column {} is stored as tokens: an expression over it in {} would compute on the tokens, not the values",
                    u.column,
                    clause_name(u.clause)
                ),
            ));
        }
        if let Some(d) = view.column(&u.column)
            && is_protected(d)
            && (d.action == Action::Deny || !d.may_filter || !u.direct)
            && !u.allowance.is_some_and(|a| allowed_derived(d, a))
        {
            // filter_on allows comparing the column itself, never an expression over it.
            let rule = if d.action != Action::Deny && d.may_filter {
                "filter_on allows comparisons of the column itself, not of an expression over it"
            } else {
                &d.filter_rule
            };
            return Err(Refusal::new(
                if u.clause == Clause::SideChannel {
                    Code::SideChannelArgument
                } else {
                    Code::FilterDenied
                },
                format!(
                    "protected column {} is used in {} ({rule})",
                    u.column,
                    clause_name(u.clause),
                ),
            ));
        }
    }
    for w in &a.writes {
        // A clear role's writes of columns stored as tokens are checked by
        // [`write::plan_at_rest`] (only ON CONFLICT ... SET col = EXCLUDED.col copies them).
        if let Some(d) = view.column(&w.column)
            && d.action != Action::Clear
        {
            return Err(Refusal::new(
                Code::WriteDenied,
                format!(
                    "protected column {} would be copied into {} ({})",
                    w.column,
                    a.write_targets.join(", "),
                    d.rule
                ),
            ));
        }
    }
    let result = match a.kind {
        StatementKind::Fetch => named_result(|n| named.cursor(n), a.name.as_deref(), "cursor")?,
        StatementKind::Execute => named_result(
            |n| named.prepared(n),
            a.name.as_deref(),
            "prepared statement",
        )?,
        _ => result_plan(a, view, catalog)?,
    };
    let sensitive = result.as_ref().is_some_and(|r| !r.protected.is_empty())
        || a.uses
            .iter()
            .any(|u| view.column(&u.column).is_some_and(is_protected))
        || a.outputs
            .iter()
            .flat_map(|o| o.sources.iter())
            .chain(a.writes.iter())
            .any(|s| view.column(&s.column).is_some_and(is_protected))
        || a.write_targets
            .iter()
            .any(|t| catalog.has_protected_column(t, view));
    let names = match a.kind {
        StatementKind::DeclareCursor | StatementKind::Prepare => {
            a.name.clone().map(|n| (a.kind, n))
        }
        _ => None,
    };
    Ok(StatementPlan {
        result,
        names,
        is_ddl: a.is_ddl,
        sensitive,
    })
}

/// What planning needs from the catalog: column types, and which tables hold protected
/// columns (a write to such a table may fail with the whole row in the error's DETAIL).
pub trait PlanCatalog {
    fn column_type(&self, qualified: &str) -> Option<u32>;
    /// `schema.table` (or the name as written when unresolved: then true, fail closed).
    fn has_protected_column(&self, table: &str, view: &RoleView) -> bool;
    /// Another member of `schema.table.column`'s inheritance or partition family whose
    /// same-named column the policy labels differently (or not at all).
    fn differently_labelled_relative(&self, qualified: &str, view: &RoleView) -> Option<String>;
    /// Another member of `schema.table.column`'s inheritance or partition family that has a
    /// column of that name.
    fn relative_column(&self, qualified: &str) -> Option<String>;
    /// The columns of `schema.table` (unknown table: none).
    fn table_columns(&self, table: &str) -> Vec<String>;
    /// Whether any relation inherits or is inherited (else the family checks are skipped).
    fn has_inheritance(&self) -> bool;
}

impl PlanCatalog for Snapshot {
    fn column_type(&self, qualified: &str) -> Option<u32> {
        Snapshot::column_type(self, qualified)
    }
    fn has_inheritance(&self) -> bool {
        Snapshot::has_inheritance(self)
    }
    fn table_columns(&self, table: &str) -> Vec<String> {
        let Some((schema, name)) = table.split_once('.') else {
            return Vec::new();
        };
        self.relation(Some(schema), name)
            .map(|r| r.columns.iter().map(|c| r.qualified(&c.name)).collect())
            .unwrap_or_default()
    }
    fn relative_column(&self, qualified: &str) -> Option<String> {
        let mut parts = qualified.splitn(3, '.');
        let (schema, table, column) = (parts.next()?, parts.next()?, parts.next()?);
        let r = self.relation(Some(schema), table)?;
        self.family(r.oid)
            .into_iter()
            .find(|f| f.columns.iter().any(|c| c.name == column))
            .map(|f| f.qualified(column))
    }
    fn differently_labelled_relative(&self, qualified: &str, view: &RoleView) -> Option<String> {
        if !self.has_inheritance() {
            return None;
        }
        let mut parts = qualified.splitn(3, '.');
        let (schema, table, column) = (parts.next()?, parts.next()?, parts.next()?);
        let r = self.relation(Some(schema), table)?;
        let label = |q: &str| view.column(q).map(|d| d.label.clone());
        let mine = label(qualified);
        self.family(r.oid)
            .into_iter()
            .filter(|f| f.columns.iter().any(|c| c.name == column))
            .map(|f| f.qualified(column))
            .find(|other| label(other) != mine)
    }
    fn has_protected_column(&self, table: &str, view: &RoleView) -> bool {
        let Some((schema, name)) = table.split_once('.') else {
            return true;
        };
        match self.relation(Some(schema), name) {
            Some(r) => r
                .columns
                .iter()
                .any(|c| view.column(&r.qualified(&c.name)).is_some_and(is_protected)),
            None => true,
        }
    }
}

fn named_result(
    lookup: impl Fn(&str) -> Option<Option<Arc<ResultPlan>>>,
    name: Option<&str>,
    what: &str,
) -> Result<Option<Arc<ResultPlan>>, Refusal> {
    // Unknown names may have been declared before tokengate could see them (or not at all):
    // without a plan, rows cannot be proven safe.
    let name = name.unwrap_or_default();
    lookup(name).ok_or_else(|| {
        Refusal::new(
            Code::Unproven,
            format!("{what} {name:?} was not declared through tokengate in this session"),
        )
    })
}

/// The rewrite plan for a statement's outputs.
fn result_plan(
    a: &StatementAnalysis,
    view: &RoleView,
    catalog: &dyn PlanCatalog,
) -> Result<Option<Arc<ResultPlan>>, Refusal> {
    let mut plan = ResultPlan {
        width: a.outputs.len(),
        protected: Vec::new(),
        row_limit: view.row_limit_rule().map(|l| (l.rows, l.rule.to_string())),
        copy_format: a.copy.clone(),
        copy: a.kind == StatementKind::Copy,
        at_rest: Vec::new(),
    };
    for (index, out) in a.outputs.iter().enumerate() {
        let mut chosen: Option<(&ColumnDecision, &str)> = None;
        for s in &out.sources {
            let Some(d) = view.column(&s.column) else {
                continue;
            };
            if !is_protected(d) {
                continue;
            }
            if d.action == Action::Deny {
                return Err(Refusal::new(
                    Code::ColumnDenied,
                    format!(
                        "column {} may not be returned to this role ({})",
                        s.column, d.rule
                    ),
                ));
            }
            if !s.passthrough && s.allowance.is_some_and(|a| allowed_derived(d, a)) {
                // A named derived use the role's `allow:` rules permit: a number or a
                // boolean about the column, never its value.
                continue;
            }
            if !s.passthrough {
                let via = s.via.as_deref().unwrap_or("an expression");
                return Err(Refusal::new(
                    Code::DerivedDenied,
                    format!(
                        "result column {:?} is computed from protected column {} via {via} ({})",
                        out.name, s.column, d.rule
                    ),
                ));
            }
            match chosen {
                None => chosen = Some((d, &s.column)),
                Some((c, _)) if c.label == d.label && c.action == d.action => {}
                Some((c, col)) => {
                    return Err(Refusal::new(
                        Code::AmbiguousColumn,
                        format!(
                            "result column {:?} mixes {col} ({} {:?}) and {} ({} {:?})",
                            out.name, c.label, c.action, s.column, d.label, d.action
                        ),
                    ));
                }
            }
        }
        if let Some((d, column)) = chosen
            && needs_transform(d)
        {
            plan.protected.push(ProtectedColumn {
                index,
                decision: d.clone(),
                type_oid: catalog.column_type(column).unwrap_or(0),
                key_version: None,
            });
        }
    }
    Ok(if plan.is_clear() {
        None
    } else {
        Some(Arc::new(plan))
    })
}

fn clause_name(c: Clause) -> &'static str {
    match c {
        Clause::Where => "WHERE",
        Clause::JoinOn => "a JOIN condition",
        Clause::GroupBy => "GROUP BY",
        Clause::OrderBy => "ORDER BY",
        Clause::Having => "HAVING",
        Clause::Window => "a window clause",
        Clause::DistinctOn => "DISTINCT ON",
        Clause::Limit => "LIMIT/OFFSET",
        Clause::Case => "a CASE condition",
        Clause::Filter => "an aggregate FILTER",
        Clause::Explain => "an EXPLAIN",
        Clause::SetOperation => "UNION/INTERSECT/EXCEPT",
        Clause::Distinct => "DISTINCT",
        Clause::Other => "a condition",
        Clause::SideChannel => {
            "an argument that leaves the statement (notification, setting, lock key)"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Column, Relation, RelationKind};
    use crate::policy::Policy;

    /// The demo policy in read-path-only mode (these tests plan over plaintext columns; the
    /// at-rest planning has its own tests in `write.rs` and `at_rest_state.rs`).
    static POLICY: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(crate::demo::read_path_only_policy);

    fn catalog() -> Snapshot {
        let table = |oid, name: &str, cols: &[(&str, u32)]| Relation {
            oid,
            schema: "public".into(),
            name: name.into(),
            kind: RelationKind::Table,
            columns: cols
                .iter()
                .enumerate()
                .map(|(i, (n, t))| Column {
                    attnum: i as i16 + 1,
                    name: n.to_string(),
                    type_oid: *t,
                })
                .collect(),
            definition: None,
        };
        Snapshot::build(
            1,
            vec![
                table(
                    1,
                    "customers",
                    &[
                        ("id", 23),
                        ("full_name", 25),
                        ("email", 25),
                        ("phone", 25),
                        ("ssn", 25),
                        ("birth_date", 1082),
                        ("city", 25),
                        ("created_at", 1184),
                    ],
                ),
                table(
                    2,
                    "payments",
                    &[
                        ("id", 23),
                        ("customer_id", 23),
                        ("card_number", 25),
                        ("amount", 1700),
                        ("paid_at", 1184),
                    ],
                ),
                table(
                    3,
                    "visits",
                    &[
                        ("id", 23),
                        ("customer_id", 23),
                        ("visit_date", 1082),
                        ("diagnosis", 25),
                        ("notes", 25),
                    ],
                ),
            ],
            vec![],
        )
    }

    fn decide(role: &str, sql: &str) -> Result<Vec<StatementPlan>, Refusal> {
        let policy = Policy::from_yaml(&POLICY, "demo.yaml").unwrap();
        let view = policy.for_role(role, &[]);
        let cat = catalog();
        crate::sql::analyze(sql, &cat)
            .iter()
            .map(|a| plan_statement(a, &view, &cat, &NamedPlans::default()))
            .collect()
    }

    fn refused(role: &str, sql: &str) -> Code {
        decide(role, sql).expect_err(sql).code
    }

    /// The demo policy plus roles with `allow:` entries; `both` composes two rules.
    fn decide_allowed(
        role: &str,
        groups: &[&str],
        sql: &str,
    ) -> Result<Vec<StatementPlan>, Refusal> {
        let text = POLICY.replace(
            "  \"*\": { default: deny }",
            "  counter:\n    pii: mask\n    financial: mask\n    health: deny\n    \
             allow: { pii: [count, count_distinct, is_null, length], financial: [count], diagnosis: [count] }\n  \
             narrow: { pii: token, allow: { ssn: [count] } }\n  \"*\": { default: deny }",
        );
        let policy = Policy::from_yaml(&text, "demo.yaml").unwrap();
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let view = policy.for_role(role, &groups);
        let cat = catalog();
        crate::sql::analyze(sql, &cat)
            .iter()
            .map(|a| plan_statement(a, &view, &cat, &NamedPlans::default()))
            .collect()
    }

    #[test]
    fn allowed_derived_uses_are_exact() {
        for sql in [
            "SELECT count(ssn), count(DISTINCT email) FROM customers",
            "SELECT count(c.ssn) AS n FROM customers c",
            "SELECT count(c.*) FROM customers c",
            "SELECT count(p.*) FROM payments p",
            "SELECT pg_catalog.count((ssn)) FROM customers",
            "SELECT length(email), char_length(phone), octet_length(ssn) FROM customers",
            "SELECT ssn IS NULL, email IS NOT NULL FROM customers",
            "SELECT id FROM customers WHERE ssn IS NULL OR email IS NOT NULL",
            "SELECT city FROM customers GROUP BY city HAVING count(DISTINCT ssn) > 1",
            "SELECT n FROM (SELECT count(ssn) AS n FROM customers) s",
            // After the use, any computation reveals no more than the use itself.
            "SELECT count(ssn) + 1, sum(length(ssn)), max(char_length(email)) FROM customers",
            "SELECT count(length(ssn)) FROM customers",
            "SELECT count(*) FILTER (WHERE email IS NULL) FROM customers",
            "SELECT count(x) FROM (SELECT ssn AS x FROM customers) s",
        ] {
            let plans =
                decide_allowed("counter", &[], sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
            // Nothing to rewrite: only numbers and booleans reach the client.
            assert!(plans[0].result.is_none(), "{sql}");
            assert!(plans[0].sensitive, "{sql}");
        }
        for sql in [
            "SELECT count(lower(ssn)) FROM customers",
            "SELECT length(ssn || 'x') FROM customers",
            "SELECT count(DISTINCT lower(email)) FROM customers",
            "SELECT count(length(ssn || 'x')) FROM customers",
            "SELECT length(ssn) || ssn FROM customers",
            "SELECT count(ssn::int) FROM customers",
            "SELECT public.count(ssn) FROM customers",
            "SELECT length(ssn, 'UTF8') FROM customers",
            "SELECT string_agg(ssn, ',') FROM customers",
            "SELECT max(ssn) FROM customers",
            "SELECT count(DISTINCT c.*) FROM customers c",
            "SELECT count(c) FROM customers c",
            "SELECT lower(ssn) IS NULL FROM customers",
            "SELECT count(diagnosis) FROM visits",
        ] {
            let code = decide_allowed("counter", &[], sql)
                .map(|_| ())
                .expect_err(sql)
                .code;
            assert!(
                matches!(
                    code,
                    Code::DerivedDenied
                        | Code::NotBuiltin
                        | Code::Unproven
                        | Code::ColumnDenied
                        | Code::FilterDenied
                ),
                "{sql}: {code:?}"
            );
        }
        assert_eq!(
            decide_allowed("counter", &[], "SELECT count(lower(ssn)) FROM customers")
                .unwrap_err()
                .code,
            Code::DerivedDenied
        );
        // Uses stay refused unless they are the allowed derived use itself.
        for sql in [
            "SELECT id FROM customers WHERE ssn = '1'",
            "SELECT id FROM customers WHERE lower(ssn) IS NULL",
            "SELECT id FROM customers WHERE length(ssn || 'x') > 3",
        ] {
            assert_eq!(
                decide_allowed("counter", &[], sql).unwrap_err().code,
                Code::FilterDenied,
                "{sql}"
            );
        }
        assert!(
            decide_allowed(
                "counter",
                &[],
                "SELECT id FROM customers WHERE length(ssn) > 3"
            )
            .is_ok()
        );
        // A role without `allow:` keeps TG106.
        for sql in [
            "SELECT count(ssn) FROM customers",
            "SELECT count(c.*) FROM customers c",
            "SELECT ssn IS NULL FROM customers",
        ] {
            assert_eq!(refused("support", sql), Code::DerivedDenied, "{sql}");
        }
        assert_eq!(
            refused("support", "SELECT id FROM customers WHERE ssn IS NULL"),
            Code::FilterDenied
        );
    }

    #[test]
    fn length_of_a_column_stored_as_tokens_stays_refused() {
        let text = POLICY
            .replace(
                "ssn:         { class: pii,       token: digits,",
                "ssn:         { class: pii,       token: digits, at_rest: token,",
            )
            .replace(
                "  \"*\": { default: deny }",
                "  counter: { pii: mask, allow: { pii: [count, is_null, length] } }\n  \"*\": { default: deny }",
            );
        assert!(text.contains("at_rest: token"));
        let policy = Policy::from_yaml(&text, "demo.yaml").unwrap();
        let view = policy.for_role("counter", &[]);
        let cat = catalog();
        let plan = |sql: &str| {
            crate::sql::analyze(sql, &cat)
                .iter()
                .map(|a| plan_statement(a, &view, &cat, &NamedPlans::default()))
                .collect::<Result<Vec<_>, _>>()
        };
        assert!(plan("SELECT count(ssn) FROM customers WHERE ssn IS NULL").is_ok());
        assert_eq!(
            plan("SELECT length(ssn) FROM customers").unwrap_err().code,
            Code::DerivedDenied
        );
        assert_eq!(
            plan("SELECT id FROM customers WHERE length(ssn) > 3")
                .unwrap_err()
                .code,
            Code::AtRestComputation
        );
        assert!(plan("SELECT length(email) FROM customers").is_ok());
    }

    #[test]
    fn allowances_compose_by_intersection() {
        // narrow allows only count on ssn; counter allows more on pii.
        let both = |sql| decide_allowed("counter", &["narrow"], sql);
        assert!(both("SELECT count(ssn) FROM customers").is_ok());
        assert_eq!(
            both("SELECT count(DISTINCT ssn) FROM customers")
                .unwrap_err()
                .code,
            Code::DerivedDenied
        );
        // narrow tokenizes email and lists nothing for it: nothing allowed.
        assert_eq!(
            both("SELECT count(email) FROM customers").unwrap_err().code,
            Code::DerivedDenied
        );
        // count(c.*) needs count on every protected column of the row.
        assert_eq!(
            both("SELECT count(c.*) FROM customers c").unwrap_err().code,
            Code::DerivedDenied
        );
        assert!(decide_allowed("narrow", &[], "SELECT count(ssn) FROM customers").is_ok());
    }

    #[test]
    fn passthrough_columns_get_the_roles_action() {
        let plans = decide("support", "SELECT id, email, ssn FROM customers").unwrap();
        let r = plans[0].result.as_ref().unwrap();
        assert_eq!(r.width, 3);
        let idx: Vec<_> = r
            .protected
            .iter()
            .map(|p| (p.index, p.decision.action))
            .collect();
        assert_eq!(idx, vec![(1, Action::Mask), (2, Action::Mask)]);
        assert_eq!(r.protected[0].type_oid, 25);
        let plans = decide("analyst", "SELECT c.email AS e FROM customers c").unwrap();
        assert_eq!(
            plans[0].result.as_ref().unwrap().protected[0]
                .decision
                .action,
            Action::Token
        );
    }

    #[test]
    fn unprotected_results_need_no_plan() {
        let plans = decide("support", "SELECT id, city FROM customers WHERE city = 'x'").unwrap();
        assert!(plans[0].result.is_none());
    }

    #[test]
    fn refusals_name_their_reason() {
        assert_eq!(
            refused("support", "SELECT lower(email) FROM customers"),
            Code::DerivedDenied
        );
        assert_eq!(
            refused("support", "SELECT notes FROM visits"),
            Code::ColumnDenied
        );
        assert_eq!(
            refused("support", "SELECT id FROM customers WHERE ssn LIKE '1%'"),
            Code::FilterDenied
        );
        assert_eq!(
            refused("support", "SELECT id FROM customers ORDER BY email"),
            Code::FilterDenied
        );
        assert_eq!(
            refused(
                "support",
                "SELECT email FROM customers UNION ALL SELECT phone FROM customers"
            ),
            Code::AmbiguousColumn
        );
        assert_eq!(
            refused("support", "CREATE TABLE x AS SELECT email FROM customers"),
            Code::WriteDenied
        );
        assert_eq!(refused("support", "SELECT * FROM nowhere"), Code::Unproven);
        assert_eq!(
            refused("auditor", "COPY customers TO STDOUT"),
            Code::StatementKindDenied
        );
        assert_eq!(
            refused("nobody", "SELECT email FROM customers"),
            Code::ColumnDenied
        );
    }

    #[test]
    fn filter_on_allows_the_column_itself_only() {
        for sql in [
            "SELECT id FROM customers WHERE email = 'a@b.c'",
            "SELECT id FROM customers WHERE email IN ('a', 'b') OR email IS NULL",
            "SELECT c.id FROM customers c JOIN customers d ON c.email = d.email",
            "SELECT id, email FROM customers ORDER BY 2",
        ] {
            assert!(decide("analyst", sql).is_ok(), "{sql}");
        }
        for sql in [
            "SELECT id FROM customers WHERE email::int = 1",
            "SELECT id FROM customers WHERE lower(email) = 'a'",
            "SELECT id FROM customers ORDER BY length(email)",
        ] {
            assert_eq!(refused("analyst", sql), Code::FilterDenied, "{sql}");
        }
        // Without filter_on, every comparison of a protected column is refused.
        for sql in [
            "SELECT email FROM customers INTERSECT SELECT 'a@b.c'",
            "SELECT email FROM customers EXCEPT SELECT 'a@b.c'",
            "SELECT DISTINCT ssn FROM customers",
            "SELECT id, ssn FROM customers ORDER BY (2)",
            "SELECT id, ssn FROM customers GROUP BY 1, 2",
        ] {
            assert_eq!(refused("support", sql), Code::FilterDenied, "{sql}");
        }
        assert_eq!(
            refused(
                "analyst",
                "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql"
            ),
            Code::StatementKindDenied
        );
        assert_eq!(
            refused(
                "analyst",
                "SELECT id FROM customers WHERE id OPERATOR(public.=) 1"
            ),
            Code::NotBuiltin
        );
    }

    #[test]
    fn analyst_may_filter_on_email_but_not_ssn() {
        assert!(decide("analyst", "SELECT id FROM customers WHERE email = 'a@b.c'").is_ok());
        assert_eq!(
            refused("analyst", "SELECT id FROM customers WHERE ssn = '1'"),
            Code::FilterDenied
        );
    }

    #[test]
    fn fetch_needs_a_declared_cursor() {
        assert_eq!(refused("support", "FETCH 10 FROM c"), Code::Unproven);
        let policy = Policy::from_yaml(&POLICY, "demo.yaml").unwrap();
        let view = policy.for_role("support", &[]);
        let cat = catalog();
        let declare =
            &crate::sql::analyze("DECLARE c CURSOR FOR SELECT email FROM customers", &cat)[0];
        let plan = plan_statement(declare, &view, &cat, &NamedPlans::default()).unwrap();
        let (kind, name) = plan.names.clone().unwrap();
        assert_eq!((kind, name.as_str()), (StatementKind::DeclareCursor, "c"));
        let mut named = NamedPlans::default();
        named.cursors.insert(name, plan.result.clone());
        let fetch = &crate::sql::analyze("FETCH 10 FROM c", &cat)[0];
        let f = plan_statement(fetch, &view, &cat, &named).unwrap();
        assert_eq!(f.result.unwrap().protected[0].index, 0);
    }

    #[test]
    fn auditor_gets_its_row_limit() {
        let plans = decide("auditor", "SELECT id FROM customers").unwrap();
        assert_eq!(
            plans[0]
                .result
                .as_ref()
                .unwrap()
                .row_limit
                .as_ref()
                .unwrap()
                .0,
            1000
        );
    }
}

#[cfg(test)]
mod activity_tests {
    use crate::policy::Policy;

    #[test]
    fn see_activity_composes_over_matching_rules() {
        let demo = include_str!("../../policies/demo.yaml");
        let rule = "support:   { pii: mask, financial: mask, health: deny }";
        let text = demo.replace(
            rule,
            "support:   { pii: mask, financial: mask, health: deny, see_activity: true }",
        );
        let policy = Policy::from_yaml(&text, "demo.yaml").unwrap();
        assert!(policy.for_role("support", &[]).see_activity());
        assert!(!policy.for_role("analyst", &[]).see_activity());
        // A group rule that says nothing does not object; one that says false does.
        let groups = ["app_admin".to_string()];
        assert!(policy.for_role("support", &groups).see_activity());
        let denied = text.replace(
            "app_admin: { default: clear }",
            "app_admin: { default: clear, see_activity: false }",
        );
        assert_ne!(denied, text);
        let denied = Policy::from_yaml(&denied, "demo.yaml").unwrap();
        assert!(!denied.for_role("support", &groups).see_activity());
        let plain = Policy::from_yaml(demo, "demo.yaml").unwrap();
        assert!(!plain.for_role("support", &[]).see_activity());
    }
}
