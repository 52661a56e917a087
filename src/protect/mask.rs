//! Masks: irreversible, shape-keeping replacements, and the textual mask spec the CLI and the
//! policy YAML share:
//!
//! | spec | effect |
//! |---|---|
//! | `last4`, `last:N` | keep the last N letters/digits, `*` for the others; punctuation and spaces stay |
//! | `first:N` | keep the first N letters/digits, likewise |
//! | `***-**-####` or `pattern:P` | `#` shows, `*` hides, anything else is a literal (see [`MaskSpec::Pattern`]) |
//! | `email` | first character of the local part, then `***@domain` |
//! | `fixed:TEXT` | the constant TEXT |
//! | `null` | SQL NULL |
//! | `hash`, `hash:N`, `hash:N:hex`, `hash:N:base32` | keyed HMAC-SHA-256 of label and value, first N chars (default 16, hex) |
use super::error::ProtectError;
use super::keys::Key;
use super::token::Output;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashEncoding {
    Hex,
    Base32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskSpec {
    KeepFirst(usize),
    KeepLast(usize),
    /// Aligned right to left against the input's letters and digits: each `#` shows the next
    /// one, each `*` hides it, other pattern characters are printed as they are and consume
    /// nothing. Input letters/digits beyond the pattern are dropped; pattern slots with no input
    /// left print `*`. So `***-**-####` gives `***-**-6789` for `123-45-6789` and `123456789`.
    Pattern(String),
    Email,
    Fixed(String),
    Null,
    Hash {
        chars: usize,
        encoding: HashEncoding,
    },
}

impl MaskSpec {
    /// Whether the mask needs a key (only the keyed hash does).
    pub fn needs_key(&self) -> bool {
        matches!(self, MaskSpec::Hash { .. })
    }
}

impl FromStr for MaskSpec {
    type Err = ProtectError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| ProtectError::spec("mask", spec, reason);
        let count = |n: &str| {
            n.parse::<usize>()
                .map_err(|_| invalid("expected a character count"))
        };
        let (name, arg) = match spec.split_once(':') {
            Some((name, arg)) => (name, Some(arg)),
            None => (spec, None),
        };
        Ok(match (name, arg) {
            ("last4", None) => MaskSpec::KeepLast(4),
            ("last", Some(n)) => MaskSpec::KeepLast(count(n)?),
            ("first", Some(n)) => MaskSpec::KeepFirst(count(n)?),
            ("email", None) => MaskSpec::Email,
            ("null", None) => MaskSpec::Null,
            ("fixed", Some(text)) => MaskSpec::Fixed(text.to_owned()),
            ("pattern", Some(pattern)) if !pattern.is_empty() => {
                MaskSpec::Pattern(pattern.to_owned())
            }
            ("hash", None) => MaskSpec::Hash {
                chars: 16,
                encoding: HashEncoding::Hex,
            },
            ("hash", Some(rest)) => {
                let (n, encoding) = match rest.split_once(':') {
                    Some((n, "hex")) => (n, HashEncoding::Hex),
                    Some((n, "base32")) => (n, HashEncoding::Base32),
                    Some(_) => return Err(invalid("hash encoding is hex or base32")),
                    None => (rest, HashEncoding::Hex),
                };
                let chars = count(n)?;
                let max = match encoding {
                    HashEncoding::Hex => 64,
                    HashEncoding::Base32 => 51,
                };
                if !(4..=max).contains(&chars) {
                    return Err(invalid(
                        "hash length must be 4..=64 (hex) or 4..=51 (base32)",
                    ));
                }
                MaskSpec::Hash { chars, encoding }
            }
            _ if spec.contains(['#', '*']) && !spec.contains(':') => {
                MaskSpec::Pattern(spec.to_owned())
            }
            _ => {
                return Err(invalid(
                    "expected last4, last:N, first:N, a #/* pattern, email, fixed:TEXT, null or hash[:N[:hex|base32]]",
                ));
            }
        })
    }
}

impl fmt::Display for MaskSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaskSpec::KeepFirst(n) => write!(f, "first:{n}"),
            MaskSpec::KeepLast(n) => write!(f, "last:{n}"),
            MaskSpec::Pattern(p) => write!(f, "pattern:{p}"),
            MaskSpec::Email => f.write_str("email"),
            MaskSpec::Fixed(text) => write!(f, "fixed:{text}"),
            MaskSpec::Null => f.write_str("null"),
            MaskSpec::Hash { chars, encoding } => {
                let encoding = match encoding {
                    HashEncoding::Hex => "hex",
                    HashEncoding::Base32 => "base32",
                };
                write!(f, "hash:{chars}:{encoding}")
            }
        }
    }
}

/// A prepared mask (with its HMAC state when it is a keyed hash).
#[derive(Clone)]
pub struct Masker {
    spec: MaskSpec,
    hmac: Option<Hmac<Sha256>>,
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("spec", &self.spec)
            .field("key", &self.hmac.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl Masker {
    /// `key` is required for `hash` masks; the label separates hashes of different labels.
    pub fn new(spec: MaskSpec, key: Option<&Key>, label: &str) -> Result<Self, ProtectError> {
        let hmac = match (&spec, key) {
            (MaskSpec::Hash { .. }, Some(key)) => {
                let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes())
                    .map_err(|_| ProtectError::spec("mask", &spec.to_string(), "bad key"))?;
                mac.update(b"tokengate/hash/v1\0");
                mac.update(label.as_bytes());
                mac.update(b"\0");
                Some(mac)
            }
            (MaskSpec::Hash { .. }, None) => {
                return Err(ProtectError::spec(
                    "mask",
                    &spec.to_string(),
                    "a keyed hash needs a key file",
                ));
            }
            _ => None,
        };
        Ok(Masker { spec, hmac })
    }

    pub fn spec(&self) -> &MaskSpec {
        &self.spec
    }

    /// Appends the masked form of a UTF-8 text value (invalid UTF-8 is masked lossily).
    pub fn apply(&self, value: &[u8], out: &mut Vec<u8>) -> Output {
        match &self.spec {
            MaskSpec::Null => return Output::Null,
            MaskSpec::Fixed(text) => out.extend_from_slice(text.as_bytes()),
            MaskSpec::Hash { chars, encoding } => {
                let mut mac = self.hmac.clone().unwrap_or_else(|| {
                    // Masker::new guarantees the state; an empty key would still hide the value.
                    <Hmac<Sha256> as KeyInit>::new_from_slice(&[0u8; 32])
                        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
                });
                mac.update(value);
                let digest = mac.finalize().into_bytes();
                match encoding {
                    HashEncoding::Hex => push_hex(&digest, *chars, out),
                    HashEncoding::Base32 => push_base32(&digest, *chars, out),
                }
            }
            MaskSpec::KeepFirst(n) | MaskSpec::KeepLast(n) => {
                let text = String::from_utf8_lossy(value);
                let significant = text.chars().filter(|c| c.is_alphanumeric()).count();
                let keep_from_end = matches!(self.spec, MaskSpec::KeepLast(_));
                let mut seen = 0;
                for c in text.chars() {
                    if !c.is_alphanumeric() {
                        push_char(c, out);
                        continue;
                    }
                    let kept = if keep_from_end {
                        seen + n >= significant
                    } else {
                        seen < *n
                    };
                    seen += 1;
                    push_char(if kept { c } else { '*' }, out);
                }
            }
            MaskSpec::Pattern(pattern) => {
                let text = String::from_utf8_lossy(value);
                let mut input = text.chars().rev().filter(|c| c.is_alphanumeric());
                let start = out.len();
                for p in pattern.chars().rev() {
                    let c = match p {
                        '#' => input.next().unwrap_or('*'),
                        '*' => {
                            input.next();
                            '*'
                        }
                        literal => literal,
                    };
                    push_char(c, out);
                }
                // Built backwards: reverse chars, not bytes.
                let built = String::from_utf8_lossy(&out[start..])
                    .chars()
                    .rev()
                    .collect::<String>();
                out.truncate(start);
                out.extend_from_slice(built.as_bytes());
            }
            MaskSpec::Email => {
                let text = String::from_utf8_lossy(value);
                match text.rsplit_once('@') {
                    Some((local, domain)) if !local.is_empty() => {
                        if let Some(first) = local.chars().next() {
                            push_char(first, out);
                        }
                        out.extend_from_slice(b"***@");
                        out.extend_from_slice(domain.as_bytes());
                    }
                    _ => out.extend_from_slice(b"***"),
                }
            }
        }
        Output::Value
    }
}

fn push_char(c: char, out: &mut Vec<u8>) {
    let mut buf = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

fn push_hex(digest: &[u8], chars: usize, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let nibbles = digest
        .iter()
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
    out.extend(nibbles.take(chars));
}

/// RFC 4648 base32 alphabet, lowercase, no padding.
fn push_base32(digest: &[u8], chars: usize, out: &mut Vec<u8>) {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut buffer = 0u32;
    let mut bits = 0;
    let mut written = 0;
    for &byte in digest {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 && written < chars {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize]);
            written += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(spec: &str, value: &str) -> String {
        let key = Key::from_bytes([9; 32]);
        let masker = Masker::new(spec.parse().unwrap(), Some(&key), "label").unwrap();
        let mut out = Vec::new();
        assert_eq!(masker.apply(value.as_bytes(), &mut out), Output::Value);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn keep_first_and_last() {
        assert_eq!(mask("last4", "4111 1111 1111 1234"), "**** **** **** 1234");
        assert_eq!(mask("last:2", "abcdef"), "****ef");
        assert_eq!(mask("first:2", "Zoë-Smith"), "Zo*-*****");
        assert_eq!(mask("last:10", "abc"), "abc");
    }

    #[test]
    fn patterns_align_right_on_letters_and_digits() {
        assert_eq!(mask("***-**-####", "123-45-6789"), "***-**-6789");
        assert_eq!(mask("***-**-####", "123456789"), "***-**-6789");
        assert_eq!(mask("pattern:###", "1"), "**1");
        assert_eq!(mask("##", "12345"), "45");
    }

    #[test]
    fn email_fixed_null() {
        assert_eq!(mask("email", "john@example.com"), "j***@example.com");
        assert_eq!(mask("email", "nope"), "***");
        assert_eq!(mask("fixed:REDACTED", "secret"), "REDACTED");
        let masker = Masker::new(MaskSpec::Null, None, "l").unwrap();
        let mut out = Vec::new();
        assert_eq!(masker.apply(b"x", &mut out), Output::Null);
        assert!(out.is_empty());
    }

    #[test]
    fn keyed_hash_is_deterministic_keyed_and_labelled() {
        let a = mask("hash:16:hex", "alice");
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, mask("hash", "alice"));
        assert_ne!(a, mask("hash", "bob"));
        let b32 = mask("hash:20:base32", "alice");
        assert_eq!(b32.len(), 20);
        let other_key = Masker::new(
            "hash".parse().unwrap(),
            Some(&Key::from_bytes([1; 32])),
            "label",
        )
        .unwrap();
        let mut out = Vec::new();
        other_key.apply(b"alice", &mut out);
        assert_ne!(out, a.as_bytes());
        let other_label = Masker::new(
            "hash".parse().unwrap(),
            Some(&Key::from_bytes([9; 32])),
            "x",
        )
        .unwrap();
        let mut out = Vec::new();
        other_label.apply(b"alice", &mut out);
        assert_ne!(out, a.as_bytes());
        assert!(Masker::new("hash".parse().unwrap(), None, "l").is_err());
    }

    #[test]
    fn spec_syntax_round_trips_and_rejects_nonsense() {
        for spec in [
            "first:2",
            "last:4",
            "pattern:***-##",
            "email",
            "fixed:X",
            "null",
            "hash:8:base32",
        ] {
            assert_eq!(spec.parse::<MaskSpec>().unwrap().to_string(), spec);
        }
        assert_eq!("last4".parse::<MaskSpec>().unwrap(), MaskSpec::KeepLast(4));
        for bad in [
            "last",
            "first:x",
            "hash:2",
            "hash:16:b64",
            "unknown",
            "pattern:",
        ] {
            assert!(bad.parse::<MaskSpec>().is_err(), "{bad}");
        }
    }
}
