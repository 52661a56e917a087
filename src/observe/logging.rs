//! Logging setup: `tracing` with text (default) or JSON lines. Filter with `TOKENGATE_LOG` or
//! `RUST_LOG` (default `info`). Log call sites never include passwords, keys or row data, and
//! never literal values from statements: messages that may quote a statement go through
//! [`redact_literals`], and dependencies that log statement text are silenced whatever the
//! filter says ([`SILENCED_TARGETS`]).
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Log targets never written, at any level: sqlparser logs whole statements (`Parsing sql
/// '...'`) and expression trees at debug.
pub const SILENCED_TARGETS: &[&str] = &["sqlparser"];

fn silenced(target: &str) -> bool {
    SILENCED_TARGETS.iter().any(|t| {
        target
            .strip_prefix(t)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?} (allowed: text, json)"
            )),
        }
    }
}

/// Installs the global subscriber once; later calls are ignored (tests call it repeatedly).
pub fn init(format: LogFormat) {
    let filter = std::env::var("TOKENGATE_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // A global filter of its own, so no TOKENGATE_LOG / RUST_LOG directive can turn the
    // silenced targets back on.
    let quiet = tracing_subscriber::filter::filter_fn(|meta| !silenced(meta.target()));
    let registry = tracing_subscriber::registry().with(filter).with(quiet);
    // Colour codes only for a person at a terminal (and not with NO_COLOR), never in files,
    // pipes or log collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => registry.with(layer).try_init(),
        LogFormat::Json => registry.with(layer.json()).try_init(),
    };
}

/// A message that may quote a statement (a refusal reason, a parser error), made fit for the
/// log: quoted text ('...', "...", $tag$...$tag$) becomes `'?'`, numbers become `?` (except
/// `Line: N` and `Column: N` positions), and the token after `found: ` is dropped. Errs on
/// the side of hiding too much: the client still gets the full message.
pub fn redact_literals(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let chars: Vec<char> = message.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if ends_with(&chars[..i], "found: ") {
            // sqlparser prints the offending token unescaped: drop it up to the position.
            let rest: String = chars[i..].iter().collect();
            let cut = rest.find(" at Line:").unwrap_or(rest.len());
            out.push('?');
            i += rest[..cut].chars().count();
            continue;
        }
        match c {
            '\'' | '"' => {
                i = skip_quoted(&chars, i, c);
                out.push(c);
                out.push('?');
                out.push(c);
            }
            '$' if dollar_tag(&chars, i).is_some() => {
                let tag = dollar_tag(&chars, i).unwrap_or_default();
                let body = i + tag.len();
                i = find_seq(&chars, body, &tag).map_or(chars.len(), |end| end + tag.len());
                out.push_str("$?$");
            }
            c if c.is_ascii_digit()
                && !chars[..i]
                    .last()
                    .is_some_and(|p| p.is_alphanumeric() || *p == '_' || *p == '$')
                && !ends_with(&chars[..i], "Line: ")
                && !ends_with(&chars[..i], "Column: ") =>
            {
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_')
                {
                    i += 1;
                }
                out.push('?');
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn ends_with(chars: &[char], suffix: &str) -> bool {
    let n = suffix.chars().count();
    chars.len() >= n && chars[chars.len() - n..].iter().copied().eq(suffix.chars())
}

/// The index after the quoted run starting at `start` (doubled quotes are escapes); the end
/// of the text when it is not closed.
fn skip_quoted(chars: &[char], start: usize, quote: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() {
        if chars[i] == quote {
            if chars.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    chars.len()
}

/// `$tag$` (or `$$`) starting at `i`, as PostgreSQL's lexer reads a dollar quote.
fn dollar_tag(chars: &[char], i: usize) -> Option<Vec<char>> {
    let mut j = i + 1;
    while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
        if j == i + 1 && chars[j].is_ascii_digit() {
            return None; // $1: a parameter
        }
        j += 1;
    }
    (chars.get(j) == Some(&'$')).then(|| chars[i..=j].to_vec())
}

fn find_seq(chars: &[char], from: usize, seq: &[char]) -> Option<usize> {
    (from..=chars.len().saturating_sub(seq.len())).find(|&k| chars[k..k + seq.len()] == *seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_redacted_positions_kept() {
        let m = "cannot parse \"SELECT 'UNIQUECANARY-555' FROM t WHERE id = 123456\": sql parser error: Expected: end of statement, found: 'UNIQUE'CANARY' at Line: 1, Column: 20";
        let r = redact_literals(m);
        assert!(!r.contains("CANARY"), "{r}");
        assert!(!r.contains("123456"), "{r}");
        assert!(r.contains("at Line: 1, Column: 20"), "{r}");
        let r =
            redact_literals("x = 'a''b' AND y = $q$s3cr3t$q$ AND z = $1 AND w = 4.5e3 AND TG101");
        assert_eq!(r, "x = '?' AND y = $?$ AND z = $1 AND w = ? AND TG101");
        let r = redact_literals("found: SingleQuotedString(\"abc\")");
        assert_eq!(r, "found: ?");
        assert_eq!(redact_literals("unterminated 'abc"), "unterminated '?'");
    }

    #[test]
    fn dependency_targets_are_silenced() {
        assert!(silenced("sqlparser"));
        assert!(silenced("sqlparser::parser"));
        assert!(!silenced("sqlparser_other"));
        assert!(!silenced("tokengate::session"));
    }
}
