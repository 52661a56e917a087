//! A located YAML tree: every value and every mapping key carries its line and column.
//!
//! Why not derive the policy structs with serde directly? A derived `Deserialize` stops at
//! the first problem (an unknown key, a wrong type), but DBAs must see every mistake in the
//! file at once. So serde-saphyr parses the text into this small tree (syntax errors still
//! stop here), and `validate` walks the tree collecting every semantic error with its
//! position. Duplicate keys are passed through by the parser
//! ([`DuplicateKeyPolicy::PassThrough`]) so that validation can report all of them too.
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use serde_saphyr::options::DuplicateKeyPolicy;
use std::fmt;

/// A 1-based line and column in the policy file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    fn from_location(loc: &serde_saphyr::Location) -> Pos {
        Pos {
            line: u32::try_from(loc.line()).unwrap_or(u32::MAX),
            column: u32::try_from(loc.column()).unwrap_or(u32::MAX),
        }
    }
}

/// One YAML value with the position where it is written.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
    /// Byte range in the source, when the parser knows it; used to tell `null` from empty.
    bytes: Option<(usize, usize)>,
}

impl Node {
    fn from_spanned(spanned: Spanned<Value>) -> Node {
        let span = spanned.referenced.span();
        let bytes = match (span.byte_offset(), span.byte_len()) {
            (Some(o), Some(l)) => usize::try_from(o).ok().zip(usize::try_from(l).ok()),
            _ => None,
        };
        Node {
            pos: Pos::from_location(&spanned.referenced),
            value: spanned.value,
            bytes,
        }
    }

    /// In a policy, a written `null` is always the word (the `null` action, the `null`
    /// mask), while an empty value is a mistake. YAML reads both as null, so put the word
    /// back where the source spells it.
    fn restore_null_words(&mut self, text: &str) {
        match &mut self.value {
            Value::Null => {
                let written = self
                    .bytes
                    .and_then(|(o, l)| text.get(o..o.checked_add(l)?))
                    .unwrap_or("");
                if matches!(written, "null" | "Null" | "NULL") {
                    self.value = Value::Str("null".to_string());
                }
            }
            Value::Seq(items) => items.iter_mut().for_each(|n| n.restore_null_words(text)),
            Value::Map(entries) => entries
                .iter_mut()
                .for_each(|(_, n)| n.restore_null_words(text)),
            _ => {}
        }
    }
}

/// A mapping key with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in file order, duplicates included.
    Map(Vec<(Key, Node)>),
}

impl Value {
    /// A short description of the kind of value, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "a number",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// The parser's own error: bad YAML syntax. Carries the position when the parser knows it.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub pos: Option<Pos>,
    pub message: String,
}

/// Parses YAML text into a located tree. Strict booleans: only `true`/`false` are booleans,
/// so `enforce: yes` is the string "yes" and validation rejects it instead of reading true.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let options = serde_saphyr::options! {
        strict_booleans: true,
        duplicate_keys: DuplicateKeyPolicy::PassThrough,
    };
    if text.trim().is_empty() {
        return Ok(Node {
            value: Value::Null,
            pos: Pos { line: 1, column: 1 },
            bytes: None,
        });
    }
    match serde_saphyr::from_str_with_options::<Spanned<Value>>(text, options) {
        Ok(spanned) => {
            let mut root = Node::from_spanned(spanned);
            root.restore_null_words(text);
            Ok(root)
        }
        Err(err) => Err(SyntaxError {
            pos: err.location().map(|l| Pos::from_location(&l)),
            message: first_line(&err.to_string()),
        }),
    }
}

/// serde-saphyr renders a snippet after the message; we print our own `file:line:col`
/// prefix, so keep only the message line.
fn first_line(rendered: &str) -> String {
    rendered.lines().next().unwrap_or("").trim().to_string()
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(Value::Int(i128::try_from(v).unwrap_or(i128::MAX)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Value>>()? {
            items.push(Node::from_spanned(item));
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<KeyText>>()? {
            let value = map.next_value::<Spanned<Value>>()?;
            entries.push((
                Key {
                    name: key.value.0,
                    pos: Pos::from_location(&key.referenced),
                },
                Node::from_spanned(value),
            ));
        }
        Ok(Value::Map(entries))
    }
}

/// A mapping key read as text whatever its YAML type (`1:` or `true:` are keys too).
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a plain mapping key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<KeyText, E> {
                Ok(KeyText(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
                Ok(KeyText("null".to_string()))
            }
        }
        deserializer.deserialize_any(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(node: &Node) -> &Vec<(Key, Node)> {
        match &node.value {
            Value::Map(m) => m,
            other => panic!("expected a map, got {other:?}"),
        }
    }

    #[test]
    fn keys_and_values_carry_their_positions() {
        let doc = parse("version: 1\nroles:\n  support: { pii: mask }\n").unwrap();
        let top = map(&doc);
        assert_eq!(top[0].0.name, "version");
        assert_eq!(top[0].0.pos, Pos { line: 1, column: 1 });
        assert_eq!(top[0].1.value, Value::Int(1));
        assert_eq!(
            top[0].1.pos,
            Pos {
                line: 1,
                column: 10
            }
        );
        let roles = map(&top[1].1);
        assert_eq!(roles[0].0.name, "support");
        assert_eq!(roles[0].0.pos, Pos { line: 3, column: 3 });
        let rule = map(&roles[0].1);
        assert_eq!(rule[0].0.name, "pii");
        assert_eq!(
            rule[0].0.pos,
            Pos {
                line: 3,
                column: 14
            }
        );
        assert_eq!(rule[0].1.value, Value::Str("mask".into()));
    }

    #[test]
    fn yes_is_a_string_not_a_boolean() {
        let doc = parse("a: yes\nb: true\nc: off\n").unwrap();
        let top = map(&doc);
        assert_eq!(top[0].1.value, Value::Str("yes".into()));
        assert_eq!(top[1].1.value, Value::Bool(true));
        assert_eq!(top[2].1.value, Value::Str("off".into()));
    }

    #[test]
    fn duplicate_keys_are_kept_for_validation_to_report() {
        let doc = parse("a: 1\nb: 2\na: 3\n").unwrap();
        let top = map(&doc);
        let names: Vec<_> = top
            .iter()
            .map(|(k, _)| (k.name.as_str(), k.pos.line))
            .collect();
        assert_eq!(names, vec![("a", 1), ("b", 2), ("a", 3)]);
    }

    #[test]
    fn written_null_is_the_word_and_empty_stays_null() {
        let doc = parse("a: null\nb:\nc: ~\nd: NULL\n").unwrap();
        let top = map(&doc);
        assert_eq!(top[0].1.value, Value::Str("null".into()));
        assert_eq!(top[1].1.value, Value::Null);
        assert_eq!(top[2].1.value, Value::Null);
        assert_eq!(top[3].1.value, Value::Str("null".into()));
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.is_some(), "{err:?}");
        assert!(!err.message.is_empty());
    }
}
