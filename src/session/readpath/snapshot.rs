//! Transactions whose snapshot may predate a change of an at-rest column's state.
//!
//! A `REPEATABLE READ` or `SERIALIZABLE` transaction (or a multi-statement implicit one under
//! such a default) reads the rows as they were when it took its snapshot. If `tokengate
//! migrate` or `rekey` finished since, those rows are plaintext or tokens of the old key
//! version, while tokengate would treat them by the new state: plaintext handed to a token
//! role as if it were a token, old tokens "decrypted" for a clear role with the new version.
//!
//! So each session remembers the column states it had when its current transaction **may**
//! have taken its snapshot: the states current at the first client message after the server
//! confirmed the session idle (ReadyForQuery `I` with no reply pending). Any snapshot of the
//! transaction is taken after that message reaches the server, and the states were read before
//! it, so every state change the snapshot can see is recorded, or shows up as a difference
//! (conservative: a change in between is refused too). While replies are pending (a pipeline)
//! the record moves only on the server's word: when a ReadyForQuery `I` answers a Sync or
//! Query with later requests already sent, the transaction after it began with the first of
//! those, and the record becomes the states current when that request was sent (each client
//! message's states are kept, by request sequence number, until then).
//!
//! A statement that touches a column stored as tokens runs only if that column's state now (its
//! key version and generation, the identity of a state: every change bumps the generation) is
//! the one recorded then (TG142). This is stricter than needed in `READ COMMITTED` (each
//! statement there takes a fresh snapshot); such changes are rare, and the refusal says to
//! retry. Changes to other columns do not count.
use crate::catalog::at_rest::{AtRestStates, Phase};
use crate::errors::Code;
use crate::plan::Refusal;
use crate::plan::write::ColumnVersion;
use std::collections::VecDeque;
use std::sync::Arc;

/// How many distinct states a session keeps for requests still pending; beyond it, later
/// requests count as sent under the last one kept (older: conservative).
const HISTORY: usize = 64;

/// The column states the current transaction's snapshot may have been taken under.
#[derive(Debug)]
pub struct TransactionStates {
    /// The server confirmed the session idle, and no client message came since.
    idle: bool,
    /// The states current when the current transaction's first request was sent (`None`:
    /// none had been read).
    recorded: Option<Arc<AtRestStates>>,
    /// Since the record: the states current at client messages, each from the sequence
    /// number of the first request sent under it (consecutive equal states merged).
    history: VecDeque<(u64, Option<Arc<AtRestStates>>)>,
}

impl Default for TransactionStates {
    fn default() -> Self {
        // A new session is idle: its first message records the states.
        TransactionStates {
            idle: true,
            recorded: None,
            history: VecDeque::new(),
        }
    }
}

fn same(a: Option<&Arc<AtRestStates>>, b: Option<&Arc<AtRestStates>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a.columns == b.columns,
        (None, None) => true,
        _ => false,
    }
}

impl TransactionStates {
    /// A client message is handled (before it is forwarded), with the states current now;
    /// `seq`: the sequence number its first request will get.
    pub fn client_message(&mut self, current: Option<&Arc<AtRestStates>>, seq: u64) {
        if self.idle {
            self.idle = false;
            self.recorded = current.cloned();
            self.history.clear();
        }
        let known = self
            .history
            .back()
            .is_some_and(|(_, s)| same(s.as_ref(), current));
        if !known && self.history.len() < HISTORY {
            self.history.push_back((seq, current.cloned()));
        }
    }

    /// ReadyForQuery with its transaction status. `next`: the sequence number of the oldest
    /// request still pending (`None`: nothing is). `boundary`: it answers a client's Sync or
    /// Query (after which the server starts a new transaction when it reports `I`).
    pub fn ready(&mut self, status: u8, next: Option<u64>, boundary: bool) {
        if status != b'I' {
            return;
        }
        match next {
            None => {
                self.idle = true;
                self.history.clear();
            }
            Some(seq) if boundary => {
                // The transaction after this one began with request `seq`.
                while self.history.get(1).is_some_and(|(k, _)| *k <= seq) {
                    self.history.pop_front();
                }
                if let Some((k, states)) = self.history.front()
                    && *k <= seq
                {
                    self.recorded = states.clone();
                }
            }
            Some(_) => {}
        }
    }

    /// The columns a statement runs under (`versions`, current) are those the transaction's
    /// snapshot may have been taken under: otherwise TG142.
    pub fn check(&self, versions: &[ColumnVersion]) -> Result<(), Refusal> {
        for v in versions {
            let then = self.recorded.as_ref().and_then(|s| s.get(&v.column));
            let same = then.is_some_and(|s| {
                s.phase == Phase::Tokenized
                    && s.key_version == v.key_version
                    && s.generation == v.generation
            });
            if !same {
                let was = then.map_or_else(
                    || "not recorded (never migrated)".to_string(),
                    |s| s.describe(),
                );
                return Err(Refusal::new(
                    Code::AtRestSnapshotChanged,
                    format!(
                        "the state of column {} changed since this transaction began (then: {was}; now: tokenized, key version {}): its snapshot may show the rows as they were",
                        v.column, v.key_version
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::at_rest::ColumnState;
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    fn states(rows: &[(&str, Phase, u32, i64)]) -> Arc<AtRestStates> {
        let columns: HashMap<String, ColumnState> = rows
            .iter()
            .map(|&(c, phase, key_version, generation)| {
                (
                    c.to_string(),
                    ColumnState {
                        label: "ssn".into(),
                        token_format: "digits".into(),
                        key_name: "default".into(),
                        key_version,
                        phase,
                        target_version: None,
                        rows_done: 0,
                        generation,
                    },
                )
            })
            .collect();
        Arc::new(AtRestStates {
            columns,
            read_at: Instant::now(),
            max_age: Duration::from_secs(60),
        })
    }

    fn version(column: &str, key_version: u32, generation: i64) -> Vec<ColumnVersion> {
        vec![ColumnVersion {
            column: Arc::from(column),
            key_version,
            generation,
        }]
    }

    #[test]
    fn the_record_moves_only_at_the_first_message_after_the_server_said_idle() {
        let before = states(&[("public.t.a", Phase::Migrating, 1, 1)]);
        let after = states(&[
            ("public.t.a", Phase::Tokenized, 1, 2),
            ("public.t.b", Phase::Tokenized, 1, 7),
        ]);
        let mut t = TransactionStates::default();
        t.client_message(Some(&before), 0); // BEGIN; SELECT 1
        t.ready(b'T', None, true);
        t.client_message(Some(&after), 1);
        let code = |r: Result<(), Refusal>| r.unwrap_err().code;
        assert_eq!(
            code(t.check(&version("public.t.a", 1, 2))),
            Code::AtRestSnapshotChanged
        );
        // A column whose state did not change... was not recorded here either: refused.
        assert!(t.check(&version("public.t.b", 1, 7)).is_err());
        assert!(t.check(&[]).is_ok());
        // Confirmed idle: the next message records the current states.
        t.ready(b'I', None, true);
        t.client_message(Some(&after), 2);
        assert!(t.check(&version("public.t.a", 1, 2)).is_ok());
        assert!(t.check(&version("public.t.b", 1, 7)).is_ok());
        // Later messages of the transaction keep the record; a rekey (generation 3) is refused.
        t.ready(b'T', None, true);
        let rekeyed = states(&[("public.t.a", Phase::Tokenized, 2, 3)]);
        t.client_message(Some(&rekeyed), 3);
        assert!(t.check(&version("public.t.a", 2, 3)).is_err());
        // Other columns' changes do not count.
        assert!(t.check(&version("public.t.b", 1, 7)).is_ok());
        // Nothing read when the transaction began: refused.
        let mut none = TransactionStates::default();
        none.client_message(None, 0);
        assert!(none.check(&version("public.t.a", 1, 2)).is_err());
    }

    #[test]
    fn a_pipeline_moves_the_record_only_as_the_server_ends_its_transactions() {
        let before = states(&[("public.t.a", Phase::Migrating, 1, 1)]);
        let after = states(&[("public.t.a", Phase::Tokenized, 1, 2)]);
        let later = states(&[("public.t.a", Phase::Tokenized, 2, 3)]);
        let mut t = TransactionStates::default();
        // Requests 0-1 (Query, Sync) under `before`; 2-3 and 4-5 under `after`.
        t.client_message(Some(&before), 0);
        t.client_message(Some(&after), 2);
        t.client_message(Some(&after), 4);
        assert!(t.check(&version("public.t.a", 1, 2)).is_err());
        // `T` for the first: the transaction goes on, nothing moves.
        t.ready(b'T', Some(2), true);
        assert!(t.check(&version("public.t.a", 1, 2)).is_err());
        // `I` for request 3's Sync: the transaction of request 4 began under `after`.
        t.ready(b'I', Some(4), true);
        assert!(t.check(&version("public.t.a", 1, 2)).is_ok());
        // A spare answer or a FunctionCall's does not move it.
        t.client_message(Some(&later), 6);
        t.ready(b'I', Some(6), false);
        assert!(t.check(&version("public.t.a", 2, 3)).is_err());
        t.ready(b'I', Some(6), true);
        assert!(t.check(&version("public.t.a", 2, 3)).is_ok());
        // Equal states (a new read of the same table) are one entry.
        let again = states(&[("public.t.a", Phase::Tokenized, 2, 3)]);
        t.client_message(Some(&again), 8);
        assert_eq!(t.history.len(), 1);
    }
}
