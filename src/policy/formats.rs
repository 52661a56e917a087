//! Token format names and mask specs as the policy file spells them, and which pairs fit.
//!
//! The `protect` module owns the vocabulary: [`parse_token_format`] and [`parse_mask_spec`]
//! call its `FromStr` parsers and keep only the [`Shape`] and [`MaskKind`] that validation
//! needs to check that a label's mask fits its token format.
use std::fmt;

/// The shape of the data a token format produces; masks must fit the same shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    /// Free text or alphanumerics (`text`, `alnum`).
    Text,
    /// Digit strings with separators (`digits`, `card`, `card:keep-last4`).
    Digits,
    /// Email addresses.
    Email,
    /// Integer columns (the value stays an integer).
    Integer,
    /// Date columns (the value stays a valid date).
    Date,
}

/// A validated token format, e.g. `email:tokenize-domain`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TokenFormat {
    spec: String,
    shape: Shape,
}

impl TokenFormat {
    pub fn as_str(&self) -> &str {
        &self.spec
    }
    pub fn shape(&self) -> Shape {
        self.shape
    }
}

impl fmt::Display for TokenFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec)
    }
}

/// What a mask does, as far as validation cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MaskKind {
    /// `last4`, `first:N`, `last:N`: keep some characters, star the rest.
    Partial,
    /// A pattern of `#` (keep) and `*` (hide) plus literal separators, e.g. `***-**-####`.
    Pattern,
    /// `email`: `j***@example.com`.
    Email,
    /// `fixed:TEXT`: the whole value becomes TEXT.
    Fixed,
    /// `null`: the value becomes SQL NULL.
    Null,
    /// `hash:N:hex|base32`: a keyed hash, N characters.
    Hash,
}

/// A validated mask spec, e.g. `***-**-####`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MaskSpec {
    spec: String,
    kind: MaskKind,
}

impl MaskSpec {
    pub fn as_str(&self) -> &str {
        &self.spec
    }
    pub fn kind(&self) -> MaskKind {
        self.kind
    }
    /// The mask used when a role's action is `mask` and the label names no `mask:`.
    /// It hides everything, length included; integer and date columns cannot hold text,
    /// so they become NULL instead.
    pub fn default_for(token: Option<&TokenFormat>) -> MaskSpec {
        match token.map(TokenFormat::shape) {
            Some(Shape::Integer | Shape::Date) => MaskSpec {
                spec: "null".into(),
                kind: MaskKind::Null,
            },
            _ => MaskSpec {
                spec: "fixed:****".into(),
                kind: MaskKind::Fixed,
            },
        }
    }
}

impl fmt::Display for MaskSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec)
    }
}

/// Every token format name, for "allowed: ..." messages.
pub const TOKEN_FORMATS: &[&str] = &[
    "digits",
    "alnum",
    "email",
    "email:tokenize-domain",
    "card",
    "card:keep-last4",
    "integer",
    "date",
    "text",
];

/// The mask spec forms, for "allowed: ..." messages.
pub const MASK_FORMS: &str = "last4, first:N, last:N, a pattern of # and * such as \"***-**-####\", \
email, fixed:TEXT, null, hash:N:hex, hash:N:base32";

/// Parses a token format with the `protect` module's parser (the one vocabulary the
/// transforms use), keeping the [`Shape`] that validation needs.
pub fn parse_token_format(s: &str) -> Result<TokenFormat, String> {
    use crate::protect::format::{FormatKind, TokenFormat as Parsed};
    let parsed: Parsed = s.parse().map_err(|e| {
        format!(
            "invalid token format '{s}': {e}; allowed: {}",
            TOKEN_FORMATS.join(", ")
        )
    })?;
    let shape = match parsed.kind {
        FormatKind::Digits | FormatKind::Card { .. } => Shape::Digits,
        FormatKind::Alnum | FormatKind::Text => Shape::Text,
        FormatKind::Email { .. } => Shape::Email,
        FormatKind::Integer => Shape::Integer,
        FormatKind::Date { .. } => Shape::Date,
    };
    Ok(TokenFormat {
        spec: s.to_string(),
        shape,
    })
}

/// Parses a mask spec with the `protect` module's parser. A pattern must hide something.
pub fn parse_mask_spec(s: &str) -> Result<MaskSpec, String> {
    use crate::protect::mask::MaskSpec as Parsed;
    let parsed: Parsed = s
        .parse()
        .map_err(|e| format!("{e}; allowed: {MASK_FORMS}"))?;
    let kind = match parsed {
        Parsed::KeepFirst(0) | Parsed::KeepLast(0) => {
            return Err(format!(
                "mask '{s}': the count must be a positive whole number"
            ));
        }
        Parsed::Fixed(text) if text.is_empty() => {
            return Err(format!(
                "mask '{s}' needs the replacement text after 'fixed:'"
            ));
        }
        Parsed::KeepFirst(_) | Parsed::KeepLast(_) => MaskKind::Partial,
        Parsed::Pattern(p) => {
            if !p.contains('*') {
                return Err(format!(
                    "mask pattern '{s}' has no '*', so it would hide nothing"
                ));
            }
            MaskKind::Pattern
        }
        Parsed::Email => MaskKind::Email,
        Parsed::Fixed(_) => MaskKind::Fixed,
        Parsed::Null => MaskKind::Null,
        Parsed::Hash { .. } => MaskKind::Hash,
    };
    Ok(MaskSpec {
        spec: s.to_string(),
        kind,
    })
}

/// Whether a mask can be applied to values shaped like `token`'s output. `None` when it
/// can, or the reason it can't. Labels without a token format accept any mask: the
/// transform checks the column type at run time and refuses what it can't mask.
pub fn mask_fits_token(mask: &MaskSpec, token: &TokenFormat) -> Option<String> {
    let fits = match (token.shape(), mask.kind()) {
        (_, MaskKind::Null) => true,
        (Shape::Integer, _) => false,
        (Shape::Date, MaskKind::Pattern) => true,
        (Shape::Date, _) => false,
        (Shape::Email, MaskKind::Pattern) => false,
        (_, MaskKind::Email) => matches!(token.shape(), Shape::Email | Shape::Text),
        _ => true,
    };
    if fits {
        return None;
    }
    let why = match token.shape() {
        Shape::Integer => "integer values can only be masked with null",
        Shape::Date => "date values can only be masked with null or a pattern",
        Shape::Email => "email addresses have no fixed layout for a pattern",
        _ => "an email mask needs email-shaped values",
    };
    Some(format!(
        "mask '{mask}' does not fit token format '{token}': {why}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_token_format_parses() {
        for name in TOKEN_FORMATS {
            assert_eq!(parse_token_format(name).unwrap().as_str(), *name);
        }
        assert!(
            parse_token_format("emails")
                .unwrap_err()
                .contains("allowed: digits")
        );
    }

    #[test]
    fn mask_specs_parse_to_their_kind() {
        let cases = [
            ("last4", MaskKind::Partial),
            ("first:2", MaskKind::Partial),
            ("last:3", MaskKind::Partial),
            ("***-**-####", MaskKind::Pattern),
            ("email", MaskKind::Email),
            ("fixed:REDACTED", MaskKind::Fixed),
            ("null", MaskKind::Null),
            ("hash:12:hex", MaskKind::Hash),
            ("hash:16:base32", MaskKind::Hash),
        ];
        for (spec, kind) in cases {
            assert_eq!(parse_mask_spec(spec).unwrap().kind(), kind, "{spec}");
        }
        for bad in ["first:0", "last:x", "fixed:", "hash:8:b64", "####", "stars"] {
            assert!(parse_mask_spec(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn masks_must_fit_the_token_shape() {
        let t = |s| parse_token_format(s).unwrap();
        let m = |s| parse_mask_spec(s).unwrap();
        assert!(mask_fits_token(&m("last4"), &t("card")).is_none());
        assert!(mask_fits_token(&m("***-**-####"), &t("digits")).is_none());
        assert!(mask_fits_token(&m("email"), &t("email")).is_none());
        assert!(mask_fits_token(&m("null"), &t("integer")).is_none());
        assert!(mask_fits_token(&m("email"), &t("digits")).is_some());
        assert!(mask_fits_token(&m("last4"), &t("integer")).is_some());
        assert!(mask_fits_token(&m("***"), &t("email")).is_some());
    }

    #[test]
    fn default_mask_hides_everything() {
        assert_eq!(MaskSpec::default_for(None).as_str(), "fixed:****");
        let int = parse_token_format("integer").unwrap();
        assert_eq!(MaskSpec::default_for(Some(&int)).as_str(), "null");
    }
}
