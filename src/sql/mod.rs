//! SQL analysis: which source columns reach each result column (passed through or derived),
//! where columns are used (inference channels), what is written, and what could not be proven.
//!
//! Pure: no I/O, no async. The session calls [`analyze`] (through [`AnalysisCache`]) for each
//! statement and hands the result to the policy. Anything the analyser cannot prove is a
//! [`Problem`], so the caller can fail closed. See `docs/analysis.md` for the rules.
//!
//! - [`types`]: the result types.
//! - [`catalog`]: the [`Catalog`] trait and identifier folding.
//! - [`lineage`]: query lineage and uses.
//! - [`statements`]: statement kinds, DML, COPY, cursors, PREPARE, EXPLAIN.
//! - [`functions`]: the traceable-function allowlist and data-exposing names.
//! - [`fingerprint`] and [`cache`]: literal-normalised caching.

pub mod cache;
pub mod catalog;
pub mod fingerprint;
pub mod functions;
mod lineage;
mod statements;
pub mod types;

#[cfg(test)]
mod tests;

pub use cache::AnalysisCache;
pub use catalog::{Catalog, Relation, RelationKind, SearchPath, StaticCatalog};
pub use fingerprint::{fingerprint, normalize, split_statements};
pub use types::{
    Clause, OutputColumn, Problem, ProblemKind, Source, StatementAnalysis, StatementKind, Use,
};

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// Analyses every statement in `sql` (one entry per statement). A string sqlparser cannot
/// parse as a whole is split at top-level semicolons and each part parsed alone, so one bad
/// statement does not hide the others; an unparseable part yields an analysis whose kind comes
/// from its first keyword and whose problems say why.
/// `MOVE [direction] {FROM|IN} cursor`: the first word is MOVE and the statement is one line
/// of words (no parentheses or quotes that could hide another statement).
fn is_move(part: &str) -> bool {
    let t = part.trim_start();
    t.get(..5).is_some_and(|w| w.eq_ignore_ascii_case("move "))
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b" _+-\t\n\r".contains(&b))
}

pub fn analyze(sql: &str, catalog: &dyn Catalog) -> Vec<StatementAnalysis> {
    let dialect = PostgreSqlDialect {};
    match Parser::parse_sql(&dialect, sql) {
        Ok(statements) if !statements.is_empty() => statements
            .iter()
            .map(|statement| statements::analyze_statement(statement, catalog))
            .collect(),
        Ok(_) => Vec::new(),
        Err(_) => split_statements(sql)
            .into_iter()
            .map(|part| match Parser::parse_sql(&dialect, part) {
                Ok(statements) => {
                    let mut analyses: Vec<StatementAnalysis> = statements
                        .iter()
                        .map(|statement| statements::analyze_statement(statement, catalog))
                        .collect();
                    match analyses.len() {
                        1 => analyses.pop().unwrap_or_else(|| unparseable(part, "empty")),
                        _ => unparseable(part, "statement boundary is ambiguous"),
                    }
                }
                // MOVE repositions a cursor and returns no rows; sqlparser 0.63 lacks it.
                Err(_) if is_move(part) => {
                    let mut a = StatementAnalysis::new(StatementKind::Fetch);
                    a.name = part.split_whitespace().last().map(str::to_lowercase);
                    a
                }
                Err(error) => unparseable(part, &error.to_string()),
            })
            .collect(),
    }
}

/// The analysis of a statement sqlparser refused: kind from the first keyword, a problem,
/// and the special cases we recognise without a parser (DO, MOVE, TABLE).
fn unparseable(sql: &str, error: &str) -> StatementAnalysis {
    let normalized = normalize(sql);
    let mut words = normalized.split(' ');
    let first = words.next().unwrap_or("").to_ascii_uppercase();
    let kind = statements::keyword_kind(&first).unwrap_or(StatementKind::Other);
    let mut analysis = StatementAnalysis::new(kind);
    analysis.problems.push(Problem {
        kind: ProblemKind::Unparseable,
        message: format!(
            "cannot parse \"{}\": {error}",
            normalized.chars().take(80).collect::<String>()
        ),
    });
    match first.as_str() {
        "DO" => analysis.problems.push(Problem {
            kind: ProblemKind::ProceduralCode,
            message: "DO blocks run code the analyser cannot see".into(),
        }),
        // MOVE returns no rows; naming the cursor lets the session track it.
        "MOVE" => analysis.name = normalized.split(' ').next_back().map(str::to_owned),
        _ => {}
    }
    analysis
}
