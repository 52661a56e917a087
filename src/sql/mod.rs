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
pub mod copy;
pub mod fingerprint;
pub mod functions;
pub mod lexer;
mod lineage;
mod parity;
mod rewrite;
mod statements;
pub mod types;

#[cfg(test)]
mod tests;

pub use cache::AnalysisCache;
pub use catalog::{Catalog, Relation, RelationKind, SearchPath, StaticCatalog};
pub use copy::{CopyFormat, CopyKind, Field};
pub use fingerprint::{fingerprint, normalize, split_statements};
pub use lexer::LexSettings;
pub use types::{
    Clause, OutputColumn, Problem, ProblemKind, Source, StatementAnalysis, StatementKind, Use,
};

use lexer::{Kind, Token};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// The deepest statement the analyser accepts, as bounded by [`lexer::depth_bound`]: deeper
/// statements (`WHERE id=0 OR id=1 OR … OR id=1999`) are refused with TG120 before sqlparser
/// builds a tree whose recursive walks (lineage, visitors, `Drop`) could exhaust a stack.
pub const MAX_DEPTH: usize = 1000;

/// Analysis runs on a stack of its own this large (reserved, committed only as used), so its
/// depth never depends on the caller's stack (tokio workers have 2 MiB).
const ANALYSIS_STACK_BYTES: usize = 64 << 20;

/// Analyses every statement in `sql` (one entry per statement, split at top-level `;` as
/// PostgreSQL splits it) with `standard_conforming_strings` on. See [`analyze_with`].
pub fn analyze(sql: &str, catalog: &dyn Catalog) -> Vec<StatementAnalysis> {
    analyze_with(sql, catalog, LexSettings::default())
}

/// Analyses every statement in `sql` under the session's lexing settings. Each statement is
/// lexed as PostgreSQL lexes it ([`lexer`]); one that lexes differently in some server
/// version, nests deeper than [`MAX_DEPTH`], or that sqlparser tokenizes differently
/// ([`parity`]) gets a problem instead of an AST-based analysis.
pub fn analyze_with(
    sql: &str,
    catalog: &dyn Catalog,
    settings: LexSettings,
) -> Vec<StatementAnalysis> {
    stacker::grow(ANALYSIS_STACK_BYTES, || {
        let tokens = lexer::tokenize(sql, settings);
        lexer::statements(&tokens, sql)
            .into_iter()
            .map(|range| analyze_part(sql, &tokens[range], catalog, settings))
            .collect()
    })
}

/// (channel, payload) of the notifications one statement's text sends with literal text
/// (`NOTIFY ch, 'x'`, `NOTIFY ch, $$x$$`, `pg_notify('ch', 'x')`); the NOTIFY channel is folded
/// like an identifier. Not cached with the analysis (the cache normalises literals away). Used
/// only to recognise a session's own notifications, so a text read differently than the server
/// reads it just finds no match.
pub fn literal_notifications(sql: &str) -> Vec<(String, String)> {
    if !sql.to_ascii_lowercase().contains("notify") {
        return Vec::new();
    }
    let Ok(tokens) = parity::sqlparser_tokens(sql) else {
        return Vec::new();
    };
    let tokens = rewrite::postgres_only_forms(tokens);
    match Parser::new(&PostgreSqlDialect {})
        .with_tokens_with_locations(tokens)
        .parse_statements()
    {
        Ok(statements) if statements.len() == 1 => {
            statements::literal_notifications(&statements[0])
        }
        _ => Vec::new(),
    }
}

/// `MOVE [direction] {FROM|IN} cursor`: sqlparser 0.63 lacks MOVE. Only words, numbers and
/// signs, so nothing else can hide in it.
fn move_cursor(sql: &str, part: &[Token]) -> Option<String> {
    let first = part.first()?;
    let plain = part.iter().all(|t| match t.kind {
        Kind::Word | Kind::Number => true,
        Kind::Op => matches!(t.text(sql), "+" | "-"),
        _ => false,
    });
    (first.is_word(sql, "move") && plain && part.len() > 1)
        .then(|| part.last().map(|t| t.text(sql).to_ascii_lowercase()))
        .flatten()
}

fn analyze_part(
    sql: &str,
    part: &[Token],
    catalog: &dyn Catalog,
    settings: LexSettings,
) -> StatementAnalysis {
    let (Some(first), Some(last)) = (part.first(), part.last()) else {
        return unparseable("", "empty statement");
    };
    let text = sql.get(first.start..last.end).unwrap_or("");
    if let Some(error) = part.iter().find_map(|t| match t.kind {
        Kind::Error(e) => Some(e),
        _ => None,
    }) {
        return refused(
            text,
            ProblemKind::LexerMismatch,
            format!(
                "the text cannot be read the same way by every PostgreSQL version: {}",
                error.describe()
            ),
        );
    }
    let depth = lexer::depth_bound(part, sql);
    if depth > MAX_DEPTH {
        return refused(
            text,
            ProblemKind::TooDeep,
            format!("the statement nests {depth} levels deep; the limit is {MAX_DEPTH}"),
        );
    }
    let local: Vec<Token> = part
        .iter()
        .map(|t| Token {
            kind: t.kind,
            start: t.start - first.start,
            end: t.end - first.start,
        })
        .collect();
    if lexer::backslash_after_non_ascii(text.as_bytes()) {
        return refused(
            text,
            ProblemKind::LexerMismatch,
            "a backslash right after a non-ASCII character (a client_encoding such as SJIS reads the pair as one character)".into(),
        );
    }
    // The session's standard_conforming_strings can change under us (startup options, SET
    // LOCAL undone by ROLLBACK, a pipelined SET whose ParameterStatus has not arrived): a
    // statement is trusted only if it lexes the same way with the setting on and off.
    let flipped = LexSettings {
        standard_conforming_strings: !settings.standard_conforming_strings,
    };
    if lexer::tokenize(text, flipped) != local {
        return refused(
            text,
            ProblemKind::LexerMismatch,
            "a string literal ends elsewhere when standard_conforming_strings changes (a backslash before a quote)".into(),
        );
    }
    let theirs = match parity::sqlparser_tokens(text) {
        Ok(tokens) => tokens,
        Err(error) => return unparseable(text, &error),
    };
    if let Err(difference) = parity::check(text, &local, &theirs) {
        return refused(text, ProblemKind::LexerMismatch, difference);
    }
    let theirs = if first.is_word(sql, "copy") {
        copy_booleans(theirs)
    } else {
        theirs
    };
    let theirs = rewrite::postgres_only_forms(theirs);
    let dialect = PostgreSqlDialect {};
    let mut analysis = match Parser::new(&dialect)
        .with_tokens_with_locations(theirs)
        .parse_statements()
    {
        Ok(statements) if statements.len() == 1 => {
            statements::analyze_statement(&statements[0], catalog)
        }
        Ok(_) => unparseable(text, "statement boundary is ambiguous"),
        Err(error) => match move_cursor(text, &local) {
            Some(name) => {
                let mut a = StatementAnalysis::new(StatementKind::Fetch);
                a.name = Some(name);
                a
            }
            None => unparseable(text, &redact_parser_error(&error.to_string())),
        },
    };
    statements::check_tokens(text, &local, &mut analysis);
    analysis
}

/// PostgreSQL reads a COPY boolean option's `on`/`off`/`1`/`0` as `true`/`false`
/// (`WITH (FREEZE ON)`, pgbench -i); sqlparser 0.63 knows only TRUE/FALSE. Rewrites those
/// values, in sqlparser's tokens only, after FREEZE and HEADER.
fn copy_booleans(
    mut tokens: Vec<sqlparser::tokenizer::TokenWithSpan>,
) -> Vec<sqlparser::tokenizer::TokenWithSpan> {
    use sqlparser::tokenizer::Token as T;
    // Only in the options, after the statement's own TO/FROM (not inside a COPY (query)).
    let mut depth = 0usize;
    let mut in_options = false;
    let mut option = false;
    for token in &mut tokens {
        match &token.token {
            T::Whitespace(_) => continue,
            T::LParen => depth += 1,
            T::RParen => depth = depth.saturating_sub(1),
            T::Word(w)
                if depth == 0
                    && w.quote_style.is_none()
                    && (w.value.eq_ignore_ascii_case("to")
                        || w.value.eq_ignore_ascii_case("from")) =>
            {
                in_options = true;
            }
            T::Word(w) if option && w.quote_style.is_none() => {
                let value = w.value.to_ascii_lowercase();
                if value == "on" {
                    token.token = T::make_keyword("TRUE");
                } else if value == "off" {
                    token.token = T::make_keyword("FALSE");
                }
            }
            T::Number(n, _) if option && (n == "1" || n == "0") => {
                token.token = T::make_keyword(if n == "1" { "TRUE" } else { "FALSE" });
            }
            _ => {}
        }
        option = in_options
            && matches!(&token.token, T::Word(w)
            if w.quote_style.is_none()
                && (w.value.eq_ignore_ascii_case("freeze") || w.value.eq_ignore_ascii_case("header")));
    }
    tokens
}

/// sqlparser's messages quote the token they found, which may be a literal value: keep what
/// it expected and where.
fn redact_parser_error(error: &str) -> String {
    match error.split_once(", found:") {
        Some((expected, rest)) => match rest.rfind(" at Line:") {
            Some(at) => format!("{expected}{}", &rest[at..]),
            None => expected.to_owned(),
        },
        None => error.to_owned(),
    }
}

/// An analysis whose kind comes from the first keyword and whose only content is a problem.
fn refused(sql: &str, kind: ProblemKind, message: String) -> StatementAnalysis {
    let first = normalize(sql)
        .split(' ')
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    let mut analysis =
        StatementAnalysis::new(statements::keyword_kind(&first).unwrap_or(StatementKind::Other));
    analysis.problems.push(Problem { kind, message });
    analysis
}

/// The analysis of a statement sqlparser refused: kind from the first keyword, a problem,
/// and the special cases we recognise without a parser (DO).
fn unparseable(sql: &str, error: &str) -> StatementAnalysis {
    let normalized = normalize(sql);
    let mut analysis = refused(
        sql,
        ProblemKind::Unparseable,
        format!(
            "cannot parse \"{}\": {error}",
            normalized.chars().take(80).collect::<String>()
        ),
    );
    if normalized.split(' ').next() == Some("do") {
        analysis.problems.push(Problem {
            kind: ProblemKind::ProceduralCode,
            message: "DO blocks run code the analyser cannot see".into(),
        });
    }
    analysis
}
