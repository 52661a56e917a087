//! The prepared per-result-column transform the read path calls for every DataRow field:
//! [`ColumnTransform::new`] checks the (action, type OID, wire format) combination once, and
//! [`ColumnTransform::apply`] rewrites one value into a caller-owned buffer without allocating in
//! the common case. Unsupported types are errors, never a pass-through.
use super::error::ProtectError;
use super::format::{FormatKind, TokenFormat};
use super::keys::{DEFAULT_KEY_NAME, KeyRing};
use super::mask::{MaskSpec, Masker};
use super::token::date::{self, PG_EPOCH_DAY};
use super::token::{IntRange, Output, Tokenizer};

/// PostgreSQL type OIDs the protect layer understands.
pub mod oid {
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
}

/// What to do to a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Token(TokenFormat),
    Mask(MaskSpec),
    Null,
    /// The stored value is a token (`at_rest: token`): decrypt it, then mask the plaintext
    /// when a mask is given.
    Reveal(TokenFormat, Option<MaskSpec>),
}

/// An action with the label (FF1 tweak, hash context) and the key it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransformSpec {
    pub action: Action,
    pub label: String,
    /// Key name in the key file; `None` means [`DEFAULT_KEY_NAME`].
    pub key_name: Option<String>,
    /// Key version; `None` means the active one.
    pub key_version: Option<u32>,
}

impl TransformSpec {
    pub fn new(action: Action, label: impl Into<String>) -> Self {
        TransformSpec {
            action,
            label: label.into(),
            key_name: None,
            key_version: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WireFormat {
    Text,
    Binary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueType {
    /// text, varchar, bpchar, name: binary is the same UTF-8 bytes as text.
    Text,
    Int {
        range: IntRange,
        width: usize,
    },
    Date,
}

#[derive(Debug)]
enum Prepared {
    /// Boxed: two FF1 instances with their key schedules are a few KB.
    Token(Box<Tokenizer>),
    Mask(Masker),
    Null,
    Reveal(Box<Tokenizer>, Option<Masker>),
}

/// One result column's prepared transform.
#[derive(Debug)]
pub struct ColumnTransform {
    prepared: Prepared,
    value_type: ValueType,
    wire: WireFormat,
}

impl ColumnTransform {
    /// Prepares `spec` for a column of `type_oid` sent in `format_code` (0 text, 1 binary).
    pub fn new(
        spec: &TransformSpec,
        type_oid: u32,
        format_code: i16,
        keys: &KeyRing,
    ) -> Result<Self, ProtectError> {
        let wire = match format_code {
            0 => WireFormat::Text,
            1 => WireFormat::Binary,
            other => return Err(ProtectError::UnsupportedWireFormat(other)),
        };
        let value_type = match type_oid {
            oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => ValueType::Text,
            oid::INT2 => ValueType::Int {
                range: IntRange::INT2,
                width: 2,
            },
            oid::INT4 => ValueType::Int {
                range: IntRange::INT4,
                width: 4,
            },
            oid::INT8 => ValueType::Int {
                range: IntRange::INT8,
                width: 8,
            },
            oid::DATE => ValueType::Date,
            // NULL hides any type completely, so it needs no codec.
            _ if spec.action == Action::Null => ValueType::Text,
            oid => return Err(ProtectError::UnsupportedType { oid }),
        };
        let unsupported = |transform: String| ProtectError::UnsupportedTransformForType {
            transform,
            oid: type_oid,
        };
        let key = |keys: &KeyRing| {
            let name = spec.key_name.as_deref().unwrap_or(DEFAULT_KEY_NAME);
            keys.get(name, spec.key_version).cloned()
        };
        let prepared = match &spec.action {
            Action::Null => Prepared::Null,
            Action::Mask(mask) => {
                if value_type != ValueType::Text && *mask != MaskSpec::Null {
                    // A masked number or date would not parse as its type on the client.
                    return Err(unsupported(format!("mask {mask}")));
                }
                let key = if mask.needs_key() {
                    Some(key(keys)?)
                } else {
                    None
                };
                Prepared::Mask(Masker::new(mask.clone(), key.as_ref(), &spec.label)?)
            }
            Action::Reveal(format, mask) => {
                if value_type != ValueType::Text {
                    return Err(unsupported(format!("at-rest token format {format}")));
                }
                let masker = match mask {
                    Some(m) => {
                        let key = if m.needs_key() {
                            Some(key(keys)?)
                        } else {
                            None
                        };
                        Some(Masker::new(m.clone(), key.as_ref(), &spec.label)?)
                    }
                    None => None,
                };
                Prepared::Reveal(
                    Box::new(Tokenizer::new(&key(keys)?, &spec.label, *format)?),
                    masker,
                )
            }
            Action::Token(format) => {
                let fits = match (format.kind, value_type) {
                    (FormatKind::Integer, ValueType::Int { .. } | ValueType::Text) => true,
                    (FormatKind::Date { .. }, ValueType::Date | ValueType::Text) => true,
                    (FormatKind::Integer | FormatKind::Date { .. }, _) => false,
                    (_, ValueType::Text) => true,
                    _ => false,
                };
                if !fits {
                    return Err(unsupported(format!("token format {format}")));
                }
                Prepared::Token(Box::new(Tokenizer::new(&key(keys)?, &spec.label, *format)?))
            }
        };
        Ok(ColumnTransform {
            prepared,
            value_type,
            wire,
        })
    }

    /// Appends the protected form of one non-NULL field value to `out`, or returns
    /// [`Output::Null`] (with nothing appended) when the field must become NULL.
    pub fn apply(&self, input: &[u8], out: &mut Vec<u8>) -> Result<Output, ProtectError> {
        match &self.prepared {
            Prepared::Null => Ok(Output::Null),
            Prepared::Mask(masker) => Ok(masker.apply(input, out)),
            Prepared::Token(tokenizer) => self.crypt(tokenizer, input, out, true),
            Prepared::Reveal(tokenizer, None) => self.crypt(tokenizer, input, out, false),
            Prepared::Reveal(tokenizer, Some(masker)) => {
                let mut plain = Vec::with_capacity(input.len());
                match self.crypt(tokenizer, input, &mut plain, false)? {
                    Output::Value => Ok(masker.apply(&plain, out)),
                    Output::Null => Ok(Output::Null),
                }
            }
        }
    }

    /// Inverse of `apply` for token columns (the future write path and `--reveal`).
    pub fn reveal(&self, input: &[u8], out: &mut Vec<u8>) -> Result<Output, ProtectError> {
        match &self.prepared {
            Prepared::Token(tokenizer) | Prepared::Reveal(tokenizer, _) => {
                self.crypt(tokenizer, input, out, false)
            }
            _ => Err(ProtectError::bad("mask", "masks cannot be revealed")),
        }
    }

    fn crypt(
        &self,
        tokenizer: &Tokenizer,
        input: &[u8],
        out: &mut Vec<u8>,
        tokenize: bool,
    ) -> Result<Output, ProtectError> {
        match (self.value_type, self.wire) {
            (ValueType::Text, _)
            | (ValueType::Int { .. }, WireFormat::Text)
            | (ValueType::Date, WireFormat::Text) => {
                if self.value_type == ValueType::Date && is_infinity_text(input) {
                    out.extend_from_slice(input);
                    return Ok(Output::Value);
                }
                if let (ValueType::Int { range, .. }, WireFormat::Text) =
                    (self.value_type, self.wire)
                {
                    return self.crypt_int_text(tokenizer, range, input, out, tokenize);
                }
                if tokenize {
                    tokenizer.tokenize(input, out)
                } else {
                    tokenizer.reveal(input, out)
                }
            }
            (ValueType::Int { range, width }, WireFormat::Binary) => {
                let value = match (width, input.len()) {
                    (2, 2) => i64::from(i16::from_be_bytes([input[0], input[1]])),
                    (4, 4) => {
                        i64::from(i32::from_be_bytes([input[0], input[1], input[2], input[3]]))
                    }
                    (8, 8) => i64::from_be_bytes(input.try_into().unwrap_or([0; 8])),
                    _ => return Err(ProtectError::bad("integer", "wrong binary length")),
                };
                let token = if tokenize {
                    tokenizer.tokenize_int(value, range)?
                } else {
                    tokenizer.reveal_int(value, range)?
                };
                let Some(token) = token else {
                    return Ok(Output::Null);
                };
                // The token is inside the type's range by construction.
                let bytes = token.to_be_bytes();
                out.extend_from_slice(&bytes[8 - width..]);
                Ok(Output::Value)
            }
            (ValueType::Date, WireFormat::Binary) => {
                let raw: [u8; 4] = input
                    .try_into()
                    .map_err(|_| ProtectError::bad("date", "wrong binary length"))?;
                let pg_day = i32::from_be_bytes(raw);
                if pg_day == i32::MAX || pg_day == i32::MIN {
                    // ±infinity carry no personal data: kept so clients still parse them.
                    out.extend_from_slice(input);
                    return Ok(Output::Value);
                }
                let day = i64::from(pg_day) + PG_EPOCH_DAY;
                let token = if tokenize {
                    tokenizer.tokenize_day(day)?
                } else {
                    tokenizer.reveal_day(day)?
                };
                let pg_token = i32::try_from(token - PG_EPOCH_DAY)
                    .map_err(|_| ProtectError::bad("date", "outside the date type"))?;
                out.extend_from_slice(&pg_token.to_be_bytes());
                Ok(Output::Value)
            }
        }
    }

    fn crypt_int_text(
        &self,
        tokenizer: &Tokenizer,
        range: IntRange,
        input: &[u8],
        out: &mut Vec<u8>,
        tokenize: bool,
    ) -> Result<Output, ProtectError> {
        let value = std::str::from_utf8(input)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or(ProtectError::bad("integer", "not an integer"))?;
        let token = if tokenize {
            tokenizer.tokenize_int(value, range)?
        } else {
            tokenizer.reveal_int(value, range)?
        };
        match token {
            Some(token) => {
                use std::io::Write;
                let _ = write!(out, "{token}");
                Ok(Output::Value)
            }
            None => Ok(Output::Null),
        }
    }
}

fn is_infinity_text(input: &[u8]) -> bool {
    input == b"infinity" || input == b"-infinity"
}

/// Parses a date day number back for tests and tools: `YYYY-MM-DD` to days since 1970-01-01.
pub fn parse_date_text(input: &[u8]) -> Option<i64> {
    date::parse_iso_date(input).map(|(y, m, d)| date::days_from_civil(y, m, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protect::keys::Key;

    fn keys() -> KeyRing {
        let mut ring = KeyRing::default();
        ring.insert("default", 1, Key::from_bytes([5; 32]));
        ring
    }

    fn transform(
        action: &str,
        oid: u32,
        format_code: i16,
    ) -> Result<ColumnTransform, ProtectError> {
        let action = match action.split_once(' ') {
            Some(("token", f)) => Action::Token(f.parse().unwrap()),
            Some(("mask", m)) => Action::Mask(m.parse().unwrap()),
            _ => Action::Null,
        };
        ColumnTransform::new(
            &TransformSpec::new(action, "label"),
            oid,
            format_code,
            &keys(),
        )
    }

    fn run(t: &ColumnTransform, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        assert_eq!(t.apply(input, &mut out).unwrap(), Output::Value);
        out
    }

    #[test]
    fn text_types_share_text_and_binary_encoding() {
        for oid in [oid::TEXT, oid::VARCHAR, oid::BPCHAR, oid::NAME] {
            let text = transform("token digits", oid, 0).unwrap();
            let binary = transform("token digits", oid, 1).unwrap();
            let token = run(&text, b"123-45-6789");
            assert_eq!(run(&binary, b"123-45-6789"), token);
            let mut back = Vec::new();
            text.reveal(&token, &mut back).unwrap();
            assert_eq!(back, b"123-45-6789");
        }
    }

    #[test]
    fn binary_integers_round_trip_and_match_text() {
        for (oid, value) in [(oid::INT4, 1_234_567i64), (oid::INT8, -98_765_432_101)] {
            let binary = transform("token integer", oid, 1).unwrap();
            let text = transform("token integer", oid, 0).unwrap();
            let raw = if oid == oid::INT4 {
                (value as i32).to_be_bytes().to_vec()
            } else {
                value.to_be_bytes().to_vec()
            };
            let token = run(&binary, &raw);
            assert_eq!(token.len(), raw.len());
            let token_value = if oid == oid::INT4 {
                i64::from(i32::from_be_bytes(token[..].try_into().unwrap()))
            } else {
                i64::from_be_bytes(token[..].try_into().unwrap())
            };
            assert_ne!(token_value, value);
            assert_eq!(
                run(&text, value.to_string().as_bytes()),
                token_value.to_string().as_bytes()
            );
            let mut back = Vec::new();
            binary.reveal(&token, &mut back).unwrap();
            assert_eq!(back, raw);
        }
        let int2 = transform("token integer", oid::INT2, 1).unwrap();
        assert!(matches!(
            int2.apply(&12_345i16.to_be_bytes(), &mut Vec::new()),
            Err(ProtectError::SmallDomain { .. })
        ));
        let int2_null = transform("token integer:small=null", oid::INT2, 1).unwrap();
        assert_eq!(
            int2_null
                .apply(&7i16.to_be_bytes(), &mut Vec::new())
                .unwrap(),
            Output::Null
        );
        let int4 = transform("token integer", oid::INT4, 1).unwrap();
        assert!(int4.apply(&[0, 1], &mut Vec::new()).is_err());
    }

    #[test]
    fn binary_dates_round_trip_and_keep_infinity() {
        let binary = transform("token date", oid::DATE, 1).unwrap();
        let text = transform("token date", oid::DATE, 0).unwrap();
        let day = parse_date_text(b"1985-07-14").unwrap();
        let raw = ((day - PG_EPOCH_DAY) as i32).to_be_bytes();
        let token = run(&binary, &raw);
        let token_day = i64::from(i32::from_be_bytes(token[..].try_into().unwrap())) + PG_EPOCH_DAY;
        let token_text = run(&text, b"1985-07-14");
        assert_eq!(parse_date_text(&token_text), Some(token_day));
        let mut back = Vec::new();
        binary.reveal(&token, &mut back).unwrap();
        assert_eq!(back, raw);
        for sentinel in [i32::MAX, i32::MIN] {
            assert_eq!(
                run(&binary, &sentinel.to_be_bytes()),
                sentinel.to_be_bytes()
            );
        }
        assert_eq!(run(&text, b"infinity"), b"infinity");
    }

    #[test]
    fn unsupported_types_and_combinations_are_errors() {
        for oid in [16u32, 700, 1114, 2950, 17] {
            assert!(matches!(
                transform("token digits", oid, 0),
                Err(ProtectError::UnsupportedType { .. })
            ));
            assert!(matches!(
                transform("mask last4", oid, 0),
                Err(ProtectError::UnsupportedType { .. })
            ));
        }
        assert!(transform("token digits", oid::INT4, 0).is_err());
        assert!(transform("token date", oid::INT4, 1).is_err());
        assert!(transform("mask last4", oid::INT8, 0).is_err());
        assert!(transform("token digits", oid::TEXT, 2).is_err());
        // NULL is safe for any type.
        let null = transform("null", 1114, 1).unwrap();
        assert_eq!(
            null.apply(b"anything", &mut Vec::new()).unwrap(),
            Output::Null
        );
    }

    #[test]
    fn masks_apply_to_text_columns() {
        let t = transform("mask ***-**-####", oid::VARCHAR, 1).unwrap();
        assert_eq!(run(&t, b"123-45-6789"), b"***-**-6789");
        let hash = transform("mask hash:12", oid::TEXT, 0).unwrap();
        assert_eq!(run(&hash, b"x").len(), 12);
        let mut missing = KeyRing::default();
        missing.insert("other", 1, Key::from_bytes([1; 32]));
        let spec = TransformSpec::new(Action::Token("digits".parse().unwrap()), "l");
        assert!(matches!(
            ColumnTransform::new(&spec, oid::TEXT, 0, &missing),
            Err(ProtectError::Key(_))
        ));
    }
}
