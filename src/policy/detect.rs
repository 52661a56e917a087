//! Pure detectors for columns that look sensitive, by name and by sampled values, and the
//! lint that compares a policy with a live catalog (`tokengate policy check --upstream`).
//! No I/O here: the CLI fetches the catalog and samples and hands them in.
use super::model::{Class, Policy, canonical_parts};
use std::collections::HashSet;
use std::fmt;

/// What a column looks like it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Email,
    Phone,
    Card,
    Ssn,
    Iban,
    BirthDate,
    PersonName,
    Secret,
}

impl Kind {
    /// The label name `policy check` suggests, and the label it would need.
    pub fn suggested_label(self) -> (&'static str, Class, Option<&'static str>) {
        match self {
            Kind::Email => ("email", Class::Pii, Some("email")),
            Kind::Phone => ("phone", Class::Pii, Some("digits")),
            Kind::Card => ("card", Class::Financial, Some("card:keep-last4")),
            Kind::Ssn => ("ssn", Class::Pii, Some("digits")),
            Kind::Iban => ("iban", Class::Financial, Some("alnum")),
            Kind::BirthDate => ("birth_date", Class::Pii, Some("date")),
            Kind::PersonName => ("person_name", Class::Pii, Some("text")),
            Kind::Secret => ("secret", Class::Credentials, None),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Email => "email addresses",
            Kind::Phone => "phone numbers",
            Kind::Card => "card numbers (Luhn-valid)",
            Kind::Ssn => "US social security numbers",
            Kind::Iban => "IBANs (checksum-valid)",
            Kind::BirthDate => "birth dates",
            Kind::PersonName => "person names",
            Kind::Secret => "passwords or secrets",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

pub fn looks_like_email(v: &str) -> bool {
    let v = v.trim();
    let Some((local, domain)) = v.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !local.contains(char::is_whitespace)
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '.' || c == '-')
}

/// Digits with common separators, 7 to 15 digits (E.164 allows 15), optional leading `+`.
pub fn looks_like_phone(v: &str) -> bool {
    let v = v.trim();
    let body = v.strip_prefix('+').unwrap_or(v);
    if body.is_empty()
        || !body
            .chars()
            .all(|c| c.is_ascii_digit() || " -.()".contains(c))
    {
        return false;
    }
    let digits = body.chars().filter(char::is_ascii_digit).count();
    // A separator or a + is what tells a phone number from any other integer.
    let formatted = v.starts_with('+') || body.chars().any(|c| !c.is_ascii_digit());
    (7..=15).contains(&digits) && formatted && !looks_like_ssn(v) && !looks_like_iso_date(v)
}

/// The Luhn checksum over the digits of `v` (separators ignored).
pub fn luhn_valid(v: &str) -> bool {
    let digits: Vec<u32> = v.chars().filter_map(|c| c.to_digit(10)).collect();
    if digits.is_empty() {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let dd = d * 2;
                if dd > 9 { dd - 9 } else { dd }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

/// 13 to 19 digits, spaces or dashes allowed, passing Luhn.
pub fn looks_like_card(v: &str) -> bool {
    let v = v.trim();
    if !v
        .chars()
        .all(|c| c.is_ascii_digit() || c == ' ' || c == '-')
    {
        return false;
    }
    let n = v.chars().filter(char::is_ascii_digit).count();
    (13..=19).contains(&n) && luhn_valid(v)
}

/// `AAA-GG-SSSS` with the SSA's never-issued ranges excluded.
pub fn looks_like_ssn(v: &str) -> bool {
    let parts: Vec<&str> = v.trim().split('-').collect();
    let [area, group, serial] = parts.as_slice() else {
        return false;
    };
    let all_digits = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_digit());
    if !(all_digits(area, 3) && all_digits(group, 2) && all_digits(serial, 4)) {
        return false;
    }
    *area != "000"
        && *area != "666"
        && !area.starts_with('9')
        && *group != "00"
        && *serial != "0000"
}

/// Country code, check digits, up to 30 alphanumerics, passing the ISO 13616 mod-97 check.
pub fn looks_like_iban(v: &str) -> bool {
    let compact: String = v.chars().filter(|c| *c != ' ').collect();
    let b = compact.as_bytes();
    if !(15..=34).contains(&b.len())
        || !b[..2].iter().all(u8::is_ascii_uppercase)
        || !b[2..4].iter().all(u8::is_ascii_digit)
        || !b.iter().all(u8::is_ascii_alphanumeric)
    {
        return false;
    }
    let rearranged = compact[4..].chars().chain(compact[..4].chars());
    let mut rem: u32 = 0;
    for c in rearranged {
        let value = match c.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        rem = if value >= 10 {
            (rem * 100 + value) % 97
        } else {
            (rem * 10 + value) % 97
        };
    }
    rem == 1
}

fn looks_like_iso_date(v: &str) -> bool {
    let b = v.trim().as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// An ISO date between 1900 and 2025 with a plausible month and day. Only used together
/// with a birth-ish column name or for text columns: any date column holds dates.
pub fn looks_like_birth_date(v: &str) -> bool {
    let v = v.trim();
    if !looks_like_iso_date(v) {
        return false;
    }
    let year: u32 = v[..4].parse().unwrap_or(0);
    let month: u32 = v[5..7].parse().unwrap_or(0);
    let day: u32 = v[8..10].parse().unwrap_or(0);
    (1900..=2025).contains(&year) && (1..=12).contains(&month) && (1..=31).contains(&day)
}

/// Two to four capitalised words of letters (apostrophes and hyphens allowed), e.g.
/// "Ada Lovelace", "Jean-Luc O'Neil".
pub fn looks_like_person_name(v: &str) -> bool {
    let words: Vec<&str> = v.split_whitespace().collect();
    (2..=4).contains(&words.len())
        && words.iter().all(|w| {
            let mut chars = w.chars();
            chars.next().is_some_and(char::is_uppercase)
                && w.chars().count() >= 2
                && chars.all(|c| c.is_alphabetic() || c == '\'' || c == '-')
                && w.chars().skip(1).any(char::is_lowercase)
        })
}

/// What a column's name suggests it holds.
pub fn kind_from_name(column: &str) -> Option<Kind> {
    let n = column.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| n.contains(w));
    if has(&[
        "password",
        "passwd",
        "secret",
        "api_key",
        "apikey",
        "private_key",
    ]) {
        Some(Kind::Secret)
    } else if has(&["email", "e_mail", "mail_address"]) {
        Some(Kind::Email)
    } else if has(&["phone", "mobile", "msisdn", "fax"]) || n == "tel" {
        Some(Kind::Phone)
    } else if has(&[
        "card_number",
        "cardnumber",
        "card_no",
        "credit_card",
        "cc_number",
        "pan",
    ]) && !n.contains("company")
    {
        Some(Kind::Card)
    } else if has(&["ssn", "social_security", "national_id"]) {
        Some(Kind::Ssn)
    } else if has(&["iban"]) {
        Some(Kind::Iban)
    } else if has(&["birth", "dob"]) {
        Some(Kind::BirthDate)
    } else if has(&[
        "full_name",
        "first_name",
        "last_name",
        "surname",
        "given_name",
        "family_name",
    ]) {
        Some(Kind::PersonName)
    } else {
        None
    }
}

/// A detector over one sampled value.
type ValueDetector = fn(&str) -> bool;

/// The kind most sampled values match, with (matches, non-empty samples), when at least
/// half of at least 3 non-empty samples match.
pub fn kind_from_values<S: AsRef<str>>(values: &[S]) -> Option<(Kind, usize, usize)> {
    let values: Vec<&str> = values
        .iter()
        .map(|v| v.as_ref().trim())
        .filter(|v| !v.is_empty())
        .collect();
    let total = values.len();
    if total < 3 {
        return None;
    }
    // Most specific first: a card number is also digits, an SSN also looks phone-ish.
    let detectors: [(Kind, ValueDetector); 7] = [
        (Kind::Email, looks_like_email),
        (Kind::Card, looks_like_card),
        (Kind::Iban, looks_like_iban),
        (Kind::Ssn, looks_like_ssn),
        (Kind::BirthDate, looks_like_birth_date),
        (Kind::Phone, looks_like_phone),
        (Kind::PersonName, looks_like_person_name),
    ];
    let mut best: Option<(Kind, usize)> = None;
    for (kind, detect) in detectors {
        let hits = values.iter().filter(|v| detect(v)).count();
        if hits * 2 >= total && best.is_none_or(|(_, b)| hits > b) {
            best = Some((kind, hits));
        }
    }
    best.map(|(k, hits)| (k, hits, total))
}

/// One column of the live catalog, with sampled values for text-like columns.
#[derive(Clone, Debug, Default)]
pub struct CatalogColumn {
    pub schema: String,
    pub table: String,
    pub column: String,
    pub data_type: String,
    pub samples: Vec<String>,
}

/// Something `policy check --upstream` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The policy labels a column the database doesn't have.
    MissingColumn { column: String, line: u32 },
    /// A column labelled unlike its same-named column in a parent or child table
    /// (`INHERITS`, `PARTITION OF`): statements touching either are refused (TG189).
    UnlikeRelative {
        column: String,
        label: Option<String>,
        relative: String,
        relative_label: Option<String>,
    },
    /// An unlabelled column that looks sensitive.
    Unlabelled {
        column: String,
        kind: Kind,
        /// `Some((matches, samples))` when values decided it, `None` for the name alone.
        evidence: Option<(usize, usize)>,
        /// The label to use: an existing label of the same kind's name, or a new one.
        label: String,
        label_exists: bool,
    },
}

impl Finding {
    /// The YAML to paste, or the problem, as one line.
    pub fn render(&self) -> String {
        match self {
            Finding::MissingColumn { column, line } => {
                format!("  # line {line}: column {column} does not exist in the database")
            }
            Finding::UnlikeRelative {
                column,
                label,
                relative,
                relative_label,
            } => {
                let why = format!(
                    "{relative} of its inheritance family is {}; statements touching either are refused (TG189) until they match",
                    relative_label
                        .as_deref()
                        .map_or("unlabelled".to_string(), |l| format!("labelled {l}"))
                );
                match (label, relative_label) {
                    (None, Some(l)) => format!("  {column}: {l}   # {why}"),
                    (Some(l), _) => format!("  # {column} is labelled {l}, but {why}"),
                    (None, None) => format!("  # {column}: {why}"),
                }
            }
            Finding::Unlabelled {
                column,
                kind,
                evidence,
                label,
                label_exists,
            } => {
                let why = match evidence {
                    Some((hits, total)) => {
                        format!("looks like {kind} ({hits}/{total} sampled values)")
                    }
                    None => format!("name suggests {kind}"),
                };
                let mut line = format!("  {column}: {label}   # {why}");
                if !label_exists {
                    let (_, class, token) = kind.suggested_label();
                    line.push_str(&format!(
                        "; add labels.{label}: {{ class: {class}{} }}",
                        token
                            .map(|t| format!(", token: \"{t}\""))
                            .unwrap_or_default()
                    ));
                }
                line
            }
        }
    }
}

/// Compares a policy with the live catalog: labelled columns that don't exist, and
/// unlabelled columns whose name or sampled values look sensitive.
pub fn lint_catalog(policy: &Policy, catalog: &[CatalogColumn]) -> Vec<Finding> {
    let present: HashSet<String> = catalog
        .iter()
        .map(|c| canonical_parts(&c.schema, &c.table, &c.column))
        .collect();
    let labelled: HashSet<String> = policy
        .columns()
        .iter()
        .map(|c| c.name.canonical())
        .collect();
    let mut findings = Vec::new();
    for entry in policy.columns() {
        let canonical = entry.name.canonical();
        if !present.contains(&canonical) {
            findings.push(Finding::MissingColumn {
                column: canonical,
                line: entry.pos.line,
            });
        }
    }
    for c in catalog {
        let canonical = canonical_parts(&c.schema, &c.table, &c.column);
        if labelled.contains(&canonical) {
            continue;
        }
        let by_values = kind_from_values(&c.samples);
        let kind_evidence = match (by_values, kind_from_name(&c.column)) {
            (Some((kind, hits, total)), _) => Some((kind, Some((hits, total)))),
            (None, Some(kind)) => Some((kind, None)),
            (None, None) => None,
        };
        if let Some((kind, evidence)) = kind_evidence {
            let (name, _, _) = kind.suggested_label();
            findings.push(Finding::Unlabelled {
                column: canonical,
                kind,
                evidence,
                label: name.to_string(),
                label_exists: policy.label(name).is_some(),
            });
        }
    }
    findings
}

/// One `pg_inherits` edge (inheritance or partition): `(child, parent)` tables as
/// `(schema, table)`.
pub type InheritEdge = ((String, String), (String, String));

/// Columns labelled unlike the same-named column of a table they inherit from or that inherits
/// from them.
pub fn lint_inheritance(
    policy: &Policy,
    catalog: &[CatalogColumn],
    edges: &[InheritEdge],
) -> Vec<Finding> {
    let label_of: std::collections::HashMap<String, &str> = policy
        .columns()
        .iter()
        .filter_map(|c| {
            Some((
                c.name.canonical(),
                policy.labels().get(c.label)?.name.as_str(),
            ))
        })
        .collect();
    let has = |schema: &str, table: &str, column: &str| {
        catalog
            .iter()
            .any(|c| c.schema == schema && c.table == table && c.column == column)
    };
    let mut out = Vec::new();
    for ((cs, ct), (ps, pt)) in edges {
        for c in catalog.iter().filter(|c| &c.schema == cs && &c.table == ct) {
            if !has(ps, pt, &c.column) {
                continue;
            }
            let child = canonical_parts(cs, ct, &c.column);
            let parent = canonical_parts(ps, pt, &c.column);
            let (a, b) = (
                label_of.get(&child).copied(),
                label_of.get(&parent).copied(),
            );
            if a == b {
                continue;
            }
            // Suggest labelling the unlabelled side.
            let (column, label, relative, relative_label) = match (a, b) {
                (Some(_), None) => (parent, b, child, a),
                _ => (child, a, parent, b),
            };
            out.push(Finding::UnlikeRelative {
                column,
                label: label.map(str::to_string),
                relative,
                relative_label: relative_label.map(str::to_string),
            });
        }
    }
    out
}

/// Whether a PostgreSQL type name is text-like enough to sample.
pub fn is_text_type(data_type: &str) -> bool {
    matches!(
        data_type,
        "text" | "character varying" | "character" | "citext" | "varchar" | "bpchar" | "name"
    )
}

/// Quotes a name for SQL, always (safe for any identifier, including keywords).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert!(looks_like_email("ada@example.com"));
        assert!(looks_like_email(" j.doe+x@mail.example.co.uk "));
        assert!(!looks_like_email("ada@localhost"));
        assert!(!looks_like_email("not an email"));
        assert!(!looks_like_email("a@b@c.com"));
    }

    #[test]
    fn luhn_and_cards() {
        assert!(luhn_valid("4111111111111111"));
        assert!(looks_like_card("4111 1111 1111 1111"));
        assert!(looks_like_card("5555-5555-5555-4444"));
        assert!(!looks_like_card("4111111111111112"));
        assert!(!looks_like_card("411111"));
    }

    #[test]
    fn ssns() {
        assert!(looks_like_ssn("123-45-6789"));
        assert!(!looks_like_ssn("000-45-6789"));
        assert!(!looks_like_ssn("666-45-6789"));
        assert!(!looks_like_ssn("912-45-6789"));
        assert!(!looks_like_ssn("123456789"));
    }

    #[test]
    fn phones() {
        assert!(looks_like_phone("+1 555 013 4567"));
        assert!(looks_like_phone("(555) 013-4567"));
        assert!(looks_like_phone("+442079460958"));
        assert!(!looks_like_phone("12345"));
        assert!(!looks_like_phone("123-45-6789"), "an SSN is not a phone");
        assert!(!looks_like_phone("1984-03-12"), "a date is not a phone");
        assert!(
            !looks_like_phone("20240312"),
            "a bare number is not a phone"
        );
    }

    #[test]
    fn ibans() {
        assert!(looks_like_iban("DE89 3704 0044 0532 0130 00"));
        assert!(looks_like_iban("GB82WEST12345698765432"));
        assert!(!looks_like_iban("GB82WEST12345698765433"));
        assert!(!looks_like_iban("hello"));
    }

    #[test]
    fn birth_dates_and_names() {
        assert!(looks_like_birth_date("1984-03-12"));
        assert!(!looks_like_birth_date("2999-03-12"));
        assert!(!looks_like_birth_date("1984-13-12"));
        assert!(looks_like_person_name("Ada Lovelace"));
        assert!(looks_like_person_name("Jean-Luc O'Neil"));
        assert!(!looks_like_person_name("Paris"));
        assert!(!looks_like_person_name("NEW YORK"));
        assert!(!looks_like_person_name("ada lovelace"));
    }

    #[test]
    fn names_suggest_kinds() {
        assert_eq!(kind_from_name("contact_email"), Some(Kind::Email));
        assert_eq!(kind_from_name("mobile_phone"), Some(Kind::Phone));
        assert_eq!(kind_from_name("card_number"), Some(Kind::Card));
        assert_eq!(kind_from_name("date_of_birth"), Some(Kind::BirthDate));
        assert_eq!(kind_from_name("dob"), Some(Kind::BirthDate));
        assert_eq!(kind_from_name("full_name"), Some(Kind::PersonName));
        assert_eq!(kind_from_name("password_hash"), Some(Kind::Secret));
        assert_eq!(kind_from_name("city"), None);
        assert_eq!(kind_from_name("created_at"), None);
    }

    #[test]
    fn values_decide_by_majority() {
        let mixed = ["a@x.io", "b@y.org", "c@z.net", "n/a"];
        assert_eq!(kind_from_values(&mixed), Some((Kind::Email, 3, 4)));
        let cards = ["4111111111111111", "5555555555554444", "378282246310005"];
        assert_eq!(kind_from_values(&cards), Some((Kind::Card, 3, 3)));
        let cities = ["Paris", "Berlin", "Oslo", "Rome"];
        assert_eq!(kind_from_values(&cities), None);
        assert_eq!(
            kind_from_values(&["a@x.io", "b@y.org"]),
            None,
            "too few samples"
        );
    }

    #[test]
    fn lint_reports_missing_and_unlabelled_columns() {
        let policy = Policy::from_yaml(
            "version: 1\nlabels:\n  email: { class: pii, token: email }\ncolumns:\n  public.customers.email: email\n  public.customers.gone: email\n",
            "p.yaml",
        )
        .unwrap();
        let col = |c: &str, samples: &[&str]| CatalogColumn {
            schema: "public".into(),
            table: "customers".into(),
            column: c.into(),
            data_type: "text".into(),
            samples: samples.iter().map(|s| s.to_string()).collect(),
        };
        let catalog = vec![
            col("email", &["a@x.io", "b@x.io", "c@x.io"]),
            col("backup_contact", &["d@x.io", "e@x.io", "f@x.io"]),
            col("phone", &[]),
            col("city", &["Paris", "Oslo", "Rome"]),
        ];
        let findings = lint_catalog(&policy, &catalog);
        assert_eq!(findings.len(), 3, "{findings:#?}");
        assert_eq!(
            findings[0],
            Finding::MissingColumn {
                column: "public.customers.gone".into(),
                line: 6
            }
        );
        assert_eq!(
            findings[1].render(),
            "  public.customers.backup_contact: email   # looks like email addresses (3/3 sampled values)"
        );
        assert_eq!(
            findings[2].render(),
            "  public.customers.phone: phone   # name suggests phone numbers; add labels.phone: { class: pii, token: \"digits\" }"
        );
    }
}
