//! Literal-normalised statement fingerprints, computed in one pass without sqlparser.
//!
//! Two statements that differ only in literal values (`WHERE id = 1` vs `WHERE id = 2`), in
//! whitespace, comments, or the case of unquoted words have the same analysis, so they share a
//! cache entry. The normaliser keeps everything that can change an analysis: quoted identifiers
//! verbatim, `$n` parameters, and the numbers of `ORDER BY` / `GROUP BY` ordinal lists (which
//! name output columns).
//!
//! The same lexer splits a string into statements at top-level semicolons, for strings that
//! sqlparser refuses as a whole.

/// Receives the normalised token stream.
trait Sink {
    fn byte(&mut self, byte: u8);
    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.byte(b);
        }
    }
}

impl Sink for Vec<u8> {
    fn byte(&mut self, byte: u8) {
        self.push(byte);
    }
    fn bytes(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// FNV-1a, 64 bits: fast and allocation-free; for logs and metrics, not for security equality
/// (the cache compares normalised text).
struct Fnv(u64);

impl Sink for Fnv {
    fn byte(&mut self, byte: u8) {
        self.0 ^= u64::from(byte);
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

/// The placeholder that replaces every literal.
const PLACEHOLDER: u8 = b'?';

/// A 64-bit fingerprint of the normalised statement text (see the module docs).
pub fn fingerprint(sql: &str) -> u64 {
    let mut hash = Fnv(0xcbf2_9ce4_8422_2325);
    normalize_into(sql.as_bytes(), &mut hash);
    hash.0
}

/// The normalised statement text: literals → `?`, unquoted words lower case, comments removed,
/// one space between tokens.
pub fn normalize(sql: &str) -> String {
    let mut out = Vec::with_capacity(sql.len());
    normalize_into_vec(sql, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Normalises into a reusable buffer (the cache's hot path avoids allocating).
pub(crate) fn normalize_into_vec(sql: &str, out: &mut Vec<u8>) {
    out.clear();
    normalize_into(sql.as_bytes(), out);
}

fn is_word_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_word_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn is_operator_char(b: u8) -> bool {
    matches!(
        b,
        b'+' | b'-'
            | b'*'
            | b'/'
            | b'<'
            | b'>'
            | b'='
            | b'~'
            | b'!'
            | b'@'
            | b'#'
            | b'%'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
    )
}

/// End of a `'...'` string starting at `start` (the quote); `''` is an escaped quote and, for
/// E'' strings, so is `\'`.
fn skip_quoted(s: &[u8], start: usize, backslash_escapes: bool) -> usize {
    let mut i = start + 1;
    while i < s.len() {
        match s[i] {
            b'\\' if backslash_escapes => i += 2,
            b'\'' if s.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    s.len()
}

/// End of a `"..."` identifier (`""` escapes a quote).
fn skip_double_quoted(s: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < s.len() {
        if s[i] == b'"' {
            if s.get(i + 1) == Some(&b'"') {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    s.len()
}

/// If a dollar quote opens at `start`, its end; `$1` parameters are not dollar quotes.
fn dollar_quote_end(s: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < s.len() && s[i] != b'$' {
        if !(is_word_char(s[i]) && s[i] != b'$') || (i == start + 1 && s[i].is_ascii_digit()) {
            return None;
        }
        i += 1;
    }
    if i >= s.len() {
        return None;
    }
    let tag = &s[start..=i];
    let body = i + 1;
    let mut j = body;
    while j + tag.len() <= s.len() {
        if s[j] == b'$' && &s[j..j + tag.len()] == tag {
            return Some(j + tag.len());
        }
        j += 1;
    }
    Some(s.len())
}

/// End of a comment starting at `start`, if one does (`--` to end of line, nested `/* */`).
fn comment_end(s: &[u8], start: usize) -> Option<usize> {
    match (s[start], s.get(start + 1)) {
        (b'-', Some(b'-')) => Some(
            s[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(s.len(), |p| start + p + 1),
        ),
        (b'/', Some(b'*')) => {
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
            Some(s.len())
        }
        _ => None,
    }
}

/// End of a numeric literal starting at `start` (digits, one dot, exponent, `_` separators).
fn number_end(s: &[u8], start: usize) -> usize {
    let mut i = start;
    while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'_' || s[i] == b'.') {
        // An exponent sign belongs to the number: 1e-5.
        if (s[i] == b'e' || s[i] == b'E') && matches!(s.get(i + 1), Some(b'+') | Some(b'-')) {
            i += 1;
        }
        i += 1;
    }
    i
}

/// Tracks whether numbers currently name output columns (`ORDER BY 2`, `GROUP BY 1, 3`).
struct OrdinalState {
    /// Last two significant tokens were `order`/`group` then `by`.
    previous_word: [u8; 8],
    previous_word_len: usize,
    /// Paren depth at which an ordinal list is open.
    list_depth: Option<i32>,
    /// The previous token was `by` or `,` inside the open list.
    expecting_item: bool,
}

impl OrdinalState {
    fn word(&mut self, lower: &[u8], depth: i32) {
        let by_after_order = lower == b"by"
            && matches!(
                &self.previous_word[..self.previous_word_len],
                b"order" | b"group"
            );
        if by_after_order {
            self.list_depth = Some(depth);
            self.expecting_item = true;
        } else {
            if self.list_depth == Some(depth)
                && matches!(
                    lower,
                    b"limit"
                        | b"offset"
                        | b"fetch"
                        | b"for"
                        | b"having"
                        | b"window"
                        | b"union"
                        | b"intersect"
                        | b"except"
                        | b"returning"
                        | b"into"
                )
            {
                self.list_depth = None;
            }
            self.expecting_item = false;
        }
        let len = lower.len().min(self.previous_word.len());
        self.previous_word[..len].copy_from_slice(&lower[..len]);
        self.previous_word_len = if lower.len() <= 8 { len } else { 0 };
    }

    fn other_token(&mut self, token: u8, depth: i32) {
        self.previous_word_len = 0;
        self.expecting_item = token == b',' && self.list_depth == Some(depth);
        if token == b';' {
            self.list_depth = None;
        }
    }

    fn close_paren(&mut self, depth_after: i32) {
        self.previous_word_len = 0;
        self.expecting_item = false;
        if self.list_depth.is_some_and(|d| d > depth_after) {
            self.list_depth = None;
        }
    }
}

fn normalize_into(s: &[u8], out: &mut impl Sink) {
    let mut i = 0;
    let mut depth: i32 = 0;
    let mut first = true;
    let mut ordinals = OrdinalState {
        previous_word: [0; 8],
        previous_word_len: 0,
        list_depth: None,
        expecting_item: false,
    };
    let mut lower_buf = [0u8; 8];
    macro_rules! separate {
        () => {
            if !first {
                out.byte(b' ');
            }
            first = false;
        };
    }
    while i < s.len() {
        let b = s[i];
        if b.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if let Some(end) = comment_end(s, i) {
            i = end;
            continue;
        }
        // Prefixed string literals: E'..', B'..', X'..', N'..', U&'..'.
        let prefix_len = match (b.to_ascii_lowercase(), s.get(i + 1), s.get(i + 2)) {
            (b'e' | b'b' | b'x' | b'n', Some(b'\''), _) => 1,
            (b'u', Some(b'&'), Some(b'\'')) => 2,
            _ => 0,
        };
        let at_word_boundary = i == 0 || !is_word_char(s[i - 1]);
        if prefix_len > 0 && at_word_boundary {
            let backslashes = b.eq_ignore_ascii_case(&b'e');
            i = skip_quoted(s, i + prefix_len, backslashes);
            separate!();
            out.byte(PLACEHOLDER);
            ordinals.other_token(PLACEHOLDER, depth);
            continue;
        }
        match b {
            b'\'' => {
                i = skip_quoted(s, i, false);
                separate!();
                out.byte(PLACEHOLDER);
                ordinals.other_token(PLACEHOLDER, depth);
            }
            b'"' => {
                let end = skip_double_quoted(s, i);
                separate!();
                out.bytes(&s[i..end]);
                ordinals.other_token(b'"', depth);
                i = end;
            }
            b'$' => {
                if let Some(end) = dollar_quote_end(s, i) {
                    separate!();
                    out.byte(PLACEHOLDER);
                    ordinals.other_token(PLACEHOLDER, depth);
                    i = end;
                } else {
                    // `$1`: parameters are kept, they are not literals.
                    let mut end = i + 1;
                    while end < s.len() && s[end].is_ascii_digit() {
                        end += 1;
                    }
                    separate!();
                    out.bytes(&s[i..end]);
                    ordinals.other_token(b'$', depth);
                    i = end.max(i + 1);
                }
            }
            b'0'..=b'9' => {
                let end = number_end(s, i);
                separate!();
                if ordinals.expecting_item && ordinals.list_depth == Some(depth) {
                    out.bytes(&s[i..end]);
                } else {
                    out.byte(PLACEHOLDER);
                }
                ordinals.other_token(b'0', depth);
                i = end;
            }
            b'.' if s.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let end = number_end(s, i);
                separate!();
                out.byte(PLACEHOLDER);
                ordinals.other_token(b'0', depth);
                i = end;
            }
            _ if is_word_start(b) => {
                let mut end = i + 1;
                while end < s.len() && is_word_char(s[end]) {
                    end += 1;
                }
                separate!();
                for &c in &s[i..end] {
                    out.byte(c.to_ascii_lowercase());
                }
                let word = &s[i..end];
                let len = word.len().min(lower_buf.len());
                for (dst, src) in lower_buf.iter_mut().zip(&word[..len]) {
                    *dst = src.to_ascii_lowercase();
                }
                if word.len() <= lower_buf.len() {
                    ordinals.word(&lower_buf[..len], depth);
                } else {
                    ordinals.word(b"", depth);
                }
                i = end;
            }
            _ if is_operator_char(b) => {
                let mut end = i + 1;
                // An operator stops where a comment starts, as in PostgreSQL's lexer.
                while end < s.len() && is_operator_char(s[end]) && comment_end(s, end).is_none() {
                    end += 1;
                }
                separate!();
                out.bytes(&s[i..end]);
                ordinals.other_token(b, depth);
                i = end;
            }
            b':' => {
                let end = if s.get(i + 1) == Some(&b':') {
                    i + 2
                } else {
                    i + 1
                };
                separate!();
                out.bytes(&s[i..end]);
                ordinals.other_token(b, depth);
                i = end;
            }
            _ => {
                separate!();
                out.byte(b);
                match b {
                    b'(' => {
                        depth += 1;
                        ordinals.other_token(b, depth);
                    }
                    b')' => {
                        depth -= 1;
                        ordinals.close_paren(depth);
                    }
                    _ => ordinals.other_token(b, depth),
                }
                i += 1;
            }
        }
    }
}

/// Splits a string into statements at top-level semicolons (quotes, dollar quotes and
/// comments respected). Empty statements are dropped; text is returned as written.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let s = sql.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < s.len() {
        if let Some(end) = comment_end(s, i) {
            i = end;
            continue;
        }
        match s[i] {
            b'\'' => {
                let backslashes = i > 0
                    && s[i - 1].eq_ignore_ascii_case(&b'e')
                    && (i < 2 || !is_word_char(s[i - 2]));
                i = skip_quoted(s, i, backslashes);
            }
            b'"' => i = skip_double_quoted(s, i),
            b'$' if i == 0 || !is_word_char(s[i - 1]) => {
                i = dollar_quote_end(s, i).unwrap_or(i + 1);
            }
            b';' => {
                statements.push(&sql[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    statements.push(&sql[start.min(sql.len())..]);
    statements
        .into_iter()
        .filter(|statement| !normalize(statement).is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "select ? , ? , ? , ? , ? , ? , ? , ?"
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
    fn ordinals_are_kept() {
        let order2 = "SELECT a, b FROM t ORDER BY 2";
        let order3 = "SELECT a, b FROM t ORDER BY 3";
        assert_ne!(fingerprint(order2), fingerprint(order3));
        assert_ne!(
            fingerprint("SELECT a, b FROM t GROUP BY 1"),
            fingerprint("SELECT a, b FROM t GROUP BY 2")
        );
        assert_ne!(
            fingerprint("SELECT a, b FROM t ORDER BY a, 1"),
            fingerprint("SELECT a, b FROM t ORDER BY a, 2")
        );
        assert_ne!(
            fingerprint("SELECT a FROM t ORDER BY f(a, 1), 1"),
            fingerprint("SELECT a FROM t ORDER BY f(a, 1), 2")
        );
        // LIMIT after the list is a plain literal again.
        assert_eq!(
            fingerprint("SELECT a FROM t ORDER BY 1 LIMIT 5"),
            fingerprint("SELECT a FROM t ORDER BY 1 LIMIT 10")
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
        // A quote inside a string must not end it early.
        assert_ne!(
            fingerprint("SELECT 'a'' FROM customers --' FROM t"),
            fingerprint("SELECT 'a' FROM customers")
        );
    }

    #[test]
    fn split_respects_quotes_and_comments() {
        let parts = split_statements("SELECT ';'; /* ; */ SELECT $$;$$ ; -- ;\n SELECT 3;");
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert_eq!(parts[0].trim(), "SELECT ';'");
        assert!(parts[2].contains("SELECT 3"));
    }
}
