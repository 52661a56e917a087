//! Exact rewrites of PostgreSQL forms sqlparser 0.63 cannot read into equivalent forms it can.
//!
//! They run on sqlparser's tokens only after [`super::parity`] proved those tokens are
//! PostgreSQL's own, so a keyword here is a keyword to the server (never text inside a literal,
//! a quoted identifier or a comment). Each rewrite keeps what the statement reads and returns:
//! - `TABLE name` (at the start of a statement or of a parenthesised/set-operation query) is
//!   `SELECT * FROM name`, by PostgreSQL's grammar (`simple_select: TABLE relation_expr`).
//! - `ONLY` before a relation name is dropped: `FROM ONLY t` reads a subset of the rows `FROM t`
//!   reads, with the same columns, so the analysis of `FROM t` covers it.
//! - `FOR NO KEY UPDATE` / `FOR KEY SHARE` become `FOR UPDATE` / `FOR SHARE`: row locks of
//!   another strength, with the same rows and columns.
//!
//! - `NOTIFY channel, $$payload$$`: the dollar-quoted payload becomes the same text as a
//!   single-quoted string token (sqlparser's NOTIFY reads only the latter); the value is kept
//!   exactly.
//!
//! `ONLY`, `TABLE`, `FOR` and `KEY`'s neighbours are reserved words in PostgreSQL, so an
//! unquoted one cannot be a user's identifier.
use sqlparser::tokenizer::{Token as T, TokenWithSpan, Whitespace};

fn word(t: &T) -> Option<String> {
    match t {
        T::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_lowercase()),
        _ => None,
    }
}

fn is_name(t: &T) -> bool {
    matches!(t, T::Word(_))
}

/// Rewrites the forms listed in the module documentation; other tokens are untouched.
pub(crate) fn postgres_only_forms(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    // Indexes of significant (non-whitespace) tokens.
    let significant: Vec<usize> = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| !matches!(t.token, T::Whitespace(_)))
        .map(|(i, _)| i)
        .collect();
    let at = |k: usize| significant.get(k).map(|&i| &tokens[i].token);
    let mut blank = Vec::new();
    let mut table_select = Vec::new();

    for (k, &i) in significant.iter().enumerate() {
        let Some(this) = word(&tokens[i].token) else {
            continue;
        };
        let before = k.checked_sub(1).and_then(at);
        let previous = before.and_then(word);
        let next = at(k + 1);
        match this.as_str() {
            "only"
                if next.is_some_and(is_name)
                    && (matches!(before, Some(T::Comma))
                        || matches!(
                            previous.as_deref(),
                            Some("from" | "join" | "update" | "table" | "truncate" | "lock")
                        )) =>
            {
                blank.push(i);
            }
            "table"
                if next.is_some_and(is_name)
                    && (before.is_none()
                        || matches!(before, Some(T::LParen))
                        || matches!(
                            previous.as_deref(),
                            Some("union" | "intersect" | "except" | "all" | "distinct")
                        )) =>
            {
                table_select.push(i);
            }
            "no" if previous.as_deref() == Some("for")
                && next.and_then(word).as_deref() == Some("key")
                && at(k + 2).and_then(word).as_deref() == Some("update") =>
            {
                blank.push(i);
                if let Some(&key) = significant.get(k + 1) {
                    blank.push(key);
                }
            }
            "key"
                if previous.as_deref() == Some("for")
                    && next.and_then(word).as_deref() == Some("share") =>
            {
                blank.push(i);
            }
            _ => {}
        }
    }
    // NOTIFY name , $$…$$
    let notify_payload = match (at(0), at(1), at(2), significant.get(3)) {
        (Some(T::Word(first)), Some(channel), Some(T::Comma), Some(&payload))
            if first.quote_style.is_none()
                && first.value.eq_ignore_ascii_case("notify")
                && is_name(channel)
                && significant.len() == 4 =>
        {
            match &tokens[payload].token {
                T::DollarQuotedString(d) => Some((payload, d.value.clone())),
                _ => None,
            }
        }
        _ => None,
    };
    let mut tokens = tokens;
    if let Some((i, value)) = notify_payload {
        tokens[i].token = T::SingleQuotedString(value);
    }
    if blank.is_empty() && table_select.is_empty() {
        return tokens;
    }
    let mut out = Vec::with_capacity(tokens.len() + 4 * table_select.len());
    for (i, token) in tokens.into_iter().enumerate() {
        if blank.contains(&i) {
            out.push(TokenWithSpan::new(
                T::Whitespace(Whitespace::Space),
                token.span,
            ));
        } else if table_select.contains(&i) {
            let span = token.span;
            for t in [
                T::make_keyword("SELECT"),
                T::Whitespace(Whitespace::Space),
                T::Mul,
                T::Whitespace(Whitespace::Space),
                T::make_keyword("FROM"),
            ] {
                out.push(TokenWithSpan::new(t, span));
            }
        } else {
            out.push(token);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(sql: &str) -> String {
        let tokens = crate::sql::parity::sqlparser_tokens(sql).unwrap_or_default();
        postgres_only_forms(tokens)
            .iter()
            .map(|t| t.token.to_string())
            .collect::<String>()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn rewrites_only_the_postgres_forms() {
        assert_eq!(rewrite("TABLE t"), "SELECT * FROM t");
        assert_eq!(
            rewrite("SELECT 1 UNION ALL TABLE t ORDER BY 1"),
            "SELECT 1 UNION ALL SELECT * FROM t ORDER BY 1"
        );
        assert_eq!(rewrite("SELECT a FROM ONLY t"), "SELECT a FROM t");
        assert_eq!(rewrite("UPDATE ONLY t SET a = 1"), "UPDATE t SET a = 1");
        assert_eq!(
            rewrite("SELECT a FROM t FOR NO KEY UPDATE"),
            "SELECT a FROM t FOR UPDATE"
        );
        assert_eq!(
            rewrite("SELECT a FROM t FOR KEY SHARE"),
            "SELECT a FROM t FOR SHARE"
        );
        // Inside literals, quoted identifiers, and other positions: untouched.
        assert_eq!(rewrite("SELECT 'TABLE t'"), "SELECT 'TABLE t'");
        assert_eq!(rewrite("SELECT \"only\" FROM t"), "SELECT \"only\" FROM t");
        assert_eq!(rewrite("CREATE TABLE t (a int)"), "CREATE TABLE t (a int)");
        assert_eq!(
            rewrite("SELECT a FROM t FETCH FIRST 1 ROWS ONLY"),
            "SELECT a FROM t FETCH FIRST 1 ROWS ONLY"
        );
        assert_eq!(rewrite("SELECT * FROM ONLY (t)"), "SELECT * FROM ONLY (t)");
        assert_eq!(rewrite("NOTIFY ch, $x$a$x$"), "NOTIFY ch, 'a'");
        let catalog = crate::sql::StaticCatalog::demo();
        let a = crate::sql::analyze("NOTIFY Ch, $$it's$$", &catalog);
        assert!(a[0].problems.is_empty(), "{:?}", a[0].problems);
        let n = crate::sql::literal_notifications("NOTIFY Ch, $$it's$$");
        assert_eq!(n, vec![("ch".to_string(), "it's".to_string())]);
        let n = crate::sql::literal_notifications(
            "SELECT pg_notify('Ch', 'x'), pg_notify('c', city) FROM customers",
        );
        assert_eq!(n, vec![("Ch".to_string(), "x".to_string())]);
    }

    #[test]
    fn rewritten_statements_analyse_like_their_equivalents() {
        let catalog = crate::sql::StaticCatalog::demo();
        for (pg, equivalent) in [
            ("TABLE customers", "SELECT * FROM customers"),
            (
                "SELECT ssn FROM ONLY customers",
                "SELECT ssn FROM customers",
            ),
            (
                "SELECT id FROM customers FOR NO KEY UPDATE",
                "SELECT id FROM customers FOR UPDATE",
            ),
        ] {
            let a = crate::sql::analyze(pg, &catalog);
            let b = crate::sql::analyze(equivalent, &catalog);
            assert_eq!(a[0].outputs, b[0].outputs, "{pg}");
            assert!(a[0].problems.is_empty(), "{pg}: {:?}", a[0].problems);
        }
    }
}
