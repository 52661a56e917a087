//! Token format names and options: the textual syntax shared by the CLI and the policy YAML,
//! e.g. `digits`, `email:tokenize-domain`, `card:keep-last4,small=mask`,
//! `date:1900-01-01..2099-12-31`.
use super::error::ProtectError;
use super::token::date::{civil_from_days, days_from_civil, parse_iso_date};
use std::fmt;
use std::str::FromStr;

/// What happens to a value whose token space is below FF1's minimum of 1,000,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmallDomain {
    /// Error: the read path refuses the statement. The default.
    #[default]
    Refuse,
    /// Replace each character that would have been tokenized by `*` (text formats only).
    Mask,
    /// Return SQL NULL.
    Null,
}

/// The shape-preserving token formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatKind {
    Digits,
    Alnum,
    Email {
        tokenize_domain: bool,
    },
    Card {
        keep_last4: bool,
    },
    Integer,
    /// Dates between `min_day` and `max_day` inclusive, days since 1970-01-01.
    Date {
        min_day: i64,
        max_day: i64,
    },
    Text,
}

/// A parsed token format spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenFormat {
    pub kind: FormatKind,
    pub small_domain: SmallDomain,
}

/// The default date range, 0001-01-01..9999-12-31: 3,652,059 days, above FF1's minimum.
pub const DEFAULT_DATE_RANGE: (i64, i64) = (-719_162, 2_932_896);

impl FormatKind {
    /// The bare name, also used in the FF1 tweak so formats never share tokens.
    pub fn name(&self) -> &'static str {
        match self {
            FormatKind::Digits => "digits",
            FormatKind::Alnum => "alnum",
            FormatKind::Email { .. } => "email",
            FormatKind::Card { .. } => "card",
            FormatKind::Integer => "integer",
            FormatKind::Date { .. } => "date",
            FormatKind::Text => "text",
        }
    }
}

impl FromStr for TokenFormat {
    type Err = ProtectError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| ProtectError::spec("token format", spec, reason);
        let (name, options) = match spec.split_once(':') {
            Some((name, options)) => (name, options.split(',').collect::<Vec<_>>()),
            None => (spec, Vec::new()),
        };
        let mut small_domain = SmallDomain::default();
        let mut flags = Vec::new();
        for option in options {
            match option.strip_prefix("small=") {
                Some("refuse") => small_domain = SmallDomain::Refuse,
                Some("mask") => small_domain = SmallDomain::Mask,
                Some("null") => small_domain = SmallDomain::Null,
                Some(other) => {
                    return Err(invalid(format!(
                        "small={other} is not one of refuse, mask, null"
                    )));
                }
                None => flags.push(option),
            }
        }
        let no_flags = |kind: FormatKind| {
            if flags.is_empty() {
                Ok(kind)
            } else {
                Err(invalid(format!("{name} takes no option {:?}", flags[0])))
            }
        };
        let kind = match name {
            "digits" => no_flags(FormatKind::Digits)?,
            "alnum" => no_flags(FormatKind::Alnum)?,
            "text" => no_flags(FormatKind::Text)?,
            "integer" => no_flags(FormatKind::Integer)?,
            "email" => match flags.as_slice() {
                [] | ["keep-domain"] => FormatKind::Email {
                    tokenize_domain: false,
                },
                ["tokenize-domain"] => FormatKind::Email {
                    tokenize_domain: true,
                },
                _ => return Err(invalid("email takes keep-domain or tokenize-domain".into())),
            },
            "card" => match flags.as_slice() {
                [] => FormatKind::Card { keep_last4: false },
                ["keep-last4"] => FormatKind::Card { keep_last4: true },
                _ => return Err(invalid("card takes only keep-last4".into())),
            },
            "date" => match flags.as_slice() {
                [] => FormatKind::Date {
                    min_day: DEFAULT_DATE_RANGE.0,
                    max_day: DEFAULT_DATE_RANGE.1,
                },
                [range] => {
                    let (from, to) = range
                        .split_once("..")
                        .ok_or_else(|| invalid("date range is FROM..TO".into()))?;
                    let parse = |s: &str| {
                        parse_iso_date(s.as_bytes())
                            .map(|(y, m, d)| days_from_civil(y, m, d))
                            .ok_or_else(|| invalid(format!("{s:?} is not a YYYY-MM-DD date")))
                    };
                    let (min_day, max_day) = (parse(from)?, parse(to)?);
                    if min_day > max_day {
                        return Err(invalid("date range is empty".into()));
                    }
                    FormatKind::Date { min_day, max_day }
                }
                _ => return Err(invalid("date takes one FROM..TO range".into())),
            },
            _ => {
                return Err(invalid(
                    "expected digits, alnum, email, card, integer, date or text".into(),
                ));
            }
        };
        Ok(TokenFormat { kind, small_domain })
    }
}

impl fmt::Display for TokenFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut options: Vec<String> = Vec::new();
        match self.kind {
            FormatKind::Email {
                tokenize_domain: true,
            } => options.push("tokenize-domain".into()),
            FormatKind::Card { keep_last4: true } => options.push("keep-last4".into()),
            FormatKind::Date { min_day, max_day } if (min_day, max_day) != DEFAULT_DATE_RANGE => {
                let (y1, m1, d1) = civil_from_days(min_day);
                let (y2, m2, d2) = civil_from_days(max_day);
                options.push(format!("{y1:04}-{m1:02}-{d1:02}..{y2:04}-{m2:02}-{d2:02}"));
            }
            _ => {}
        }
        match self.small_domain {
            SmallDomain::Refuse => {}
            SmallDomain::Mask => options.push("small=mask".into()),
            SmallDomain::Null => options.push("small=null".into()),
        }
        f.write_str(self.kind.name())?;
        if !options.is_empty() {
            write!(f, ":{}", options.join(","))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_name_and_round_trips_display() {
        for spec in [
            "digits",
            "alnum",
            "text",
            "integer",
            "email",
            "email:tokenize-domain",
            "card",
            "card:keep-last4",
            "card:keep-last4,small=mask",
            "digits:small=null",
            "date",
            "date:1000-01-01..3999-12-31",
        ] {
            let parsed: TokenFormat = spec.parse().unwrap();
            assert_eq!(parsed.to_string(), spec);
        }
        let card: TokenFormat = "card:keep-last4".parse().unwrap();
        assert_eq!(card.kind, FormatKind::Card { keep_last4: true });
        assert_eq!(card.small_domain, SmallDomain::Refuse);
    }

    #[test]
    fn rejects_unknown_names_and_options() {
        for spec in [
            "digit",
            "card:keep-last5",
            "digits:small=maybe",
            "date:2000-01-01",
            "date:2001-01-01..2000-01-01",
            "digits:x",
        ] {
            assert!(spec.parse::<TokenFormat>().is_err(), "{spec}");
        }
    }

    #[test]
    fn default_date_range_is_year_1_to_9999() {
        assert_eq!(days_from_civil(1, 1, 1), DEFAULT_DATE_RANGE.0);
        assert_eq!(days_from_civil(9999, 12, 31), DEFAULT_DATE_RANGE.1);
    }
}
