//! Literal-normalised statement keys and fingerprints, from the same lexer the analysis uses
//! ([`super::lexer`]), so the cache can never file a statement under another statement's key.
//!
//! Two statements that differ only in literal values (`WHERE id = 1` vs `WHERE id = 2`), in
//! whitespace, comments, or the case of unquoted words have the same analysis, so they share a
//! cache entry. The key keeps everything that can change an analysis:
//! - the session's `standard_conforming_strings` (it changes where literals end);
//! - quoted identifiers verbatim, `$n` parameters, operators and punctuation;
//! - numbers after `ORDER BY`, `GROUP BY`, `PARTITION BY` and `DISTINCT ON`, at any depth until
//!   the list ends (they may name output columns: `ORDER BY 2`, `ORDER BY (2)`);
//! - every literal of a `COPY` statement (its options are literals: `DELIMITER ';'`);
//! - the raw remaining text after a lexer error.

use super::lexer::{Kind, LexSettings, Lexer, Token};

/// The placeholder that replaces every literal.
const PLACEHOLDER: &[u8] = b"?";

/// A 64-bit fingerprint (FNV-1a) of the normalised statement text, for logs and metrics; the
/// cache compares the full normalised text.
pub fn fingerprint(sql: &str) -> u64 {
    let mut key = Vec::with_capacity(sql.len());
    normalize_into_vec(sql, LexSettings::default(), &mut key);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in &key[1..] {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The normalised statement text (with `standard_conforming_strings` on): literals → `?`,
/// unquoted words lower case, comments removed, one space between tokens.
pub fn normalize(sql: &str) -> String {
    let mut out = Vec::with_capacity(sql.len());
    normalize_into_vec(sql, LexSettings::default(), &mut out);
    String::from_utf8_lossy(&out[1..]).into_owned()
}

/// Splits a string into statements at top-level semicolons, as PostgreSQL does (literals,
/// quoted identifiers, dollar quotes and comments respected). Empty statements are dropped;
/// text is returned as written, from the first token to the last.
pub fn split_statements(sql: &str, settings: LexSettings) -> Vec<&str> {
    let tokens = super::lexer::tokenize(sql, settings);
    super::lexer::statements(&tokens, sql)
        .into_iter()
        .filter_map(|r| {
            let first = tokens.get(r.start)?;
            let last = tokens.get(r.end.checked_sub(1)?)?;
            sql.get(first.start..last.end)
        })
        .collect()
}

/// Words that end an ORDER BY / GROUP BY / DISTINCT ON list at the list's own depth.
const LIST_END: &[&str] = &[
    "limit",
    "offset",
    "fetch",
    "for",
    "having",
    "window",
    "union",
    "intersect",
    "except",
    "returning",
    "into",
    "from",
    "where",
    "select",
    "rows",
    "range",
    "groups",
];

/// A literal whose reading depends on the session: a plain, `N''` or `U&''` string holding a
/// backslash (`standard_conforming_strings`), or a backslash right after a non-ASCII byte
/// (`client_encoding`). Kept verbatim in the key, so a statement that lexes differently
/// under the other setting never shares an entry with one that does not: the analysis
/// refuses it whatever the session's (possibly stale) setting says.
fn depends_on_standard_strings(literal: &[u8]) -> bool {
    let escaped = matches!(literal.first(), Some(b'e' | b'E' | b'$'));
    (!escaped && literal.contains(&b'\\')) || super::lexer::backslash_after_non_ascii(literal)
}

/// The cache key: one byte for the settings, then the normalised tokens. Reuses `out`.
pub(crate) fn normalize_into_vec(sql: &str, settings: LexSettings, out: &mut Vec<u8>) {
    out.clear();
    out.push(if settings.standard_conforming_strings {
        b'1'
    } else {
        b'0'
    });
    let mut lexer = Lexer::new(sql, settings);
    let mut depth: usize = 0;
    // Depth at which an ordinal list is open.
    let mut ordinals: Option<usize> = None;
    let mut previous: Option<Token> = None;
    let mut statement_start = true;
    let mut copy = false;
    let mut first = true;
    while let Some(token) = lexer.next_token() {
        if !first {
            out.push(b' ');
        }
        first = false;
        let text = token.text(sql).as_bytes();
        match token.kind {
            Kind::Word => {
                if statement_start {
                    copy = text.eq_ignore_ascii_case(b"copy");
                }
                let opens_list = match previous {
                    Some(p) if p.kind == Kind::Word => {
                        let p = p.text(sql);
                        (text.eq_ignore_ascii_case(b"by")
                            && ["order", "group", "partition"]
                                .iter()
                                .any(|w| p.eq_ignore_ascii_case(w)))
                            || (text.eq_ignore_ascii_case(b"on")
                                && p.eq_ignore_ascii_case("distinct"))
                    }
                    _ => false,
                };
                if opens_list {
                    ordinals = Some(depth);
                } else if ordinals == Some(depth)
                    && LIST_END
                        .iter()
                        .any(|w| text.eq_ignore_ascii_case(w.as_bytes()))
                {
                    ordinals = None;
                }
                out.extend(text.iter().map(u8::to_ascii_lowercase));
            }
            Kind::Number => {
                if copy || ordinals.is_some_and(|d| depth >= d) {
                    out.extend_from_slice(text);
                } else {
                    out.extend_from_slice(PLACEHOLDER);
                }
            }
            Kind::String => {
                if copy || depends_on_standard_strings(text) {
                    out.extend_from_slice(text);
                } else {
                    // The kind of string stays in the key (`U&`, `E`, `B`, `X`, `N`): a
                    // `U&''` string is refused where a plain one is not, and must not share
                    // (and poison) the plain statement's entry.
                    let prefix = text
                        .iter()
                        .position(|&b| b == b'\'' || b == b'$')
                        .unwrap_or(0);
                    out.extend(text[..prefix].iter().map(u8::to_ascii_lowercase));
                    out.extend_from_slice(PLACEHOLDER);
                }
            }
            Kind::Error(_) => {
                // The rest of the text, raw: statements that do not lex never share a key.
                out.push(b'!');
                out.extend_from_slice(&sql.as_bytes()[token.start..]);
                return;
            }
            Kind::Punct => {
                match text {
                    b"(" | b"[" => depth += 1,
                    b")" | b"]" => {
                        depth = depth.saturating_sub(1);
                        if ordinals.is_some_and(|d| depth < d) {
                            ordinals = None;
                        }
                    }
                    b";" => {
                        ordinals = None;
                        copy = false;
                    }
                    _ => {}
                }
                out.extend_from_slice(text);
            }
            Kind::QuotedIdent | Kind::Param | Kind::Op => out.extend_from_slice(text),
        }
        statement_start = token.is_punct(sql, ";");
        previous = Some(token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sql: &str) -> Vec<u8> {
        let mut out = Vec::new();
        normalize_into_vec(sql, LexSettings::default(), &mut out);
        out
    }

    #[test]
    fn string_kinds_do_not_share_a_key() {
        let plain = key("SELECT id FROM t WHERE c = 'Paris'");
        assert_eq!(plain, key("SELECT id FROM t WHERE c = $$Lyon$$"));
        for other in [
            "SELECT id FROM t WHERE c = U&'Paris'",
            "SELECT id FROM t WHERE c = E'Paris'",
            "SELECT id FROM t WHERE c = N'Paris'",
            "SELECT id FROM t WHERE c = B'01'",
        ] {
            assert_ne!(key(other), plain, "{other}");
        }
        assert_eq!(
            key("SELECT u&'a'"),
            key("SELECT U&'b'"),
            "prefixes fold like words"
        );
    }

    #[test]
    fn literals_share_a_fingerprint() {
        let a = "SELECT email FROM customers WHERE id = 1 AND city = 'Paris'";
        let b = "select  email\nFROM customers -- comment\n WHERE id = 42 AND city = 'Lyon'";
        assert_eq!(fingerprint(a), fingerprint(b));
        assert_eq!(
            normalize(a),
            "select email from customers where id = ? and city = ?"
        );
    }

    #[test]
    fn every_literal_form_is_replaced() {
        assert_eq!(
            normalize("SELECT 1.5e-3, 'a''b', E'c\\'d', $$x;y$$, $tag$z$tag$, B'01', X'ff', U&'d'"),
            "select ? , ? , e? , ? , ? , b? , x? , u&?"
        );
    }

    #[test]
    fn comments_are_stripped_including_nested() {
        assert_eq!(
            normalize("SELECT /* a /* b */ c */ 1 -- tail"),
            normalize("SELECT 2")
        );
    }

    #[test]
    fn carriage_return_ends_a_dash_comment() {
        // The attack text of issue 9: PostgreSQL runs `, ssn FROM t`; the key must show it.
        assert_ne!(
            key("SELECT id FROM t --\r, ssn FROM t"),
            key("SELECT id FROM t --\n")
        );
        assert_eq!(
            normalize("SELECT id --\r, ssn FROM t"),
            "select id , ssn from t"
        );
    }

    #[test]
    fn standard_conforming_strings_is_part_of_the_key() {
        let sql = r"SELECT 'a\', id FROM t";
        let mut on = Vec::new();
        let mut off = Vec::new();
        normalize_into_vec(sql, LexSettings::default(), &mut on);
        normalize_into_vec(
            sql,
            LexSettings {
                standard_conforming_strings: false,
            },
            &mut off,
        );
        assert_ne!(on, off);
    }

    #[test]
    fn literals_that_depend_on_standard_strings_are_kept() {
        // Lexed with the setting on, this is three literals; with it off, a literal and `ssn`.
        let attack = r"SELECT id, '\', ' , ssn AS x FROM customers --', 'y' FROM customers";
        let benign = "SELECT id, 'a', 'b', 'c' FROM customers";
        assert_ne!(key(attack), key(benign));
        assert_eq!(key(r"SELECT E'\n', '\'"), key(r"SELECT E'\t', '\'"));
    }

    #[test]
    fn ordinals_are_kept() {
        for (a, b) in [
            (
                "SELECT a, b FROM t ORDER BY 2",
                "SELECT a, b FROM t ORDER BY 3",
            ),
            (
                "SELECT a, b FROM t GROUP BY 1",
                "SELECT a, b FROM t GROUP BY 2",
            ),
            (
                "SELECT a, b FROM t ORDER BY a, 1",
                "SELECT a, b FROM t ORDER BY a, 2",
            ),
            (
                "SELECT a FROM t ORDER BY f(a, 1), 1",
                "SELECT a FROM t ORDER BY f(a, 1), 2",
            ),
            (
                "SELECT a, b FROM t ORDER BY (2)",
                "SELECT a, b FROM t ORDER BY (1)",
            ),
            (
                "SELECT DISTINCT ON (2) a, b FROM t",
                "SELECT DISTINCT ON (1) a, b FROM t",
            ),
        ] {
            assert_ne!(fingerprint(a), fingerprint(b), "{a}");
        }
        // LIMIT after the list is a plain literal again.
        assert_eq!(
            fingerprint("SELECT a FROM t ORDER BY 1 LIMIT 5"),
            fingerprint("SELECT a FROM t ORDER BY 1 LIMIT 10")
        );
    }

    #[test]
    fn copy_options_are_kept() {
        assert_ne!(
            key("COPY t TO STDOUT WITH (DELIMITER ';')"),
            key("COPY t TO STDOUT WITH (DELIMITER ',')")
        );
    }

    #[test]
    fn quoted_identifiers_keep_case_and_unquoted_fold() {
        assert_ne!(
            fingerprint("SELECT \"Email\" FROM t"),
            fingerprint("SELECT \"email\" FROM t")
        );
        assert_eq!(
            fingerprint("SELECT Email FROM T"),
            fingerprint("select email from t")
        );
    }

    #[test]
    fn parameters_are_kept() {
        assert_ne!(
            fingerprint("SELECT $1, $2 FROM t"),
            fingerprint("SELECT $2, $1 FROM t")
        );
        assert_eq!(normalize("SELECT $1"), "select $1");
    }

    #[test]
    fn strings_cannot_hide_structure() {
        assert_ne!(
            fingerprint("SELECT 'a'' FROM customers --' FROM t"),
            fingerprint("SELECT 'a' FROM customers")
        );
    }

    #[test]
    fn split_respects_quotes_and_comments() {
        let parts = split_statements(
            "SELECT ';'; /* ; */ SELECT $$;$$ ; -- ;\n SELECT 3;",
            LexSettings::default(),
        );
        assert_eq!(parts, ["SELECT ';'", "SELECT $$;$$", "SELECT 3"]);
    }
}
