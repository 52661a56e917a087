//! The parity gate: sqlparser's AST is trusted only when sqlparser's tokenizer split the
//! statement into exactly the tokens PostgreSQL's lexer ([`super::lexer`]) does: the same
//! kinds (word, quoted identifier, string, number, parameter, symbol) at the same byte ranges.
//! Same ranges mean same identifier names, same literal boundaries, same comments and the
//! same statement boundaries, so the tree sqlparser builds is a tree of the text PostgreSQL
//! runs. Any disagreement is reported and the caller refuses restricted roles.

use super::lexer::{Kind, Token};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Location, Token as SqlToken, TokenWithSpan, Tokenizer};

/// The comparable class of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Word,
    QuotedIdent,
    String,
    Number,
    Param,
    Symbol,
    /// Something PostgreSQL's lexer never produces as such (backquotes, `?` placeholders…).
    Foreign,
}

fn ours(kind: Kind) -> Class {
    match kind {
        Kind::Word => Class::Word,
        Kind::QuotedIdent => Class::QuotedIdent,
        Kind::String => Class::String,
        Kind::Number => Class::Number,
        Kind::Param => Class::Param,
        Kind::Op | Kind::Punct => Class::Symbol,
        Kind::Error(_) => Class::Foreign,
    }
}

/// `None` for tokens that are not tokens to PostgreSQL (whitespace, comments, EOF).
fn theirs(token: &SqlToken) -> Option<Class> {
    Some(match token {
        SqlToken::Whitespace(_) | SqlToken::EOF => return None,
        SqlToken::Word(word) => match word.quote_style {
            None => Class::Word,
            Some('"') => Class::QuotedIdent,
            Some(_) => Class::Foreign,
        },
        SqlToken::Number(..) => Class::Number,
        SqlToken::SingleQuotedString(_)
        | SqlToken::EscapedStringLiteral(_)
        | SqlToken::NationalStringLiteral(_)
        | SqlToken::UnicodeStringLiteral(_)
        | SqlToken::HexStringLiteral(_)
        | SqlToken::SingleQuotedByteStringLiteral(_)
        | SqlToken::DollarQuotedString(_) => Class::String,
        SqlToken::Placeholder(p) => {
            if p.len() > 1 && p.starts_with('$') && p[1..].bytes().all(|b| b.is_ascii_digit()) {
                Class::Param
            } else {
                Class::Foreign
            }
        }
        SqlToken::Char(_)
        | SqlToken::DoubleQuotedString(_)
        | SqlToken::TripleSingleQuotedString(_)
        | SqlToken::TripleDoubleQuotedString(_)
        | SqlToken::DoubleQuotedByteStringLiteral(_)
        | SqlToken::TripleSingleQuotedByteStringLiteral(_)
        | SqlToken::TripleDoubleQuotedByteStringLiteral(_)
        | SqlToken::SingleQuotedRawStringLiteral(_)
        | SqlToken::DoubleQuotedRawStringLiteral(_)
        | SqlToken::TripleSingleQuotedRawStringLiteral(_)
        | SqlToken::TripleDoubleQuotedRawStringLiteral(_)
        | SqlToken::QuoteDelimitedStringLiteral(_)
        | SqlToken::NationalQuoteDelimitedStringLiteral(_)
        | SqlToken::Backslash
        | SqlToken::LBrace
        | SqlToken::RBrace => Class::Foreign,
        _ => Class::Symbol,
    })
}

/// Converts sqlparser's (line, column) locations to byte offsets; locations must be asked for
/// in increasing order (tokens are).
struct Offsets<'a> {
    text: &'a str,
    byte: usize,
    line: u64,
    column: u64,
}

impl Offsets<'_> {
    fn byte_at(&mut self, location: Location) -> Option<usize> {
        while (self.line, self.column) < (location.line, location.column) {
            let c = self.text.get(self.byte..)?.chars().next()?;
            self.byte += c.len_utf8();
            if c == '\n' {
                self.line += 1;
                self.column = 1;
            } else {
                self.column += 1;
            }
        }
        ((self.line, self.column) == (location.line, location.column)).then_some(self.byte)
    }
}

/// sqlparser's tokens of `text` (with locations), for the parser to reuse.
pub(crate) fn sqlparser_tokens(text: &str) -> Result<Vec<TokenWithSpan>, String> {
    Tokenizer::new(&PostgreSqlDialect {}, text)
        .tokenize_with_location()
        .map_err(|e| format!("sqlparser cannot tokenize the statement: {}", e.message))
}

/// Checks that `theirs` (sqlparser's tokens of `text`) equals `ours` (PostgreSQL's tokens of
/// the same text, with offsets relative to `text`). `Err` names the first difference.
pub(crate) fn check(
    text: &str,
    ours_tokens: &[Token],
    theirs_tokens: &[TokenWithSpan],
) -> Result<(), String> {
    let mut offsets = Offsets {
        text,
        byte: 0,
        line: 1,
        column: 1,
    };
    let mut ours_iter = ours_tokens.iter();
    for token in theirs_tokens {
        let Some(class) = theirs(&token.token) else {
            continue;
        };
        let start = offsets.byte_at(token.span.start);
        let end = offsets.byte_at(token.span.end);
        let Some(mine) = ours_iter.next() else {
            return Err(difference(
                text,
                start,
                "sqlparser sees a token PostgreSQL does not",
            ));
        };
        if ours(mine.kind) != class || start != Some(mine.start) || end != Some(mine.end) {
            return Err(difference(
                text,
                Some(mine.start),
                "sqlparser reads the text differently from PostgreSQL",
            ));
        }
    }
    match ours_iter.next() {
        None => Ok(()),
        Some(mine) => Err(difference(
            text,
            Some(mine.start),
            "PostgreSQL sees a token sqlparser does not",
        )),
    }
}

fn difference(text: &str, at: Option<usize>, what: &str) -> String {
    // The message names the position only: the text may hold literal values.
    match at {
        Some(at) => format!(
            "{what} at byte {at} of the statement ({} bytes)",
            text.len()
        ),
        None => format!("{what} ({} bytes)", text.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::lexer::{LexSettings, tokenize};

    fn agree(sql: &str, settings: LexSettings) -> Result<(), String> {
        let ours = tokenize(sql, settings);
        let theirs = sqlparser_tokens(sql)?;
        check(sql, &ours, &theirs)
    }

    #[test]
    fn ordinary_statements_agree() {
        for sql in [
            "SELECT c.id, c.email FROM customers c WHERE c.city = 'Paris' AND id > $1",
            "SELECT \"Email\", e'a\\'b', $$x$$, 1.5e3, .5 FROM t -- c\n ORDER BY 2",
            "SELECT a::text || 'x', b->>'k', c @> '{}' FROM t /* x /* y */ */",
            "INSERT INTO t (a) VALUES ('it''s') RETURNING *",
            "SELECT count(*) FROM t WHERE a <> b AND c != d AND e <= f",
        ] {
            assert_eq!(agree(sql, LexSettings::default()), Ok(()), "{sql}");
        }
    }

    #[test]
    fn differentials_are_caught() {
        // sqlparser 0.63 ends `--` comments at CR too: both see `, ssn FROM t`.
        assert_eq!(
            agree("SELECT id FROM t --\r, ssn FROM t", LexSettings::default()),
            Ok(())
        );
        for sql in [
            // String continuation across a newline.
            "SELECT 'a'\n'b' FROM t",
            // One operator to PostgreSQL, several tokens to sqlparser.
            "SELECT a FROM t WHERE b @@@@ 2",
        ] {
            assert!(agree(sql, LexSettings::default()).is_err(), "{sql}");
        }
        // With standard_conforming_strings off a backslash escapes the quote.
        let sql = r"SELECT 'a\' , ssn FROM t WHERE 'x' = 'x'";
        let off = LexSettings {
            standard_conforming_strings: false,
        };
        assert!(agree(sql, off).is_err());
        assert_eq!(agree(sql, LexSettings::default()), Ok(()));
    }
}
