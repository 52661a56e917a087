//! Verifying a chain of audit files: pure logic over file contents (the CLI reads the
//! files). Reports the first line that breaks the chain and the kind of tampering it looks
//! like.
use super::chain::{ChainKey, GENESIS, ParsedLine, parse_line};
use crate::protect::keys::KeyRing;
use std::fmt;

/// How a chain is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakKind {
    /// A record's MAC does not match its content.
    Edited,
    /// A `seq` gap, or a `prev` that does not match the record before.
    Deleted,
    /// `seq` goes backwards.
    Reordered,
    /// A partial last line, or records missing at a file boundary or at the start.
    Truncated,
    /// The first record does not verify under the key, or its key version is missing.
    WrongKey,
    /// A line that is not an audit record at all.
    Malformed,
}

impl fmt::Display for BreakKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BreakKind::Edited => "edited",
            BreakKind::Deleted => "deleted",
            BreakKind::Reordered => "reordered",
            BreakKind::Truncated => "truncated",
            BreakKind::WrongKey => "wrong key",
            BreakKind::Malformed => "malformed",
        })
    }
}

/// The first place the chain breaks: `file:line: kind: detail`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Break {
    pub file: String,
    /// 1-based.
    pub line: usize,
    pub kind: BreakKind,
    pub detail: String,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file, self.line, self.kind, self.detail
        )
    }
}

/// What an intact chain contained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Summary {
    /// Lines verified (records plus loss notices).
    pub records: u64,
    /// Records the writer reported as lost in `records_lost` notices.
    pub lost: u64,
    /// The first `seq` seen (0 unless verifying with `tail`).
    pub first_seq: Option<u64>,
}

struct Last {
    seq: u64,
    line: String,
    file: String,
}

/// Feeds files in chain order (oldest first) and stops at the first break.
pub struct Verifier<'r> {
    ring: &'r KeyRing,
    key_name: &'r str,
    tail: bool,
    last: Option<Last>,
    summary: Summary,
    torn: Vec<Break>,
}

impl<'r> Verifier<'r> {
    /// Lines cut by a crash after which the chain went on intact (each a `truncated`).
    pub fn torn_lines(&self) -> &[Break] {
        &self.torn
    }

    /// True when `next` is a whole record that links to the last verified one (or starts the
    /// chain): the line before it was torn by a crash, not tampered with.
    fn continues_after_torn_line(&self, next: Option<&[u8]>) -> bool {
        let Some(text) = next.and_then(|raw| std::str::from_utf8(raw).ok()) else {
            return false;
        };
        let Ok(parsed) = parse_line(text) else {
            return false;
        };
        let Ok(key) = self.key(parsed.kv) else {
            return false;
        };
        if parsed.mac != key.seal_mac(&parsed.body) {
            return false;
        }
        match &self.last {
            Some(last) => {
                parsed.seq == last.seq + 1 && parsed.prev == key.link(last.line.as_bytes())
            }
            None => parsed.seq == 0 && parsed.prev == GENESIS,
        }
    }

    /// `tail`: the files are the end of a longer chain (older files archived), so the first
    /// record need not be seq 0.
    pub fn new(ring: &'r KeyRing, key_name: &'r str, tail: bool) -> Self {
        Verifier {
            ring,
            key_name,
            tail,
            last: None,
            summary: Summary::default(),
            torn: Vec::new(),
        }
    }

    pub fn summary(&self) -> Summary {
        self.summary
    }

    /// Verifies the next file of the chain.
    pub fn verify_file(&mut self, file: &str, content: &[u8]) -> Result<(), Break> {
        let complete = content.ends_with(b"\n");
        let mut lines: Vec<&[u8]> = content.split(|b| *b == b'\n').collect();
        if complete || content.is_empty() {
            lines.pop(); // the empty piece after the final newline
        }
        let count = lines.len();
        for (index, raw) in lines.iter().enumerate() {
            let partial = !complete && index + 1 == count;
            let brk = |kind, detail: String| Break {
                file: file.to_owned(),
                line: index + 1,
                kind,
                detail,
            };
            let parsed = std::str::from_utf8(raw)
                .map_err(|_| "not UTF-8".to_owned())
                .and_then(|text| {
                    parse_line(text)
                        .map(|p| (text, p))
                        .map_err(|e| e.to_string())
                });
            let (text, parsed) = match parsed {
                Ok(ok) => ok,
                Err(reason) if partial => {
                    return Err(brk(
                        BreakKind::Truncated,
                        format!(
                            "partial last line ({} bytes, no newline): the file was cut short ({reason})",
                            raw.len()
                        ),
                    ));
                }
                Err(reason) => {
                    if self.continues_after_torn_line(lines.get(index + 1).copied()) {
                        // A crash cut this line; tokengate restarted, ended it with a newline
                        // and continued the chain from the record before it.
                        self.torn.push(brk(
                            BreakKind::Truncated,
                            format!(
                                "partial line ({} bytes) left by a crash during a write; the chain continues after it ({reason})",
                                raw.len()
                            ),
                        ));
                        continue;
                    }
                    return Err(brk(BreakKind::Malformed, reason));
                }
            };
            let key = self
                .key(parsed.kv)
                .map_err(|d| brk(BreakKind::WrongKey, d))?;
            if parsed.mac != key.seal_mac(&parsed.body) {
                let next_verifies = lines.get(index + 1).is_some_and(|next| self.mac_ok(next));
                return Err(if self.last.is_none() && !next_verifies {
                    brk(
                        BreakKind::WrongKey,
                        format!(
                            "the first record's MAC does not verify (seq {}): the key is likely wrong (key {:?} version {})",
                            parsed.seq, self.key_name, parsed.kv
                        ),
                    )
                } else {
                    brk(
                        BreakKind::Edited,
                        format!(
                            "record seq {} does not match its MAC: its content was changed",
                            parsed.seq
                        ),
                    )
                });
            }
            self.check_link(&parsed, &key, index, &lines)
                .map_err(|(kind, detail)| brk(kind, detail))?;
            self.summary.records += 1;
            self.summary.lost += parsed.lost.unwrap_or(0);
            self.summary.first_seq.get_or_insert(parsed.seq);
            self.last = Some(Last {
                seq: parsed.seq,
                line: text.to_owned(),
                file: file.to_owned(),
            });
        }
        Ok(())
    }

    fn key(&self, version: u32) -> Result<ChainKey, String> {
        self.ring
            .get(self.key_name, Some(version))
            .map(|k| ChainKey::new(k, version))
            .map_err(|e| format!("{e}: the key file is likely wrong"))
    }

    fn mac_ok(&self, raw: &[u8]) -> bool {
        let Ok(parsed) = std::str::from_utf8(raw).map_err(|_| ()).and_then(|t| {
            // An owned copy: `parsed` borrows the text only for the MAC.
            parse_line(t)
                .map(|p| (p.kv, p.mac.to_owned(), p.body))
                .map_err(|_| ())
        }) else {
            return false;
        };
        let (kv, mac, body) = parsed;
        self.key(kv).is_ok_and(|k| k.seal_mac(&body) == mac)
    }

    /// `seq` and `prev` against the record before (in this file or the previous one).
    fn check_link(
        &self,
        parsed: &ParsedLine<'_>,
        key: &ChainKey,
        index: usize,
        lines: &[&[u8]],
    ) -> Result<(), (BreakKind, String)> {
        let seq = parsed.seq;
        let Some(last) = &self.last else {
            if seq == 0 {
                if parsed.prev != GENESIS {
                    return Err((
                        BreakKind::Deleted,
                        "seq 0 does not carry the genesis prev: it is not the start of a chain"
                            .into(),
                    ));
                }
            } else if !self.tail {
                return Err((
                    BreakKind::Truncated,
                    format!(
                        "the chain starts at seq {seq}, not 0: the first {seq} record(s) are missing \
                         (pass the older rotated files too, or --tail if they were archived)"
                    ),
                ));
            }
            return Ok(());
        };
        let expected = last.seq + 1;
        if seq <= last.seq {
            return Err((
                BreakKind::Reordered,
                format!(
                    "seq {seq} comes after seq {}: records are out of order",
                    last.seq
                ),
            ));
        }
        if seq > expected {
            if index == 0 {
                return Err((
                    BreakKind::Truncated,
                    format!(
                        "seq jumps from {} (end of {}) to {seq}: {} record(s) are missing between the files \
                         (a rotated file, or the end of the previous one, is missing)",
                        last.seq,
                        last.file,
                        seq - expected
                    ),
                ));
            }
            let next_seq = lines
                .get(index + 1)
                .and_then(|raw| std::str::from_utf8(raw).ok())
                .and_then(|t| parse_line(t).ok())
                .map(|p| p.seq);
            if next_seq.is_some_and(|n| n < seq) {
                return Err((
                    BreakKind::Reordered,
                    format!(
                        "seq {seq} comes before seq {}: records are out of order",
                        next_seq.unwrap_or_default()
                    ),
                ));
            }
            return Err((
                BreakKind::Deleted,
                format!(
                    "seq jumps from {} to {seq}: {} record(s) deleted",
                    last.seq,
                    seq - expected
                ),
            ));
        }
        if parsed.prev != key.link(last.line.as_bytes()) {
            return Err((
                BreakKind::Deleted,
                format!(
                    "record seq {seq} does not chain to the record before it: that record was replaced or removed"
                ),
            ));
        }
        Ok(())
    }
}

/// Orders a rotated set oldest first: `audit.log.3, audit.log.2, audit.log.1, audit.log`.
/// Names that are not `<base>` or `<base>.<n>` of one common base keep the given order.
pub fn chain_order(files: &[String]) -> Vec<String> {
    let rotation = |name: &str| -> Option<(String, u64)> {
        match name.rsplit_once('.') {
            Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                n.parse().ok().map(|n| (base.to_owned(), n))
            }
            _ => Some((name.to_owned(), 0)),
        }
    };
    let parsed: Vec<(String, u64)> = files.iter().filter_map(|f| rotation(f)).collect();
    let same_base = parsed.len() == files.len()
        && parsed.windows(2).all(|w| w[0].0 == w[1].0)
        && parsed.iter().any(|p| p.1 > 0);
    if !same_base {
        return files.to_vec();
    }
    let mut ordered: Vec<(u64, String)> = parsed
        .into_iter()
        .zip(files)
        .map(|((_, n), f)| (n, f.clone()))
        .collect();
    ordered.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    ordered.into_iter().map(|(_, f)| f).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_sets_are_ordered_oldest_first() {
        let given: Vec<String> = [
            "a/audit.log",
            "a/audit.log.1",
            "a/audit.log.10",
            "a/audit.log.2",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            chain_order(&given),
            [
                "a/audit.log.10",
                "a/audit.log.2",
                "a/audit.log.1",
                "a/audit.log"
            ]
        );
        let unrelated: Vec<String> = ["x.log", "y.log"].map(String::from).to_vec();
        assert_eq!(chain_order(&unrelated), unrelated);
    }
}
