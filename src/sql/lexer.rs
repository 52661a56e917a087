//! PostgreSQL's lexer (`src/backend/parser/scan.l`), for the decisions that must see the text
//! exactly as the server does: statement boundaries, the analysis-cache key, the parity gate
//! against sqlparser's tokenizer, the nesting bound, and the operator allowlist.
//!
//! Rules followed (PostgreSQL 16+, with every rule that differs from PostgreSQL 15 turned into
//! an [`LexError`] so that no server version can read the text differently from us):
//! - whitespace is `[ \t\n\r\f]`; `\v` (whitespace only since 16) is an error;
//! - `--` comments end at `\n` **or** `\r`; `/* */` comments nest; an unterminated one is an error;
//! - `'…'` with `''`; with `standard_conforming_strings = off` also `\` escapes (as in `E'…'`);
//!   `E'…'` always has backslash escapes; `B'…'`, `X'…'` have neither; `N'…'` is a plain string;
//!   `U&'…'` and `U&"…"` (an error when `standard_conforming_strings` is off, as in PostgreSQL);
//!   two quoted strings separated only by whitespace containing a newline are one literal;
//! - `$tag$…$tag$` dollar quotes (tag: `[A-Za-z\x80-\xff_][A-Za-z\x80-\xff_0-9]*`), `$n` parameters;
//! - identifiers `[A-Za-z\x80-\xff_][A-Za-z\x80-\xff_0-9$]*`; longer than 63 bytes is an error
//!   (PostgreSQL truncates them, so two names we tell apart could be one name to the server);
//! - numbers: `1`, `1.5`, `.5`, `1.5e3`, `1..` (an integer then `..`); `0x…`, `0o…`, `0b…` and `1_000`
//!   (integers since 16, something else before) and a number followed by an identifier character
//!   (trailing junk: an error since 16, two tokens before) are errors;
//! - operators: the longest run of `~!@#^&|`?+-*/%<>=`, cut where a comment starts, and a
//!   trailing `+`/`-` is dropped unless the run contains one of `~!@#^&|`?%`; `::`, `:=`, `..`.
use std::ops::Range;

/// Lexing settings that come from the session (ParameterStatus), not from the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LexSettings {
    /// `standard_conforming_strings`: when off, `'…'` strings have backslash escapes.
    pub standard_conforming_strings: bool,
}

impl Default for LexSettings {
    fn default() -> Self {
        Self {
            standard_conforming_strings: true,
        }
    }
}

/// Why a piece of text cannot be lexed the same way by every PostgreSQL version (or at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LexError {
    UnterminatedComment,
    UnterminatedString,
    UnterminatedIdentifier,
    UnterminatedDollarQuote,
    ZeroLengthIdentifier,
    IdentifierTooLong,
    OperatorTooLong,
    /// `0x1F`, `0o17`, `0b1`, `1_000`: integers since PostgreSQL 16, two tokens before.
    VersionDependentNumber,
    /// `123abc`, `1.5e`, `$1abc`: an error since PostgreSQL 16, two tokens before.
    TrailingJunk,
    /// `U&'…'` while `standard_conforming_strings` is off (PostgreSQL refuses it).
    UnicodeEscapesWithoutStandardStrings,
    /// A character PostgreSQL returns as a lone token the grammar rejects (`{`, `\`, `\v`…).
    UnexpectedCharacter,
}

impl LexError {
    pub fn describe(self) -> &'static str {
        match self {
            Self::UnterminatedComment => "unterminated /* comment",
            Self::UnterminatedString => "unterminated quoted string",
            Self::UnterminatedIdentifier => "unterminated quoted identifier",
            Self::UnterminatedDollarQuote => "unterminated dollar-quoted string",
            Self::ZeroLengthIdentifier => "zero-length delimited identifier",
            Self::IdentifierTooLong => "identifier longer than 63 bytes (PostgreSQL truncates it)",
            Self::OperatorTooLong => "operator longer than 63 bytes",
            Self::VersionDependentNumber => {
                "numeric literal with a prefix or '_' (read differently before PostgreSQL 16)"
            }
            Self::TrailingJunk => "trailing junk after a numeric literal or parameter",
            Self::UnicodeEscapesWithoutStandardStrings => {
                "U&'' string while standard_conforming_strings is off"
            }
            Self::UnexpectedCharacter => "character outside PostgreSQL's SQL syntax",
        }
    }
}

/// What a token is. Keywords are words: PostgreSQL's lexer does not tell them apart either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Unquoted identifier or keyword.
    Word,
    /// `"…"` or `U&"…"`.
    QuotedIdent,
    /// Any string literal: `'…'`, `E'…'`, `N'…'`, `B'…'`, `X'…'`, `U&'…'`, `$$…$$`.
    String,
    /// Integer or numeric literal.
    Number,
    /// `$n`.
    Param,
    /// An operator, `::` or `:=`.
    Op,
    /// `( ) , ; [ ] . : ..`
    Punct,
    Error(LexError),
}

/// A token: its kind and its byte range in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

impl Token {
    pub fn range(&self) -> Range<usize> {
        self.start..self.end
    }

    pub fn text<'a>(&self, sql: &'a str) -> &'a str {
        sql.get(self.start..self.end).unwrap_or("")
    }

    /// True for a word equal to `keyword` (ASCII case-insensitive).
    pub fn is_word(&self, sql: &str, keyword: &str) -> bool {
        self.kind == Kind::Word && self.text(sql).eq_ignore_ascii_case(keyword)
    }

    pub fn is_punct(&self, sql: &str, punct: &str) -> bool {
        self.kind == Kind::Punct && self.text(sql) == punct
    }
}

/// The longest identifier PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_IDENTIFIER_BYTES: usize = 63;

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

fn is_dolq_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit()
}

fn is_op_char(b: u8) -> bool {
    b"~!@#^&|`?+-*/%<>=".contains(&b)
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0c)
}

/// Tokens of `sql` in order; comments and whitespace are skipped. After an error token the
/// rest of the text is not lexed further (PostgreSQL would reject the statement).
pub fn tokenize(sql: &str, settings: LexSettings) -> Vec<Token> {
    let mut out = Vec::with_capacity(sql.len() / 4 + 1);
    let mut lexer = Lexer::new(sql, settings);
    while let Some(token) = lexer.next_token() {
        let stop = matches!(token.kind, Kind::Error(_));
        out.push(token);
        if stop {
            break;
        }
    }
    out
}

/// A streaming lexer over one SQL string.
pub struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
    settings: LexSettings,
}

impl<'a> Lexer<'a> {
    pub fn new(sql: &'a str, settings: LexSettings) -> Self {
        Self {
            s: sql.as_bytes(),
            i: 0,
            settings,
        }
    }

    fn at(&self, i: usize) -> u8 {
        self.s.get(i).copied().unwrap_or(0)
    }

    fn token(&mut self, kind: Kind, start: usize, end: usize) -> Token {
        self.i = end;
        Token { kind, start, end }
    }

    fn error(&mut self, error: LexError, start: usize) -> Token {
        // Nothing after an error is lexed: the server rejects the text.
        let end = self.s.len();
        self.token(Kind::Error(error), start, end)
    }

    /// Skips whitespace and comments; `Err` on an unterminated `/*`.
    fn skip_blank(&mut self) -> Result<(), usize> {
        loop {
            let b = self.at(self.i);
            if self.i >= self.s.len() {
                return Ok(());
            }
            if is_space(b) {
                self.i += 1;
            } else if b == b'-' && self.at(self.i + 1) == b'-' {
                while self.i < self.s.len() && !matches!(self.s[self.i], b'\n' | b'\r') {
                    self.i += 1;
                }
            } else if b == b'/' && self.at(self.i + 1) == b'*' {
                let start = self.i;
                self.i = block_comment_end(self.s, self.i).ok_or(start)?;
            } else {
                return Ok(());
            }
        }
    }

    pub fn next_token(&mut self) -> Option<Token> {
        if let Err(start) = self.skip_blank() {
            return Some(self.error(LexError::UnterminatedComment, start));
        }
        let start = self.i;
        if start >= self.s.len() {
            return None;
        }
        let b = self.s[start];
        let next = self.at(start + 1);
        let scs = self.settings.standard_conforming_strings;
        Some(match b {
            b'\'' => self.quoted_string(start, start, !scs, true),
            b'"' => self.quoted_ident(start, start + 1),
            b'$' => self.dollar(start),
            b'0'..=b'9' => self.number(start),
            b'.' if next.is_ascii_digit() => self.number(start),
            b'.' if next == b'.' => self.token(Kind::Punct, start, start + 2),
            b'.' | b'(' | b')' | b',' | b';' | b'[' | b']' => {
                self.token(Kind::Punct, start, start + 1)
            }
            b':' => match next {
                b':' | b'=' => self.token(Kind::Op, start, start + 2),
                _ => self.token(Kind::Punct, start, start + 1),
            },
            _ if is_op_char(b) => self.operator(start),
            _ if is_ident_start(b) => {
                let lower = b.to_ascii_lowercase();
                let third = self.at(start + 2);
                match (lower, next) {
                    (b'e', b'\'') => self.quoted_string(start, start + 1, true, true),
                    (b'n', b'\'') => self.quoted_string(start, start + 1, !scs, true),
                    (b'b' | b'x', b'\'') => self.quoted_string(start, start + 1, false, false),
                    (b'u', b'&') if third == b'\'' => {
                        if !scs {
                            self.error(LexError::UnicodeEscapesWithoutStandardStrings, start)
                        } else {
                            self.quoted_string(start, start + 2, false, true)
                        }
                    }
                    (b'u', b'&') if third == b'"' => self.quoted_ident(start, start + 3),
                    _ => self.word(start),
                }
            }
            _ => self.error(LexError::UnexpectedCharacter, start),
        })
    }

    fn word(&mut self, start: usize) -> Token {
        let mut end = start + 1;
        while end < self.s.len() && is_ident_cont(self.s[end]) {
            end += 1;
        }
        if end - start > MAX_IDENTIFIER_BYTES {
            return self.error(LexError::IdentifierTooLong, start);
        }
        self.token(Kind::Word, start, end)
    }

    /// A `'…'` literal whose opening quote is at `quote`; the token starts at `start` (prefix).
    fn quoted_string(
        &mut self,
        start: usize,
        quote: usize,
        backslashes: bool,
        doubling: bool,
    ) -> Token {
        let mut i = quote + 1;
        loop {
            match self.s.get(i) {
                None => return self.error(LexError::UnterminatedString, start),
                Some(b'\\') if backslashes => i += 2,
                Some(b'\'') if doubling && self.at(i + 1) == b'\'' => i += 2,
                Some(b'\'') => {
                    // The literal continues after whitespace containing a newline.
                    match continuation(self.s, i + 1) {
                        Some(reopen) => i = reopen + 1,
                        None => return self.token(Kind::String, start, i + 1),
                    }
                }
                Some(_) => i += 1,
            }
        }
    }

    fn quoted_ident(&mut self, start: usize, body: usize) -> Token {
        let mut i = body;
        let mut len = 0usize;
        loop {
            match self.s.get(i) {
                None => return self.error(LexError::UnterminatedIdentifier, start),
                Some(b'"') if self.at(i + 1) == b'"' => {
                    i += 2;
                    len += 1;
                }
                Some(b'"') => break,
                Some(_) => {
                    i += 1;
                    len += 1;
                }
            }
        }
        if len == 0 {
            return self.error(LexError::ZeroLengthIdentifier, start);
        }
        if len > MAX_IDENTIFIER_BYTES {
            return self.error(LexError::IdentifierTooLong, start);
        }
        self.token(Kind::QuotedIdent, start, i + 1)
    }

    fn dollar(&mut self, start: usize) -> Token {
        let next = self.at(start + 1);
        if next.is_ascii_digit() {
            let mut end = start + 1;
            while end < self.s.len() && self.s[end].is_ascii_digit() {
                end += 1;
            }
            if end < self.s.len() && is_ident_cont(self.s[end]) {
                return self.error(LexError::TrailingJunk, start);
            }
            return self.token(Kind::Param, start, end);
        }
        let mut tag_end = start + 1;
        if is_ident_start(next) {
            while tag_end < self.s.len() && is_dolq_cont(self.s[tag_end]) {
                tag_end += 1;
            }
        }
        if self.at(tag_end) != b'$' {
            // `$` alone, or `$tag` without a closing `$`: a lone `$` the grammar rejects.
            return self.error(LexError::UnexpectedCharacter, start);
        }
        let delimiter = &self.s[start..=tag_end];
        let body = tag_end + 1;
        match find(&self.s[body..], delimiter) {
            Some(at) => self.token(Kind::String, start, body + at + delimiter.len()),
            None => self.error(LexError::UnterminatedDollarQuote, start),
        }
    }

    fn number(&mut self, start: usize) -> Token {
        let s = self.s;
        let digits = |mut i: usize| {
            while i < s.len() && s[i].is_ascii_digit() {
                i += 1;
            }
            i
        };
        if s[start] == b'0' && matches!(self.at(start + 1), b'x' | b'X' | b'o' | b'O' | b'b' | b'B')
        {
            return self.error(LexError::VersionDependentNumber, start);
        }
        let mut i = digits(start);
        if self.at(i) == b'.' && self.at(i + 1) != b'.' {
            i = digits(i + 1);
        }
        if matches!(self.at(i), b'e' | b'E') {
            let sign = usize::from(matches!(self.at(i + 1), b'+' | b'-'));
            if self.at(i + 1 + sign).is_ascii_digit() {
                i = digits(i + 1 + sign);
            } else {
                return self.error(LexError::TrailingJunk, start);
            }
        }
        match self.at(i) {
            b'_' => self.error(LexError::VersionDependentNumber, start),
            b if i < s.len() && is_ident_cont(b) => self.error(LexError::TrailingJunk, start),
            _ => self.token(Kind::Number, start, i),
        }
    }

    fn operator(&mut self, start: usize) -> Token {
        let s = self.s;
        let mut end = start;
        while end < s.len() && is_op_char(s[end]) {
            // An operator stops where a comment starts.
            let next = s.get(end + 1).copied();
            if end > start
                && ((s[end] == b'-' && next == Some(b'-'))
                    || (s[end] == b'/' && next == Some(b'*')))
            {
                break;
            }
            end += 1;
        }
        let mut n = end - start;
        if n > 1 && matches!(s[start + n - 1], b'+' | b'-') {
            let special = s[start..start + n - 1]
                .iter()
                .any(|c| b"~!@#^&|`?%".contains(c));
            if !special {
                while n > 1 && matches!(s[start + n - 1], b'+' | b'-') {
                    n -= 1;
                }
            }
        }
        if n > MAX_IDENTIFIER_BYTES {
            return self.error(LexError::OperatorTooLong, start);
        }
        self.token(Kind::Op, start, start + n)
    }
}

/// End (exclusive) of the nested `/* */` comment at `start`, or `None` if unterminated.
fn block_comment_end(s: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    while i + 1 < s.len() {
        if s[i] == b'/' && s[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else if s[i] == b'*' && s[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Some(i);
            }
        } else {
            i += 1;
        }
    }
    None
}

/// After a closing quote at `after - 1`: if only whitespace containing a newline (and `--`
/// comments ended by a newline) separates it from another `'`, the position of that quote.
fn continuation(s: &[u8], after: usize) -> Option<usize> {
    // scan.l: {horiz_whitespace}*{newline}{special_whitespace}*{quote}, where horiz_whitespace
    // is [ \t\f] or a `--` comment, and special_whitespace is {space}+ or a comment + newline.
    let mut i = after;
    loop {
        match s.get(i) {
            Some(b' ' | b'\t' | 0x0c) => i += 1,
            Some(b'-') if s.get(i + 1) == Some(&b'-') => {
                while i < s.len() && !matches!(s[i], b'\n' | b'\r') {
                    i += 1;
                }
            }
            Some(b'\n' | b'\r') => break,
            _ => return None,
        }
    }
    loop {
        match s.get(i) {
            Some(&b) if is_space(b) => i += 1,
            Some(b'-') if s.get(i + 1) == Some(&b'-') => {
                while i < s.len() && !matches!(s[i], b'\n' | b'\r') {
                    i += 1;
                }
                // A comment must be ended by a newline to be part of the separator.
                if i >= s.len() {
                    return None;
                }
            }
            Some(b'\'') => return Some(i),
            _ => return None,
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// True when a byte ≥ 0x80 is directly followed by `\`. In the client-only encodings
/// PostgreSQL accepts (SJIS, BIG5, GBK, UHC, GB18030, JOHAB) such a pair can be one character,
/// so the server, which converts before lexing, would not see that backslash: a literal could
/// end elsewhere. No valid UTF-8 text needs it, so it is refused whatever `client_encoding` is.
pub fn backslash_after_non_ascii(text: &[u8]) -> bool {
    text.windows(2).any(|w| w[0] >= 0x80 && w[1] == b'\\')
}

/// The statements of a token list: ranges of token indices between top-level `;` tokens
/// (PostgreSQL's grammar accepts `;` only between statements, outside `BEGIN ATOMIC` bodies
/// and rule actions, which therefore split into parts that do not parse and are refused).
/// Empty statements are dropped.
pub fn statements(tokens: &[Token], sql: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut begin = 0;
    for (i, token) in tokens.iter().enumerate() {
        if token.is_punct(sql, ";") {
            if i > begin {
                out.push(begin..i);
            }
            begin = i + 1;
        }
    }
    if tokens.len() > begin {
        out.push(begin..tokens.len());
    }
    out
}

/// Words that combine two expressions (or negate one) into a deeper node.
const COMBINING_WORDS: &[&str] = &[
    "and",
    "or",
    "not",
    "is",
    "isnull",
    "notnull",
    "in",
    "like",
    "ilike",
    "similar",
    "between",
    "collate",
    "at",
    "union",
    "intersect",
    "except",
    "overlaps",
    "escape",
    "any",
    "all",
    "some",
];

/// An upper bound of the depth of the syntax tree of one statement, from its tokens.
///
/// sqlparser builds left-deep chains (`a OR b OR …`, `x::t::t…`, `a UNION b UNION …`)
/// iteratively, so its recursion limit does not bound them; the tree's depth is then at most
/// the number of combining tokens (operators, `::`, `[`, and/or/is/in/like/union/…) in one
/// comma-separated segment, plus the same for each parenthesised (or `[…]`) group it
/// contains, plus one per group. A comma only ever separates list items, so a chain never
/// spans one; counting CASE branches together only over-estimates. Computed with an explicit stack, in one pass.
pub fn depth_bound(tokens: &[Token], sql: &str) -> usize {
    // Per open group: (combining tokens in the current segment, deepest child of the
    // current segment, deepest segment so far).
    let mut stack: Vec<(usize, usize, usize)> = vec![(0, 0, 0)];
    let close = |stack: &mut Vec<(usize, usize, usize)>| -> usize {
        let (ops, child, best) = stack.pop().unwrap_or((0, 0, 0));
        best.max(ops + child) + 1
    };
    for token in tokens {
        let text = token.text(sql);
        // Only brackets group: sqlparser matches them strictly (a keyword such as END could
        // be read as a name and must not close a group early).
        let opens = token.kind == Kind::Punct && (text == "(" || text == "[");
        let closes = token.kind == Kind::Punct && (text == ")" || text == "]");
        let combining = match token.kind {
            Kind::Op => true,
            Kind::Punct => text == "[",
            Kind::Word => COMBINING_WORDS.iter().any(|w| text.eq_ignore_ascii_case(w)),
            _ => false,
        };
        if combining && let Some(top) = stack.last_mut() {
            top.0 += 1;
        }
        if opens {
            stack.push((0, 0, 0));
        } else if closes && stack.len() > 1 {
            let depth = close(&mut stack);
            if let Some(top) = stack.last_mut() {
                top.1 = top.1.max(depth);
            }
        } else if token.kind == Kind::Punct && text == "," {
            if let Some(top) = stack.last_mut() {
                top.2 = top.2.max(top.0 + top.1);
                top.0 = 0;
                top.1 = 0;
            }
        }
    }
    // Unclosed groups (a syntax error for the server) still count.
    let mut depth = 0;
    while let Some((ops, child, best)) = stack.pop() {
        depth = best.max(ops + child.max(depth)) + 1;
    }
    depth
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<(Kind, &str)> {
        tokenize(sql, LexSettings::default())
            .into_iter()
            .map(|t| (t.kind, t.text(sql)))
            .collect()
    }

    fn texts(sql: &str, settings: LexSettings) -> Vec<&str> {
        tokenize(sql, settings)
            .into_iter()
            .map(|t| t.text(sql))
            .collect()
    }

    const OFF: LexSettings = LexSettings {
        standard_conforming_strings: false,
    };

    #[test]
    fn dash_comments_end_at_cr_as_well_as_lf() {
        let sql = "SELECT 1 --x\r, ssn FROM t";
        assert_eq!(
            texts(sql, LexSettings::default()),
            ["SELECT", "1", ",", "ssn", "FROM", "t"]
        );
    }

    #[test]
    fn block_comments_nest() {
        assert_eq!(
            texts("a /* x /* y */ z */ b", LexSettings::default()),
            ["a", "b"]
        );
        assert_eq!(
            kinds("a /* x /* y */ b")[1].0,
            Kind::Error(LexError::UnterminatedComment)
        );
    }

    #[test]
    fn strings_follow_standard_conforming_strings() {
        let sql = r"SELECT 'a\', ssn FROM t --'";
        assert_eq!(
            texts(sql, LexSettings::default()),
            ["SELECT", r"'a\'", ",", "ssn", "FROM", "t"]
        );
        // Off: the backslash escapes the quote and the literal runs to the last quote.
        assert_eq!(texts(sql, OFF), ["SELECT", r"'a\', ssn FROM t --'"]);
        assert_eq!(
            tokenize(r"SELECT 'a\'", OFF)[1].kind,
            Kind::Error(LexError::UnterminatedString)
        );
        assert_eq!(
            texts(r"SELECT E'a\'b', 'c''d'", LexSettings::default()),
            ["SELECT", r"E'a\'b'", ",", "'c''d'"]
        );
        assert_eq!(
            tokenize("U&'x'", OFF)[0].kind,
            Kind::Error(LexError::UnicodeEscapesWithoutStandardStrings)
        );
    }

    #[test]
    fn prefixed_literals_and_identifiers() {
        assert_eq!(
            kinds(r#"B'01' X'ff' N'n' U&'d\0061' U&"a" "x""y" abe'q'"#),
            [
                (Kind::String, "B'01'"),
                (Kind::String, "X'ff'"),
                (Kind::String, "N'n'"),
                (Kind::String, r"U&'d\0061'"),
                (Kind::QuotedIdent, r#"U&"a""#),
                (Kind::QuotedIdent, r#""x""y""#),
                (Kind::Word, "abe"),
                (Kind::String, "'q'"),
            ]
        );
        assert_eq!(
            kinds("\"\"")[0].0,
            Kind::Error(LexError::ZeroLengthIdentifier)
        );
    }

    #[test]
    fn string_continuation_needs_a_newline() {
        assert_eq!(
            texts("SELECT 'a'\n  'b', 'c' 'd'", LexSettings::default()),
            ["SELECT", "'a'\n  'b'", ",", "'c'", "'d'"]
        );
        assert_eq!(
            texts("SELECT 'a' -- c\n 'b'", LexSettings::default()),
            ["SELECT", "'a' -- c\n 'b'"]
        );
    }

    #[test]
    fn dollar_quotes_and_parameters() {
        assert_eq!(
            kinds("$1 $$a;b$$ $t$ $x$ $t$ a$b$c"),
            [
                (Kind::Param, "$1"),
                (Kind::String, "$$a;b$$"),
                (Kind::String, "$t$ $x$ $t$"),
                (Kind::Word, "a$b$c"),
            ]
        );
        assert_eq!(kinds("$1abc")[0].0, Kind::Error(LexError::TrailingJunk));
        assert_eq!(
            kinds("$q$ open")[0].0,
            Kind::Error(LexError::UnterminatedDollarQuote)
        );
        assert_eq!(kinds("$1tag$")[0].0, Kind::Error(LexError::TrailingJunk));
    }

    #[test]
    fn numbers_and_their_junk() {
        assert_eq!(
            kinds("1 1.5 .5 1.5e3 1e-3 5."),
            [
                (Kind::Number, "1"),
                (Kind::Number, "1.5"),
                (Kind::Number, ".5"),
                (Kind::Number, "1.5e3"),
                (Kind::Number, "1e-3"),
                (Kind::Number, "5."),
            ]
        );
        assert_eq!(
            kinds("1..2")[..2],
            [(Kind::Number, "1"), (Kind::Punct, "..")]
        );
        for junk in ["0x1F", "1_000", "0b1", "0o7"] {
            assert_eq!(
                kinds(junk)[0].0,
                Kind::Error(LexError::VersionDependentNumber),
                "{junk}"
            );
        }
        for junk in ["123abc", "1.5e", "1e+", "1.x"] {
            assert_eq!(
                kinds(junk)[0].0,
                Kind::Error(LexError::TrailingJunk),
                "{junk}"
            );
        }
    }

    #[test]
    fn operators_follow_the_plus_minus_rule() {
        assert_eq!(texts("a=-1", LexSettings::default()), ["a", "=", "-", "1"]);
        assert_eq!(texts("a+-1", LexSettings::default()), ["a", "+", "-", "1"]);
        assert_eq!(texts("a@-1", LexSettings::default()), ["a", "@-", "1"]);
        assert_eq!(texts("a<=>b", LexSettings::default()), ["a", "<=>", "b"]);
        assert_eq!(texts("a::int", LexSettings::default()), ["a", "::", "int"]);
        assert_eq!(texts("a||b", LexSettings::default()), ["a", "||", "b"]);
        // A comment inside an operator run ends it.
        assert_eq!(texts("a+--x\n1", LexSettings::default()), ["a", "+", "1"]);
        assert_eq!(texts("a*/*x*/1", LexSettings::default()), ["a", "*", "1"]);
        assert_eq!(
            kinds("a {")[1].0,
            Kind::Error(LexError::UnexpectedCharacter)
        );
    }

    #[test]
    fn long_identifiers_are_refused() {
        let long = "a".repeat(64);
        assert_eq!(kinds(&long)[0].0, Kind::Error(LexError::IdentifierTooLong));
        assert_eq!(kinds(&"a".repeat(63))[0].0, Kind::Word);
    }

    #[test]
    fn statements_split_at_semicolons_outside_literals() {
        let sql = "SELECT ';'; /* ; */ SELECT $$;$$ ; -- ;\n SELECT 3;;";
        let tokens = tokenize(sql, LexSettings::default());
        let parts = statements(&tokens, sql);
        assert_eq!(parts.len(), 3);
        assert_eq!(tokens[parts[2].start].text(sql), "SELECT");
    }

    #[test]
    fn depth_bound_counts_chains_and_groups() {
        let depth = |sql: &str| depth_bound(&tokenize(sql, LexSettings::default()), sql);
        let chain: Vec<String> = (0..100).map(|i| format!("id={i}")).collect();
        let or_chain = format!("SELECT 1 FROM t WHERE {}", chain.join(" OR "));
        assert!(depth(&or_chain) >= 199, "{}", depth(&or_chain));
        // A long IN list is a list, not a chain.
        let list: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
        let in_list = format!("SELECT 1 FROM t WHERE id IN ({})", list.join(","));
        assert!(depth(&in_list) < 10, "{}", depth(&in_list));
        assert!(depth("SELECT ((((((1))))))") >= 7);
        assert!(depth("SELECT CASE WHEN a=1 THEN (b+c) END + 1") >= 4);
    }
}
