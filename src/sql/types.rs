//! The analysis result types handed to the session and the policy.

pub use crate::policy::DerivedUse;
use serde::Serialize;

/// What kind of statement this is. [`StatementKind::policy_kind`] maps it onto the policy's
/// statement kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Copy,
    Ddl,
    /// SET, SHOW, BEGIN, COMMIT, LISTEN, DISCARD, DEALLOCATE, CLOSE, VACUUM...
    Utility,
    Explain,
    DeclareCursor,
    /// FETCH or MOVE; `name` is the cursor.
    Fetch,
    Prepare,
    Execute,
    Call,
    /// Creates or alters code or objects that run code the analyser never sees: functions,
    /// procedures, operators, types, domains, casts, aggregates, triggers, rules, views,
    /// policies, defaults and checks with expressions. The policy kind `code`.
    Code,
    Other,
}

impl StatementKind {
    /// The policy's statement kind: select, insert, update, delete, copy, ddl or other.
    /// Cursors and FETCH read like SELECT; MERGE, EXPLAIN, PREPARE/EXECUTE, CALL and utility
    /// statements are "other" (PREPARE's and EXPLAIN's inner kind is in `inner_kind`).
    pub fn policy_kind(self) -> &'static str {
        match self {
            Self::Select | Self::DeclareCursor | Self::Fetch => "select",
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Copy => "copy",
            Self::Ddl => "ddl",
            Self::Code => "code",
            _ => "other",
        }
    }
}

/// A source column reaching an output (or a write).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Source {
    /// `schema.table.column` (lower case unless quoted in the catalog).
    pub column: String,
    /// True when the value arrives unchanged (bare reference through aliases, subqueries, CTEs,
    /// set operations, CASE branches): the caller can rewrite it in the result.
    pub passthrough: bool,
    /// For derived values, the outermost function/operator/cast that derived it
    /// (`lower`, `||`, `::text`, `count`, `row`...).
    pub via: Option<String>,
    /// Set when the value went through a named derived use (`count(col)`, `col IS NULL`...)
    /// applied to the column itself. It survives further derivation (`count(ssn) + 1`,
    /// `sum(length(ssn))` reveal no more than the use itself); a derivation before the use
    /// (`count(lower(ssn))`) never gets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowance: Option<DerivedUse>,
}

impl Source {
    pub fn passthrough(column: impl Into<String>) -> Self {
        Self {
            column: column.into(),
            passthrough: true,
            via: None,
            allowance: None,
        }
    }

    /// The same column through a named derived use. Only a column arriving unchanged
    /// (passthrough) gets the allowance: `count(lower(ssn))` is just derived.
    pub fn derived_as(&self, via: &str, allowance: DerivedUse) -> Self {
        Self {
            allowance: if self.passthrough {
                Some(allowance)
            } else {
                self.allowance
            },
            ..self.derived_via(via)
        }
    }

    /// The same column, now derived through `via` (the outermost derivation wins).
    pub fn derived_via(&self, via: &str) -> Self {
        Self {
            column: self.column.clone(),
            passthrough: false,
            via: Some(via.to_owned()),
            allowance: self.allowance,
        }
    }
}

/// One column of the statement's result, in result order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutputColumn {
    /// The name PostgreSQL would give it, where practical (`?column?` otherwise).
    pub name: String,
    pub sources: Vec<Source>,
}

/// Where a source column is used without being returned: an inference channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Clause {
    Where,
    JoinOn,
    GroupBy,
    OrderBy,
    Having,
    Window,
    DistinctOn,
    Limit,
    /// A CASE condition (`CASE WHEN ssn LIKE '1%' THEN ...`).
    Case,
    /// An aggregate's `FILTER (WHERE ...)`.
    Filter,
    /// An output of a statement under EXPLAIN (ANALYZE row counts leak).
    Explain,
    /// UNION (without ALL), INTERSECT and EXCEPT compare whole rows.
    SetOperation,
    /// SELECT DISTINCT compares whole rows.
    Distinct,
    /// Anything else (e.g. ON CONFLICT conditions, MERGE conditions).
    Other,
    /// An argument of a function that sends it out of the statement (`pg_notify`,
    /// `set_config`, advisory lock keys): other sessions or later statements can read it.
    SideChannel,
}

/// A use of a source column in a clause.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Use {
    pub column: String,
    pub clause: Clause,
    /// True when the column itself is compared, sorted or grouped: an operand of `=`, `<>`,
    /// `<`…, `IN`, `BETWEEN`, `LIKE`, `IS [NOT] NULL`, `IS [NOT] DISTINCT FROM`, `= ANY`, a
    /// join's USING, or an item of ORDER BY / GROUP BY / DISTINCT / a set operation. False
    /// when an expression over it is (`ssn::int = 1`, `lower(email) = …`), which can raise
    /// an error that quotes the value: `filter_on` allows only direct uses.
    pub direct: bool,
    /// The named derived use the column is used through (`WHERE ssn IS NULL`,
    /// `HAVING count(ssn) > 1`), applied to the column itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowance: Option<DerivedUse>,
}

/// Why an analysis is not proven; the caller refuses restricted roles when any is present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// sqlparser could not parse the statement (DO, VACUUM (opts), `TABLE t`...).
    Unparseable,
    UnknownRelation,
    UnknownColumn,
    AmbiguousColumn,
    /// A function whose output cannot be traced (user-defined, extension, set-returning...).
    UntraceableFunction,
    /// A function that moves data through a side channel (files, large objects, dblink...).
    DataExposingFunction,
    /// A catalog relation that exposes data values (`pg_stats`...).
    DataExposingRelation,
    /// Other sessions' activity (`pg_stat_activity`, `pg_stat_statements`): their statement
    /// text may quote protected literals. Waived for roles with `see_activity: true`.
    SessionActivity,
    /// DO blocks, CALL, procedural statements.
    ProceduralCode,
    /// COPY to a server file or program: the proxy never sees the data to rewrite it.
    ServerSideCopy,
    /// A view that could not be resolved (cycle, depth limit, unparseable definition).
    UnresolvedView,
    /// A data-modifying statement inside a query (`WITH d AS (DELETE ...) SELECT`).
    NestedWrite,
    /// A construct the analyser does not model.
    Unsupported,
    /// The statement nests deeper than [`super::MAX_DEPTH`].
    TooDeep,
    /// PostgreSQL's lexer and sqlparser's tokenizer split the text differently, or the text
    /// lexes differently in some PostgreSQL version.
    LexerMismatch,
    /// An operator, type or cast that is not a known built-in (user code can hide behind it).
    NotBuiltin,
    /// A COPY option tokengate does not understand.
    CopyOption,
}

impl ProblemKind {
    /// The catalogue code a refusal for this problem carries.
    pub fn code(self) -> crate::errors::Code {
        use crate::errors::Code;
        match self {
            Self::TooDeep => Code::TooDeep,
            Self::LexerMismatch => Code::LexerMismatch,
            Self::NotBuiltin => Code::NotBuiltin,
            Self::CopyOption => Code::CopyOption,
            Self::ProceduralCode => Code::CodeBlock,
            Self::DataExposingFunction | Self::DataExposingRelation | Self::SessionActivity => {
                Code::DataReaching
            }
            _ => Code::Unproven,
        }
    }
}

/// A reason the analysis is incomplete, with a message naming the construct.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    pub message: String,
}

/// The analysis of one statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementAnalysis {
    pub kind: StatementKind,
    /// For PREPARE, EXPLAIN and DECLARE: the kind of the statement inside.
    pub inner_kind: Option<StatementKind>,
    /// Cursor name (DECLARE, FETCH, MOVE, CLOSE) or prepared statement name (PREPARE, EXECUTE,
    /// DEALLOCATE), folded like an identifier.
    pub name: Option<String>,
    pub outputs: Vec<OutputColumn>,
    pub uses: Vec<Use>,
    /// Sources whose values flow into stored data (CTAS, SELECT INTO, INSERT ... SELECT,
    /// UPDATE ... SET, MERGE, materialized views).
    pub writes: Vec<Source>,
    /// Relations written to (`schema.table`, or the name as written when unresolved).
    pub write_targets: Vec<String>,
    pub problems: Vec<Problem>,
    /// True when the statement may change the catalog (refresh the catalog cache).
    pub is_ddl: bool,
    /// The highest `$n` parameter number referenced.
    pub parameters: usize,
    /// For COPY: the data format, from the parsed options.
    pub copy: Option<super::copy::CopyFormat>,
}

impl StatementAnalysis {
    pub(crate) fn new(kind: StatementKind) -> Self {
        Self {
            kind,
            inner_kind: None,
            name: None,
            outputs: Vec::new(),
            uses: Vec::new(),
            writes: Vec::new(),
            write_targets: Vec::new(),
            problems: Vec::new(),
            is_ddl: matches!(kind, StatementKind::Ddl | StatementKind::Code),
            parameters: 0,
            copy: None,
        }
    }

    /// True when nothing prevented a complete analysis.
    pub fn is_proven(&self) -> bool {
        self.problems.is_empty()
    }
}
