//! Tokenization at rest (issue 14): which values of a statement must become tokens before
//! PostgreSQL sees them, or why the statement is refused.
//!
//! A column whose label says `at_rest: token` holds FF1 tokens in PostgreSQL. Every value
//! written to it, and every value it is compared with, must be tokenized by tokengate first:
//! - string literals (by their exact byte range from the PostgreSQL-exact lexer) and
//!   parameters (`$n`, rewritten in Bind) in INSERT ... VALUES, UPDATE ... SET, ON CONFLICT DO
//!   UPDATE SET, and in equality comparisons (`=`, `<>`, `IN (...)`, `= ANY(array)` element by
//!   element), and the rows of COPY FROM STDIN (text, CSV, binary);
//! - comparisons that give the same answer on tokens as on values are left to run on them:
//!   joins (`ON`, `USING`, `NATURAL`) between columns of one label, GROUP BY, DISTINCT,
//!   count(col), count(DISTINCT col);
//! - everything else that writes or computes on such a column is refused (TG180–TG184): an
//!   expression, INSERT ... SELECT, a server-side default, MERGE, a write through a view, a
//!   range, LIKE, ORDER BY or a function over it.
//!
//! Fail closed: a statement that mentions an at-rest table or column in any form this module
//! does not understand is refused, so PostgreSQL never stores a plaintext value there and no
//! comparison silently runs on tokens.
use crate::catalog::SessionCatalog;
use crate::errors::Code;
use crate::plan::{PlanCatalog, Refusal};
use crate::policy::{ColumnName, RoleView};
use crate::sql::catalog::fold;
use crate::sql::lexer::{self, Kind};
use crate::sql::{Catalog, Clause, LexSettings, StatementAnalysis};
use sqlparser::ast::{
    AssignmentTarget, BinaryOperator, CopySource, Expr, ObjectName, ObjectNamePart,
    OnConflictAction, OnInsert, Query, SelectItem, SetExpr, Statement, TableFactor, TableObject,
    Value, Visit, Visitor,
};
use std::collections::{HashMap, HashSet};
use std::ops::{ControlFlow, Range};
use std::sync::Arc;

/// Which way tokengate transforms a planned value before PostgreSQL sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    /// Stored as tokens (`at_rest: token`): the plaintext becomes its token.
    #[default]
    Tokenize,
    /// Read path only (the column stores plaintext), for a role shown its tokens: a token the
    /// role compares the column with becomes the plaintext it stands for, under the key the
    /// read path makes the shown tokens with (the active version). See [`plan_lookups`].
    Reveal,
}

/// How one at-rest column tokenizes: its label (the FF1 tweak) and token format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtRest {
    pub label: Arc<str>,
    /// The token format as the policy spells it.
    pub format: Arc<str>,
    /// The role is shown the stored tokens (`token`), so the values it compares with are
    /// tokens already and stay as they are. Writes are tokenized for every role.
    pub speaks_tokens: bool,
    /// The column, `schema.table.column`.
    pub column: Arc<str>,
    /// The key version of the column's tokens, from its recorded state (filled in by
    /// [`AtRestPlan::set_versions`]; 0 until then, which no key file holds). Unused for
    /// [`Direction::Reveal`], which uses the key file's active version.
    pub key_version: u32,
    pub direction: Direction,
}

/// What to tokenize in one statement before it reaches PostgreSQL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AtRestPlan {
    /// Byte ranges of plain `'...'` literals in the message's SQL text.
    pub literals: Vec<(Range<usize>, AtRest)>,
    /// Parameters (`$n`, 1-based) bound to at-rest columns.
    pub params: Vec<(usize, AtRest)>,
    /// COPY ... FROM STDIN (text or CSV) into a table with at-rest columns: the fields of
    /// the client's CopyData rows to tokenize.
    pub copy: Option<CopyIn>,
    /// `col = ANY('{...}')`: byte ranges of array literals whose elements are tokenized.
    pub array_literals: Vec<(Range<usize>, AtRest)>,
    /// `col = ANY($n)`: array parameters whose elements are tokenized.
    pub array_params: Vec<(usize, AtRest)>,
    /// The at-rest columns the statement touches, with the key version and state generation
    /// it was planned under (checked again at Bind: TG187 when the state changed since).
    pub versions: Vec<ColumnVersion>,
}

/// A column stored as tokens as one statement was planned under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnVersion {
    pub column: Arc<str>,
    pub key_version: u32,
    pub generation: i64,
}

/// The client's COPY rows: their format, how many fields each has, and which to tokenize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyIn {
    pub format: crate::sql::CopyFormat,
    pub width: usize,
    pub fields: Vec<(usize, AtRest)>,
}

impl AtRestPlan {
    pub fn is_empty(&self) -> bool {
        self.literals.is_empty()
            && self.params.is_empty()
            && self.copy.is_none()
            && self.array_literals.is_empty()
            && self.array_params.is_empty()
    }

    /// The columns stored as tokens whose values this plan tokenizes (not those of lookups by
    /// token, [`Direction::Reveal`], which store plaintext).
    pub fn columns(&self) -> impl Iterator<Item = &Arc<str>> {
        self.literals
            .iter()
            .map(|(_, a)| a)
            .chain(self.params.iter().map(|(_, a)| a))
            .chain(self.array_literals.iter().map(|(_, a)| a))
            .chain(self.array_params.iter().map(|(_, a)| a))
            .chain(
                self.copy
                    .iter()
                    .flat_map(|c| c.fields.iter().map(|(_, a)| a)),
            )
            .filter(|a| a.direction == Direction::Tokenize)
            .map(|a| &a.column)
    }

    /// Whether a literal of the statement's text is replaced by the plaintext a token stands
    /// for (the statement text PostgreSQL runs then carries that plaintext).
    pub fn reveals_literals(&self) -> bool {
        self.literals
            .iter()
            .chain(&self.array_literals)
            .any(|(_, a)| a.direction == Direction::Reveal)
    }

    /// Adds the values of another plan of the same statement (lookups by token to the values
    /// stored as tokens).
    pub fn merge(&mut self, other: AtRestPlan) {
        self.literals.extend(other.literals);
        self.params.extend(other.params);
        self.array_literals.extend(other.array_literals);
        self.array_params.extend(other.array_params);
        if self.copy.is_none() {
            self.copy = other.copy;
        }
    }

    /// Records the versions the statement is planned under and gives every value to
    /// tokenize its column's key version.
    pub fn set_versions(&mut self, versions: Vec<ColumnVersion>) {
        let of = |a: &mut AtRest| {
            if let Some(v) = versions.iter().find(|v| v.column == a.column) {
                a.key_version = v.key_version;
            }
        };
        self.literals.iter_mut().for_each(|(_, a)| of(a));
        self.params.iter_mut().for_each(|(_, a)| of(a));
        self.array_literals.iter_mut().for_each(|(_, a)| of(a));
        self.array_params.iter_mut().for_each(|(_, a)| of(a));
        if let Some(c) = &mut self.copy {
            c.fields.iter_mut().for_each(|(_, a)| of(a));
        }
        self.versions = versions;
    }
}

/// The column types a stored token can live in (FF1 text formats).
const TEXT_TYPES: [u32; 3] = [25, 1043, 1042];

fn refuse(code: Code, message: impl Into<String>) -> Refusal {
    Refusal::new(code, message)
}

/// The policy's at-rest columns for this role: `(schema, table)` → column → how it tokenizes.
type AtRestColumns = HashMap<(String, String), HashMap<String, AtRest>>;

/// Lookups by token put the decrypted value into the statement PostgreSQL runs, where the
/// session's search path resolves its casts and the `=` it is compared with. The check for
/// user functions, operators and types that shadow built-ins knows only the catalog as last
/// read; a domain or operator created since (directly against PostgreSQL) in a schema the
/// session put before `pg_catalog` would see the plaintext (a domain CHECK that records its
/// value). So lookups need `pg_catalog` searched before every schema but the session's own
/// temporary one, whose objects only come through this session.
fn user_schemas_before_pg_catalog(catalog: &SessionCatalog) -> Result<(), Refusal> {
    let Some(path) = catalog.path else {
        return Err(refuse(
            Code::TokenLookupUnsupported,
            "the session's search path is not known, so the value compared with a column shown as tokens could reach a user type or operator",
        ));
    };
    let temp = path.temp();
    if let Some(schema) = path
        .relations()
        .take_while(|s| *s != "pg_catalog")
        .find(|s| Some(*s) != temp)
    {
        return Err(refuse(
            Code::TokenLookupUnsupported,
            format!(
                "the session's search_path puts schema {schema} before pg_catalog, so the value compared with a column shown as tokens could reach a user type or operator there"
            ),
        ));
    }
    Ok(())
}

/// What planning needs from a role's view of the policy and the catalog: its at-rest columns,
/// their tables and names, and the views whose definitions name one of those tables. Built
/// once per (role view, catalog snapshot) and kept by the session
/// (`ReadPath::at_rest_index`), not per statement: a policy reload gives a new view and a
/// catalog refresh a new snapshot, each of which builds a new index.
#[derive(Debug, Default)]
pub struct AtRestIndex {
    columns: AtRestColumns,
    tables: HashSet<String>,
    names: HashSet<String>,
    views: HashSet<String>,
}

impl AtRestIndex {
    pub fn new(view: &RoleView, snapshot: &crate::catalog::Snapshot) -> Self {
        let mut columns: AtRestColumns = HashMap::new();
        for d in view.columns().filter(|d| d.at_rest) {
            let Ok(name) = ColumnName::parse(&d.column) else {
                continue;
            };
            let format: Arc<str> = Arc::from(d.token.as_ref().map_or("", |t| t.as_str()));
            columns
                .entry((name.schema, name.table))
                .or_default()
                .insert(
                    name.column,
                    AtRest {
                        label: d.label.clone(),
                        format,
                        speaks_tokens: d.action == crate::policy::Action::Token,
                        column: d.column.clone(),
                        key_version: 0,
                        direction: Direction::Tokenize,
                    },
                );
        }
        if columns.is_empty() {
            return AtRestIndex::default();
        }
        let tables: HashSet<String> = columns.keys().map(|(_, t)| t.clone()).collect();
        let names: HashSet<String> = columns.values().flat_map(|c| c.keys().cloned()).collect();
        let views: HashSet<String> = snapshot
            .relations()
            .filter(|r| {
                r.definition.as_deref().is_some_and(|d| {
                    let d = d.to_lowercase();
                    tables.iter().any(|t| d.contains(t.as_str()))
                })
            })
            .map(|r| r.name.clone())
            .collect();
        AtRestIndex {
            columns,
            tables,
            names,
            views,
        }
    }

    /// No column of the view is stored as tokens.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }
}

/// The columns this role is shown as tokens, that store plaintext, and that it may filter on:
/// their equality lookups by token are decrypted. Only text, varchar and char columns (the
/// type a shown text token and its plaintext share); others compare as written.
fn lookup_columns(view: &RoleView, catalog: &SessionCatalog) -> AtRestColumns {
    let mut out: AtRestColumns = HashMap::new();
    for d in view
        .columns()
        .filter(|d| !d.at_rest && d.action == crate::policy::Action::Token && d.may_filter)
    {
        let Some(format) = d.token.as_ref() else {
            continue;
        };
        let Ok(name) = ColumnName::parse(&d.column) else {
            continue;
        };
        if !catalog
            .column_type(&d.column)
            .is_some_and(|t| TEXT_TYPES.contains(&t))
        {
            continue;
        }
        out.entry((name.schema, name.table)).or_default().insert(
            name.column,
            AtRest {
                label: d.label.clone(),
                format: Arc::from(format.as_str()),
                speaks_tokens: false,
                column: d.column.clone(),
                key_version: 0,
                direction: Direction::Reveal,
            },
        );
    }
    out
}

/// An identifier's name as PostgreSQL folds it, from a lexer token (`None` for U&"...",
/// whose escapes are not decoded here: the caller treats it as a match).
fn token_name(kind: Kind, text: &str) -> Option<String> {
    match kind {
        Kind::Word => Some(text.to_lowercase()),
        Kind::QuotedIdent if text.starts_with('"') && text.len() >= 2 => {
            Some(text[1..text.len() - 1].replace("\"\"", "\""))
        }
        _ => None,
    }
}

/// Plans one statement (`text`, at byte `offset` in the message's SQL) for the at-rest
/// columns of the policy. `Ok(None)`: the statement touches none.
pub fn plan_at_rest(
    text: &str,
    offset: usize,
    lex: LexSettings,
    analysis: &StatementAnalysis,
    index: &AtRestIndex,
    catalog: &SessionCatalog,
) -> Result<Option<AtRestPlan>, Refusal> {
    let AtRestIndex {
        columns,
        tables,
        names,
        views,
    } = index;
    if columns.is_empty() {
        return Ok(None);
    }
    // A write through a view (or into a foreign table, or a relation tokengate does not know)
    // may reach a column stored as tokens by a way the names in the text do not show (a view
    // over a view, a quoted mixed-case base table): refused while any column is at rest.
    for target in &analysis.write_targets {
        let table = target.split_once('.').and_then(|(s, n)| {
            catalog
                .snapshot
                .relation(Some(s), n)
                .filter(|r| r.kind == crate::catalog::RelationKind::Table)
        });
        if table.is_none() {
            return Err(refuse(
                Code::AtRestUnsupported,
                format!(
                    "writing into {target}, which is not a table tokengate knows, is not supported while columns are stored as tokens"
                ),
            ));
        }
    }
    let tokens = lexer::tokenize(text, lex);
    let mut names_table = false;
    let mut hit = false;
    for t in &tokens {
        let Some(name) = token_name(t.kind, t.text(text)) else {
            if t.kind == Kind::QuotedIdent {
                hit = true;
                names_table = true;
            }
            continue;
        };
        if tables.contains(&name) || views.contains(&name) {
            hit = true;
            names_table = true;
        } else if names.contains(&name) {
            hit = true;
        }
    }
    let uses_at_rest = analysis
        .uses
        .iter()
        .any(|u| is_at_rest_name(columns, &u.column));
    let writes_at_rest = analysis
        .writes
        .iter()
        .any(|w| is_at_rest_name(columns, &w.column));
    if !hit && !uses_at_rest && !writes_at_rest {
        return Ok(None);
    }
    let dialect = sqlparser::dialect::PostgreSqlDialect {};
    let statement = match sqlparser::parser::Parser::parse_sql(&dialect, text) {
        Ok(mut s) if s.len() == 1 => s.remove(0),
        _ => {
            return Err(refuse(
                Code::AtRestUnsupported,
                "a statement naming a column stored as tokens could not be read for tokenization",
            ));
        }
    };
    let mut planner = Planner {
        text,
        offset,
        tokens: &tokens,
        columns,
        catalog,
        scope: HashMap::new(),
        views,
        allowed: HashSet::new(),
        plan: AtRestPlan::default(),
        param_labels: HashMap::new(),
        param_counts: HashMap::new(),
        compared: HashSet::new(),
        excluded: HashSet::new(),
        top: None,
        ctes: HashSet::new(),
        lookup: false,
    };
    planner.scope(&statement)?;
    match &statement {
        Statement::Query(q) => planner.top = Some(&**q as *const Query),
        Statement::Insert(ins) => planner.insert(ins)?,
        Statement::Update(u) => planner.update(u)?,
        Statement::Delete(_) | Statement::Declare { .. } => {}
        Statement::Copy { source, to, .. } => match (source, to) {
            (_, true) => {}
            (
                CopySource::Table {
                    table_name,
                    columns: listed,
                },
                false,
            ) => {
                let Some((relation, cols)) = planner.target(table_name)? else {
                    return Ok(None);
                };
                let Some(format) = analysis.copy.clone() else {
                    return Err(refuse(
                        Code::AtRestUnsupported,
                        format!(
                            "the format of COPY FROM into {table_name}, which has columns stored as tokens, is not known"
                        ),
                    ));
                };
                if format.force_not_null {
                    return Err(refuse(
                        Code::AtRestUnsupported,
                        format!(
                            "COPY FROM into {table_name} with FORCE_NOT_NULL: a field equal to the NULL string would be stored as written, in clear"
                        ),
                    ));
                }
                let listed: Vec<String> = if listed.is_empty() {
                    relation.columns.clone()
                } else {
                    listed.iter().map(fold).collect()
                };
                let mut fields = Vec::new();
                for (column, how) in &cols {
                    let Some(pos) = listed.iter().position(|c| c == column) else {
                        return Err(refuse(
                            Code::AtRestOmitted,
                            format!(
                                "COPY into {table_name} leaves out {column}, which is stored as tokens: a server-side default would be stored in clear"
                            ),
                        ));
                    };
                    fields.push((pos, how.clone()));
                }
                return Ok(Some(AtRestPlan {
                    copy: Some(CopyIn {
                        format,
                        width: listed.len(),
                        fields,
                    }),
                    ..AtRestPlan::default()
                }));
            }
            (CopySource::Query(_), false) => {}
        },
        _ if names_table || uses_at_rest => {
            return Err(refuse(
                Code::AtRestUnsupported,
                "this kind of statement cannot name a table with columns stored as tokens (MERGE, PREPARE, EXPLAIN, DDL, ...)",
            ));
        }
        _ => return Ok(None),
    }
    planner.walk(&statement)?;
    // Tokens copied into stored data are fine only as ON CONFLICT's own EXCLUDED value: a
    // token copied elsewhere would later be read as plaintext.
    for w in &analysis.writes {
        if let Some(name) = at_rest_name(columns, &w.column)
            && !(matches!(statement, Statement::Insert(_)) && planner.excluded.contains(name))
        {
            return Err(refuse(
                Code::AtRestValue,
                format!(
                    "column {} is stored as tokens and would be copied into stored data by this statement",
                    w.column
                ),
            ));
        }
    }
    // Every at-rest column the analysis sees compared must have been compared by its own name
    // (a renamed column in a subquery or view would compare its tokens with plaintext).
    for u in &analysis.uses {
        if let Some(name) = at_rest_name(columns, &u.column) {
            // GROUP BY, DISTINCT and HAVING reach here only in the forms Pass1 allows (the
            // column itself, count(col), equality); anything else was refused by Pass2.
            if !matches!(
                u.clause,
                Clause::Where
                    | Clause::JoinOn
                    | Clause::Other
                    | Clause::GroupBy
                    | Clause::Distinct
                    | Clause::Having
            ) {
                return Err(refuse(
                    Code::AtRestComputation,
                    format!(
                        "column {} is stored as tokens: it cannot be sorted, grouped or compared in this clause",
                        u.column
                    ),
                ));
            }
            if !planner.compared.contains(name) {
                return Err(refuse(
                    Code::AtRestComputation,
                    format!(
                        "column {} is stored as tokens and compared under another name (an alias, subquery or view): tokengate cannot tokenize the other side",
                        u.column
                    ),
                ));
            }
        }
    }
    Ok((!planner.plan.is_empty()).then_some(planner.plan))
}

/// Plans the lookups by token of one statement for a role shown tokens of columns that store
/// plaintext (read path only): the literals and parameters compared by equality (`=`, `<>`,
/// `IN`, `NOT IN`, `= ANY`) with such a column are tokens the role was shown, decrypted
/// before PostgreSQL compares them ([`Direction::Reveal`]). The same walker as
/// [`plan_at_rest`] finds them, so both modes read the same forms. Every other use of the
/// column (LIKE, ranges, ORDER BY, an expression as the compared value) compares the stored
/// plaintext, as `filter_on` allows. `Ok(None)`: nothing to decrypt.
///
/// Refused (TG125) where the value PostgreSQL compares cannot be decrypted, or the decrypted
/// value could come back: PREPARE, EXPLAIN and other statements that hold such a lookup,
/// a compared name tokengate cannot attribute to a table's column (a view's, subquery's or
/// CTE's column, or a name of two columns), literal lookups in a statement that writes, and
/// roles with `see_activity` (statement texts).
pub fn plan_lookups(
    text: &str,
    offset: usize,
    lex: LexSettings,
    analysis: &StatementAnalysis,
    view: &RoleView,
    catalog: &SessionCatalog,
) -> Result<Option<AtRestPlan>, Refusal> {
    // Most statements compare no column shown as tokens: answered from the view alone.
    let compares = analysis.uses.iter().any(|u| {
        view.column(&u.column)
            .is_some_and(|d| !d.at_rest && d.action == crate::policy::Action::Token && d.may_filter)
    });
    if !compares {
        return Ok(None);
    }
    let columns = lookup_columns(view, catalog);
    if !analysis
        .uses
        .iter()
        .any(|u| is_at_rest_name(&columns, &u.column))
    {
        return Ok(None);
    }
    user_schemas_before_pg_catalog(catalog)?;
    let dialect = sqlparser::dialect::PostgreSqlDialect {};
    let statement = match sqlparser::parser::Parser::parse_sql(&dialect, text) {
        Ok(mut s) if s.len() == 1 => s.remove(0),
        // The read path parsed it (the analysis names a use): a parse that differs now is
        // not guessed at.
        _ => {
            return Err(refuse(
                Code::TokenLookupUnsupported,
                "a statement comparing a column shown as tokens could not be read to find its lookups",
            ));
        }
    };
    let tokens = lexer::tokenize(text, lex);
    let views = HashSet::new();
    let mut planner = Planner {
        text,
        offset,
        tokens: &tokens,
        columns: &columns,
        catalog,
        scope: HashMap::new(),
        views: &views,
        allowed: HashSet::new(),
        plan: AtRestPlan::default(),
        param_labels: HashMap::new(),
        param_counts: HashMap::new(),
        compared: HashSet::new(),
        excluded: HashSet::new(),
        top: None,
        ctes: HashSet::new(),
        lookup: true,
    };
    planner.scope(&statement)?;
    planner.walk(&statement)?;
    if planner.plan.is_empty() {
        return Ok(None);
    }
    let reads = matches!(
        &statement,
        Statement::Query(_) | Statement::Declare { .. } | Statement::Copy { to: true, .. }
    );
    let writes = matches!(
        &statement,
        Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_)
    );
    if !reads && !writes {
        return Err(refuse(
            Code::TokenLookupUnsupported,
            "a lookup by token in PREPARE, EXPLAIN or this kind of statement: tokengate cannot decrypt the value it will compare",
        ));
    }
    if view.see_activity() {
        return Err(refuse(
            Code::TokenLookupUnsupported,
            "a lookup by token for a role with see_activity: the statement PostgreSQL runs carries the decrypted value, which that role can read in pg_stat_activity",
        ));
    }
    // A trigger or event trigger of a write may record current_query(), the text with the
    // decrypted literal in it; a parameter's value is not part of that text.
    if planner.plan.reveals_literals()
        && (!reads || !analysis.write_targets.is_empty() || analysis.is_ddl)
    {
        return Err(refuse(
            Code::TokenLookupUnsupported,
            "a lookup by token written as a literal in a statement that writes: bind the token as a parameter ($1) instead",
        ));
    }
    Ok(Some(planner.plan))
}

/// Literals decrypted by lookups by token put the plaintext into the statement text
/// PostgreSQL runs, which `current_query()` returns (for a simple query, the whole message):
/// refused (TG125) when the message or any view of the catalog names it, or names an
/// identifier tokengate cannot read (`U&"..."`).
pub fn check_revealed_text(
    sql: &str,
    lex: LexSettings,
    snapshot: &crate::catalog::Snapshot,
) -> Result<(), Refusal> {
    let refused = || {
        refuse(
            Code::TokenLookupUnsupported,
            "a lookup by token written as a literal together with current_query() (directly, through a view, or in another statement of the message) would return the decrypted value: bind the token as a parameter ($1)",
        )
    };
    for t in lexer::tokenize(sql, lex) {
        match token_name(t.kind, t.text(sql)) {
            Some(name) if name == "current_query" => return Err(refused()),
            None if t.kind == Kind::QuotedIdent => return Err(refused()),
            _ => {}
        }
    }
    if snapshot.relations().any(|r| {
        r.definition
            .as_deref()
            .is_some_and(|d| d.to_lowercase().contains("current_query"))
    }) {
        return Err(refused());
    }
    Ok(())
}

fn at_rest_name<'a>(columns: &AtRestColumns, qualified: &'a str) -> Option<&'a str> {
    let name = ColumnName::parse(qualified).ok()?;
    columns
        .get(&(name.schema.clone(), name.table.clone()))
        .and_then(|c| c.get(&name.column))?;
    qualified.rsplit('.').next()
}

fn is_at_rest_name(columns: &AtRestColumns, qualified: &str) -> bool {
    at_rest_name(columns, qualified).is_some()
}

/// A write target with at-rest columns: the relation and its at-rest columns by name.
type WriteTarget = (crate::sql::Relation, HashMap<String, AtRest>);

/// What a name in scope means: stored as tokens (how), plain, or both in different relations.
#[derive(Debug, Clone)]
enum InScope {
    AtRest(AtRest),
    Plain,
    Ambiguous,
    /// Lookups by token: a column of a view (or other relation that is not a table), which
    /// may be a column shown as tokens under another name.
    Unknown,
}

struct Planner<'a> {
    text: &'a str,
    offset: usize,
    tokens: &'a [lexer::Token],
    columns: &'a AtRestColumns,
    catalog: &'a SessionCatalog<'a>,
    /// Column names of every relation the statement names.
    scope: HashMap<String, InScope>,
    views: &'a HashSet<String>,
    /// At-rest column references in a place tokengate handles (by address in the AST).
    allowed: HashSet<usize>,
    plan: AtRestPlan,
    /// `$n` → the label it is tokenized under.
    param_labels: HashMap<usize, Arc<str>>,
    /// `$n` → how many of its references are tokenized.
    param_counts: HashMap<usize, usize>,
    /// Names of at-rest columns compared by equality.
    compared: HashSet<String>,
    /// At-rest columns assigned their own EXCLUDED value in ON CONFLICT DO UPDATE.
    excluded: HashSet<String>,
    top: Option<*const Query>,
    /// Names of the statement's CTEs (a FROM item naming one is not a catalog table).
    ctes: HashSet<String>,
    /// Planning lookups by token ([`plan_lookups`]): values compared with the columns are
    /// decrypted; other uses of them are the read path's business and are not refused here.
    lookup: bool,
}

fn parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => fold(i),
            ObjectNamePart::Function(_) => String::new(),
        })
        .collect()
}

/// `count` or `pg_catalog.count` (the analysis classifies which function it resolves to).
fn is_count(name: &ObjectName) -> bool {
    matches!(parts(name).as_slice(), [c] if c == "count")
        || matches!(parts(name).as_slice(), [s, c] if s == "pg_catalog" && c == "count")
}

/// `text[]`, `varchar[]`, `char[]` (the arrays an at-rest column can be compared with).
fn is_text_array(t: &sqlparser::ast::DataType) -> bool {
    use sqlparser::ast::{ArrayElemTypeDef, DataType};
    match t {
        DataType::Array(ArrayElemTypeDef::SquareBracket(inner, None)) => matches!(
            **inner,
            DataType::Text
                | DataType::Varchar(_)
                | DataType::CharacterVarying(_)
                | DataType::Char(_)
                | DataType::Character(_)
        ),
        _ => false,
    }
}

fn addr(e: &Expr) -> usize {
    e as *const Expr as usize
}

/// A value tokengate can tokenize: a plain literal, a parameter, or NULL.
enum Val {
    Literal(sqlparser::tokenizer::Location),
    Param(usize),
    Null,
}

fn value(e: &Expr) -> Option<Val> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(_) => Some(Val::Literal(v.span.start)),
            Value::Null => Some(Val::Null),
            Value::Placeholder(p) => p
                .strip_prefix('$')
                .and_then(|n| n.parse().ok())
                .filter(|n: &usize| *n >= 1)
                .map(Val::Param),
            _ => None,
        },
        _ => None,
    }
}

/// Lookups by token: the expression inside parentheses.
fn unnest(e: &Expr) -> &Expr {
    let mut e = e;
    while let Expr::Nested(inner) = e {
        e = inner;
    }
    e
}

/// A value inside parentheses and the casts `keeps` accepts (the data type of each).
fn unwrap_casts(e: &Expr, keeps: fn(&sqlparser::ast::DataType) -> bool) -> &Expr {
    let mut e = e;
    for _ in 0..16 {
        e = match e {
            Expr::Nested(inner) => inner,
            Expr::Cast {
                kind: sqlparser::ast::CastKind::DoubleColon | sqlparser::ast::CastKind::Cast,
                expr,
                data_type,
                format: None,
                ..
            } if keeps(data_type) => expr,
            _ => return e,
        };
    }
    e
}

/// A custom type name without modifiers that is one of `names` (`bpchar`, `name`).
fn custom_type(t: &sqlparser::ast::DataType, names: &[&str]) -> bool {
    matches!(t, sqlparser::ast::DataType::Custom(name, modifiers)
        if modifiers.is_empty() && matches!(parts(name).as_slice(), [n] if names.contains(&n.as_str())))
}

/// Lookups by token: a value inside parentheses and casts to the built-in text types
/// (`'tok'::text`, `CAST($1 AS varchar)`): the value is decrypted, then cast as PostgreSQL
/// casts it. A cast to any other type (a domain, a user type) is an expression.
fn unwrap_text(e: &Expr) -> &Expr {
    use sqlparser::ast::DataType;
    unwrap_casts(e, |t| {
        matches!(
            t,
            DataType::Text
                | DataType::Varchar(_)
                | DataType::CharacterVarying(_)
                | DataType::Char(_)
                | DataType::Character(_)
        ) || custom_type(t, &["bpchar", "name"])
    })
}

/// At rest: a value inside parentheses and casts that leave a string as it is (`$1::varchar`,
/// as SQLAlchemy's asyncpg dialect writes parameters, `'...'::text`, `CAST($1 AS bpchar)`):
/// tokenizing the value before such a cast stores what tokenizing after it would. Casts with
/// a length (`varchar(5)`, `char(11)`) can cut or pad, so the token would no longer be the
/// token of the stored value: they stay expressions (refused).
fn unwrap_same_text(e: &Expr) -> &Expr {
    use sqlparser::ast::DataType;
    unwrap_casts(e, |t| {
        matches!(
            t,
            DataType::Text | DataType::Varchar(None) | DataType::CharacterVarying(None)
        ) || custom_type(t, &["bpchar"])
    })
}

/// A string literal other than a plain `'...'` (E'', U&'', $$...$$, N'', B'', X'').
fn other_string(e: &Expr) -> bool {
    matches!(e, Expr::Value(v) if !matches!(
        v.value,
        Value::SingleQuotedString(_)
            | Value::Null
            | Value::Placeholder(_)
            | Value::Number(..)
            | Value::Boolean(_)
    ))
}

/// Lookups by token: whether `e` is a value the equality forms decrypt (or refuse): a
/// literal, parameter or NULL, in parentheses or cast to a text type.
fn compared_value(e: &Expr) -> bool {
    let e = unwrap_text(e);
    value(e).is_some() || other_string(e)
}

/// Lookups by token: whether the array of `= ANY(...)` is one [`Planner::array`] decrypts.
fn compared_array(e: &Expr) -> bool {
    match unnest(e) {
        Expr::Array(a) => a.elem.iter().any(compared_value),
        Expr::Cast { expr, .. } => compared_array(expr),
        e => value(e).is_some() || other_string(e),
    }
}

impl<'a> Planner<'a> {
    fn resolve(&self, name: &ObjectName) -> Option<crate::sql::Relation> {
        let p = parts(name);
        match p.as_slice() {
            [n] => self.catalog.relation(None, n),
            [s, n] | [_, s, n] => self.catalog.relation(Some(s), n),
            _ => None,
        }
    }

    /// Every relation the statement names, and the meaning of their column names.
    fn scope(&mut self, statement: &Statement) -> Result<(), Refusal> {
        let mut names = Vec::new();
        let _ = sqlparser::ast::visit_relations(statement, |n| {
            names.push(n.clone());
            ControlFlow::<()>::Continue(())
        });
        for n in &names {
            let Some(r) = self.resolve(n) else { continue };
            let at_rest = self.columns.get(&(r.schema.clone(), r.name.clone()));
            let table = matches!(r.kind, crate::sql::RelationKind::Table);
            for c in &r.columns {
                let meaning = match at_rest.and_then(|a| a.get(c)) {
                    Some(a) => InScope::AtRest(a.clone()),
                    None if self.lookup && !table => InScope::Unknown,
                    None => InScope::Plain,
                };
                let merged = match (self.scope.get(c), meaning) {
                    (None, m) => m,
                    (Some(InScope::Plain), InScope::Plain) => InScope::Plain,
                    // Columns of one label tokenize alike (their key versions are checked
                    // equal when the statement's columns are resolved).
                    (Some(InScope::AtRest(a)), InScope::AtRest(b))
                        if a.label == b.label
                            && a.format == b.format
                            && a.speaks_tokens == b.speaks_tokens =>
                    {
                        InScope::AtRest(b)
                    }
                    _ => InScope::Ambiguous,
                };
                self.scope.insert(c.clone(), merged);
            }
        }
        Ok(())
    }

    /// An expression that names an at-rest column: `Some(Ok(how))`, or `Some(Err)` when the
    /// name also means a plain column of another relation in the statement.
    fn at_rest(&self, e: &Expr) -> Option<Result<AtRest, ()>> {
        let name = match e {
            Expr::Identifier(i) => fold(i),
            Expr::CompoundIdentifier(p) => fold(p.last()?),
            _ => return None,
        };
        match self.scope.get(&name)? {
            InScope::AtRest(a) => Some(Ok(a.clone())),
            InScope::Plain => None,
            InScope::Ambiguous | InScope::Unknown => Some(Err(())),
        }
    }

    /// Lookups by token: the column a compared expression names, when its compared values
    /// are decrypted (`None`: a plain table column, or not a column). A name tokengate cannot
    /// attribute to one table's column (a view's, subquery's or CTE's column, or two
    /// columns') is refused: its values could be tokens that would be compared as written.
    fn lookup_column(&self, e: &Expr) -> Result<Option<AtRest>, Refusal> {
        let e = unnest(e);
        let name = match e {
            Expr::Identifier(i) => fold(i),
            Expr::CompoundIdentifier(p) => p.last().map(fold).unwrap_or_default(),
            _ => return Ok(None),
        };
        match self.scope.get(&name) {
            Some(InScope::AtRest(a)) => Ok(Some(a.clone())),
            Some(InScope::Plain) => Ok(None),
            Some(InScope::Ambiguous | InScope::Unknown) | None => Err(refuse(
                Code::TokenLookupUnsupported,
                format!(
                    "{name} is compared with a value in a statement that compares a column shown as tokens, and tokengate cannot tell which table column {name} is (a view's, subquery's or CTE's column, or a name of two columns): compare the table's own column"
                ),
            )),
        }
    }

    /// The code of a refusal about values: at rest's, or TG125 for lookups by token.
    fn code(&self, at_rest: Code) -> Code {
        if self.lookup {
            Code::TokenLookupUnsupported
        } else {
            at_rest
        }
    }

    /// The at-rest columns of a write target (`None`: it has none). Views over at-rest tables
    /// are refused.
    fn target(&self, name: &ObjectName) -> Result<Option<WriteTarget>, Refusal> {
        let Some(r) = self.resolve(name) else {
            // Unknown to tokengate's catalog (created since it was read, or a name resolution
            // tokengate cannot follow): it could be a table with at-rest columns.
            return Err(refuse(
                Code::AtRestUnsupported,
                format!(
                    "{name} is not in tokengate's catalog, so tokengate cannot tell whether it has columns stored as tokens"
                ),
            ));
        };
        if !matches!(r.kind, crate::sql::RelationKind::Table) && self.views.contains(&r.name) {
            return Err(refuse(
                Code::AtRestUnsupported,
                format!(
                    "writing through {name}, which reads a table with columns stored as tokens, is not supported"
                ),
            ));
        }
        let Some(cols) = self.columns.get(&(r.schema.clone(), r.name.clone())) else {
            return Ok(None);
        };
        for c in cols.keys() {
            let qualified = crate::policy::model::canonical_parts(&r.schema, &r.name, c);
            let t = self.catalog.column_type(&qualified).unwrap_or(0);
            if !TEXT_TYPES.contains(&t) {
                return Err(refuse(
                    Code::AtRestUnsupported,
                    format!(
                        "column {qualified} is stored as tokens but its type (oid {t}) is not text, varchar or char"
                    ),
                ));
            }
        }
        Ok(Some((r, cols.clone())))
    }

    /// Records a value written to (or compared with) an at-rest column, or refuses it.
    fn tokenize(&mut self, e: &Expr, how: &AtRest, what: &str) -> Result<(), Refusal> {
        self.value(unwrap_same_text(e), how, what, true)
    }

    /// A value compared with an at-rest column: tokenized, unless the role compares by the
    /// tokens it was shown.
    fn compared(&mut self, e: &Expr, how: &AtRest, what: &str) -> Result<(), Refusal> {
        let e = if self.lookup {
            unwrap_text(e)
        } else {
            unwrap_same_text(e)
        };
        self.value(e, how, what, !how.speaks_tokens)
    }

    fn value(&mut self, e: &Expr, how: &AtRest, what: &str, tokenize: bool) -> Result<(), Refusal> {
        if !tokenize {
            return match value(e) {
                Some(_) => Ok(()),
                None => Err(refuse(
                    Code::AtRestValue,
                    format!("{what} is not a quoted literal, NULL or a parameter"),
                )),
            };
        }
        match value(e) {
            Some(Val::Null) => Ok(()),
            Some(Val::Param(n)) => self.record_param(n, how, false),
            Some(Val::Literal(at)) => self.record_literal(
                at,
                how,
                &format!("{what} must be a plain quoted literal ('...') without backslashes"),
                false,
            ),
            None if self.lookup && other_string(e) => Err(refuse(
                Code::TokenLookupUnsupported,
                format!("{what} is a string literal other than '...' (E'', U&'', $$...$$)"),
            )),
            // Lookups by token: an expression compares as PostgreSQL computes it (plaintext).
            None if self.lookup => Ok(()),
            None => Err(refuse(
                Code::AtRestValue,
                format!(
                    "{what} is not a quoted literal, NULL or a parameter, so tokengate cannot tokenize it"
                ),
            )),
        }
    }

    /// Records `$n` as a value of `how`: a scalar, or (`array`) an `= ANY` array whose
    /// elements are transformed. One parameter serves one label and one of the two uses.
    fn record_param(&mut self, n: usize, how: &AtRest, array: bool) -> Result<(), Refusal> {
        let (same, other) = if array {
            (&self.plan.array_params, &self.plan.params)
        } else {
            (&self.plan.params, &self.plan.array_params)
        };
        if other.iter().any(|(p, _)| *p == n) {
            return Err(refuse(
                self.code(Code::AtRestParameter),
                format!("${n} is used both as an array for = ANY and otherwise"),
            ));
        }
        if self.param_labels.get(&n).is_some_and(|l| *l != how.label) {
            return Err(refuse(
                self.code(Code::AtRestParameter),
                format!("${n} is used for two labels"),
            ));
        }
        let known = same.iter().any(|(p, _)| *p == n);
        self.param_labels.insert(n, how.label.clone());
        *self.param_counts.entry(n).or_default() += 1;
        if !known {
            let list = if array {
                &mut self.plan.array_params
            } else {
                &mut self.plan.params
            };
            list.push((n, how.clone()));
        }
        Ok(())
    }

    /// Records the literal at `at` (its byte range in the message) as a value of `how`: a
    /// scalar, or (`array`) a `'{...}'` literal whose elements are transformed.
    fn record_literal(
        &mut self,
        at: sqlparser::tokenizer::Location,
        how: &AtRest,
        unreadable: &str,
        array: bool,
    ) -> Result<(), Refusal> {
        let range = self
            .literal_range(at)
            .ok_or_else(|| refuse(self.code(Code::AtRestValue), unreadable.to_string()))?;
        let range = range.start + self.offset..range.end + self.offset;
        if array {
            self.plan.array_literals.push((range, how.clone()));
        } else {
            self.plan.literals.push((range, how.clone()));
        }
        Ok(())
    }

    /// The array of `col = ANY(array)`: a parameter or a `'{...}'` literal (each element is
    /// tokenized when bound or rewritten), or `ARRAY[...]` of values; anything else refused.
    fn array(&mut self, e: &Expr, how: &AtRest) -> Result<(), Refusal> {
        let what = "the array compared with a column stored as tokens (= ANY)";
        match e {
            Expr::Nested(inner) => return self.array(inner, how),
            // Lookups by token: compared as PostgreSQL computes it (plaintext).
            Expr::Subquery(_) if self.lookup => return Ok(()),
            Expr::Subquery(_) => {
                return Err(refuse(
                    Code::AtRestComputation,
                    "= ANY (subquery) on a column stored as tokens: tokengate cannot tell whether the subquery yields tokens; use a join on columns of the same label",
                ));
            }
            Expr::Array(a) => {
                for item in &a.elem {
                    self.compared(item, how, "an element of ARRAY[...] in = ANY")?;
                }
                return Ok(());
            }
            Expr::Cast {
                kind: sqlparser::ast::CastKind::DoubleColon | sqlparser::ast::CastKind::Cast,
                expr,
                data_type,
                format: None,
                ..
            } if is_text_array(data_type)
                && matches!(value(expr), Some(Val::Param(_) | Val::Literal(_))) =>
            {
                return self.array(expr, how);
            }
            _ => {}
        }
        if how.speaks_tokens {
            // The role compares by the tokens it was shown: the array stays as it is.
            return match value(e) {
                Some(Val::Param(_) | Val::Literal(_) | Val::Null) => Ok(()),
                None => Err(refuse(
                    Code::AtRestValue,
                    format!("{what} is not a parameter, a '{{...}}' literal or ARRAY[...]"),
                )),
            };
        }
        match value(e) {
            Some(Val::Null) => Ok(()),
            Some(Val::Param(n)) => self.record_param(n, how, true),
            Some(Val::Literal(at)) => self.record_literal(
                at,
                how,
                &format!("{what} must be a plain quoted literal ('{{...}}') without backslashes"),
                true,
            ),
            None if self.lookup && other_string(e) => Err(refuse(
                Code::TokenLookupUnsupported,
                format!("{what} is a string literal other than '{{...}}'"),
            )),
            None if self.lookup => Ok(()),
            None => Err(refuse(
                Code::AtRestValue,
                format!(
                    "{what} is not a parameter, a '{{...}}' literal or ARRAY[...] of literals, so tokengate cannot tokenize it"
                ),
            )),
        }
    }

    /// The lexer token of a plain `'...'` literal starting at `at` (sqlparser's line and
    /// character column), if the literal is exactly one such token.
    fn literal_range(&self, at: sqlparser::tokenizer::Location) -> Option<Range<usize>> {
        let mut line = 1u64;
        let mut column = 1u64;
        let mut byte = None;
        for (i, c) in self.text.char_indices() {
            if line == at.line && column == at.column {
                byte = Some(i);
                break;
            }
            if c == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        let byte = byte?;
        let index = self.tokens.iter().position(|t| t.start == byte)?;
        let token = self.tokens[index];
        let t = token.text(self.text);
        let plain = token.kind == Kind::String
            && t.starts_with('\'')
            && t.ends_with('\'')
            && t.len() >= 2
            && !t.contains('\\');
        // PostgreSQL joins 'a' 'b' across a newline into one literal.
        let continued = self
            .tokens
            .get(index + 1)
            .is_some_and(|n| n.kind == Kind::String);
        (plain && !continued).then(|| token.range())
    }

    fn insert(&mut self, ins: &sqlparser::ast::Insert) -> Result<(), Refusal> {
        let TableObject::TableName(name) = &ins.table else {
            return Err(refuse(
                Code::AtRestUnsupported,
                "INSERT into a table function",
            ));
        };
        let Some((relation, cols)) = self.target(name)? else {
            return Ok(());
        };
        let listed: Vec<String> = if ins.columns.is_empty() {
            relation.columns.clone()
        } else {
            ins.columns
                .iter()
                .map(|c| parts(c).pop().unwrap_or_default())
                .collect()
        };
        let rows = match ins.source.as_deref() {
            Some(q)
                if q.with.is_none()
                    && q.order_by.is_none()
                    && q.limit_clause.is_none()
                    && matches!(&*q.body, SetExpr::Values(_)) =>
            {
                match &*q.body {
                    SetExpr::Values(v) => &v.rows,
                    _ => return Err(refuse(Code::AtRestValue, "unreachable")),
                }
            }
            Some(_) => {
                return Err(refuse(
                    Code::AtRestValue,
                    format!(
                        "INSERT ... SELECT into {name}, which has columns stored as tokens: only INSERT ... VALUES can be tokenized"
                    ),
                ));
            }
            None => {
                return Err(refuse(
                    Code::AtRestOmitted,
                    format!(
                        "INSERT ... DEFAULT VALUES into {name} would store server-side defaults in columns stored as tokens"
                    ),
                ));
            }
        };
        for (column, how) in &cols {
            let Some(pos) = listed.iter().position(|c| c == column) else {
                return Err(refuse(
                    Code::AtRestOmitted,
                    format!(
                        "INSERT into {name} leaves out {column}, which is stored as tokens: a server-side default would be stored in clear"
                    ),
                ));
            };
            for row in rows {
                let Some(e) = row.get(pos) else {
                    return Err(refuse(
                        Code::AtRestOmitted,
                        format!("a row of INSERT into {name} has no value for {column}"),
                    ));
                };
                self.tokenize(e, how, &format!("the value for {column}"))?;
            }
        }
        if let Some(OnInsert::OnConflict(c)) = &ins.on
            && let OnConflictAction::DoUpdate(u) = &c.action
        {
            for a in &u.assignments {
                self.assignment(a, &cols, true)?;
            }
        }
        Ok(())
    }

    fn assignment(
        &mut self,
        a: &sqlparser::ast::Assignment,
        cols: &HashMap<String, AtRest>,
        excluded_ok: bool,
    ) -> Result<(), Refusal> {
        let targets: Vec<String> = match &a.target {
            AssignmentTarget::ColumnName(n) => vec![parts(n).pop().unwrap_or_default()],
            AssignmentTarget::Tuple(ns) => ns
                .iter()
                .map(|n| parts(n).pop().unwrap_or_default())
                .collect(),
        };
        let at_rest: Vec<&String> = targets.iter().filter(|t| cols.contains_key(*t)).collect();
        let [column] = at_rest.as_slice() else {
            if at_rest.is_empty() {
                return Ok(());
            }
            return Err(refuse(
                Code::AtRestValue,
                "a tuple assignment to columns stored as tokens cannot be tokenized",
            ));
        };
        if targets.len() != 1 {
            return Err(refuse(
                Code::AtRestValue,
                "a tuple assignment to columns stored as tokens cannot be tokenized",
            ));
        }
        let how = &cols[*column];
        // ON CONFLICT ... SET col = EXCLUDED.col: the proposed row's value, already a token.
        if excluded_ok
            && let Expr::CompoundIdentifier(p) = &a.value
            && p.len() == 2
            && fold(&p[0]) == "excluded"
            && cols.get(&fold(&p[1])).is_some_and(|o| o.label == how.label)
        {
            self.allowed.insert(addr(&a.value));
            self.excluded.insert(fold(&p[1]));
            return Ok(());
        }
        self.tokenize(&a.value, how, &format!("the value assigned to {column}"))
    }

    /// A FROM item tokengate knows the columns of: a catalog table (not a CTE, subquery,
    /// function or nested join).
    fn factor(&self, f: &TableFactor) -> Option<crate::sql::Relation> {
        match f {
            TableFactor::Table {
                name, args: None, ..
            } => {
                let p = parts(name);
                if p.len() == 1 && self.ctes.contains(&p[0]) {
                    return None;
                }
                self.resolve(name)
            }
            _ => None,
        }
    }

    /// `JOIN ... USING (col)` and `NATURAL JOIN` compare the same-named columns of both
    /// sides. Allowed for an at-rest column when every relation in the statement with that
    /// name stores it as tokens of the same label (tokens compare like the values), and
    /// every FROM item of the join is a catalog table (a subquery or function could supply
    /// plaintext under that name).
    fn joins(&mut self, from: &sqlparser::ast::TableWithJoins) -> Result<(), Refusal> {
        use sqlparser::ast::{JoinConstraint, JoinOperator};
        let mut left = vec![self.factor(&from.relation)];
        for j in &from.joins {
            let right = self.factor(&j.relation);
            let constraint = match &j.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::FullOuter(c) => Some(c),
                _ => None,
            };
            let known = left.iter().all(Option::is_some) && right.is_some();
            let names: Vec<String> = match constraint {
                Some(JoinConstraint::Using(ns)) => ns
                    .iter()
                    .map(|n| parts(n).pop().unwrap_or_default())
                    .collect(),
                Some(JoinConstraint::Natural) if known => {
                    let on_left: HashSet<&String> = left
                        .iter()
                        .flatten()
                        .flat_map(|r| r.columns.iter())
                        .collect();
                    right
                        .iter()
                        .flat_map(|r| r.columns.iter())
                        .filter(|c| on_left.contains(c))
                        .cloned()
                        .collect()
                }
                Some(JoinConstraint::Natural) => {
                    if self.scope.values().any(|m| !matches!(m, InScope::Plain)) {
                        return Err(refuse(
                            Code::AtRestComputation,
                            "a NATURAL JOIN over a subquery, CTE or function in a statement with columns stored as tokens: tokengate cannot tell which columns it compares; join with ON",
                        ));
                    }
                    Vec::new()
                }
                _ => Vec::new(),
            };
            for name in names {
                match self.scope.get(&name) {
                    None | Some(InScope::Plain) => {}
                    Some(InScope::Ambiguous | InScope::Unknown) => {
                        return Err(refuse(
                            Code::AtRestComputation,
                            format!(
                                "the join compares column {name} of relations that do not store it as tokens of the same label: tokens would be compared with other values"
                            ),
                        ));
                    }
                    Some(InScope::AtRest(_)) if !known => {
                        return Err(refuse(
                            Code::AtRestComputation,
                            format!(
                                "JOIN ... USING ({name}) with a subquery, CTE or function: tokengate cannot tell whether that side holds tokens; join tables, or use ON"
                            ),
                        ));
                    }
                    Some(InScope::AtRest(_)) => {
                        self.compared.insert(name);
                    }
                }
            }
            left.push(right);
        }
        Ok(())
    }

    fn update(&mut self, u: &sqlparser::ast::Update) -> Result<(), Refusal> {
        let TableFactor::Table { name, .. } = &u.table.relation else {
            return Ok(());
        };
        let Some((_, cols)) = self.target(name)? else {
            return Ok(());
        };
        for a in &u.assignments {
            self.assignment(a, &cols, false)?;
        }
        Ok(())
    }

    /// Equality comparisons are tokenized; any other reference to an at-rest column outside
    /// a plain result column is refused.
    fn walk(&mut self, statement: &Statement) -> Result<(), Refusal> {
        let mut pass = Pass1 {
            planner: self,
            error: None,
        };
        let _ = statement.visit(&mut pass);
        if let Some(e) = pass.error {
            return Err(e);
        }
        if let Statement::Insert(i) = statement {
            self.projection(i.returning.as_deref().unwrap_or(&[]), true)?;
        }
        if let Statement::Update(u) = statement {
            self.projection(u.returning.as_deref().unwrap_or(&[]), true)?;
        }
        if let Statement::Delete(d) = statement {
            self.projection(d.returning.as_deref().unwrap_or(&[]), true)?;
        }
        let mut check = Pass2 {
            planner: self,
            error: None,
            params: HashMap::new(),
        };
        let _ = statement.visit(&mut check);
        if let Some(e) = check.error {
            return Err(e);
        }
        // A parameter that is tokenized must mean only that column.
        let counts = check.params;
        for (n, uses) in &counts {
            let tokenized = self.plan.params.iter().any(|(p, _)| p == n)
                || self.plan.array_params.iter().any(|(p, _)| p == n);
            if tokenized && *uses > self.param_uses(*n) {
                return Err(refuse(
                    self.code(Code::AtRestParameter),
                    format!(
                        "${n} is bound to a column whose values tokengate transforms and also used elsewhere"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn param_uses(&self, n: usize) -> usize {
        self.param_counts.get(&n).copied().unwrap_or(0)
    }

    /// Result columns: a bare reference is the read path's business (decrypted for clear
    /// roles). A renamed one inside a subquery or CTE would hide the column's nature.
    fn projection(&mut self, items: &[SelectItem], top: bool) -> Result<(), Refusal> {
        for item in items {
            let (e, alias) = match item {
                SelectItem::UnnamedExpr(e) => (e, None),
                SelectItem::ExprWithAlias { expr, alias } => (expr, Some(fold(alias))),
                _ => continue,
            };
            if let Some(how) = self.at_rest(e) {
                let name = match e {
                    Expr::Identifier(i) => fold(i),
                    Expr::CompoundIdentifier(p) => p.last().map(fold).unwrap_or_default(),
                    _ => String::new(),
                };
                if how.is_ok() && !top && alias.as_ref().is_some_and(|a| *a != name) {
                    return Err(refuse(
                        Code::AtRestComputation,
                        format!(
                            "column {name} is stored as tokens: renaming it inside a subquery or CTE is not supported"
                        ),
                    ));
                }
                self.allowed.insert(addr(e));
            }
        }
        Ok(())
    }
}

/// Finds equality comparisons and result columns.
struct Pass1<'p, 'a> {
    planner: &'p mut Planner<'a>,
    error: Option<Refusal>,
}

impl Pass1<'_, '_> {
    fn compare(&mut self, column: &Expr, other: &Expr) -> Result<bool, Refusal> {
        if self.planner.lookup {
            if !compared_value(other) {
                return Ok(false);
            }
            let Some(how) = self.planner.lookup_column(column)? else {
                return Ok(false);
            };
            self.planner.compared(
                other,
                &how,
                "the value compared with a column shown as tokens",
            )?;
            return Ok(true);
        }
        let Some(how) = self.planner.at_rest(column) else {
            return Ok(false);
        };
        let how = how.map_err(|()| {
            refuse(
                Code::AtRestComputation,
                "a column name in this comparison means a column stored as tokens in one relation and another column elsewhere; qualify differently or split the statement",
            )
        })?;
        if let Some(o) = self.planner.at_rest(other) {
            if o.as_ref().is_ok_and(|o| o.label == how.label) {
                self.planner.allowed.insert(addr(column));
                self.planner.allowed.insert(addr(other));
                self.mark(column);
                self.mark(other);
                return Ok(true);
            }
            return Err(refuse(
                Code::AtRestComputation,
                "columns stored as tokens can only be compared with columns of the same label",
            ));
        }
        if value(unwrap_same_text(other)).is_none() {
            return Ok(false);
        }
        self.planner.compared(
            other,
            &how,
            "the value compared with a column stored as tokens",
        )?;
        self.planner.allowed.insert(addr(column));
        self.mark(column);
        Ok(true)
    }

    /// GROUP BY and DISTINCT on an at-rest column itself: deterministic tokens form the same
    /// groups as the plaintext (one token per value under a label), so they are allowed. An
    /// expression over the column would group on something computed from tokens: refused
    /// by [`Pass2`].
    fn grouping(&mut self, s: &sqlparser::ast::Select) -> Result<(), Refusal> {
        let ambiguous = || {
            refuse(
                Code::AtRestComputation,
                "an ambiguous column stored as tokens in GROUP BY or DISTINCT",
            )
        };
        if let sqlparser::ast::GroupByExpr::Expressions(exprs, modifiers) = &s.group_by {
            if !modifiers.is_empty() && !exprs.is_empty() {
                // WITH ROLLUP/CUBE: left to Pass2 (refused when an at-rest column is in it).
                return Ok(());
            }
            for e in exprs {
                let target = match self.planner.at_rest(e) {
                    Some(how) => {
                        how.map_err(|()| ambiguous())?;
                        Some(e)
                    }
                    // GROUP BY 2 / GROUP BY alias: the result column it names.
                    None => self.output_named(&s.projection, e),
                };
                if let Some(t) = target {
                    if addr(t) == addr(e) {
                        self.planner.allowed.insert(addr(e));
                    }
                    self.mark(t);
                }
            }
        }
        if let Some(sqlparser::ast::Distinct::Distinct) = &s.distinct {
            for item in &s.projection {
                if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item
                    && let Some(how) = self.planner.at_rest(e)
                {
                    how.map_err(|()| ambiguous())?;
                    self.mark(e);
                }
            }
        }
        Ok(())
    }

    /// The bare at-rest result column `GROUP BY n` or `GROUP BY alias` names.
    fn output_named<'s>(&self, projection: &'s [SelectItem], e: &Expr) -> Option<&'s Expr> {
        let item = match e {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => projection.get(n.parse::<usize>().ok()?.checked_sub(1)?),
                _ => None,
            },
            Expr::Identifier(i) => projection.iter().find(|item| {
                matches!(item, SelectItem::ExprWithAlias { alias, .. } if fold(alias) == fold(i))
            }),
            _ => None,
        }?;
        match item {
            SelectItem::UnnamedExpr(x) | SelectItem::ExprWithAlias { expr: x, .. } => {
                matches!(self.planner.at_rest(x), Some(Ok(_))).then_some(x)
            }
            _ => None,
        }
    }

    fn mark(&mut self, e: &Expr) {
        let name = match e {
            Expr::Identifier(i) => fold(i),
            Expr::CompoundIdentifier(p) => p.last().map(fold).unwrap_or_default(),
            _ => return,
        };
        self.planner.compared.insert(name);
    }

    fn expr(&mut self, e: &Expr) -> Result<(), Refusal> {
        match e {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq | BinaryOperator::NotEq,
                right,
            } => {
                let _ = self.compare(left, right)? || self.compare(right, left)?;
            }
            Expr::InList { expr, list, .. } if self.planner.lookup => {
                if list.iter().any(compared_value)
                    && let Some(how) = self.planner.lookup_column(expr)?
                {
                    for item in list {
                        self.planner.compared(
                            item,
                            &how,
                            "a value in IN (...) for a column shown as tokens",
                        )?;
                    }
                }
            }
            Expr::AnyOp {
                left,
                compare_op: BinaryOperator::Eq,
                right,
                ..
            } if self.planner.lookup => {
                if compared_array(right)
                    && let Some(how) = self.planner.lookup_column(left)?
                {
                    self.planner.array(right, &how)?;
                }
            }
            Expr::InList { expr, list, .. } => {
                if let Some(how) = self.planner.at_rest(expr) {
                    let how = how.map_err(|()| {
                        refuse(
                            Code::AtRestComputation,
                            "an ambiguous column stored as tokens in IN (...)",
                        )
                    })?;
                    for item in list {
                        self.planner.compared(
                            item,
                            &how,
                            "a value in IN (...) for a column stored as tokens",
                        )?;
                    }
                    self.planner.allowed.insert(addr(expr));
                    self.mark(expr);
                }
            }
            Expr::AnyOp {
                left,
                compare_op: BinaryOperator::Eq,
                right,
                ..
            } => {
                if let Some(how) = self.planner.at_rest(left) {
                    let how = how.map_err(|()| {
                        refuse(
                            Code::AtRestComputation,
                            "an ambiguous column stored as tokens in = ANY (...)",
                        )
                    })?;
                    self.planner.array(right, &how)?;
                    self.planner.allowed.insert(addr(left));
                    self.mark(left);
                }
            }
            // count(col), count(DISTINCT col): how many values, how many distinct ones, the same
            // on tokens (one per value) as on the plaintext. Whether the role may see these
            // numbers is the read path's decision (`allow:`).
            Expr::Function(f) if is_count(&f.name) => {
                if let sqlparser::ast::FunctionArguments::List(list) = &f.args
                    && let [
                        sqlparser::ast::FunctionArg::Unnamed(
                            sqlparser::ast::FunctionArgExpr::Expr(arg),
                        ),
                    ] = list.args.as_slice()
                    && list.clauses.is_empty()
                    && let Some(how) = self.planner.at_rest(arg)
                {
                    how.map_err(|()| {
                        refuse(
                            Code::AtRestComputation,
                            "an ambiguous column stored as tokens in count(...)",
                        )
                    })?;
                    self.planner.allowed.insert(addr(arg));
                    self.mark(arg);
                }
            }
            Expr::IsNull(inner) | Expr::IsNotNull(inner)
                if self.planner.at_rest(inner).is_some() =>
            {
                self.planner.allowed.insert(addr(inner));
                self.mark(inner);
            }
            _ => {}
        }
        Ok(())
    }
}

impl Visitor for Pass1<'_, '_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if self.planner.lookup {
            // Result columns, grouping and joins compare the stored plaintext: the read
            // path's business.
            return ControlFlow::Continue(());
        }
        let top = self.planner.top == Some(q as *const Query);
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.planner.ctes.insert(fold(&cte.alias.name));
            }
        }
        let mut stack = vec![&*q.body];
        let mut selects = Vec::new();
        while let Some(body) = stack.pop() {
            match body {
                SetExpr::Select(s) => selects.push(&**s),
                SetExpr::SetOperation { left, right, .. } => {
                    stack.push(left);
                    stack.push(right);
                }
                _ => {}
            }
        }
        // UNION ALL of an at-rest column with anything else would decrypt the other branch's
        // values too.
        if selects.len() > 1
            && selects.iter().any(|s| {
                s.projection.iter().any(|item| match item {
                    SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                        self.planner.at_rest(e).is_some()
                    }
                    _ => false,
                })
            })
        {
            self.error = Some(refuse(
                Code::AtRestComputation,
                "a column stored as tokens cannot be combined with UNION, INTERSECT or EXCEPT",
            ));
            return ControlFlow::Break(());
        }
        for s in selects {
            let done = self
                .planner
                .projection(&s.projection, top)
                .and_then(|()| self.grouping(s))
                .and_then(|()| s.from.iter().try_for_each(|t| self.planner.joins(t)));
            if let Err(e) = done {
                self.error = Some(e);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        match self.expr(e) {
            Ok(()) => ControlFlow::Continue(()),
            Err(r) => {
                self.error = Some(r);
                ControlFlow::Break(())
            }
        }
    }
}

/// Refuses every other reference to an at-rest column, and counts parameters.
struct Pass2<'p, 'a> {
    planner: &'p mut Planner<'a>,
    error: Option<Refusal>,
    params: HashMap<usize, usize>,
}

impl Visitor for Pass2<'_, '_> {
    type Break = ();

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Some(Val::Param(n)) = value(e) {
            *self.params.entry(n).or_default() += 1;
        }
        if !self.planner.lookup
            && self.planner.at_rest(e).is_some()
            && !self.planner.allowed.contains(&addr(e))
        {
            let name = match e {
                Expr::Identifier(i) => fold(i),
                Expr::CompoundIdentifier(p) => p.last().map(fold).unwrap_or_default(),
                _ => String::new(),
            };
            self.error = Some(refuse(
                Code::AtRestComputation,
                format!(
                    "column {name} is stored as tokens: a range comparison, LIKE, ORDER BY, GROUP BY, a function, a cast or an expression over it would compute on the tokens, not the values"
                ),
            ));
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Column, Relation, RelationKind, Snapshot};
    use crate::policy::Policy;
    use crate::sql::SearchPath;

    const POLICY: &str = "version: 1
labels:
  ssn: { class: pii, token: digits, at_rest: token }
  card: { class: pii, token: digits, at_rest: token }
columns:
  public.people.ssn: ssn
  public.others.ssn: ssn
  public.cards.ssn: card
roles:
  admin: { default: clear }
";

    fn snapshot() -> Snapshot {
        let table = |oid: u32, name: &str, cols: &[(&str, u32)]| Relation {
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
                table(1, "people", &[("id", 23), ("name", 25), ("ssn", 1042)]),
                table(2, "others", &[("oid_", 23), ("ssn", 1042)]),
                table(3, "cards", &[("cid", 23), ("ssn", 25)]),
                table(4, "plain", &[("pid", 23), ("ssn", 25)]),
            ],
            vec![],
        )
    }

    fn plan(sql: &str) -> Result<Vec<Option<AtRestPlan>>, Refusal> {
        let policy = Policy::from_yaml(POLICY, "p.yaml").unwrap();
        let view = policy.for_role("admin", &[]);
        let snap = snapshot();
        let path = SearchPath::new(vec!["pg_catalog".into(), "public".into()], None);
        let catalog = SessionCatalog {
            snapshot: &snap,
            path: Some(&path),
        };
        let lex = LexSettings::default();
        let analyses = crate::sql::analyze_with(sql, &catalog, lex);
        let texts = crate::sql::split_statements(sql, lex);
        analyses
            .iter()
            .zip(texts)
            .map(|(a, text)| {
                let offset = text.as_ptr() as usize - sql.as_ptr() as usize;
                plan_at_rest(
                    text,
                    offset,
                    lex,
                    a,
                    &AtRestIndex::new(&view, &snap),
                    &catalog,
                )
            })
            .collect()
    }

    #[test]
    fn literal_ranges_are_the_lexers_bytes_after_multibyte_text_and_newlines() {
        let sql = "SELECT 1; INSERT INTO people (id, name, ssn)\n VALUES (1, 'Zoë ''x''', '123-45-6789'), (2, '€', $1)";
        let plans = plan(sql).unwrap();
        assert!(plans[0].is_none());
        let p = plans[1].as_ref().unwrap();
        let texts: Vec<&str> = p.literals.iter().map(|(r, _)| &sql[r.clone()]).collect();
        assert_eq!(texts, ["'123-45-6789'"]);
        assert_eq!(p.params.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1]);
        assert!(plan("SELECT id FROM people WHERE ssn IS NULL").unwrap()[0].is_none());
        let p = plan("SELECT id FROM people WHERE ssn IN ('1', $2) OR ssn = 'é'").unwrap();
        let p = p[0].as_ref().unwrap();
        assert_eq!(p.literals.len(), 2);
        assert_eq!(p.params.len(), 1);
    }

    /// Casts that leave a string as it is are values (SQLAlchemy's asyncpg dialect writes
    /// `$1::VARCHAR`); casts that can cut or pad it are expressions.
    #[test]
    fn casts_that_keep_the_string_are_values() {
        let one = |sql: &str| plan(sql).unwrap().remove(0).unwrap();
        let sql = "INSERT INTO people (id, name, ssn) VALUES (1, 'a', $1::VARCHAR)";
        assert_eq!(
            one(sql).params.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [1]
        );
        let sql = "UPDATE people SET ssn = ('123'::text) WHERE ssn = CAST($2 AS bpchar)";
        let p = one(sql);
        let texts: Vec<&str> = p.literals.iter().map(|(r, _)| &sql[r.clone()]).collect();
        assert_eq!(texts, ["'123'"]);
        assert_eq!(p.params.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [2]);
        for sql in [
            "UPDATE people SET ssn = '123'::varchar(2)",
            "UPDATE people SET ssn = $1::char(11)",
            "UPDATE people SET ssn = $1::int::text",
            "INSERT INTO people (id, name, ssn) VALUES (1, 'a', '1'::people_ssn)",
        ] {
            assert!(plan(sql).is_err(), "{sql}");
        }
    }

    #[test]
    fn any_arrays_are_tokenized_elementwise() {
        let one = |sql: &str| plan(sql).unwrap().remove(0).unwrap();
        let p = one("SELECT id FROM people WHERE ssn = ANY($1)");
        assert_eq!(
            p.array_params.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [1]
        );
        assert!(p.params.is_empty());
        let p = one("SELECT id FROM people WHERE ssn = SOME($1::text[]) AND id = $2");
        assert_eq!(p.array_params.len(), 1);
        let sql = "SELECT id FROM people WHERE ssn = ANY('{1,\"2 3\"}')";
        let p = one(sql);
        let texts: Vec<&str> = p
            .array_literals
            .iter()
            .map(|(r, _)| &sql[r.clone()])
            .collect();
        assert_eq!(texts, ["'{1,\"2 3\"}'"]);
        let p = one("SELECT id FROM people WHERE ssn = ANY(ARRAY['1', $1, NULL])");
        assert_eq!((p.literals.len(), p.params.len()), (1, 1));
        for (sql, code) in [
            (
                "SELECT id FROM people WHERE ssn <> ALL($1)",
                Code::AtRestComputation,
            ),
            (
                "SELECT id FROM people WHERE ssn > ANY($1)",
                Code::AtRestComputation,
            ),
            (
                "SELECT id FROM people WHERE ssn <> ANY($1)",
                Code::AtRestComputation,
            ),
            (
                "SELECT id FROM people WHERE ssn = ANY(SELECT name FROM people)",
                Code::AtRestComputation,
            ),
            (
                "SELECT id FROM people WHERE ssn = ANY(string_to_array('1,2', ','))",
                Code::AtRestValue,
            ),
            (
                "SELECT id FROM people WHERE ssn = ANY($1::int[])",
                Code::AtRestValue,
            ),
            (
                "SELECT id FROM people WHERE ssn = ANY($1) OR name = ANY($1)",
                Code::AtRestParameter,
            ),
            (
                "SELECT id FROM people WHERE ssn = ANY($1) OR ssn = $1",
                Code::AtRestParameter,
            ),
        ] {
            assert_eq!(plan(sql).map_err(|r| r.code).err(), Some(code), "{sql}");
        }
    }

    #[test]
    fn joins_using_and_grouping_compare_tokens_of_one_label() {
        for sql in [
            "SELECT ssn FROM people JOIN others USING (ssn)",
            "SELECT p.id FROM people p LEFT JOIN others o USING (ssn) WHERE ssn = '1'",
            "SELECT * FROM people NATURAL JOIN others",
            "SELECT ssn, count(*) FROM people GROUP BY ssn",
            "SELECT ssn AS s, count(*) FROM people GROUP BY 1",
            "SELECT ssn AS s, count(*) FROM people GROUP BY s HAVING count(*) > 1",
            "SELECT ssn FROM people GROUP BY ssn HAVING ssn = '1'",
            "SELECT DISTINCT ssn FROM people",
            "SELECT count(DISTINCT ssn), count(ssn) FROM people",
            "SELECT name FROM people GROUP BY name HAVING count(DISTINCT ssn) > 1",
        ] {
            plan(sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        }
        for (sql, code) in [
            // Labels differ, or one side is plain: tokens against other values.
            (
                "SELECT * FROM people JOIN cards USING (ssn)",
                Code::AtRestComputation,
            ),
            (
                "SELECT * FROM people JOIN plain USING (ssn)",
                Code::AtRestComputation,
            ),
            (
                "SELECT * FROM people NATURAL JOIN plain",
                Code::AtRestComputation,
            ),
            (
                "SELECT * FROM people JOIN (SELECT '1'::char(11) AS ssn) x USING (ssn)",
                Code::AtRestComputation,
            ),
            (
                "WITH x AS (SELECT ssn FROM others) SELECT * FROM people JOIN x USING (ssn)",
                Code::AtRestComputation,
            ),
            (
                "SELECT * FROM people NATURAL JOIN (SELECT 1 AS id) x",
                Code::AtRestComputation,
            ),
            (
                "SELECT lower(ssn) FROM people GROUP BY lower(ssn)",
                Code::AtRestComputation,
            ),
            (
                "SELECT count(*) FROM people GROUP BY ssn || 'x'",
                Code::AtRestComputation,
            ),
            (
                "SELECT DISTINCT upper(ssn) FROM people",
                Code::AtRestComputation,
            ),
            (
                "SELECT count(DISTINCT lower(ssn)) FROM people",
                Code::AtRestComputation,
            ),
            (
                "SELECT ssn FROM people GROUP BY ssn HAVING max(ssn) > '1'",
                Code::AtRestComputation,
            ),
            (
                "SELECT count(*) FROM people GROUP BY ROLLUP (ssn)",
                Code::AtRestComputation,
            ),
        ] {
            assert_eq!(plan(sql).map_err(|r| r.code).err(), Some(code), "{sql}");
        }
    }

    #[test]
    fn copy_from_plans_text_csv_and_binary() {
        for (sql, kind) in [
            (
                "COPY people (id, ssn) FROM STDIN",
                crate::sql::CopyKind::Text,
            ),
            (
                "COPY people FROM STDIN (FORMAT csv)",
                crate::sql::CopyKind::Csv,
            ),
            (
                "COPY people FROM STDIN (FORMAT binary)",
                crate::sql::CopyKind::Binary,
            ),
            (
                "COPY people (ssn, id) FROM STDIN BINARY",
                crate::sql::CopyKind::Binary,
            ),
        ] {
            let p = plan(sql)
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
                .remove(0);
            let copy = p.and_then(|p| p.copy).unwrap_or_else(|| panic!("{sql}"));
            assert_eq!(copy.format.kind, kind, "{sql}");
        }
        let p = plan("COPY people (ssn, id) FROM STDIN (FORMAT binary)").unwrap();
        let copy = p[0].as_ref().and_then(|p| p.copy.clone()).unwrap();
        assert_eq!((copy.width, copy.fields[0].0), (2, 0));
    }

    const LOOKUP_POLICY: &str = "version: 1
labels:
  email: { class: pii, token: email }
  phone: { class: pii, token: digits }
  ssn: { class: pii, token: digits, at_rest: token }
columns:
  public.customers.email: email
  public.customers.phone: phone
  public.customers.ssn: ssn
roles:
  analyst: { pii: token, filter_on: [email, phone, ssn] }
  watcher: { pii: token, filter_on: [email, phone, ssn], see_activity: true }
  support: { pii: mask, filter_on: [email, phone] }
";

    /// Lookups by token planned for `role` over customers (email, phone: plaintext; ssn:
    /// stored as tokens), a plain table and a view renaming email.
    fn lookups(role: &str, sql: &str) -> Result<Vec<Option<AtRestPlan>>, Refusal> {
        let policy = Policy::from_yaml(LOOKUP_POLICY, "p.yaml").unwrap();
        let view = policy.for_role(role, &[]);
        let rel =
            |oid: u32, name: &str, kind, definition: Option<&str>, cols: &[(&str, u32)]| Relation {
                oid,
                schema: "public".into(),
                name: name.into(),
                kind,
                columns: cols
                    .iter()
                    .enumerate()
                    .map(|(i, (n, t))| Column {
                        attnum: i as i16 + 1,
                        name: n.to_string(),
                        type_oid: *t,
                    })
                    .collect(),
                definition: definition.map(str::to_string),
            };
        let snap = Snapshot::build(
            1,
            vec![
                rel(
                    1,
                    "customers",
                    RelationKind::Table,
                    None,
                    &[
                        ("id", 23),
                        ("email", 25),
                        ("phone", 1043),
                        ("ssn", 25),
                        ("city", 25),
                    ],
                ),
                rel(
                    2,
                    "cities",
                    RelationKind::Table,
                    None,
                    &[("city", 25), ("zip", 25)],
                ),
                rel(
                    3,
                    "contacts",
                    RelationKind::View,
                    Some("SELECT id, email AS contact FROM customers"),
                    &[("id", 23), ("contact", 25)],
                ),
            ],
            vec![],
        );
        let path = SearchPath::new(vec!["pg_catalog".into(), "public".into()], None);
        let catalog = SessionCatalog {
            snapshot: &snap,
            path: Some(&path),
        };
        let lex = LexSettings::default();
        let analyses = crate::sql::analyze_with(sql, &catalog, lex);
        let texts = crate::sql::split_statements(sql, lex);
        analyses
            .iter()
            .zip(texts)
            .map(|(a, text)| {
                let offset = text.as_ptr() as usize - sql.as_ptr() as usize;
                plan_lookups(text, offset, lex, a, &view, &catalog)
            })
            .collect()
    }

    #[test]
    fn lookups_by_token_decrypt_the_values_of_equality_forms() {
        let one = |sql: &str| {
            lookups("analyst", sql)
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
                .remove(0)
                .unwrap_or_else(|| panic!("{sql}: nothing planned"))
        };
        let texts = |sql: &str, p: &AtRestPlan| -> Vec<String> {
            p.literals
                .iter()
                .chain(&p.array_literals)
                .map(|(r, _)| sql[r.clone()].to_string())
                .collect()
        };
        let sql = "SELECT id FROM customers WHERE email = 'a@b.c' AND 'x@y.z' <> email";
        let p = one(sql);
        assert_eq!(texts(sql, &p), ["'a@b.c'", "'x@y.z'"]);
        assert!(
            p.literals
                .iter()
                .all(|(_, h)| h.direction == Direction::Reveal && &*h.label == "email")
        );
        assert!(p.reveals_literals());
        // Nothing of it is a column stored as tokens (no key version to resolve).
        assert_eq!(p.columns().count(), 0);
        let sql = "SELECT id FROM customers c WHERE c.phone IN ('555', $2) OR phone NOT IN ($1::text, ('7'))";
        let p = one(sql);
        assert_eq!(texts(sql, &p), ["'555'", "'7'"]);
        assert_eq!(p.params.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [2, 1]);
        let p = one("SELECT id FROM customers WHERE email = ANY($1) AND phone = ANY($2::text[])");
        assert_eq!(p.array_params.len(), 2);
        assert!(!p.reveals_literals());
        let sql = "SELECT id FROM customers WHERE email = ANY('{a@b.c}') OR email = ANY(ARRAY['x@y.z', $1])";
        let p = one(sql);
        assert_eq!(texts(sql, &p), ["'x@y.z'", "'{a@b.c}'"]);
        assert_eq!(p.params.len(), 1);
        // Writes compare too, with parameters.
        let p = one("UPDATE customers SET city = 'x' WHERE email = $1");
        assert_eq!(p.params.len(), 1);
        // A column stored as tokens is the at-rest plan's business (the role speaks tokens).
        assert!(
            lookups("analyst", "SELECT id FROM customers WHERE ssn = '1'").unwrap()[0].is_none()
        );
    }

    #[test]
    fn other_uses_of_a_token_column_compare_the_plaintext() {
        for sql in [
            "SELECT id FROM customers WHERE email LIKE 'a%'",
            "SELECT id FROM customers WHERE email > 'a' ORDER BY email",
            "SELECT id FROM customers WHERE email = 'a' || 'b'",
            "SELECT id FROM customers WHERE email = lower($1)",
            "SELECT id FROM customers WHERE email = phone",
            "SELECT id FROM customers WHERE email = ANY(string_to_array($1, ','))",
            "SELECT id FROM customers WHERE email IN (SELECT city FROM cities)",
            "SELECT id FROM customers WHERE email = 'a'::varchar COLLATE \"C\"",
            "SELECT id FROM customers WHERE city = 'x'",
            "SELECT email FROM customers",
        ] {
            let p = lookups("analyst", sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
            assert!(p[0].is_none(), "{sql}: {:?}", p[0]);
        }
        // Clear, mask roles compare the plaintext.
        let p = lookups("support", "SELECT id FROM customers WHERE email = 'a@b.c'").unwrap();
        assert!(p[0].is_none());
    }

    #[test]
    fn lookups_that_cannot_be_decrypted_are_refused() {
        for sql in [
            // Names tokengate cannot attribute to the table's column.
            "SELECT id FROM contacts WHERE contact = 'a@b.c' AND id IN (SELECT id FROM customers WHERE email LIKE 'a%')",
            "SELECT x.e FROM (SELECT email AS e FROM customers) x WHERE x.e = 'a@b.c'",
            "WITH x AS (SELECT email AS e FROM customers) SELECT e FROM x WHERE e IN ('a@b.c')",
            // Other string literal forms.
            "SELECT id FROM customers WHERE email = E'a@b.c'",
            "SELECT id FROM customers WHERE email = $$a@b.c$$",
            // A decrypted parameter used elsewhere, or for two labels.
            "SELECT $1::text FROM customers WHERE email = $1",
            "SELECT id FROM customers WHERE email = $1 OR phone = $1",
            // Statements whose compared value tokengate cannot decrypt, or whose text a trigger
            // may record.
            "PREPARE p AS SELECT id FROM customers WHERE email = $1",
            "EXPLAIN SELECT id FROM customers WHERE email = 'a@b.c'",
            "UPDATE customers SET city = 'x' WHERE email = 'a@b.c'",
            "SELECT id INTO t FROM customers WHERE email = 'a@b.c'",
            "WITH u AS (UPDATE customers SET city = city WHERE email = 'a@b.c' RETURNING id) SELECT id FROM u",
            "WITH u AS (DELETE FROM cities RETURNING city) SELECT id FROM customers WHERE email = 'a@b.c'",
        ] {
            let got = lookups("analyst", sql).map_err(|r| r.code);
            assert_eq!(got.err(), Some(Code::TokenLookupUnsupported), "{sql}");
        }
        let got = lookups("watcher", "SELECT id FROM customers WHERE email = $1");
        assert_eq!(
            got.map_err(|r| r.code).err(),
            Some(Code::TokenLookupUnsupported)
        );
    }

    #[test]
    fn a_literal_lookup_is_refused_next_to_current_query() {
        let snap = Snapshot::build(1, vec![], vec![]);
        let lex = LexSettings::default();
        check_revealed_text("SELECT 1 WHERE email = 'a'", lex, &snap).unwrap();
        for sql in [
            "SELECT current_query()",
            "SELECT pg_catalog.\"current_query\"()",
            "SELECT U&\"\\0063urrent_query\"()",
        ] {
            let got = check_revealed_text(sql, lex, &snap).map_err(|r| r.code);
            assert_eq!(got.err(), Some(Code::TokenLookupUnsupported), "{sql}");
        }
    }

    #[test]
    fn everything_else_is_refused() {
        for (sql, code) in [
            ("INSERT INTO people (id) VALUES (1)", Code::AtRestOmitted),
            (
                "INSERT INTO people VALUES (1, 'a', '1'\n'2')",
                Code::AtRestUnsupported,
            ),
            ("UPDATE people SET ssn = lower('x')", Code::AtRestValue),
            (
                "SELECT id FROM people WHERE ssn < '1'",
                Code::AtRestComputation,
            ),
            ("SELECT max(ssn) FROM people", Code::AtRestComputation),
            (
                "SELECT s FROM (SELECT ssn AS s FROM people) x WHERE s = '1'",
                Code::AtRestComputation,
            ),
            (
                "SELECT ssn FROM people UNION ALL SELECT '123-45-6789'",
                Code::AtRestComputation,
            ),
            (
                "SELECT CASE WHEN id = 1 THEN ssn ELSE 'x' END FROM people",
                Code::AtRestComputation,
            ),
            (
                "SELECT id FROM people WHERE ssn = name",
                Code::AtRestComputation,
            ),
            ("INSERT INTO people VALUES (1, 'a', $0)", Code::AtRestValue),
        ] {
            let got = plan(sql).map_err(|r| r.code);
            assert_eq!(got.err(), Some(code), "{sql}");
        }
    }
}
