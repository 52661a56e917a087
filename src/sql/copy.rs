//! COPY's data format, taken from the parsed statement (both `WITH (FORMAT csv, DELIMITER ';')`
//! and the legacy `CSV DELIMITER ';'` syntax), and how one data line splits into fields under
//! it. The COPY TO rewriter splits rows with [`CopyFormat::split`]; nothing else guesses.

use serde::Serialize;
use sqlparser::ast::{CopyLegacyCsvOption, CopyLegacyOption, CopyOption};
use std::ops::Range;

/// COPY's FORMAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyKind {
    Text,
    Csv,
    Binary,
}

/// The format COPY reads or writes rows in, with PostgreSQL's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct CopyFormat {
    pub kind: CopyKind,
    /// One byte (PostgreSQL refuses anything else). Tab for text, `,` for CSV.
    pub delimiter: u8,
    /// CSV only: the quote byte (`"`).
    pub quote: u8,
    /// CSV only: the byte that escapes a quote inside a quoted field (default: the quote).
    pub escape: u8,
    /// The text that stands for NULL: `\N` in text, the empty unquoted field in CSV.
    pub null: String,
    /// The first line is a header (CSV and, for COPY FROM, text).
    pub header: bool,
    /// CSV `FORCE_NOT_NULL`: an unquoted field equal to the NULL string is stored as that
    /// string, not as NULL.
    pub force_not_null: bool,
}

/// One field of a data line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The raw bytes of the field in the line (quotes included for a quoted CSV field).
    pub range: Range<usize>,
    /// A CSV field written with quotes (its content may hold delimiters, quotes, newlines).
    pub quoted: bool,
}

impl CopyFormat {
    fn defaults(kind: CopyKind) -> Self {
        match kind {
            CopyKind::Csv => Self {
                kind,
                delimiter: b',',
                quote: b'"',
                escape: b'"',
                null: String::new(),
                header: false,
                force_not_null: false,
            },
            CopyKind::Text | CopyKind::Binary => Self {
                kind,
                delimiter: b'\t',
                quote: b'"',
                escape: b'"',
                null: "\\N".into(),
                header: false,
                force_not_null: false,
            },
        }
    }

    /// The format the options describe, or why tokengate cannot apply it.
    pub fn from_options(
        options: &[CopyOption],
        legacy: &[CopyLegacyOption],
    ) -> Result<Self, String> {
        let mut kind = CopyKind::Text;
        let mut delimiter = None;
        let mut quote = None;
        let mut escape = None;
        let mut null = None;
        let mut header = false;
        let mut force_not_null = false;
        for option in options {
            match option {
                CopyOption::Format(name) => {
                    kind = match name.value.to_ascii_lowercase().as_str() {
                        "text" => CopyKind::Text,
                        "csv" => CopyKind::Csv,
                        "binary" => CopyKind::Binary,
                        other => return Err(format!("COPY format {other:?} is not understood")),
                    }
                }
                CopyOption::Delimiter(c) => delimiter = Some(*c),
                CopyOption::Quote(c) => quote = Some(*c),
                CopyOption::Escape(c) => escape = Some(*c),
                CopyOption::Null(s) => null = Some(s.clone()),
                CopyOption::Header(h) => header = *h,
                CopyOption::Encoding(e) => check_encoding(e)?,
                CopyOption::ForceNotNull(_) => force_not_null = true,
                CopyOption::Freeze(_) | CopyOption::ForceQuote(_) | CopyOption::ForceNull(_) => {}
            }
        }
        for option in legacy {
            match option {
                CopyLegacyOption::Binary => kind = CopyKind::Binary,
                CopyLegacyOption::Delimiter(c) => delimiter = Some(*c),
                CopyLegacyOption::Null(s) => null = Some(s.clone()),
                CopyLegacyOption::Csv(csv) => {
                    kind = CopyKind::Csv;
                    for o in csv {
                        match o {
                            CopyLegacyCsvOption::Header => header = true,
                            CopyLegacyCsvOption::Quote(c) => quote = Some(*c),
                            CopyLegacyCsvOption::Escape(c) => escape = Some(*c),
                            CopyLegacyCsvOption::ForceNotNull(_) => force_not_null = true,
                            CopyLegacyCsvOption::ForceQuote(_) => {}
                        }
                    }
                }
                other => return Err(format!("COPY option {other} is not understood")),
            }
        }
        let mut format = Self::defaults(kind);
        let byte = |c: char, what: &str| -> Result<u8, String> {
            u8::try_from(c)
                .ok()
                .filter(|b| b.is_ascii() && !matches!(b, b'\r' | b'\n' | b'\\'))
                .ok_or_else(|| format!("COPY {what} must be one ASCII character"))
        };
        if let Some(c) = delimiter {
            format.delimiter = byte(c, "DELIMITER")?;
        }
        if let Some(c) = quote {
            format.quote = byte(c, "QUOTE")?;
            format.escape = format.quote;
        }
        if let Some(c) = escape {
            format.escape = u8::try_from(c)
                .ok()
                .filter(u8::is_ascii)
                .ok_or("COPY ESCAPE must be one ASCII character")?;
        }
        if let Some(null) = null {
            format.null = null;
        }
        format.force_not_null = force_not_null;
        format.header = header;
        Ok(format)
    }

    /// True when the NULL marker cannot be the text of a value: `\N` in text format (a real
    /// backslash is written `\\`), the empty unquoted field in CSV (an empty string is `""`).
    /// With any other marker, a value equal to it is written the same way as NULL.
    pub fn null_is_unambiguous(&self) -> bool {
        match self.kind {
            CopyKind::Text => self.null == "\\N",
            CopyKind::Csv => self.null.is_empty(),
            CopyKind::Binary => true,
        }
    }

    /// Splits one data line (without its line ending) into fields: on every delimiter byte in
    /// text format (COPY escapes delimiters inside values with a backslash), outside quoted
    /// fields in CSV. `None` for binary, or a CSV line whose quotes do not close (a value
    /// with a newline spans lines: the caller refuses it).
    pub fn split(&self, line: &[u8]) -> Option<Vec<Field>> {
        let mut fields = Vec::new();
        self.split_into(line, &mut fields).then_some(fields)
    }

    /// [`Self::split`] appending to `fields` (kept across lines by bulk callers); `false`
    /// where `split` gives `None` (`fields` may then hold a part of the line's fields).
    pub fn split_into(&self, line: &[u8], fields: &mut Vec<Field>) -> bool {
        match self.kind {
            CopyKind::Binary => return false,
            CopyKind::Text => {
                let mut start = 0;
                for (i, &b) in line.iter().enumerate() {
                    if b == self.delimiter {
                        fields.push(Field {
                            range: start..i,
                            quoted: false,
                        });
                        start = i + 1;
                    }
                }
                fields.push(Field {
                    range: start..line.len(),
                    quoted: false,
                });
            }
            CopyKind::Csv => {
                let mut i = 0;
                loop {
                    let start = i;
                    let mut quoted = false;
                    let mut in_quotes = false;
                    while i < line.len() {
                        let b = line[i];
                        if in_quotes {
                            // PostgreSQL writes ESCAPE before a quote or an escape in the value.
                            if b == self.escape
                                && self.escape != self.quote
                                && line
                                    .get(i + 1)
                                    .is_some_and(|&n| n == self.quote || n == self.escape)
                            {
                                i += 2;
                                continue;
                            }
                            if b == self.quote {
                                if self.escape == self.quote && line.get(i + 1) == Some(&self.quote)
                                {
                                    i += 2;
                                    continue;
                                }
                                in_quotes = false;
                            }
                        } else if b == self.quote {
                            in_quotes = true;
                            quoted = true;
                        } else if b == self.delimiter {
                            break;
                        }
                        i += 1;
                    }
                    if in_quotes {
                        return false;
                    }
                    fields.push(Field {
                        range: start..i,
                        quoted,
                    });
                    if i >= line.len() {
                        break;
                    }
                    i += 1;
                }
            }
        }
        true
    }
}

fn check_encoding(encoding: &str) -> Result<(), String> {
    let e = encoding.to_ascii_lowercase().replace(['-', '_'], "");
    if e == "utf8" || e == "unicode" {
        Ok(())
    } else {
        Err(format!(
            "COPY ENCODING {encoding:?}: only UTF8 rows can be rewritten"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::ast::Statement;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn format(sql: &str) -> Result<CopyFormat, String> {
        let statements =
            Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| e.to_string())?;
        match &statements[0] {
            Statement::Copy {
                options,
                legacy_options,
                ..
            } => CopyFormat::from_options(options, legacy_options),
            _ => Err("not COPY".into()),
        }
    }

    #[test]
    fn options_in_both_syntaxes() {
        let modern = format("COPY t TO STDOUT WITH (FORMAT csv, DELIMITER ';', HEADER)").unwrap();
        let legacy = format("COPY t TO STDOUT CSV HEADER DELIMITER ';'").unwrap();
        for f in [&modern, &legacy] {
            assert_eq!(f.kind, CopyKind::Csv);
            assert_eq!(f.delimiter, b';');
            assert!(f.header);
            assert_eq!(f.null, "");
        }
        let text = format("COPY t TO STDOUT").unwrap();
        assert_eq!(
            (text.kind, text.delimiter, text.null.as_str()),
            (CopyKind::Text, b'\t', "\\N")
        );
        let custom = format("COPY t TO STDOUT WITH (DELIMITER '|', NULL 'nil')").unwrap();
        assert_eq!((custom.delimiter, custom.null.as_str()), (b'|', "nil"));
        assert!(!custom.null_is_unambiguous());
        assert!(text.null_is_unambiguous());
        assert_eq!(
            format("COPY t TO STDOUT BINARY").unwrap().kind,
            CopyKind::Binary
        );
        assert!(format("COPY t TO STDOUT WITH (ENCODING 'LATIN1')").is_err());
        assert!(format("COPY t TO STDOUT WITH (ENCODING 'UTF8')").is_ok());
    }

    #[test]
    fn csv_split_respects_quotes() {
        let f = CopyFormat::defaults(CopyKind::Csv);
        let line = br#"1,"a,b","x""y",,z"#;
        let fields = f.split(line).unwrap();
        let texts: Vec<&[u8]> = fields.iter().map(|x| &line[x.range.clone()]).collect();
        assert_eq!(texts, [&b"1"[..], br#""a,b""#, br#""x""y""#, b"", b"z"]);
        assert!(fields[1].quoted && !fields[0].quoted);
        assert!(f.split(br#"1,"open"#).is_none());
        // ESCAPE '\': a value ending in a backslash is written "a\\".
        let mut e = CopyFormat::defaults(CopyKind::Csv);
        e.escape = b'\\';
        let line = br#""a\\",secret"#;
        let fields = e.split(line).unwrap();
        assert_eq!(fields.len(), 2);
        assert_eq!(&line[fields[1].range.clone()], b"secret");
    }

    #[test]
    fn text_split_uses_the_delimiter() {
        let mut f = CopyFormat::defaults(CopyKind::Text);
        f.delimiter = b'|';
        let line = b"p,q,s|123-45-6789|r";
        assert_eq!(f.split(line).unwrap().len(), 3);
    }
}
