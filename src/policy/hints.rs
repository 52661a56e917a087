//! Plain-words explanations for the mistakes DBAs make in policy YAML: indentation that does
//! not line up, tabs, unquoted values that YAML reads as something else (`***-**-####` is an
//! alias, `###-##-####` a comment), and words that are not actions (`tokenize`, `hide`).
//!
//! The YAML parser notices a bad indentation only where the structure can no longer continue,
//! often a line later, and says so in its own terms. These checks look at the text itself.
use super::node::Pos;

/// Characters that cannot start an unquoted YAML value, with what YAML makes of them.
const INDICATORS: &[(char, &str)] = &[
    ('*', "an alias (a reference to an `&anchor`)"),
    ('&', "an anchor definition"),
    ('!', "a tag"),
    ('@', "a reserved character"),
    ('`', "a reserved character"),
    ('%', "a directive"),
];

/// A located explanation of a YAML syntax error, when one of the known mistakes is in the text
/// at or before the line the parser complained about.
pub fn explain_syntax_error(text: &str, parser_pos: Option<Pos>) -> Option<(Pos, String)> {
    let last_line = parser_pos.map_or(u32::MAX, |p| p.line.saturating_add(1));
    [
        tab_indent(text),
        unquoted_indicator(text),
        comment_in_flow(text),
        bad_indent(text),
    ]
    .into_iter()
    .flatten()
    .filter(|(pos, _)| pos.line <= last_line)
    .min_by_key(|(pos, _)| *pos)
}

/// A position from 1-based line and column numbers.
fn at(line: usize, column: usize) -> Pos {
    Pos {
        line: u32::try_from(line).unwrap_or(u32::MAX),
        column: u32::try_from(column).unwrap_or(u32::MAX),
    }
}

fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l))
}

fn tab_indent(text: &str) -> Option<(Pos, String)> {
    lines(text).find_map(|(n, line)| {
        let indent = &line[..line.len() - line.trim_start().len()];
        indent.find('\t').map(|col| {
            (
                at(n, col + 1),
                "this line is indented with a tab; YAML indents with spaces only".to_string(),
            )
        })
    })
}

/// `mask: ***-**-####` and friends: a value starting with a YAML indicator, unquoted.
fn unquoted_indicator(text: &str) -> Option<(Pos, String)> {
    for (n, line) in lines(text) {
        let bytes = line.as_bytes();
        let mut quote = None;
        for (i, &b) in bytes.iter().enumerate() {
            match (quote, b) {
                (Some(q), _) if b == q => quote = None,
                (Some(_), _) => {}
                (None, b'"' | b'\'') => quote = Some(b),
                (None, b'#') if i == 0 || bytes[i - 1] == b' ' => break,
                (None, b':' | b'-' | b'[' | b'{' | b',') => {
                    let rest = &line[i + 1..];
                    let value = rest.trim_start();
                    // `- x` and `key: x` need the space; flow `{x` and `,x` do not.
                    if value.len() == rest.len() && matches!(b, b':' | b'-') {
                        continue;
                    }
                    let Some(first) = value.chars().next() else {
                        continue;
                    };
                    if let Some((_, what)) = INDICATORS.iter().find(|(c, _)| *c == first) {
                        let end = value.find([',', '}', ']', ' ']).unwrap_or(value.len());
                        let word = &value[..end];
                        let column = i + 1 + (rest.len() - value.len()) + 1;
                        return Some((
                            at(n, column),
                            format!(
                                "{word} must be in quotes: unquoted, YAML reads a value starting \
                                 with `{first}` as {what}; write \"{word}\""
                            ),
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    None
}

/// The content of a line without its comment, and whether it is only a comment or blank.
fn content(line: &str) -> &str {
    let mut quote = None;
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b),
            (None, b'#') if i == 0 || bytes[i - 1] == b' ' => return line[..i].trim_end(),
            _ => {}
        }
    }
    line.trim_end()
}

/// Block indentation that lines up with nothing: a line indented deeper than the line above
/// when that line opens no block, or shallower to a column no enclosing key uses.
fn bad_indent(text: &str) -> Option<(Pos, String)> {
    // (column of a level, line that opened it)
    let mut levels: Vec<(usize, usize)> = vec![(0, 0)];
    let mut opens = false;
    let mut previous = 0;
    let mut flow_depth = 0i32;
    let mut block_scalar: Option<usize> = None;
    for (n, line) in lines(text) {
        let body = content(line);
        if body.trim().is_empty() {
            continue;
        }
        let indent = body.len() - body.trim_start().len();
        if let Some(base) = block_scalar {
            if indent > base {
                continue;
            }
            block_scalar = None;
        }
        if flow_depth > 0 {
            flow_depth += flow_balance(body);
            continue;
        }
        let top = levels.last().map_or(0, |l| l.0);
        if indent > top {
            if !opens {
                return Some((
                    at(n, indent + 1),
                    format!(
                        "this line is indented deeper than line {previous}, which does not end \
                         with `:`; line it up with line {previous} (column {}) or put it under \
                         a key that ends with `:`",
                        top + 1
                    ),
                ));
            }
            levels.push((indent, previous));
        } else if indent < top {
            let columns: Vec<String> = levels.iter().map(|(c, _)| (c + 1).to_string()).collect();
            while levels.last().is_some_and(|l| l.0 > indent) {
                levels.pop();
            }
            if levels.last().map(|l| l.0) != Some(indent) {
                return Some((
                    at(n, indent + 1),
                    format!(
                        "this line's indentation (column {}) lines up with no key above it; \
                         keys at the same level must start in the same column (above: column {})",
                        indent + 1,
                        columns.join(" or ")
                    ),
                ));
            }
        }
        let trimmed = body.trim_start();
        // `- key: value` opens a mapping at the column after the dash.
        if let Some(item) = trimmed.strip_prefix("- ") {
            let inner = indent + 2 + (item.len() - item.trim_start().len());
            levels.push((inner, n));
        }
        opens = body.ends_with(':') || trimmed == "-";
        if body.ends_with('|')
            || body.ends_with('>')
            || body.ends_with("|-")
            || body.ends_with(">-")
        {
            block_scalar = Some(indent);
        }
        flow_depth += flow_balance(body);
        previous = n;
    }
    None
}

/// Net `{`/`[` minus `}`/`]` outside quotes.
fn flow_balance(body: &str) -> i32 {
    let mut quote = None;
    let mut depth = 0;
    for b in body.bytes() {
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b),
            (None, b'{' | b'[') => depth += 1,
            (None, b'}' | b']') => depth -= 1,
            _ => {}
        }
    }
    depth
}

/// For a value that YAML read as null: a `#` after the key started a comment.
pub fn null_value_hint(text: &str, pos: Pos) -> Option<String> {
    let line = text
        .lines()
        .nth(usize::try_from(pos.line).ok()?.checked_sub(1)?)?;
    let after = line.get(usize::try_from(pos.column).ok()?.saturating_sub(1)..)?;
    let value = after.trim_start_matches([':', ' ']);
    value.starts_with('#').then(|| comment_message(value))
}

fn comment_message(value: &str) -> String {
    let word = value.split([' ', ',', '}', ']']).next().unwrap_or(value);
    format!(
        "{word} must be in quotes: unquoted, YAML reads ` #` as the start of a comment; \
         write \"{word}\""
    )
}

/// `{ mask: ###-##-#### }`: the comment swallows the closing bracket.
fn comment_in_flow(text: &str) -> Option<(Pos, String)> {
    for (n, line) in lines(text) {
        let bytes = line.as_bytes();
        let (mut quote, mut depth) = (None, 0);
        for (i, &b) in bytes.iter().enumerate() {
            match (quote, b) {
                (Some(q), _) if b == q => quote = None,
                (Some(_), _) => {}
                (None, b'"' | b'\'') => quote = Some(b),
                (None, b'{' | b'[') => depth += 1,
                (None, b'}' | b']') => depth -= 1,
                (None, b'#') if i > 0 && bytes[i - 1] == b' ' => {
                    let before = line[..i].trim_end();
                    if depth > 0 && before.ends_with([':', ',', '{', '[']) {
                        return Some((at(n, i + 1), comment_message(&line[i..])));
                    }
                    break;
                }
                _ => {}
            }
        }
    }
    None
}

/// For a `key:` with nothing after it: when the next line is not indented deeper, its settings
/// were meant to be nested under it.
pub fn nothing_nested(text: &str, key: Pos) -> Option<String> {
    let index = usize::try_from(key.line).ok()?.checked_sub(1)?;
    let mut rest = text.lines().skip(index);
    let key_line = content(rest.next()?);
    let value = key_line.trim_end();
    if !value.ends_with(':') {
        return None;
    }
    let indent = key_line.len() - key_line.trim_start().len();
    let next = rest.map(content).find(|l| !l.trim().is_empty())?;
    let next_indent = next.len() - next.trim_start().len();
    (next_indent <= indent).then(|| {
        format!(
            "nothing is indented under `{}`: the lines meant for it must start further right \
             than column {} (e.g. {} spaces)",
            value.trim(),
            indent + 1,
            indent + 2
        )
    })
}

/// Words DBAs write for an action, and the action they mean.
pub fn action_synonym(word: &str) -> Option<&'static str> {
    Some(match word.to_ascii_lowercase().as_str() {
        "tokenize" | "tokenise" | "tokenized" | "tokens" | "encrypt" | "fpe" | "ff1" => "token",
        "masked" | "masking" | "redact" | "redacted" | "partial" => "mask",
        "hide" | "hidden" | "block" | "refuse" | "forbid" | "reject" | "none" => "deny",
        "nullify" | "blank" | "empty" => "null",
        "allow" | "plain" | "plaintext" | "show" | "visible" | "cleartext" | "open" => "clear",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(text: &str) -> Option<u32> {
        explain_syntax_error(text, None).map(|(p, _)| p.line)
    }

    #[test]
    fn unquoted_star_patterns_are_named_with_the_fix() {
        let text = "version: 1\nlabels:\n  ssn: { class: pii, mask: ***-**-#### }\n";
        let (pos, message) = explain_syntax_error(text, None).unwrap();
        assert_eq!((pos.line, pos.column), (3, 28), "{message}");
        assert!(message.contains("\"***-**-####\""), "{message}");
        assert!(message.contains("alias"), "{message}");
        let block = "labels:\n  ssn:\n    mask: ***-**-####\n";
        assert_eq!(line_of(block), Some(3));
        assert_eq!(line_of("labels:\n  ssn: { mask: \"***-**-####\" }\n"), None);
        assert_eq!(line_of("a: x*y\nb: '*'\n"), None);
    }

    #[test]
    fn indentation_is_reported_on_the_line_that_is_off() {
        let deeper = "roles:\n  support: { pii: mask }\n   analyst: { pii: token }\n";
        let (pos, message) = explain_syntax_error(deeper, None).unwrap();
        assert_eq!((pos.line, pos.column), (3, 4));
        assert!(message.contains("deeper than line 2"), "{message}");
        let between = "roles:\n    support:\n      pii: mask\n  analyst:\n    pii: token\n";
        let (pos, message) = explain_syntax_error(between, None).unwrap();
        assert_eq!(pos.line, 4, "{message}");
        assert!(message.contains("lines up with no key"), "{message}");
        let fine = "version: 1\nroles:\n  a:\n    pii: mask # note\n  b: { pii: token,\n     financial: mask }\n  c:\n    - x\n    - y: 1\n      z: 2\nd: |\n   text\n e\n";
        assert_eq!(explain_syntax_error(fine, None), None);
        assert_eq!(line_of("a:\n\tb: 1\n"), Some(2));
    }

    #[test]
    fn null_values_from_comments_and_action_synonyms() {
        let text = "labels:\n  ssn: { class: pii, mask: ###-##-#### }\n";
        let hint = null_value_hint(
            text,
            Pos {
                line: 2,
                column: 28,
            },
        )
        .unwrap();
        assert!(hint.contains("\"###-##-####\""), "{hint}");
        assert_eq!(action_synonym("Tokenize"), Some("token"));
        assert_eq!(action_synonym("hide"), Some("deny"));
        assert_eq!(action_synonym("frobnicate"), None);
    }
}
