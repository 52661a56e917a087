//! Query lineage: which source columns reach each output column, and where columns are used.
//!
//! The [`Analyzer`] walks a query bottom-up with explicit scopes (FROM items, outer queries for
//! correlated subqueries, CTE frames). Every visible column carries its own `Vec<Source>`, so a
//! column of a subquery, CTE or view already knows the base columns behind it. Expressions
//! combine those: bare references and CASE branches keep them passthrough; anything else marks
//! them derived through the outermost operator. Whatever cannot be resolved becomes a
//! [`Problem`], never a silent omission.

use super::catalog::{Catalog, RelationKind, fold};
use super::functions::{self, FunctionClass};
use super::types::{Clause, DerivedUse, Problem, ProblemKind, Source, Use};
use sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentClause, FunctionArguments,
    GroupByExpr, JoinConstraint, JoinOperator, ObjectName, OrderBy, OrderByExpr, OrderByKind,
    Query, Select, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, SetOperator, Statement,
    TableAlias, TableFactor, TableWithJoins, Value, Visit, Visitor, WindowType,
};
use std::collections::HashMap;
use std::ops::ControlFlow;

/// Views nest at most this deep; beyond it (or on a cycle) the view is unresolved.
const MAX_VIEW_DEPTH: usize = 16;
/// Recursive CTEs are re-evaluated until their sources stop growing, at most this many times.
const MAX_RECURSIVE_PASSES: usize = 8;
/// Recursive walks grow their stack by this much when less than the red zone is left.
const STACK_RED_ZONE: usize = 256 << 10;
const STACK_GROWTH: usize = 8 << 20;

/// A column visible in a scope, with the base columns behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Col {
    pub name: String,
    pub sources: Vec<Source>,
}

/// A FROM item: a table, view, CTE, subquery or function result.
#[derive(Debug, Clone)]
struct Rel {
    /// The name that qualifies its columns (alias, or the relation's own name).
    alias: String,
    /// `(schema, name)` of a catalog relation referenced without alias, for `schema.t.col`.
    qualified: Option<(String, String)>,
    cols: Vec<Col>,
}

/// One level of name resolution; `parent` is the enclosing query (or the FROM items to the left,
/// for LATERAL).
struct Scope<'p> {
    rels: Vec<Rel>,
    /// Columns merged by JOIN ... USING / NATURAL: unqualified references are not ambiguous.
    merged: Vec<String>,
    parent: Option<&'p Scope<'p>>,
}

impl<'p> Scope<'p> {
    fn new(parent: Option<&'p Scope<'p>>) -> Self {
        Self {
            rels: Vec::new(),
            merged: Vec::new(),
            parent,
        }
    }
}

/// Walks statements and accumulates uses, writes and problems.
pub(crate) struct Analyzer<'c> {
    catalog: &'c dyn Catalog,
    /// CTE frames, innermost last.
    ctes: Vec<Vec<(String, Vec<Col>)>>,
    /// Views being expanded (cycle detection).
    view_stack: Vec<String>,
    /// Views already expanded in this statement.
    view_cache: HashMap<String, Vec<Col>>,
    pub uses: Vec<Use>,
    pub writes: Vec<Source>,
    pub write_targets: Vec<String>,
    pub problems: Vec<Problem>,
}

impl<'c> Analyzer<'c> {
    pub fn new(catalog: &'c dyn Catalog) -> Self {
        Self {
            catalog,
            ctes: Vec::new(),
            view_stack: Vec::new(),
            view_cache: HashMap::new(),
            uses: Vec::new(),
            writes: Vec::new(),
            write_targets: Vec::new(),
            problems: Vec::new(),
        }
    }

    pub fn catalog(&self) -> &'c dyn Catalog {
        self.catalog
    }

    /// The sources of an expression outside any FROM scope (EXECUTE arguments).
    pub fn expr_top(&mut self, expr: &Expr) -> Vec<Source> {
        let scope = Scope::new(None);
        self.expr(expr, &scope)
    }

    pub fn problem(&mut self, kind: ProblemKind, message: impl Into<String>) {
        let problem = Problem {
            kind,
            message: message.into(),
        };
        if !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }

    /// Records uses of `sources` in `clause`: direct for a column compared as itself
    /// (passthrough), indirect for a value derived from it.
    fn add_uses(&mut self, sources: &[Source], clause: Clause) {
        for source in sources {
            self.push_use(Use {
                column: source.column.clone(),
                clause,
                direct: source.passthrough,
                allowance: source.allowance,
            });
        }
    }

    /// Arguments of a sink function: never direct, so any protected column is refused.
    fn side_channel(&mut self, sources: &[Source]) {
        for source in sources {
            self.add_use(&source.column, Clause::SideChannel, false);
        }
    }

    fn add_use(&mut self, column: &str, clause: Clause, direct: bool) {
        self.push_use(Use {
            column: column.to_owned(),
            clause,
            direct,
            allowance: None,
        });
    }

    fn push_use(&mut self, used: Use) {
        if !self.uses.contains(&used) {
            self.uses.push(used);
        }
    }

    /// Records every source as an indirect use (an expression over the column is compared).
    fn add_indirect_uses(&mut self, sources: &[Source], clause: Clause) {
        for source in sources {
            self.add_use(&source.column, clause, false);
        }
    }

    /// A sort or grouping key (window PARTITION/ORDER BY, aggregate ORDER BY, CASE operand):
    /// the column itself is a direct use, an expression over it an indirect one.
    fn sort_key(&mut self, expr: &Expr, scope: &Scope, clause: Clause) {
        let sources = self.expr(expr, scope);
        self.add_uses(&sources, clause);
    }

    /// A condition (WHERE, HAVING, JOIN ON, CASE WHEN, FILTER, LIMIT): through AND/OR/NOT, the
    /// operands of comparisons are direct uses when they are the column itself; any other
    /// expression's columns are indirect uses.
    fn predicate(&mut self, expr: &Expr, scope: &Scope, clause: Clause) {
        stacker::maybe_grow(STACK_RED_ZONE, STACK_GROWTH, || {
            self.predicate_inner(expr, scope, clause)
        })
    }

    fn predicate_inner(&mut self, expr: &Expr, scope: &Scope, clause: Clause) {
        use sqlparser::ast::BinaryOperator as Op;
        match expr {
            Expr::Nested(inner) => self.predicate(inner, scope, clause),
            Expr::UnaryOp {
                op: sqlparser::ast::UnaryOperator::Not,
                expr,
            } => self.predicate(expr, scope, clause),
            Expr::BinaryOp {
                left,
                op: Op::And | Op::Or,
                right,
            } => {
                self.predicate(left, scope, clause);
                self.predicate(right, scope, clause);
            }
            Expr::BinaryOp {
                left,
                op: Op::Eq | Op::NotEq | Op::Lt | Op::LtEq | Op::Gt | Op::GtEq,
                right,
            } => {
                self.sort_key(left, scope, clause);
                self.sort_key(right, scope, clause);
            }
            Expr::IsNull(_) | Expr::IsNotNull(_) => {
                // `col IS [NOT] NULL` is a direct use, and the named derived use `is_null`.
                let (Expr::IsNull(e) | Expr::IsNotNull(e)) = expr else {
                    return;
                };
                let named = is_column_ref(e);
                for s in self.expr(e, scope) {
                    self.push_use(Use {
                        allowance: if named && s.passthrough {
                            Some(DerivedUse::IsNull)
                        } else {
                            s.allowance
                        },
                        direct: s.passthrough,
                        column: s.column,
                        clause,
                    });
                }
            }
            Expr::IsDistinctFrom(a, b) | Expr::IsNotDistinctFrom(a, b) => {
                self.sort_key(a, scope, clause);
                self.sort_key(b, scope, clause);
            }
            Expr::InList { expr, list, .. } => {
                self.sort_key(expr, scope, clause);
                for item in list {
                    self.sort_key(item, scope, clause);
                }
            }
            Expr::InSubquery { expr, subquery, .. } => {
                self.sort_key(expr, scope, clause);
                let cols = self.query(subquery, Some(scope));
                let sources: Vec<Source> = cols.into_iter().flat_map(|c| c.sources).collect();
                self.add_uses(&sources, clause);
            }
            Expr::Between {
                expr, low, high, ..
            } => {
                for e in [expr, low, high] {
                    self.sort_key(e, scope, clause);
                }
            }
            Expr::Like {
                expr,
                pattern,
                escape_char: None,
                any: false,
                ..
            }
            | Expr::ILike {
                expr,
                pattern,
                escape_char: None,
                any: false,
                ..
            } => {
                self.sort_key(expr, scope, clause);
                self.sort_key(pattern, scope, clause);
            }
            Expr::AnyOp {
                left,
                compare_op: Op::Eq | Op::NotEq | Op::Lt | Op::LtEq | Op::Gt | Op::GtEq,
                right,
                ..
            }
            | Expr::AllOp {
                left,
                compare_op: Op::Eq | Op::NotEq | Op::Lt | Op::LtEq | Op::Gt | Op::GtEq,
                right,
            } => {
                self.sort_key(left, scope, clause);
                match right.as_ref() {
                    Expr::Subquery(query) => {
                        let cols = self.query(query, Some(scope));
                        let sources: Vec<Source> =
                            cols.into_iter().flat_map(|c| c.sources).collect();
                        self.add_uses(&sources, clause);
                    }
                    other => self.sort_key(other, scope, clause),
                }
            }
            _ => {
                let sources = self.expr(expr, scope);
                self.add_indirect_uses(&sources, clause);
            }
        }
    }

    /// Every output of a set operation or DISTINCT is compared.
    fn compare_rows(&mut self, cols: &[Col], clause: Clause) {
        let sources: Vec<Source> = cols.iter().flat_map(|c| c.sources.clone()).collect();
        self.add_uses(&sources, clause);
    }

    // ---------------------------------------------------------------- queries

    /// The output columns of a query evaluated inside `parent` (None at top level).
    /// The output columns of a top-level query (no enclosing scope).
    pub fn top_query(&mut self, query: &Query) -> Vec<Col> {
        self.query(query, None)
    }

    fn query(&mut self, query: &Query, parent: Option<&Scope>) -> Vec<Col> {
        stacker::maybe_grow(STACK_RED_ZONE, STACK_GROWTH, || {
            self.query_inner(query, parent)
        })
    }

    fn query_inner(&mut self, query: &Query, parent: Option<&Scope>) -> Vec<Col> {
        let pushed = if let Some(with) = &query.with {
            self.ctes.push(Vec::new());
            for cte in &with.cte_tables {
                let name = fold(&cte.alias.name);
                let cols = if with.recursive {
                    self.recursive_cte(&name, &cte.query, &cte.alias, parent)
                } else {
                    let cols = self.query(&cte.query, parent);
                    self.rename_columns(cols, &cte.alias)
                };
                if let Some(frame) = self.ctes.last_mut() {
                    frame.push((name, cols));
                }
            }
            true
        } else {
            false
        };

        let cols = self.set_expr(&query.body, parent, query.order_by.as_ref());
        let limit_scope = Scope::new(parent);
        if let Some(limit) = &query.limit_clause {
            let mut limit_exprs = Vec::new();
            match limit {
                sqlparser::ast::LimitClause::LimitOffset {
                    limit,
                    offset,
                    limit_by,
                } => {
                    limit_exprs.extend(limit.iter());
                    limit_exprs.extend(offset.iter().map(|o| &o.value));
                    limit_exprs.extend(limit_by.iter());
                }
                sqlparser::ast::LimitClause::OffsetCommaLimit { offset, limit } => {
                    limit_exprs.push(offset);
                    limit_exprs.push(limit);
                }
            }
            for expr in limit_exprs {
                self.predicate(expr, &limit_scope, Clause::Limit);
            }
        }
        if let Some(fetch) = &query.fetch
            && let Some(quantity) = &fetch.quantity
        {
            self.predicate(quantity, &limit_scope, Clause::Limit);
        }
        if query.for_clause.is_some()
            || query.settings.is_some()
            || !query.pipe_operators.is_empty()
        {
            self.problem(ProblemKind::Unsupported, "non-PostgreSQL query clause");
        }
        if pushed {
            self.ctes.pop();
        }
        cols
    }

    /// A recursive CTE: its columns are the union of its branches, iterated to a fixpoint.
    fn recursive_cte(
        &mut self,
        name: &str,
        query: &Query,
        alias: &TableAlias,
        parent: Option<&Scope>,
    ) -> Vec<Col> {
        let SetExpr::SetOperation {
            left,
            right,
            op,
            set_quantifier,
        } = query.body.as_ref()
        else {
            // WITH RECURSIVE without a self-reference behaves like a plain CTE.
            let cols = self.query(query, parent);
            return self.rename_columns(cols, alias);
        };
        let seed = self.set_expr(left, parent, None);
        let mut cols = self.rename_columns(seed, alias);
        for _ in 0..MAX_RECURSIVE_PASSES {
            if let Some(frame) = self.ctes.last_mut() {
                frame.retain(|(n, _)| n != name);
                frame.push((name.to_owned(), cols.clone()));
            }
            let step = self.set_expr(right, parent, None);
            if compares_rows(*op, *set_quantifier) {
                self.compare_rows(&cols.clone(), Clause::SetOperation);
                self.compare_rows(&step, Clause::SetOperation);
            }
            let merged = self.union_columns(cols.clone(), step, *op);
            if merged == cols {
                break;
            }
            cols = merged;
        }
        if let Some(frame) = self.ctes.last_mut() {
            frame.retain(|(n, _)| n != name);
        }
        cols
    }

    fn union_columns(&mut self, left: Vec<Col>, right: Vec<Col>, op: SetOperator) -> Vec<Col> {
        if left.len() != right.len() {
            self.problem(
                ProblemKind::Unsupported,
                format!(
                    "{op} branches have {} and {} columns",
                    left.len(),
                    right.len()
                ),
            );
        }
        let mut cols = left;
        for (i, col) in right.into_iter().enumerate() {
            match cols.get_mut(i) {
                Some(existing) => {
                    for source in col.sources {
                        if !existing.sources.contains(&source) {
                            existing.sources.push(source);
                        }
                    }
                }
                None => cols.push(col),
            }
        }
        cols
    }

    fn set_expr(
        &mut self,
        body: &SetExpr,
        parent: Option<&Scope>,
        order_by: Option<&OrderBy>,
    ) -> Vec<Col> {
        stacker::maybe_grow(STACK_RED_ZONE, STACK_GROWTH, || {
            self.set_expr_inner(body, parent, order_by)
        })
    }

    fn set_expr_inner(
        &mut self,
        body: &SetExpr,
        parent: Option<&Scope>,
        order_by: Option<&OrderBy>,
    ) -> Vec<Col> {
        let cols = match body {
            SetExpr::Select(select) => return self.select(select, parent, order_by),
            SetExpr::Query(query) => self.query(query, parent),
            SetExpr::SetOperation {
                left,
                op,
                right,
                set_quantifier,
            } => {
                let left = self.set_expr(left, parent, None);
                let right = self.set_expr(right, parent, None);
                if compares_rows(*op, *set_quantifier) {
                    self.compare_rows(&left, Clause::SetOperation);
                    self.compare_rows(&right, Clause::SetOperation);
                }
                self.union_columns(left, right, *op)
            }
            SetExpr::Values(values) => {
                let scope = Scope::new(parent);
                let mut cols: Vec<Col> = Vec::new();
                for row in &values.rows {
                    for (i, expr) in row.iter().enumerate() {
                        let sources = self.expr(expr, &scope);
                        match cols.get_mut(i) {
                            Some(col) => extend_unique(&mut col.sources, sources),
                            None => cols.push(Col {
                                name: format!("column{}", i + 1),
                                sources,
                            }),
                        }
                    }
                }
                cols
            }
            SetExpr::Insert(statement)
            | SetExpr::Update(statement)
            | SetExpr::Delete(statement)
            | SetExpr::Merge(statement) => {
                self.problem(
                    ProblemKind::NestedWrite,
                    "data-modifying statement inside a query",
                );
                let nested = super::statements::analyze_statement(statement, self.catalog);
                self.absorb(&nested);
                nested
                    .outputs
                    .into_iter()
                    .map(|o| Col {
                        name: o.name,
                        sources: o.sources,
                    })
                    .collect()
            }
            SetExpr::Table(table) => {
                let name = table.table_name.clone().unwrap_or_default();
                let mut scope = Scope::new(parent);
                let object = ObjectName::from(vec![sqlparser::ast::Ident::new(name)]);
                self.table(&object, None, &mut scope);
                scope.rels.into_iter().flat_map(|r| r.cols).collect()
            }
        };
        if let Some(order_by) = order_by {
            // ORDER BY over a set operation sees only the output columns.
            let mut scope = Scope::new(parent);
            scope.rels.push(Rel {
                alias: String::new(),
                qualified: None,
                cols: cols.clone(),
            });
            self.order_by(order_by, &cols, &scope);
        }
        cols
    }

    /// Merges a nested statement's uses, writes and problems into this one.
    pub fn absorb(&mut self, nested: &super::StatementAnalysis) {
        for used in &nested.uses {
            if !self.uses.contains(used) {
                self.uses.push(used.clone());
            }
        }
        extend_unique(&mut self.writes, nested.writes.clone());
        for target in &nested.write_targets {
            if !self.write_targets.contains(target) {
                self.write_targets.push(target.clone());
            }
        }
        for problem in &nested.problems {
            self.problem(problem.kind, problem.message.clone());
        }
    }

    fn select(
        &mut self,
        select: &Select,
        parent: Option<&Scope>,
        order_by: Option<&OrderBy>,
    ) -> Vec<Col> {
        let mut scope = Scope::new(parent);
        for item in &select.from {
            self.add_from_item(item, &mut scope);
        }
        if let Some(selection) = &select.selection {
            self.predicate(selection, &scope, Clause::Where);
        }
        let outputs = self.projection(&select.projection, &scope);

        match &select.group_by {
            GroupByExpr::Expressions(exprs, _) => {
                for expr in exprs {
                    let sources = self.output_reference(expr, &outputs, &scope, false);
                    self.add_uses(&sources, Clause::GroupBy);
                }
            }
            GroupByExpr::All(_) => {
                let sources: Vec<Source> = outputs.iter().flat_map(|c| c.sources.clone()).collect();
                self.add_uses(&sources, Clause::GroupBy);
            }
        }
        if let Some(having) = &select.having {
            self.predicate(having, &scope, Clause::Having);
        }
        for window in &select.named_window {
            if let sqlparser::ast::NamedWindowExpr::WindowSpec(spec) = &window.1 {
                self.window_spec(spec, &scope);
            }
        }
        if let Some(sqlparser::ast::Distinct::Distinct) = &select.distinct {
            self.compare_rows(&outputs, Clause::Distinct);
        }
        if let Some(sqlparser::ast::Distinct::On(exprs)) = &select.distinct {
            for expr in exprs {
                let sources = self.output_reference(expr, &outputs, &scope, true);
                self.add_uses(&sources, Clause::DistinctOn);
            }
        }
        if select.prewhere.is_some()
            || select.qualify.is_some()
            || !select.connect_by.is_empty()
            || !select.cluster_by.is_empty()
            || !select.distribute_by.is_empty()
            || !select.sort_by.is_empty()
            || !select.lateral_views.is_empty()
            || select.top.is_some()
        {
            self.problem(ProblemKind::Unsupported, "non-PostgreSQL SELECT clause");
        }
        if let Some(order_by) = order_by {
            self.order_by(order_by, &outputs, &scope);
        }
        outputs
    }

    fn order_by(&mut self, order_by: &OrderBy, outputs: &[Col], scope: &Scope) {
        match &order_by.kind {
            OrderByKind::Expressions(exprs) => {
                for OrderByExpr { expr, .. } in exprs {
                    let sources = self.output_reference(expr, outputs, scope, true);
                    self.add_uses(&sources, Clause::OrderBy);
                }
            }
            OrderByKind::All(_) => {
                let sources: Vec<Source> = outputs.iter().flat_map(|c| c.sources.clone()).collect();
                self.add_uses(&sources, Clause::OrderBy);
            }
        }
    }

    /// Resolves an ORDER BY / GROUP BY / DISTINCT ON item: an ordinal names an output, a bare
    /// name may name an output (preferred in ORDER BY, a fallback in GROUP BY, as in
    /// PostgreSQL), anything else is an expression over the input.
    fn output_reference(
        &mut self,
        expr: &Expr,
        outputs: &[Col],
        scope: &Scope,
        prefer_output: bool,
    ) -> Vec<Source> {
        // PostgreSQL reads `(2)` as the constant 2: a position too.
        let mut bare = expr;
        while let Expr::Nested(inner) = bare {
            bare = inner;
        }
        if let Expr::GroupingSets(sets) | Expr::Cube(sets) | Expr::Rollup(sets) = bare {
            let mut sources = Vec::new();
            for item in sets.iter().flatten() {
                let found = self.output_reference(item, outputs, scope, prefer_output);
                extend_unique(&mut sources, found);
            }
            return sources;
        }
        if let Expr::Value(value) = bare
            && let Value::Number(n, _) = &value.value
        {
            return match n
                .parse::<usize>()
                .ok()
                .and_then(|i| outputs.get(i.wrapping_sub(1)))
            {
                Some(col) => col.sources.clone(),
                None => {
                    self.problem(
                        ProblemKind::UnknownColumn,
                        format!("position {n} is not in the select list"),
                    );
                    Vec::new()
                }
            };
        }
        if let Expr::Identifier(ident) = expr {
            let name = fold(ident);
            let output = outputs.iter().find(|c| c.name == name);
            if let Some(col) = output
                && (prefer_output || self.lookup_unqualified(scope, &name).is_none())
            {
                return col.sources.clone();
            }
        }
        self.expr(expr, scope)
    }

    fn projection(&mut self, items: &[SelectItem], scope: &Scope) -> Vec<Col> {
        let mut outputs = Vec::new();
        for item in items {
            match item {
                SelectItem::UnnamedExpr(expr) => outputs.push(Col {
                    name: output_name(expr),
                    sources: self.expr(expr, scope),
                }),
                SelectItem::ExprWithAlias { expr, alias } => {
                    if alias.quote_style == Some('\'') {
                        // PostgreSQL reads `name 'text'` as a typed literal, never an alias.
                        self.problem(
                            ProblemKind::Unsupported,
                            "a string used as a column alias (PostgreSQL reads it as a typed literal)",
                        );
                    }
                    outputs.push(Col {
                        name: fold(alias),
                        sources: self.expr(expr, scope),
                    })
                }
                SelectItem::ExprWithAliases { expr, aliases } => {
                    let sources = self.expr(expr, scope);
                    for alias in aliases {
                        outputs.push(Col {
                            name: fold(alias),
                            sources: sources.clone(),
                        });
                    }
                }
                SelectItem::Wildcard(_) => {
                    if scope.rels.is_empty() {
                        self.problem(ProblemKind::UnknownColumn, "SELECT * with no FROM clause");
                    }
                    outputs.extend(expand_star(scope));
                }
                SelectItem::QualifiedWildcard(kind, _) => match kind {
                    SelectItemQualifiedWildcardKind::ObjectName(name) => {
                        match self.find_rel(scope, name) {
                            Some(rel) => outputs.extend(rel.cols.clone()),
                            None => self.problem(
                                ProblemKind::UnknownRelation,
                                format!("{name}.* names no FROM item"),
                            ),
                        }
                    }
                    SelectItemQualifiedWildcardKind::Expr(expr) => {
                        // `(expr).*` expands a composite value into columns we cannot count.
                        self.problem(
                            ProblemKind::Unsupported,
                            format!("composite expansion ({expr}).*"),
                        );
                        let sources = derive(self.expr(expr, scope), "(...).*");
                        outputs.push(Col {
                            name: "?column?".into(),
                            sources,
                        });
                    }
                },
            }
        }
        outputs
    }

    // ------------------------------------------------------------- FROM items

    fn add_from_item(&mut self, item: &TableWithJoins, scope: &mut Scope) {
        self.table_factor(&item.relation, scope);
        for join in &item.joins {
            let left_count = scope.rels.len();
            self.table_factor(&join.relation, scope);
            let constraint = match &join.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::FullOuter(c)
                | JoinOperator::CrossJoin(c)
                | JoinOperator::Semi(c)
                | JoinOperator::LeftSemi(c)
                | JoinOperator::RightSemi(c)
                | JoinOperator::Anti(c)
                | JoinOperator::LeftAnti(c)
                | JoinOperator::RightAnti(c)
                | JoinOperator::StraightJoin(c) => c,
                other => {
                    self.problem(ProblemKind::Unsupported, format!("join kind {other:?}"));
                    continue;
                }
            };
            match constraint {
                JoinConstraint::On(expr) => self.predicate(expr, scope, Clause::JoinOn),
                JoinConstraint::Using(names) => {
                    let names: Vec<String> = names
                        .iter()
                        .filter_map(|n| n.0.last().and_then(|p| p.as_ident()).map(fold))
                        .collect();
                    self.merge_join_columns(scope, left_count, names);
                }
                JoinConstraint::Natural => {
                    let right_names: Vec<String> = scope.rels[left_count..]
                        .iter()
                        .flat_map(|r| r.cols.iter().map(|c| c.name.clone()))
                        .collect();
                    let common: Vec<String> = right_names
                        .into_iter()
                        .filter(|n| {
                            scope.rels[..left_count]
                                .iter()
                                .any(|r| r.cols.iter().any(|c| &c.name == n))
                        })
                        .collect();
                    self.merge_join_columns(scope, left_count, common);
                }
                JoinConstraint::None => {}
            }
        }
    }

    /// JOIN ... USING / NATURAL: the joined columns are compared (uses) and merged.
    fn merge_join_columns(&mut self, scope: &mut Scope, left_count: usize, names: Vec<String>) {
        for name in names {
            let mut sources = Vec::new();
            let mut sides = 0;
            for (i, rel) in scope.rels.iter().enumerate() {
                if let Some(col) = rel.cols.iter().find(|c| c.name == name) {
                    extend_unique(&mut sources, col.sources.clone());
                    if i >= left_count || sides == 0 {
                        sides += 1;
                    }
                }
            }
            if sides < 2 {
                self.problem(
                    ProblemKind::UnknownColumn,
                    format!("join column \"{name}\" is missing on one side"),
                );
            }
            self.add_uses(&sources, Clause::JoinOn);
            if !scope.merged.contains(&name) {
                scope.merged.push(name);
            }
        }
    }

    fn table_factor(&mut self, factor: &TableFactor, scope: &mut Scope) {
        match factor {
            TableFactor::Table {
                name,
                alias,
                args,
                with_ordinality,
                ..
            } => match args {
                None => self.table(name, alias.as_ref(), scope),
                Some(args) => {
                    self.function_in_from(name, &args.args, alias.as_ref(), *with_ordinality, scope)
                }
            },
            TableFactor::Derived {
                lateral,
                subquery,
                alias,
                ..
            } => {
                let cols = if *lateral {
                    let lateral_parent = lateral_scope(scope);
                    self.query(subquery, Some(&lateral_parent))
                } else {
                    self.query(subquery, scope.parent)
                };
                let cols = match alias {
                    Some(alias) => self.rename_columns(cols, alias),
                    None => cols,
                };
                scope.rels.push(Rel {
                    alias: alias.as_ref().map(|a| fold(&a.name)).unwrap_or_default(),
                    qualified: None,
                    cols,
                });
            }
            TableFactor::Function {
                name,
                args,
                alias,
                with_ordinality,
                ..
            } => self.function_in_from(name, args, alias.as_ref(), *with_ordinality, scope),
            TableFactor::UNNEST {
                alias,
                array_exprs,
                with_ordinality,
                ..
            } => {
                let lateral = lateral_scope(scope);
                let mut sources = Vec::new();
                for expr in array_exprs {
                    extend_unique(&mut sources, self.expr(expr, &lateral));
                }
                let name = ObjectName::from(vec![sqlparser::ast::Ident::new("unnest")]);
                self.set_returning(&name, sources, alias.as_ref(), *with_ordinality, scope);
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                let before = scope.rels.len();
                self.add_from_item(table_with_joins, scope);
                if let Some(alias) = alias {
                    // `(a JOIN b) AS j`: the join's columns become j's columns.
                    let cols: Vec<Col> = scope.rels.drain(before..).flat_map(|r| r.cols).collect();
                    let cols = self.rename_columns(cols, alias);
                    scope.rels.push(Rel {
                        alias: fold(&alias.name),
                        qualified: None,
                        cols,
                    });
                }
            }
            other => {
                self.problem(
                    ProblemKind::Unsupported,
                    format!("FROM item {}", first_words(&other.to_string())),
                );
                scope.rels.push(Rel {
                    alias: String::new(),
                    qualified: None,
                    cols: Vec::new(),
                });
            }
        }
    }

    /// `FROM f(args)`: arguments may reference FROM items to the left (implicitly LATERAL).
    fn function_in_from(
        &mut self,
        name: &ObjectName,
        args: &[FunctionArg],
        alias: Option<&TableAlias>,
        with_ordinality: bool,
        scope: &mut Scope,
    ) {
        let lateral = lateral_scope(scope);
        let mut sources = Vec::new();
        for arg in args {
            extend_unique(&mut sources, self.function_arg(arg, &lateral, "f"));
        }
        self.set_returning(name, sources, alias, with_ordinality, scope);
    }

    /// A set-returning function in FROM: allowed only when traceable; its columns derive from
    /// its arguments.
    fn set_returning(
        &mut self,
        name: &ObjectName,
        sources: Vec<Source>,
        alias: Option<&TableAlias>,
        with_ordinality: bool,
        scope: &mut Scope,
    ) {
        let (schema, function) = split_name(name);
        self.check_function(schema.as_deref(), &function, name);
        let sources = derive(sources, &function);
        let default_names: Vec<String> = match functions::set_returning_columns(&function) {
            Some(names) => names.iter().map(|n| (*n).to_owned()).collect(),
            None => vec![
                alias
                    .map(|a| fold(&a.name))
                    .unwrap_or_else(|| function.clone()),
            ],
        };
        let mut cols: Vec<Col> = default_names
            .into_iter()
            .map(|name| Col {
                name,
                sources: sources.clone(),
            })
            .collect();
        if with_ordinality {
            cols.push(Col {
                name: "ordinality".into(),
                sources: Vec::new(),
            });
        }
        if let Some(alias) = alias {
            // Column aliases beyond the known columns are record-returning functions'
            // column definitions: derived from the same arguments.
            for (i, def) in alias.columns.iter().enumerate() {
                match cols.get_mut(i) {
                    Some(col) => col.name = fold(&def.name),
                    None => cols.push(Col {
                        name: fold(&def.name),
                        sources: sources.clone(),
                    }),
                }
            }
        }
        scope.rels.push(Rel {
            alias: alias.map(|a| fold(&a.name)).unwrap_or(function),
            qualified: None,
            cols,
        });
    }

    /// A named relation: CTE, catalog table, or view (expanded through its definition).
    fn table(&mut self, name: &ObjectName, alias: Option<&TableAlias>, scope: &mut Scope) {
        let parts: Vec<String> = name
            .0
            .iter()
            .filter_map(|p| p.as_ident())
            .map(fold)
            .collect();
        let (schema, relation_name) = match parts.as_slice() {
            [name] => (None, name.clone()),
            [.., schema, name] => (Some(schema.clone()), name.clone()),
            [] => {
                self.problem(ProblemKind::UnknownRelation, format!("relation {name}"));
                return;
            }
        };
        if functions::is_data_exposing_relation(schema.as_deref(), &relation_name) {
            self.problem(
                if functions::is_session_activity(&relation_name) {
                    ProblemKind::SessionActivity
                } else {
                    ProblemKind::DataExposingRelation
                },
                format!("{name} exposes data values from other tables or sessions"),
            );
        }
        let cte = if schema.is_none() {
            self.ctes
                .iter()
                .rev()
                .flat_map(|frame| frame.iter().rev())
                .find(|(n, _)| n == &relation_name)
                .map(|(_, cols)| cols.clone())
        } else {
            None
        };
        let (cols, qualified) = match cte {
            Some(cols) => (cols, None),
            None => match self.catalog.relation(schema.as_deref(), &relation_name) {
                Some(relation) => {
                    let key = format!("{}.{}", relation.schema, relation.name);
                    let cols = match &relation.kind {
                        RelationKind::View { definition }
                        | RelationKind::MaterializedView { definition } => {
                            self.view_columns(&key, &relation.columns, definition)
                        }
                        RelationKind::Table | RelationKind::Other => relation
                            .columns
                            .iter()
                            .map(|c| Col {
                                name: c.clone(),
                                sources: vec![Source::passthrough(format!("{key}.{c}"))],
                            })
                            .collect(),
                    };
                    (cols, Some((relation.schema, relation.name)))
                }
                None => {
                    self.problem(
                        ProblemKind::UnknownRelation,
                        format!("relation {name} is not in the catalog"),
                    );
                    (Vec::new(), None)
                }
            },
        };
        let cols = match alias {
            Some(alias) => self.rename_columns(cols, alias),
            None => cols,
        };
        scope.rels.push(Rel {
            alias: alias.map(|a| fold(&a.name)).unwrap_or(relation_name),
            qualified: if alias.is_none() { qualified } else { None },
            cols,
        });
    }

    /// A view's columns, from the lineage of its definition.
    fn view_columns(&mut self, key: &str, columns: &[String], definition: &str) -> Vec<Col> {
        if let Some(cols) = self.view_cache.get(key) {
            return cols.clone();
        }
        let unresolved = |columns: &[String]| -> Vec<Col> {
            columns
                .iter()
                .map(|c| Col {
                    name: c.clone(),
                    sources: Vec::new(),
                })
                .collect()
        };
        if self.view_stack.iter().any(|v| v == key) || self.view_stack.len() >= MAX_VIEW_DEPTH {
            self.problem(
                ProblemKind::UnresolvedView,
                format!("view {key} is recursive or nested too deeply"),
            );
            return unresolved(columns);
        }
        // pg_get_viewdef text is lexed with standard strings; a view deeper than the bound is
        // not parsed (its tree's walks could exhaust the stack).
        let tokens = super::lexer::tokenize(definition, super::lexer::LexSettings::default());
        if super::lexer::depth_bound(&tokens, definition) > super::MAX_DEPTH {
            self.problem(
                ProblemKind::UnresolvedView,
                format!("view {key} definition nests deeper than the analyser accepts"),
            );
            return unresolved(columns);
        }
        let dialect = sqlparser::dialect::PostgreSqlDialect {};
        let query = match sqlparser::parser::Parser::parse_sql(&dialect, definition) {
            Ok(mut statements) if statements.len() == 1 => match statements.pop() {
                Some(Statement::Query(query)) => query,
                _ => {
                    self.problem(
                        ProblemKind::UnresolvedView,
                        format!("view {key} definition is not a query"),
                    );
                    return unresolved(columns);
                }
            },
            Ok(_) => {
                self.problem(
                    ProblemKind::UnresolvedView,
                    format!("view {key} definition is not one statement"),
                );
                return unresolved(columns);
            }
            Err(error) => {
                self.problem(
                    ProblemKind::UnresolvedView,
                    format!("view {key} definition does not parse: {error}"),
                );
                return unresolved(columns);
            }
        };
        // A view body is analysed in its own CTE environment.
        let saved_ctes = std::mem::take(&mut self.ctes);
        self.view_stack.push(key.to_owned());
        let outputs = self.query(&query, None);
        self.view_stack.pop();
        self.ctes = saved_ctes;
        if outputs.len() != columns.len() {
            self.problem(
                ProblemKind::UnresolvedView,
                format!(
                    "view {key} has {} columns but its definition yields {}",
                    columns.len(),
                    outputs.len()
                ),
            );
        }
        // The catalog's column names win (CREATE VIEW v (a, b) AS ...).
        let cols: Vec<Col> = columns
            .iter()
            .enumerate()
            .map(|(i, name)| Col {
                name: name.clone(),
                sources: outputs
                    .get(i)
                    .map(|o| o.sources.clone())
                    .unwrap_or_default(),
            })
            .collect();
        self.view_cache.insert(key.to_owned(), cols.clone());
        cols
    }

    /// Applies `AS alias (c1, c2, ...)` column renames.
    fn rename_columns(&mut self, mut cols: Vec<Col>, alias: &TableAlias) -> Vec<Col> {
        if alias.columns.len() > cols.len() {
            self.problem(
                ProblemKind::UnknownColumn,
                format!(
                    "{} has {} columns but {} aliases",
                    fold(&alias.name),
                    cols.len(),
                    alias.columns.len()
                ),
            );
        }
        for (col, def) in cols.iter_mut().zip(&alias.columns) {
            col.name = fold(&def.name);
        }
        cols
    }

    // ------------------------------------------------------- name resolution

    fn lookup_unqualified(&self, scope: &Scope, name: &str) -> Option<(Vec<Source>, bool)> {
        let mut level = Some(scope);
        while let Some(current) = level {
            let matches: Vec<&Col> = current
                .rels
                .iter()
                .flat_map(|r| r.cols.iter().filter(|c| c.name == name))
                .collect();
            if !matches.is_empty() {
                let ambiguous = matches.len() > 1 && !current.merged.iter().any(|m| m == name);
                let mut sources = Vec::new();
                for col in matches {
                    extend_unique(&mut sources, col.sources.clone());
                }
                return Some((sources, ambiguous));
            }
            level = current.parent;
        }
        None
    }

    fn find_rel<'s>(&self, scope: &'s Scope, name: &ObjectName) -> Option<&'s Rel> {
        let parts: Vec<String> = name
            .0
            .iter()
            .filter_map(|p| p.as_ident())
            .map(fold)
            .collect();
        find_rel_by_parts(scope, &parts)
    }

    fn column(&mut self, parts: &[String], scope: &Scope) -> Vec<Source> {
        match parts {
            [name] => match self.lookup_unqualified(scope, name) {
                Some((sources, ambiguous)) => {
                    if ambiguous {
                        self.problem(
                            ProblemKind::AmbiguousColumn,
                            format!("column reference \"{name}\" is ambiguous"),
                        );
                    }
                    sources
                }
                None => match find_rel_by_parts(scope, parts) {
                    // A bare relation name is a whole-row reference: every column, derived.
                    Some(rel) => whole_row(rel),
                    None => {
                        self.problem(
                            ProblemKind::UnknownColumn,
                            format!("column \"{name}\" does not exist"),
                        );
                        Vec::new()
                    }
                },
            },
            [qualifier @ .., name] => match find_rel_by_parts(scope, qualifier) {
                Some(rel) => match rel.cols.iter().find(|c| &c.name == name) {
                    Some(col) => col.sources.clone(),
                    None => {
                        self.problem(
                            ProblemKind::UnknownColumn,
                            format!("column {}.{name} does not exist", qualifier.join(".")),
                        );
                        Vec::new()
                    }
                },
                None => {
                    self.problem(
                        ProblemKind::UnknownColumn,
                        format!("missing FROM-clause entry for {}", qualifier.join(".")),
                    );
                    Vec::new()
                }
            },
            [] => Vec::new(),
        }
    }

    // ------------------------------------------------------------ expressions

    /// The sources of an expression's value. Side effects: uses (CASE conditions, FILTER,
    /// window clauses, subqueries' own clauses) and problems.
    fn expr(&mut self, expr: &Expr, scope: &Scope) -> Vec<Source> {
        stacker::maybe_grow(STACK_RED_ZONE, STACK_GROWTH, || {
            self.expr_inner(expr, scope)
        })
    }

    fn expr_inner(&mut self, expr: &Expr, scope: &Scope) -> Vec<Source> {
        match expr {
            Expr::Identifier(ident) => self.column(&[fold(ident)], scope),
            Expr::CompoundIdentifier(idents) => {
                let parts: Vec<String> = idents.iter().map(fold).collect();
                self.column(&parts, scope)
            }
            Expr::Nested(inner) => self.expr(inner, scope),
            Expr::Value(_) | Expr::TypedString(_) => Vec::new(),
            Expr::Function(function) => self.function(function, scope),
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                // A branch returns its value unchanged (passthrough); conditions are uses.
                if let Some(operand) = operand {
                    self.sort_key(operand, scope, Clause::Case);
                }
                let mut sources = Vec::new();
                for when in conditions {
                    self.predicate(&when.condition, scope, Clause::Case);
                    extend_unique(&mut sources, self.expr(&when.result, scope));
                }
                if let Some(else_result) = else_result {
                    extend_unique(&mut sources, self.expr(else_result, scope));
                }
                sources
            }
            Expr::IsNull(e) | Expr::IsNotNull(e) => {
                let via = if matches!(expr, Expr::IsNull(_)) {
                    "IS NULL"
                } else {
                    "IS NOT NULL"
                };
                let sources = self.expr(e, scope);
                if is_column_ref(e) {
                    derive_as(sources, via, DerivedUse::IsNull)
                } else {
                    derive(sources, via)
                }
            }
            Expr::Subquery(query) => self.scalar_subquery(query, scope),
            Expr::Exists { subquery, .. } => {
                // Only existence reaches the result; the subquery's clauses are recorded.
                let cols = self.query(subquery, Some(scope));
                let sources: Vec<Source> = cols.into_iter().flat_map(|c| c.sources).collect();
                self.add_uses(&sources, Clause::Where);
                Vec::new()
            }
            Expr::InSubquery { expr, subquery, .. } => {
                let mut sources = self.expr(expr, scope);
                let cols = self.query(subquery, Some(scope));
                extend_unique(
                    &mut sources,
                    cols.into_iter().flat_map(|c| c.sources).collect(),
                );
                derive(sources, "IN")
            }
            Expr::Cast {
                expr, data_type, ..
            } => {
                let via = format!("::{}", data_type.to_string().to_lowercase());
                derive(self.expr(expr, scope), &via)
            }
            Expr::CompoundFieldAccess { root, access_chain } => {
                let mut sources = self.expr(root, scope);
                for access in access_chain {
                    // Field names after `.` are not columns; subscripts are expressions.
                    if let sqlparser::ast::AccessExpr::Subscript(subscript) = access {
                        for index in subscript_exprs(subscript) {
                            extend_unique(&mut sources, self.expr(index, scope));
                        }
                    }
                }
                derive(sources, "field/subscript access")
            }
            Expr::Wildcard(_) => {
                let sources: Vec<Source> = scope.rels.iter().flat_map(whole_row).collect();
                derive(sources, "*")
            }
            Expr::QualifiedWildcard(name, _) => match self.find_rel(scope, name) {
                Some(rel) => whole_row(rel),
                None => {
                    self.problem(
                        ProblemKind::UnknownRelation,
                        format!("{name}.* names no FROM item"),
                    );
                    Vec::new()
                }
            },
            _ => {
                let (via, children) = derived_children(expr);
                match children {
                    Some(children) => {
                        let mut sources = Vec::new();
                        for child in children {
                            extend_unique(&mut sources, self.expr(child, scope));
                        }
                        derive(sources, &via)
                    }
                    None => self.opaque_expr(expr, scope),
                }
            }
        }
    }

    fn scalar_subquery(&mut self, query: &Query, scope: &Scope) -> Vec<Source> {
        let cols = self.query(query, Some(scope));
        if cols.len() != 1 {
            self.problem(
                ProblemKind::Unsupported,
                format!("scalar subquery returns {} columns", cols.len()),
            );
        }
        cols.into_iter().flat_map(|c| c.sources).collect()
    }

    /// Expressions without a dedicated rule: every column reference inside is derived, nested
    /// queries are analysed, functions are checked. Over-approximate on purpose.
    fn opaque_expr(&mut self, expr: &Expr, scope: &Scope) -> Vec<Source> {
        let mut collector = Collector::default();
        let _ = expr.visit(&mut collector);
        let mut sources = Vec::new();
        for column in &collector.columns {
            extend_unique(&mut sources, self.expr(column, scope));
        }
        for query in &collector.queries {
            let cols = self.query(query, Some(scope));
            extend_unique(
                &mut sources,
                cols.into_iter().flat_map(|c| c.sources).collect(),
            );
        }
        for name in &collector.functions {
            let (schema, function) = split_name(name);
            self.check_function(schema.as_deref(), &function, name);
            if functions::classify(schema.as_deref(), &function) == FunctionClass::Sink {
                self.side_channel(&sources);
            }
        }
        derive(sources, "expression")
    }

    pub(crate) fn check_function(
        &mut self,
        schema: Option<&str>,
        function: &str,
        name: &ObjectName,
    ) {
        match functions::classify(schema, function) {
            FunctionClass::Traceable | FunctionClass::Sink => {}
            FunctionClass::DataExposing => self.problem(
                if functions::is_session_activity(function) {
                    ProblemKind::SessionActivity
                } else {
                    ProblemKind::DataExposingFunction
                },
                format!("function {name} exposes data through a side channel"),
            ),
            FunctionClass::Untraceable => self.problem(
                ProblemKind::UntraceableFunction,
                format!("function {name} is not a known built-in: its output cannot be traced"),
            ),
        }
    }

    fn function(&mut self, function: &Function, scope: &Scope) -> Vec<Source> {
        let (schema, name) = split_name(&function.name);
        self.check_function(schema.as_deref(), &name, &function.name);
        let named = named_use(schema.as_deref(), &name, function);
        let mut sources = Vec::new();
        match &function.args {
            FunctionArguments::None => {}
            FunctionArguments::Subquery(query) => {
                let cols = self.query(query, Some(scope));
                extend_unique(
                    &mut sources,
                    cols.into_iter().flat_map(|c| c.sources).collect(),
                );
            }
            FunctionArguments::List(list) => {
                for arg in &list.args {
                    let arg_sources = match arg {
                        // count(t.*): the row's columns as they arrive, for `count`.
                        FunctionArg::Unnamed(FunctionArgExpr::QualifiedWildcard(rel))
                            if named.is_some() =>
                        {
                            match self.find_rel(scope, rel) {
                                Some(r) => r.cols.iter().flat_map(|c| c.sources.clone()).collect(),
                                None => self.function_arg(arg, scope, &name),
                            }
                        }
                        _ => self.function_arg(arg, scope, &name),
                    };
                    extend_unique(&mut sources, arg_sources);
                }
                for clause in &list.clauses {
                    match clause {
                        FunctionArgumentClause::OrderBy(items) => {
                            for item in items {
                                self.sort_key(&item.expr, scope, Clause::OrderBy);
                            }
                        }
                        FunctionArgumentClause::Limit(expr) => {
                            self.predicate(expr, scope, Clause::Limit)
                        }
                        FunctionArgumentClause::IgnoreOrRespectNulls(_)
                        | FunctionArgumentClause::Separator(_) => {}
                        other => self.problem(
                            ProblemKind::Unsupported,
                            format!("function argument clause {other}"),
                        ),
                    }
                }
            }
        }
        if !matches!(function.parameters, FunctionArguments::None) {
            self.problem(ProblemKind::Unsupported, "parametric function call");
        }
        // WITHIN GROUP (ORDER BY x): percentile_disc/mode return a value of x.
        for item in &function.within_group {
            let ordered = self.expr(&item.expr, scope);
            self.add_uses(&ordered, Clause::OrderBy);
            extend_unique(&mut sources, ordered);
        }
        if let Some(filter) = &function.filter {
            self.predicate(filter, scope, Clause::Filter);
        }
        if let Some(WindowType::WindowSpec(spec)) = &function.over {
            self.window_spec(spec, scope);
        }
        if functions::classify(schema.as_deref(), &name) == FunctionClass::Sink {
            self.side_channel(&sources);
        }
        match named {
            Some(d) => derive_as(sources, &name, d),
            None => derive(sources, &name),
        }
    }

    fn function_arg(&mut self, arg: &FunctionArg, scope: &Scope, function: &str) -> Vec<Source> {
        let arg = match arg {
            FunctionArg::Named { arg, .. } | FunctionArg::Unnamed(arg) => arg,
            FunctionArg::ExprNamed { name, arg, .. } => {
                let _ = self.expr(name, scope);
                arg
            }
        };
        match arg {
            FunctionArgExpr::Expr(expr) => self.expr(expr, scope),
            FunctionArgExpr::QualifiedWildcard(name) => match self.find_rel(scope, name) {
                Some(rel) => whole_row(rel),
                None => {
                    self.problem(
                        ProblemKind::UnknownRelation,
                        format!("{name}.* names no FROM item"),
                    );
                    Vec::new()
                }
            },
            // count(*) reads no column; any other f(*) is treated as every column.
            FunctionArgExpr::Wildcard | FunctionArgExpr::WildcardWithOptions(_) => {
                if function == "count" {
                    Vec::new()
                } else {
                    scope.rels.iter().flat_map(whole_row).collect()
                }
            }
        }
    }

    fn window_spec(&mut self, spec: &sqlparser::ast::WindowSpec, scope: &Scope) {
        for expr in &spec.partition_by {
            self.sort_key(expr, scope, Clause::Window);
        }
        for item in &spec.order_by {
            self.sort_key(&item.expr, scope, Clause::Window);
        }
    }
}

/// Gathers column references, nested queries and function names without descending into
/// nested queries (they are analysed in their own scope).
#[derive(Default)]
struct Collector {
    depth: usize,
    columns: Vec<Expr>,
    queries: Vec<Query>,
    functions: Vec<ObjectName>,
}

impl Visitor for Collector {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if self.depth == 0 {
            self.queries.push(query.clone());
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if self.depth == 0 {
            match expr {
                Expr::Identifier(_)
                | Expr::CompoundIdentifier(_)
                | Expr::Wildcard(_)
                | Expr::QualifiedWildcard(..) => self.columns.push(expr.clone()),
                Expr::Function(function) => self.functions.push(function.name.clone()),
                _ => {}
            }
        }
        ControlFlow::Continue(())
    }
}

/// The operator name and direct child expressions of an expression whose value is derived
/// from its children; `None` when there is no dedicated rule.
fn derived_children(outer: &Expr) -> (String, Option<Vec<&Expr>>) {
    let (via, children): (&str, Vec<&Expr>) = match outer {
        Expr::IsFalse(e) => ("IS FALSE", vec![e]),
        Expr::IsNotFalse(e) => ("IS NOT FALSE", vec![e]),
        Expr::IsTrue(e) => ("IS TRUE", vec![e]),
        Expr::IsNotTrue(e) => ("IS NOT TRUE", vec![e]),
        Expr::IsNull(e) => ("IS NULL", vec![e]),
        Expr::IsNotNull(e) => ("IS NOT NULL", vec![e]),
        Expr::IsUnknown(e) => ("IS UNKNOWN", vec![e]),
        Expr::IsNotUnknown(e) => ("IS NOT UNKNOWN", vec![e]),
        Expr::IsDistinctFrom(a, b) => ("IS DISTINCT FROM", vec![a, b]),
        Expr::IsNotDistinctFrom(a, b) => ("IS NOT DISTINCT FROM", vec![a, b]),
        Expr::IsJson { expr, .. } => ("IS JSON", vec![expr]),
        Expr::IsNormalized { expr, .. } => ("IS NORMALIZED", vec![expr]),
        Expr::InList { expr, list, .. } => {
            let mut children: Vec<&Expr> = vec![expr];
            children.extend(list.iter());
            ("IN", children)
        }
        Expr::InUnnest {
            expr, array_expr, ..
        } => ("IN", vec![expr, array_expr]),
        Expr::Between {
            expr, low, high, ..
        } => ("BETWEEN", vec![expr, low, high]),
        Expr::BinaryOp { left, op, right } => {
            return (op.to_string(), Some(vec![left, right]));
        }
        Expr::Like {
            expr,
            pattern,
            escape_char,
            ..
        }
        | Expr::ILike {
            expr,
            pattern,
            escape_char,
            ..
        }
        | Expr::SimilarTo {
            expr,
            pattern,
            escape_char,
            ..
        } => {
            let mut children: Vec<&Expr> = vec![expr, pattern];
            children.extend(escape_char.iter().map(|e| e.as_ref()));
            let via = match outer {
                Expr::ILike { .. } => "ILIKE",
                Expr::SimilarTo { .. } => "SIMILAR TO",
                _ => "LIKE",
            };
            (via, children)
        }
        Expr::RLike { expr, pattern, .. } => ("~", vec![expr, pattern]),
        Expr::AnyOp {
            left,
            right,
            compare_op,
            ..
        } => return (format!("{compare_op} ANY"), Some(vec![left, right])),
        Expr::AllOp {
            left,
            right,
            compare_op,
        } => return (format!("{compare_op} ALL"), Some(vec![left, right])),
        Expr::UnaryOp { op, expr } => return (op.to_string(), Some(vec![expr])),
        Expr::Convert { expr, styles, .. } => {
            let mut children: Vec<&Expr> = vec![expr];
            children.extend(styles.iter());
            ("convert", children)
        }
        Expr::AtTimeZone {
            timestamp,
            time_zone,
        } => ("AT TIME ZONE", vec![timestamp, time_zone]),
        Expr::Extract { expr, .. } => ("extract", vec![expr]),
        Expr::Ceil { expr, .. } => ("ceil", vec![expr]),
        Expr::Floor { expr, .. } => ("floor", vec![expr]),
        Expr::Position { expr, r#in } => ("position", vec![expr, r#in]),
        Expr::Substring {
            expr,
            substring_from,
            substring_for,
            ..
        } => {
            let mut children: Vec<&Expr> = vec![expr];
            children.extend(substring_from.iter().map(|e| e.as_ref()));
            children.extend(substring_for.iter().map(|e| e.as_ref()));
            ("substring", children)
        }
        Expr::Trim {
            expr,
            trim_what,
            trim_characters,
            ..
        } => {
            let mut children: Vec<&Expr> = vec![expr];
            children.extend(trim_what.iter().map(|e| e.as_ref()));
            children.extend(trim_characters.iter().flatten());
            ("trim", children)
        }
        Expr::Overlay {
            expr,
            overlay_what,
            overlay_from,
            overlay_for,
        } => {
            let mut children: Vec<&Expr> = vec![expr, overlay_what, overlay_from];
            children.extend(overlay_for.iter().map(|e| e.as_ref()));
            ("overlay", children)
        }
        Expr::Collate { expr, .. } => ("COLLATE", vec![expr]),
        Expr::Prefixed { value, .. } => ("prefix", vec![value]),
        Expr::Tuple(items) => ("ROW", items.iter().collect()),
        Expr::Array(array) => ("ARRAY", array.elem.iter().collect()),
        Expr::Interval(interval) => ("interval", vec![&interval.value]),
        Expr::JsonAccess { value, .. } => ("json access", vec![value]),
        Expr::Named { expr, .. } => ("named", vec![expr]),
        Expr::GroupingSets(sets) | Expr::Cube(sets) | Expr::Rollup(sets) => {
            ("grouping sets", sets.iter().flatten().collect())
        }
        _ => return (String::new(), None),
    };
    (via.to_owned(), Some(children))
}

fn subscript_exprs(subscript: &sqlparser::ast::Subscript) -> Vec<&Expr> {
    match subscript {
        sqlparser::ast::Subscript::Index { index } => vec![index],
        sqlparser::ast::Subscript::Slice {
            lower_bound,
            upper_bound,
            stride,
        } => lower_bound
            .iter()
            .chain(upper_bound.iter())
            .chain(stride.iter())
            .collect(),
    }
}

/// Every column of a relation, derived: a whole-row value (`t`, `t.*` as an argument,
/// `row_to_json(t)`, `t::text`) carries all of them.
fn whole_row(rel: &Rel) -> Vec<Source> {
    let sources: Vec<Source> = rel.cols.iter().flat_map(|c| c.sources.clone()).collect();
    derive(sources, "row")
}

/// The named derived use a built-in call is, when its single argument is a column itself
/// (or `t.*` for `count`): `count(col)`, `count(DISTINCT col)`, `count(t.*)`, `length(col)`,
/// `char_length(col)`, `character_length(col)`, `octet_length(col)`. Anything else (another
/// schema, more arguments, an expression inside, ORDER BY or WITHIN GROUP) is `None`.
fn named_use(schema: Option<&str>, name: &str, function: &Function) -> Option<DerivedUse> {
    use sqlparser::ast::DuplicateTreatment;
    if !matches!(schema, None | Some("pg_catalog"))
        || !matches!(function.parameters, FunctionArguments::None)
        || !function.within_group.is_empty()
    {
        return None;
    }
    let FunctionArguments::List(list) = &function.args else {
        return None;
    };
    let [FunctionArg::Unnamed(arg)] = list.args.as_slice() else {
        return None;
    };
    if !list.clauses.is_empty() {
        return None;
    }
    let distinct = match list.duplicate_treatment {
        None | Some(DuplicateTreatment::All) => false,
        Some(DuplicateTreatment::Distinct) => true,
    };
    let column = matches!(arg, FunctionArgExpr::Expr(e) if is_column_ref(e));
    let row = matches!(arg, FunctionArgExpr::QualifiedWildcard(_));
    match name {
        "count" if distinct && column => Some(DerivedUse::CountDistinct),
        "count" if !distinct && (column || row) => Some(DerivedUse::Count),
        "length" | "char_length" | "character_length" | "octet_length"
            if !distinct && column && function.filter.is_none() && function.over.is_none() =>
        {
            Some(DerivedUse::Length)
        }
        _ => None,
    }
}

/// A column reference, possibly parenthesised: `ssn`, `c.ssn`, `(c.ssn)`.
fn is_column_ref(expr: &Expr) -> bool {
    let mut e = expr;
    loop {
        match e {
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => return true,
            Expr::Nested(inner) => e = inner,
            _ => return false,
        }
    }
}

/// Marks sources as derived through a named derived use (see [`Source::derived_as`]).
fn derive_as(sources: Vec<Source>, via: &str, allowance: DerivedUse) -> Vec<Source> {
    let mut out = Vec::with_capacity(sources.len());
    for source in sources {
        let derived = source.derived_as(via, allowance);
        if !out.contains(&derived) {
            out.push(derived);
        }
    }
    out
}

/// Marks sources as derived through `via` (the outermost derivation wins).
pub(crate) fn derive(sources: Vec<Source>, via: &str) -> Vec<Source> {
    let mut out = Vec::with_capacity(sources.len());
    for source in sources {
        let derived = source.derived_via(via);
        if !out.contains(&derived) {
            out.push(derived);
        }
    }
    out
}

pub(crate) fn extend_unique(into: &mut Vec<Source>, sources: Vec<Source>) {
    for source in sources {
        if !into.contains(&source) {
            into.push(source);
        }
    }
}

/// The FROM items to the left, visible to LATERAL subqueries and functions in FROM.
fn lateral_scope<'a>(scope: &'a Scope<'a>) -> Scope<'a> {
    Scope {
        rels: scope.rels.clone(),
        merged: scope.merged.clone(),
        parent: scope.parent,
    }
}

fn find_rel_by_parts<'s>(scope: &'s Scope, parts: &[String]) -> Option<&'s Rel> {
    let mut level = Some(scope);
    while let Some(current) = level {
        let found = match parts {
            [alias] => current.rels.iter().rev().find(|r| &r.alias == alias),
            [.., schema, name] => current.rels.iter().find(|r| {
                r.qualified
                    .as_ref()
                    .is_some_and(|(s, n)| s == schema && n == name)
            }),
            [] => None,
        };
        if found.is_some() {
            return found;
        }
        level = current.parent;
    }
    None
}

fn expand_star(scope: &Scope) -> Vec<Col> {
    let mut cols = Vec::new();
    // USING/NATURAL columns come first, once, as PostgreSQL prints them.
    for name in &scope.merged {
        let mut sources = Vec::new();
        for rel in &scope.rels {
            if let Some(col) = rel.cols.iter().find(|c| &c.name == name) {
                extend_unique(&mut sources, col.sources.clone());
            }
        }
        cols.push(Col {
            name: name.clone(),
            sources,
        });
    }
    for rel in &scope.rels {
        cols.extend(
            rel.cols
                .iter()
                .filter(|c| !scope.merged.contains(&c.name))
                .cloned(),
        );
    }
    cols
}

/// `(schema, name)` of a function or relation name, folded.
pub(crate) fn split_name(name: &ObjectName) -> (Option<String>, String) {
    let parts: Vec<String> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident())
        .map(fold)
        .collect();
    match parts.as_slice() {
        [] => (None, String::new()),
        [name] => (None, name.clone()),
        [.., schema, name] => (Some(schema.clone()), name.clone()),
    }
}

/// The column name PostgreSQL gives an unaliased select-list expression (approximately).
pub(crate) fn output_name(expr: &Expr) -> String {
    match expr {
        Expr::Identifier(ident) => fold(ident),
        Expr::CompoundIdentifier(idents) => idents.last().map(fold).unwrap_or_default(),
        Expr::Nested(inner) => output_name(inner),
        Expr::Function(function) => split_name(&function.name).1,
        Expr::Cast {
            expr, data_type, ..
        } => match output_name(expr).as_str() {
            "?column?" => data_type.to_string().to_lowercase(),
            name => name.to_owned(),
        },
        Expr::Collate { expr, .. } => output_name(expr),
        Expr::Case { .. } => "case".into(),
        Expr::Exists { .. } => "exists".into(),
        Expr::Array(_) => "array".into(),
        Expr::Tuple(_) => "row".into(),
        Expr::Subquery(query) => match query.body.as_ref() {
            SetExpr::Select(select) if select.projection.len() == 1 => {
                match &select.projection[0] {
                    SelectItem::UnnamedExpr(e) => output_name(e),
                    SelectItem::ExprWithAlias { alias, .. } => fold(alias),
                    _ => "?column?".into(),
                }
            }
            _ => "?column?".into(),
        },
        Expr::CompoundFieldAccess { access_chain, .. } => match access_chain.last() {
            Some(sqlparser::ast::AccessExpr::Dot(Expr::Identifier(ident))) => fold(ident),
            _ => "?column?".into(),
        },
        Expr::Extract { .. } => "extract".into(),
        Expr::Substring { .. } => "substring".into(),
        Expr::Position { .. } => "position".into(),
        Expr::Trim { .. } => "btrim".into(),
        Expr::Overlay { .. } => "overlay".into(),
        Expr::Ceil { .. } => "ceil".into(),
        Expr::Floor { .. } => "floor".into(),
        Expr::AtTimeZone { .. } => "timezone".into(),
        _ => "?column?".into(),
    }
}

fn first_words(text: &str) -> String {
    text.split_whitespace()
        .take(4)
        .collect::<Vec<_>>()
        .join(" ")
}

/// UNION ALL keeps every row; UNION (DISTINCT), INTERSECT [ALL] and EXCEPT [ALL] compare rows.
fn compares_rows(op: SetOperator, quantifier: sqlparser::ast::SetQuantifier) -> bool {
    use sqlparser::ast::SetQuantifier as Q;
    !(op == SetOperator::Union && matches!(quantifier, Q::All | Q::AllByName))
}
