//! Statement-level analysis: kinds, DML targets and writes, COPY, cursors, PREPARE, EXPLAIN.
//!
//! Query lineage itself lives in [`super::lineage`]; this module decides, per statement, which
//! query produces the result rows, which values are stored somewhere, and what the statement
//! is for the policy.

use super::catalog::{Catalog, fold};
use super::lexer::{Kind, Token};
use super::lineage::{Analyzer, Col, extend_unique, split_name};
use super::types::{Clause, OutputColumn, ProblemKind, Source, StatementAnalysis, StatementKind};
use sqlparser::ast::{
    Assignment, AssignmentTarget, CopySource, CopyTarget, Expr, FromTable, ObjectName, OnInsert,
    Query, SelectItem, SetExpr, Statement, TableFactor, TableObject, TableWithJoins, Value, Visit,
    Visitor,
};
use std::ops::ControlFlow;

/// Analyses one parsed statement.
pub(crate) fn analyze_statement(statement: &Statement, catalog: &dyn Catalog) -> StatementAnalysis {
    let mut analyzer = Analyzer::new(catalog);
    let mut analysis = StatementAnalysis::new(StatementKind::Other);
    // Code-creating statements are decided on their kind alone (policy kind `code`).
    let kind = if creates_code(statement) {
        StatementKind::Code
    } else {
        dispatch(statement, &mut analyzer, &mut analysis)
    };
    check_objects(statement, &mut analyzer);
    analysis.kind = kind;
    analysis.is_ddl = analysis.is_ddl || kind == StatementKind::Ddl;
    analysis.uses = analyzer.uses;
    analysis.writes = analyzer.writes;
    analysis.write_targets = analyzer.write_targets;
    analysis.problems = analyzer.problems;
    analysis.parameters = max_parameter(statement);
    analysis
}

/// Notifications the statement sends with literal channel and payload.
pub(crate) fn literal_notifications(statement: &Statement) -> Vec<(String, String)> {
    let mut found = Vec::new();
    if let Statement::NOTIFY { channel, payload } = statement {
        found.push((fold(channel), payload.clone().unwrap_or_default()));
        return found;
    }
    let _ = sqlparser::ast::visit_expressions(statement, |e| {
        if let Expr::Function(f) = e {
            let (schema, name) = split_name(&f.name);
            if name == "pg_notify"
                && matches!(schema.as_deref(), None | Some("pg_catalog"))
                && let sqlparser::ast::FunctionArguments::List(list) = &f.args
                && let [a, b] = list.args.as_slice()
                && let (Some(channel), Some(payload)) = (literal_text(a), literal_text(b))
            {
                found.push((channel, payload));
            }
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

fn literal_text(arg: &sqlparser::ast::FunctionArg) -> Option<String> {
    use sqlparser::ast::{FunctionArg, FunctionArgExpr};
    let FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v))) = arg else {
        return None;
    };
    match &v.value {
        Value::SingleQuotedString(s) => Some(s.clone()),
        Value::DollarQuotedString(d) => Some(d.value.clone()),
        _ => None,
    }
}

fn outputs(cols: Vec<Col>) -> Vec<OutputColumn> {
    cols.into_iter()
        .map(|c| OutputColumn {
            name: c.name,
            sources: c.sources,
        })
        .collect()
}

fn dispatch(
    statement: &Statement,
    analyzer: &mut Analyzer,
    analysis: &mut StatementAnalysis,
) -> StatementKind {
    match statement {
        Statement::Query(query) => {
            let cols = analyzer.top_query(query);
            match select_into_target(query) {
                Some(target) => {
                    // SELECT INTO creates a table from the rows: a write, not a result.
                    let sources: Vec<Source> = cols.into_iter().flat_map(|c| c.sources).collect();
                    extend_unique(&mut analyzer.writes, sources);
                    analyzer.write_targets.push(target);
                    StatementKind::Ddl
                }
                None => {
                    analysis.outputs = outputs(cols);
                    StatementKind::Select
                }
            }
        }
        Statement::Insert(insert) => {
            insert_statement(insert, analyzer, analysis);
            StatementKind::Insert
        }
        Statement::Update(update) => {
            let mut scope_tables: Vec<TableWithJoins> = vec![update.table.clone()];
            if let Some(from) = &update.from {
                match from {
                    sqlparser::ast::UpdateTableFromKind::BeforeSet(tables)
                    | sqlparser::ast::UpdateTableFromKind::AfterSet(tables) => {
                        scope_tables.extend(tables.iter().cloned())
                    }
                }
            }
            target_of(&update.table.relation, analyzer);
            let returning = dml_scope(
                analyzer,
                &scope_tables,
                &update.assignments,
                update.selection.as_ref(),
                update.returning.as_deref(),
            );
            analysis.outputs = returning;
            StatementKind::Update
        }
        Statement::Delete(delete) => {
            let mut tables: Vec<TableWithJoins> = match &delete.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t.clone(),
            };
            for table in &tables {
                target_of(&table.relation, analyzer);
            }
            if let Some(using) = &delete.using {
                tables.extend(using.iter().cloned());
            }
            analysis.outputs = dml_scope(
                analyzer,
                &tables,
                &[],
                delete.selection.as_ref(),
                delete.returning.as_deref(),
            );
            StatementKind::Delete
        }
        Statement::Merge(merge) => {
            merge_statement(merge, analyzer);
            StatementKind::Merge
        }
        Statement::Copy {
            source,
            to,
            target,
            options,
            legacy_options,
            ..
        } => {
            match super::copy::CopyFormat::from_options(options, legacy_options) {
                Ok(format) => analysis.copy = Some(format),
                Err(why) => analyzer.problem(ProblemKind::CopyOption, why),
            }
            copy_statement(source, *to, target, analyzer, analysis);
            StatementKind::Copy
        }
        Statement::Declare { stmts } => {
            let mut kind = StatementKind::Utility;
            for declare in stmts {
                if let Some(query) = &declare.for_query {
                    analysis.name = declare.names.first().map(fold);
                    analysis.outputs = outputs(analyzer.top_query(query));
                    analysis.inner_kind = Some(StatementKind::Select);
                    kind = StatementKind::DeclareCursor;
                }
            }
            kind
        }
        Statement::Fetch { name, .. } => {
            analysis.name = Some(fold(name));
            StatementKind::Fetch
        }
        Statement::Close { cursor } => {
            if let sqlparser::ast::CloseCursor::Specific { name } = cursor {
                analysis.name = Some(fold(name));
            }
            StatementKind::Utility
        }
        Statement::Prepare {
            name, statement, ..
        } => {
            let inner = analyze_statement(statement, analyzer_catalog(analyzer));
            analyzer.absorb(&inner);
            analysis.name = Some(fold(name));
            analysis.inner_kind = Some(inner.kind);
            analysis.outputs = inner.outputs;
            analysis.is_ddl = inner.is_ddl;
            StatementKind::Prepare
        }
        Statement::Execute {
            name, parameters, ..
        } => {
            analysis.name = name.as_ref().map(|n| split_name(n).1);
            let scope_free = analyzer_catalog(analyzer);
            let mut args = Analyzer::new(scope_free);
            for parameter in parameters {
                let _ = args.expr_top(parameter);
            }
            for problem in args.problems {
                analyzer.problem(problem.kind, problem.message);
            }
            StatementKind::Execute
        }
        Statement::Deallocate { name, .. } => {
            analysis.name = Some(fold(name));
            StatementKind::Utility
        }
        Statement::Explain { statement, .. } => {
            // EXPLAIN returns a plan, not data; but ANALYZE executes the statement and its row
            // counts and filter statistics leak, so the inner outputs count as uses.
            let inner = analyze_statement(statement, analyzer_catalog(analyzer));
            analyzer.absorb(&inner);
            let sources: Vec<Source> = inner
                .outputs
                .iter()
                .flat_map(|o| o.sources.clone())
                .collect();
            for source in sources {
                let used = super::types::Use {
                    direct: source.passthrough,
                    column: source.column,
                    clause: Clause::Explain,
                    allowance: None,
                };
                if !analyzer.uses.contains(&used) {
                    analyzer.uses.push(used);
                }
            }
            analysis.inner_kind = Some(inner.kind);
            analysis.outputs = vec![OutputColumn {
                name: "QUERY PLAN".into(),
                sources: Vec::new(),
            }];
            StatementKind::Explain
        }
        Statement::Call(function) => {
            analyzer.problem(
                ProblemKind::ProceduralCode,
                format!(
                    "CALL {} runs a procedure the analyser cannot see",
                    function.name
                ),
            );
            StatementKind::Call
        }
        Statement::CreateTable(create) => {
            if let Some(query) = &create.query {
                let cols = analyzer.top_query(query);
                let sources: Vec<Source> = cols.into_iter().flat_map(|c| c.sources).collect();
                extend_unique(&mut analyzer.writes, sources);
                analyzer.write_targets.push(create.name.to_string());
            }
            StatementKind::Ddl
        }
        Statement::CreateView(view) => {
            let cols = analyzer.top_query(&view.query);
            if view.materialized {
                // A materialized view stores the rows now.
                let sources: Vec<Source> = cols.into_iter().flat_map(|c| c.sources).collect();
                extend_unique(&mut analyzer.writes, sources);
                analyzer.write_targets.push(view.name.to_string());
            }
            StatementKind::Ddl
        }
        Statement::Case(_)
        | Statement::If(_)
        | Statement::While(_)
        | Statement::Raise(_)
        | Statement::Return(_) => {
            analyzer.problem(ProblemKind::ProceduralCode, "procedural statement");
            StatementKind::Other
        }
        other => classify_by_keyword(&other.to_string(), analyzer),
    }
}

/// Lets nested statements (PREPARE, EXPLAIN) reuse the catalog.
fn analyzer_catalog<'c>(analyzer: &Analyzer<'c>) -> &'c dyn Catalog {
    analyzer.catalog()
}

/// Kind of a statement we do not model, from its leading keyword.
pub(crate) fn classify_by_keyword(sql: &str, analyzer: &mut Analyzer) -> StatementKind {
    let keyword = sql
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    match keyword_kind(&keyword) {
        Some(kind) => kind,
        None => {
            analyzer.problem(
                ProblemKind::Unsupported,
                format!("{keyword} statements are not analysed"),
            );
            StatementKind::Other
        }
    }
}

/// Statement kind from the first keyword, for statements without a dedicated rule (and for
/// statements sqlparser cannot parse).
pub(crate) fn keyword_kind(keyword: &str) -> Option<StatementKind> {
    Some(match keyword {
        "CREATE" | "ALTER" | "DROP" | "GRANT" | "REVOKE" | "COMMENT" | "REINDEX" | "CLUSTER"
        | "REFRESH" | "SECURITY" | "IMPORT" | "RENAME" => StatementKind::Ddl,
        "SET" | "RESET" | "SHOW" | "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT"
        | "SAVEPOINT" | "RELEASE" | "LISTEN" | "UNLISTEN" | "NOTIFY" | "DISCARD" | "DEALLOCATE"
        | "CLOSE" | "LOCK" | "VACUUM" | "ANALYZE" | "CHECKPOINT" | "LOAD" | "USE" | "PREPARE" => {
            StatementKind::Utility
        }
        "TRUNCATE" => StatementKind::Other,
        "SELECT" | "WITH" | "VALUES" | "TABLE" => StatementKind::Select,
        "INSERT" => StatementKind::Insert,
        "UPDATE" => StatementKind::Update,
        "DELETE" => StatementKind::Delete,
        "MERGE" => StatementKind::Merge,
        "COPY" => StatementKind::Copy,
        "EXPLAIN" => StatementKind::Explain,
        "DECLARE" => StatementKind::DeclareCursor,
        "FETCH" | "MOVE" => StatementKind::Fetch,
        "EXECUTE" => StatementKind::Execute,
        "CALL" => StatementKind::Call,
        _ => return None,
    })
}

fn select_into_target(query: &Query) -> Option<String> {
    match query.body.as_ref() {
        SetExpr::Select(select) => select.into.as_ref().map(|into| {
            into.targets
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(",")
        }),
        _ => None,
    }
}

fn target_of(factor: &TableFactor, analyzer: &mut Analyzer) {
    if let TableFactor::Table { name, .. } = factor {
        analyzer.write_targets.push(relation_key(name, analyzer));
    }
}

/// `schema.table` for a written relation, as the catalog resolves it.
fn relation_key(name: &ObjectName, analyzer: &Analyzer) -> String {
    let (schema, table) = split_name(name);
    match analyzer.catalog().relation(schema.as_deref(), &table) {
        Some(relation) => format!("{}.{}", relation.schema, relation.name),
        None => name.to_string(),
    }
}

/// UPDATE and DELETE: the target plus FROM/USING tables form one scope for SET values
/// (writes), WHERE (uses) and RETURNING (outputs).
fn dml_scope(
    analyzer: &mut Analyzer,
    tables: &[TableWithJoins],
    assignments: &[Assignment],
    selection: Option<&Expr>,
    returning: Option<&[SelectItem]>,
) -> Vec<OutputColumn> {
    let mut select = empty_select();
    select.from = tables.to_vec();
    select.selection = selection.cloned();
    // Assignment values are evaluated as extra select items so they share the scope; their
    // sources are writes, never results.
    let assignment_count = assignments.len();
    select.projection = assignments
        .iter()
        .map(|a| SelectItem::UnnamedExpr(a.value.clone()))
        .collect();
    select
        .projection
        .extend(returning.unwrap_or(&[]).iter().cloned());
    let query = query_of(select);
    let cols = analyzer.top_query(&query);
    let (written, returned) = cols.split_at(assignment_count.min(cols.len()));
    for col in written {
        extend_unique(&mut analyzer.writes, col.sources.clone());
    }
    outputs(returned.to_vec())
}

fn insert_statement(
    insert: &sqlparser::ast::Insert,
    analyzer: &mut Analyzer,
    analysis: &mut StatementAnalysis,
) {
    let table_name = match &insert.table {
        TableObject::TableName(name) => name.clone(),
        other => {
            analyzer.problem(ProblemKind::Unsupported, format!("INSERT INTO {other}"));
            return;
        }
    };
    analyzer
        .write_targets
        .push(relation_key(&table_name, analyzer));
    if let Some(source) = &insert.source {
        let cols = analyzer.top_query(source);
        let sources: Vec<Source> = cols.into_iter().flat_map(|c| c.sources).collect();
        extend_unique(&mut analyzer.writes, sources);
    }
    // The target, aliased as written (and as `excluded` for ON CONFLICT), is the scope of
    // ON CONFLICT DO UPDATE and RETURNING.
    let alias = insert.table_alias.as_ref().map(|a| a.alias.clone());
    let mut tables = vec![table_ref(&table_name, alias)];
    let (assignments, selection) = match &insert.on {
        Some(OnInsert::OnConflict(conflict)) => match &conflict.action {
            sqlparser::ast::OnConflictAction::DoUpdate(update) => {
                // `excluded` carries the proposed row: the values just written.
                let excluded = sqlparser::ast::Ident::new("excluded");
                tables.push(table_ref(&table_name, Some(excluded)));
                (update.assignments.clone(), update.selection.clone())
            }
            sqlparser::ast::OnConflictAction::DoNothing => (Vec::new(), None),
        },
        Some(OnInsert::DuplicateKeyUpdate(assignments)) => (assignments.clone(), None),
        Some(other) => {
            analyzer.problem(ProblemKind::Unsupported, format!("INSERT ...{other}"));
            (Vec::new(), None)
        }
        None => (Vec::new(), None),
    };
    if !insert.assignments.is_empty() {
        analyzer.problem(ProblemKind::Unsupported, "INSERT ... SET");
    }
    if assignments.is_empty() && selection.is_none() && insert.returning.is_none() {
        return;
    }
    // With ON CONFLICT, the target and `excluded` both resolve unqualified names; PostgreSQL
    // requires qualification there, so ambiguity problems cannot arise from valid SQL.
    let returning = dml_scope(
        analyzer,
        &tables[..1],
        &[],
        None,
        insert.returning.as_deref(),
    );
    if !assignments.is_empty() || selection.is_some() {
        let _ = dml_scope(analyzer, &tables, &assignments, selection.as_ref(), None);
    }
    analysis.outputs = returning;
}

fn merge_statement(merge: &sqlparser::ast::Merge, analyzer: &mut Analyzer) {
    target_of(&merge.table, analyzer);
    let tables = vec![
        TableWithJoins {
            relation: merge.table.clone(),
            joins: Vec::new(),
        },
        TableWithJoins {
            relation: merge.source.clone(),
            joins: Vec::new(),
        },
    ];
    // MERGE's ON is a join condition; WHEN predicates are conditions; SET and INSERT values
    // are writes. All are evaluated over target + source.
    let mut conditions: Vec<Expr> = vec![(*merge.on).clone()];
    let mut written: Vec<Expr> = Vec::new();
    for clause in &merge.clauses {
        conditions.extend(clause.predicate.iter().cloned());
        match &clause.action {
            sqlparser::ast::MergeAction::Update(update) => {
                if let sqlparser::ast::MergeUpdateKind::Set(assignments) = &update.kind {
                    written.extend(assignments.iter().map(|a| a.value.clone()));
                }
                conditions.extend(update.update_predicate.iter().cloned());
                conditions.extend(update.delete_predicate.iter().cloned());
            }
            sqlparser::ast::MergeAction::Insert(insert) => {
                if let sqlparser::ast::MergeInsertKind::Values(values) = &insert.kind {
                    written.extend(values.rows.iter().flat_map(|r| r.iter().cloned()));
                }
                conditions.extend(insert.insert_predicate.iter().cloned());
            }
            _ => {}
        }
    }
    let assignments: Vec<Assignment> = written
        .into_iter()
        .map(|value| Assignment {
            target: AssignmentTarget::ColumnName(ObjectName::from(vec![])),
            value,
        })
        .collect();
    let mut condition = None;
    for expr in conditions {
        condition = Some(match condition {
            None => expr,
            Some(left) => Expr::BinaryOp {
                left: Box::new(left),
                op: sqlparser::ast::BinaryOperator::And,
                right: Box::new(Nested(expr)),
            },
        });
    }
    let before = analyzer.uses.len();
    let _ = dml_scope(analyzer, &tables, &assignments, condition.as_ref(), None);
    // The ON condition decides which rows match: a join use, like every MERGE condition.
    for used in &mut analyzer.uses[before..] {
        if used.clause == Clause::Where {
            used.clause = Clause::JoinOn;
        }
    }
}

#[allow(non_snake_case)]
fn Nested(expr: Expr) -> Expr {
    Expr::Nested(Box::new(expr))
}

fn copy_statement(
    source: &CopySource,
    to: bool,
    target: &CopyTarget,
    analyzer: &mut Analyzer,
    analysis: &mut StatementAnalysis,
) {
    match source {
        CopySource::Table {
            table_name,
            columns,
        } => {
            if !to {
                // COPY FROM: data comes from the client, no result rows.
                analyzer
                    .write_targets
                    .push(relation_key(table_name, analyzer));
                return;
            }
            let mut select = empty_select();
            select.projection = if columns.is_empty() {
                vec![SelectItem::Wildcard(
                    sqlparser::ast::WildcardAdditionalOptions::default(),
                )]
            } else {
                columns
                    .iter()
                    .map(|c| SelectItem::UnnamedExpr(Expr::Identifier(c.clone())))
                    .collect()
            };
            select.from = vec![table_ref(table_name, None)];
            analysis.outputs = outputs(analyzer.top_query(&query_of(select)));
        }
        CopySource::Query(query) => {
            analysis.outputs = outputs(analyzer.top_query(query));
        }
    }
    match target {
        CopyTarget::File { .. } | CopyTarget::Program { .. } => {
            analyzer.problem(
                ProblemKind::ServerSideCopy,
                "COPY TO a server file or program: the proxy never sees the rows to protect them",
            );
            let sources: Vec<Source> = analysis.outputs.drain(..).flat_map(|o| o.sources).collect();
            extend_unique(&mut analyzer.writes, sources);
        }
        CopyTarget::Stdout | CopyTarget::Stdin => {}
    }
}

/// `FROM name [AS alias]` for statements we analyse as a SELECT over their target.
fn table_ref(name: &ObjectName, alias: Option<sqlparser::ast::Ident>) -> TableWithJoins {
    TableWithJoins {
        relation: TableFactor::Table {
            name: name.clone(),
            alias: alias.map(|name| sqlparser::ast::TableAlias {
                explicit: true,
                name,
                columns: Vec::new(),
                at: None,
            }),
            args: None,
            with_hints: Vec::new(),
            version: None,
            with_ordinality: false,
            partitions: Vec::new(),
            json_path: None,
            sample: None,
            index_hints: Vec::new(),
        },
        joins: Vec::new(),
    }
}

fn empty_select() -> sqlparser::ast::Select {
    let dialect = sqlparser::dialect::PostgreSqlDialect {};
    // Parsing a constant is the least fragile way to build sqlparser's large Select struct.
    match sqlparser::parser::Parser::parse_sql(&dialect, "SELECT 1")
        .ok()
        .and_then(|mut s| s.pop())
    {
        Some(Statement::Query(query)) => match *query.body {
            SetExpr::Select(select) => {
                let mut select = *select;
                select.projection.clear();
                select
            }
            _ => unreachable_select(),
        },
        _ => unreachable_select(),
    }
}

fn unreachable_select() -> sqlparser::ast::Select {
    unreachable!("sqlparser parses the constant \"SELECT 1\"")
}

fn query_of(select: sqlparser::ast::Select) -> Query {
    Query {
        with: None,
        body: Box::new(SetExpr::Select(Box::new(select))),
        order_by: None,
        limit_clause: None,
        fetch: None,
        locks: Vec::new(),
        for_clause: None,
        settings: None,
        format_clause: None,
        pipe_operators: Vec::new(),
    }
}

/// The highest `$n` placeholder in a statement.
fn max_parameter(statement: &Statement) -> usize {
    struct Placeholders(usize);
    impl Visitor for Placeholders {
        type Break = ();
        fn pre_visit_value(&mut self, value: &sqlparser::ast::ValueWithSpan) -> ControlFlow<()> {
            if let Value::Placeholder(text) = &value.value
                && let Some(n) = text.strip_prefix('$').and_then(|n| n.parse::<usize>().ok())
            {
                self.0 = self.0.max(n);
            }
            ControlFlow::Continue(())
        }
    }
    let mut placeholders = Placeholders(0);
    let _ = statement.visit(&mut placeholders);
    placeholders.0
}

// ------------------------------------------------------------------ code the analyser never sees

/// True for statements that create or change objects whose code runs later, in statements
/// that never name it: functions, procedures, operators, types, domains, casts, aggregates,
/// triggers, rules, views, policies, event triggers, conversions, extensions, schemas (which
/// shadow `public` through `$user`), LOAD, and tables, columns or indexes with non-constant
/// DEFAULT, CHECK, GENERATED or index expressions, or columns of non-built-in types (a domain
/// runs its CHECK). Plain tables (temp ones too), sequences and indexes on columns are not code.
pub(crate) fn creates_code(statement: &Statement) -> bool {
    use sqlparser::ast::{AlterTableOperation as Alter, ColumnOption, TableConstraint};
    let column_is_code = |def: &sqlparser::ast::ColumnDef| {
        !is_builtin_type(&def.data_type)
            || def.options.iter().any(|o| match &o.option {
                ColumnOption::Default(expr) => !is_builtin_expression(expr),
                ColumnOption::Check(check) => !is_builtin_expression(&check.expr),
                ColumnOption::Generated {
                    generation_expr, ..
                } => generation_expr.is_some(),
                ColumnOption::Null
                | ColumnOption::NotNull
                | ColumnOption::PrimaryKey(_)
                | ColumnOption::Unique(_)
                | ColumnOption::ForeignKey(_)
                | ColumnOption::Collation(_)
                | ColumnOption::Comment(_)
                | ColumnOption::Identity(_) => false,
                _ => true,
            })
    };
    match statement {
        Statement::CreateTable(create) => {
            // LIKE ... INCLUDING DEFAULTS, INHERITS and PARTITION OF take over another
            // table's defaults, checks or triggers: code the statement does not show.
            create.like.is_some()
                || create.clone.is_some()
                || create.inherits.is_some()
                || create.partition_of.is_some()
                || create.columns.iter().any(column_is_code)
                || create.constraints.iter().any(|c| match c {
                    TableConstraint::Check(check) => !is_builtin_expression(&check.expr),
                    _ => false,
                })
        }
        Statement::CreateIndex(index) => {
            index.predicate.is_some()
                || index
                    .columns
                    .iter()
                    .any(|c| !matches!(c.column.expr, Expr::Identifier(_)))
        }
        Statement::AlterTable(alter) => alter.operations.iter().any(|op| match op {
            Alter::AddColumn { column_def, .. } => column_is_code(column_def),
            Alter::DropColumn { .. }
            | Alter::RenameColumn { .. }
            | Alter::RenameTable { .. }
            | Alter::DropConstraint { .. }
            | Alter::RenameConstraint { .. } => false,
            Alter::AlterColumn { op, .. } => !matches!(
                op,
                sqlparser::ast::AlterColumnOperation::SetNotNull
                    | sqlparser::ast::AlterColumnOperation::DropNotNull
                    | sqlparser::ast::AlterColumnOperation::DropDefault
            ),
            _ => true,
        }),
        Statement::CreateSequence { .. }
        | Statement::CreateRole(_)
        | Statement::CreateDatabase { .. }
        | Statement::AlterIndex { .. } => false,
        // A role's own settings (`ALTER ROLE me SET search_path = …`) change how names
        // resolve in its later sessions: code. Renames, members and options are not.
        Statement::AlterRole { operation, .. } => !matches!(
            operation,
            sqlparser::ast::AlterRoleOperation::RenameRole { .. }
                | sqlparser::ast::AlterRoleOperation::AddMember { .. }
                | sqlparser::ast::AlterRoleOperation::DropMember { .. }
                | sqlparser::ast::AlterRoleOperation::WithOptions { .. }
        ),
        Statement::Query(_)
        | Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_)
        | Statement::Merge(_) => false,
        other => {
            let text = other.to_string();
            let mut words = text.split_whitespace().map(str::to_ascii_uppercase);
            matches!(
                words.next().as_deref(),
                Some("CREATE" | "ALTER" | "LOAD" | "IMPORT")
            )
        }
    }
}

/// A DEFAULT that runs no code: a literal, a signed number, NULL.
/// A DEFAULT or CHECK expression that runs no user code and sends nothing anywhere: no
/// subquery, every function a traceable built-in (not a sink or data-reaching one, see
/// [`super::functions`]), every cast to a built-in type (a domain's CHECK is code). Such an
/// expression is judged like any statement's, not as creating code.
fn is_builtin_expression(expr: &Expr) -> bool {
    use super::functions::{FunctionClass, classify};
    let verdict = sqlparser::ast::visit_expressions(expr, |e| {
        let ok = match e {
            Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => false,
            Expr::Function(f) => {
                let (schema, name) = split_name(&f.name);
                // A setting differs between the sessions that will insert rows.
                name != "current_setting"
                    && classify(schema.as_deref(), &name) == FunctionClass::Traceable
            }
            Expr::Cast { data_type, .. } => is_builtin_type(data_type),
            _ => true,
        };
        if ok {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    });
    verdict.is_continue()
}

/// Built-in types (as sqlparser prints them, lower case, without modifiers or array
/// brackets). Anything else may be a domain (its CHECK runs code) or a user type whose input
/// function is user code. Unqualified names resolve to pg_catalog first unless the session's
/// search_path lists pg_catalog later (the session refuses that search_path).
const BUILTIN_TYPES: &[&str] = &[
    "smallint",
    "int2",
    "integer",
    "int",
    "int4",
    "bigint",
    "int8",
    "real",
    "float4",
    "double precision",
    "float8",
    "float",
    "numeric",
    "decimal",
    "dec",
    "money",
    "text",
    "varchar",
    "character varying",
    "char varying",
    "char",
    "character",
    "bpchar",
    "name",
    "bytea",
    "boolean",
    "bool",
    "date",
    "time",
    "timetz",
    "time with time zone",
    "time without time zone",
    "timestamp",
    "timestamptz",
    "timestamp with time zone",
    "timestamp without time zone",
    "interval",
    "json",
    "jsonb",
    "jsonpath",
    "uuid",
    "xml",
    "inet",
    "cidr",
    "macaddr",
    "macaddr8",
    "bit",
    "varbit",
    "bit varying",
    "tsvector",
    "tsquery",
    "point",
    "line",
    "lseg",
    "box",
    "path",
    "polygon",
    "circle",
    "int4range",
    "int8range",
    "numrange",
    "tsrange",
    "tstzrange",
    "daterange",
    "int4multirange",
    "int8multirange",
    "nummultirange",
    "tsmultirange",
    "tstzmultirange",
    "datemultirange",
    "oid",
    "regclass",
    "regtype",
    "regproc",
    "regprocedure",
    "regoper",
    "regoperator",
    "regnamespace",
    "regrole",
    "regconfig",
    "regdictionary",
    "regcollation",
    "xid",
    "xid8",
    "cid",
    "tid",
    "pg_lsn",
    "serial",
    "bigserial",
    "smallserial",
    "serial2",
    "serial4",
    "serial8",
    "txid_snapshot",
    "pg_snapshot",
    "unknown",
    "record",
];

pub(crate) fn is_builtin_type(data_type: &sqlparser::ast::DataType) -> bool {
    let printed = data_type.to_string().to_ascii_lowercase();
    // Drop modifiers `(10,2)` and array brackets `[]`, `[3]`.
    let mut plain = String::with_capacity(printed.len());
    let mut depth = 0usize;
    for c in printed.chars() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    let plain = plain.split_whitespace().collect::<Vec<_>>().join(" ");
    let plain = plain.strip_suffix(" array").unwrap_or(&plain);
    let name = plain.strip_prefix("pg_catalog.").unwrap_or(plain);
    BUILTIN_TYPES.contains(&name)
}

/// Every cast, typed literal and function call in the statement, wherever it is (also in
/// clauses the lineage does not walk): types must be built-ins, functions are classified as
/// the lineage classifies them.
fn check_objects(statement: &Statement, analyzer: &mut Analyzer) {
    struct Objects {
        types: Vec<String>,
        functions: Vec<ObjectName>,
    }
    impl Visitor for Objects {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            match expr {
                Expr::Cast { data_type, .. } if !is_builtin_type(data_type) => {
                    self.types.push(data_type.to_string());
                }
                Expr::TypedString(typed) if !is_builtin_type(&typed.data_type) => {
                    self.types.push(typed.data_type.to_string());
                }
                Expr::Function(function) => self.functions.push(function.name.clone()),
                _ => {}
            }
            ControlFlow::Continue(())
        }
    }
    let mut objects = Objects {
        types: Vec::new(),
        functions: Vec::new(),
    };
    let _ = statement.visit(&mut objects);
    for name in objects.types {
        analyzer.problem(
            ProblemKind::NotBuiltin,
            format!("type {name} is not a known built-in type (a domain or user type runs code)"),
        );
    }
    for name in objects.functions {
        let (schema, function) = split_name(&name);
        analyzer.check_function(schema.as_deref(), &function, &name);
    }
}

/// Built-in operator names (pg_operator.oprname in pg_catalog, PostgreSQL 13–18).
const BUILTIN_OPERATORS: &[&str] = &[
    "!=", "!~", "!~*", "!~~", "!~~*", "#", "##", "#-", "#>", "#>>", "%", "&", "&&", "&<", "&<|",
    "&>", "*", "*<", "*<=", "*<>", "*=", "*>", "*>=", "+", "-", "->", "->>", "-|-", "/", "<",
    "<#>", "<->", "<<", "<<=", "<<|", "<=", "<>", "<@", "<^", "=", ">", ">=", ">>", ">>=", ">^",
    "?", "?#", "?&", "?-", "?-|", "?|", "?||", "@", "@-@", "@>", "@?", "@@", "@@@", "^", "^@", "|",
    "|&>", "|/", "|>>", "||", "||/", "~", "~*", "~<=~", "~<~", "~=", "~>=~", "~>~", "~~", "~~*",
];

/// Token-level checks on the text PostgreSQL will run: every operator is a built-in name, and
/// `OPERATOR(...)` names one in pg_catalog. A user-defined operator (in pg_temp, the role's
/// schema, or anywhere on the search_path) runs a function the analyser never sees.
pub(crate) fn check_tokens(text: &str, tokens: &[Token], analysis: &mut StatementAnalysis) {
    // COPY options are read from sqlparser's decoded literals: accept only literals whose
    // value is their text between quotes, so PostgreSQL and sqlparser cannot decode them
    // differently (E'\x7c', U&'…', backslashes under either standard_conforming_strings).
    if analysis.kind == StatementKind::Copy
        && tokens.iter().any(|t| {
            let literal = t.text(text).as_bytes();
            t.kind == Kind::String && (literal.first() != Some(&b'\'') || literal.contains(&b'\\'))
        })
    {
        let p = super::types::Problem {
            kind: ProblemKind::CopyOption,
            message: "COPY with a literal other than a plain '...' string without backslashes"
                .into(),
        };
        if !analysis.problems.contains(&p) {
            analysis.problems.push(p);
        }
    }
    let mut problem = |message: String| {
        let p = super::types::Problem {
            kind: ProblemKind::NotBuiltin,
            message,
        };
        if !analysis.problems.contains(&p) {
            analysis.problems.push(p);
        }
    };
    let mut i = 0;
    while i < tokens.len() {
        let token = tokens[i];
        let word = token.text(text);
        if token.kind == Kind::Op && !matches!(word, "::" | ":=" | "=>") {
            if !BUILTIN_OPERATORS.contains(&word) {
                problem(format!("operator {word} is not a built-in operator"));
            }
        } else if token.is_word(text, "operator")
            && tokens.get(i + 1).is_some_and(|t| t.is_punct(text, "("))
        {
            let close = tokens[i + 1..]
                .iter()
                .position(|t| t.is_punct(text, ")"))
                .map_or(tokens.len(), |p| i + 1 + p);
            let inner: Vec<&str> = tokens[i + 2..close].iter().map(|t| t.text(text)).collect();
            let builtin = match inner.as_slice() {
                [op] => BUILTIN_OPERATORS.contains(op),
                [schema, ".", op] => {
                    schema.eq_ignore_ascii_case("pg_catalog") && BUILTIN_OPERATORS.contains(op)
                }
                _ => false,
            };
            if !builtin {
                problem(format!(
                    "OPERATOR({}) is not a pg_catalog built-in operator",
                    inner.join("")
                ));
            }
            i = close;
        }
        i += 1;
    }
}
