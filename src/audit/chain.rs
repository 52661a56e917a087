//! The hash chain: sealing a record into a line and taking a line apart again. Pure.
//!
//! A line is the record's JSON object with four fields added: `seq` (first), `kv` (the
//! audit key's version), `prev` and, last, `mac`:
//! - `prev` = HMAC-SHA-256(key, "tokengate/audit/prev/v1\0" ‖ previous line) in hex, or
//!   [`GENESIS`] for the first record of a chain. The previous line is its exact bytes
//!   without the newline, so any change to it breaks this link.
//! - `mac` = HMAC-SHA-256(key, "tokengate/audit/mac/v1\0" ‖ body) where body is the line's
//!   exact bytes up to `,"mac":"…"` with the closing `}` put back. Verifying the bytes as
//!   written (not a re-serialisation) makes the MAC independent of JSON formatting details.
//!
//! The domain prefixes keep the two uses of the key apart (and apart from the keyed-hash
//! mask, which uses the same HMAC construction).
use crate::protect::keys::Key;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// `prev` of the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const PREV_DOMAIN: &[u8] = b"tokengate/audit/prev/v1\0";
const MAC_DOMAIN: &[u8] = b"tokengate/audit/mac/v1\0";
/// What follows the body in every line: `,"mac":"` + 64 hex digits + `"}`.
const MAC_PREFIX: &str = ",\"mac\":\"";
const MAC_SUFFIX_LEN: usize = MAC_PREFIX.len() + 64 + 2;

/// An audit key ready for HMAC, with the version recorded in each line as `kv`.
#[derive(Clone)]
pub struct ChainKey {
    version: u32,
    hmac: Hmac<Sha256>,
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ChainKey {{ version: {}, key: [redacted] }}",
            self.version
        )
    }
}

impl ChainKey {
    pub fn new(key: &Key, version: u32) -> Self {
        let hmac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        ChainKey { version, hmac }
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// The `prev` value a record following `line` must carry.
    pub fn link(&self, line: &[u8]) -> String {
        self.hex_mac(PREV_DOMAIN, line)
    }

    /// The `mac` of a body (the line without its `mac` field).
    pub fn seal_mac(&self, body: &[u8]) -> String {
        self.hex_mac(MAC_DOMAIN, body)
    }

    fn hex_mac(&self, domain: &[u8], data: &[u8]) -> String {
        let mut mac = self.hmac.clone();
        mac.update(domain);
        mac.update(data);
        hex(&mac.finalize().into_bytes())
    }
}

/// Where the chain stands: the next `seq` and the `prev` it must carry. Cloned before a
/// batch is written so a failed write can roll back (a record that never reached the disk
/// consumes no `seq`).
#[derive(Clone, Debug)]
pub struct Chain {
    key: ChainKey,
    next_seq: u64,
    prev: String,
}

#[derive(Serialize)]
struct Sealed<'a, T: Serialize> {
    seq: u64,
    kv: u32,
    #[serde(flatten)]
    body: &'a T,
    prev: &'a str,
}

impl Chain {
    /// A new chain starting at seq 0.
    pub fn genesis(key: ChainKey) -> Self {
        Chain {
            key,
            next_seq: 0,
            prev: GENESIS.to_owned(),
        }
    }

    /// Continues after `last_line` (the last line written, e.g. found at startup).
    pub fn resume(key: ChainKey, last_line: &str) -> Result<Self, LineError> {
        let parsed = parse_line(last_line)?;
        Ok(Chain {
            prev: key.link(last_line.as_bytes()),
            next_seq: parsed.seq.saturating_add(1),
            key,
        })
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Seals `body` (a JSON object) as the next record and advances the chain; the result
    /// has no trailing newline.
    pub fn seal<T: Serialize>(&mut self, body: &T) -> Result<String, serde_json::Error> {
        let mut line = serde_json::to_string(&Sealed {
            seq: self.next_seq,
            kv: self.key.version,
            body,
            prev: &self.prev,
        })?;
        let mac = self.key.seal_mac(line.as_bytes());
        line.pop(); // the closing brace, put back after the mac
        line.push_str(MAC_PREFIX);
        line.push_str(&mac);
        line.push_str("\"}");
        self.prev = self.key.link(line.as_bytes());
        self.next_seq += 1;
        Ok(line)
    }
}

/// The chain fields of one line, and the bytes its MAC covers.
#[derive(Debug)]
pub struct ParsedLine<'a> {
    pub seq: u64,
    pub kv: u32,
    pub prev: String,
    pub mac: &'a str,
    /// The exact bytes the MAC covers.
    pub body: Vec<u8>,
    /// `Some(n)` for a writer's `records_lost` notice.
    pub lost: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("the line does not end with a \"mac\" field")]
    NotSealed,
    #[error("not an audit record: {0}")]
    Json(String),
}

#[derive(Deserialize)]
struct ChainFields {
    seq: u64,
    kv: u32,
    prev: String,
    lost: Option<u64>,
}

/// Splits a line (without newline) into its chain fields and MAC-covered body.
pub fn parse_line(line: &str) -> Result<ParsedLine<'_>, LineError> {
    let split = line
        .len()
        .checked_sub(MAC_SUFFIX_LEN)
        .ok_or(LineError::NotSealed)?;
    let (body, suffix) = (line.get(..split), line.get(split..));
    let (Some(body), Some(suffix)) = (body, suffix) else {
        return Err(LineError::NotSealed);
    };
    let mac = suffix
        .strip_prefix(MAC_PREFIX)
        .and_then(|s| s.strip_suffix("\"}"))
        .filter(|m| m.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or(LineError::NotSealed)?;
    let mut body = body.as_bytes().to_vec();
    body.push(b'}');
    let fields: ChainFields =
        serde_json::from_slice(&body).map_err(|e| LineError::Json(e.to_string()))?;
    Ok(ParsedLine {
        seq: fields.seq,
        kv: fields.kv,
        prev: fields.prev,
        mac,
        body,
        lost: fields.lost,
    })
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(byte: u8) -> ChainKey {
        ChainKey::new(&Key::from_bytes([byte; 32]), 1)
    }

    #[test]
    fn sealed_lines_link_and_verify() {
        let mut chain = Chain::genesis(key(1));
        let first = chain.seal(&json!({"role": "a"})).unwrap();
        let second = chain.seal(&json!({"role": "b"})).unwrap();
        let p1 = parse_line(&first).unwrap();
        let p2 = parse_line(&second).unwrap();
        assert_eq!((p1.seq, p2.seq), (0, 1));
        assert_eq!(p1.prev, GENESIS);
        assert_eq!(p2.prev, key(1).link(first.as_bytes()));
        assert_eq!(p1.mac, key(1).seal_mac(&p1.body));
        assert_ne!(p1.mac, key(2).seal_mac(&p1.body));
        assert!(first.starts_with(r#"{"seq":0,"kv":1,"role":"a","prev":"000"#));
        let value: serde_json::Value = serde_json::from_str(&second).unwrap();
        assert_eq!(value["mac"], p2.mac);
    }

    #[test]
    fn an_edit_changes_the_covered_body() {
        let mut chain = Chain::genesis(key(1));
        let line = chain.seal(&json!({"rows": 10})).unwrap();
        let edited = line.replace("\"rows\":10", "\"rows\":1");
        let parsed = parse_line(&edited).unwrap();
        assert_ne!(parsed.mac, key(1).seal_mac(&parsed.body));
    }

    #[test]
    fn resume_continues_seq_and_link() {
        let mut chain = Chain::genesis(key(3));
        let a = chain.seal(&json!({})).unwrap();
        let b = chain.seal(&json!({})).unwrap();
        let mut resumed = Chain::resume(key(3), &a).unwrap();
        assert_eq!(resumed.next_seq(), 1);
        assert_eq!(resumed.seal(&json!({})).unwrap(), b);
    }

    #[test]
    fn malformed_lines_are_rejected() {
        assert_eq!(parse_line("{}").unwrap_err(), LineError::NotSealed);
        assert_eq!(
            parse_line(&format!("{{\"seq\":1{MAC_PREFIX}{}\"}}", "z".repeat(64))).unwrap_err(),
            LineError::NotSealed
        );
        assert!(matches!(
            parse_line(&format!("{{\"seq\":1{MAC_PREFIX}{}\"}}", "a".repeat(64))),
            Err(LineError::Json(_))
        ));
        // A multi-byte character where the suffix would start must not panic.
        assert!(parse_line(&"é".repeat(60)).is_err());
    }
}
