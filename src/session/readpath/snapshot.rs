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
//! the record does not move: the server has not said where a transaction ends.
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
use std::sync::Arc;

/// The column states the current transaction's snapshot may have been taken under.
#[derive(Debug)]
pub struct TransactionStates {
    /// The server confirmed the session idle, and no client message came since.
    idle: bool,
    /// The states current at the first client message after the session was last idle
    /// (`None`: none had been read).
    recorded: Option<Arc<AtRestStates>>,
}

impl Default for TransactionStates {
    fn default() -> Self {
        // A new session is idle: its first message records the states.
        TransactionStates {
            idle: true,
            recorded: None,
        }
    }
}

impl TransactionStates {
    /// A client message is handled (before it is forwarded), with the states current now.
    pub fn client_message(&mut self, current: Option<&Arc<AtRestStates>>) {
        if self.idle {
            self.idle = false;
            self.recorded = current.cloned();
        }
    }

    /// ReadyForQuery with its transaction status; `pending` tells whether replies to other
    /// messages are still to come.
    pub fn ready(&mut self, status: u8, pending: bool) {
        if status == b'I' && !pending {
            self.idle = true;
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
        t.client_message(Some(&before)); // BEGIN; SELECT 1
        t.ready(b'T', false);
        t.client_message(Some(&after));
        let code = |r: Result<(), Refusal>| r.unwrap_err().code;
        assert_eq!(
            code(t.check(&version("public.t.a", 1, 2))),
            Code::AtRestSnapshotChanged
        );
        // A column whose state did not change... was not recorded here either: refused.
        assert!(t.check(&version("public.t.b", 1, 7)).is_err());
        assert!(t.check(&[]).is_ok());
        // Idle with replies pending (a pipeline): not yet.
        t.ready(b'I', true);
        t.client_message(Some(&after));
        assert!(t.check(&version("public.t.a", 1, 2)).is_err());
        // Confirmed idle: the next message records the current states.
        t.ready(b'I', false);
        t.client_message(Some(&after));
        assert!(t.check(&version("public.t.a", 1, 2)).is_ok());
        assert!(t.check(&version("public.t.b", 1, 7)).is_ok());
        // Later messages of the transaction keep the record; a rekey (generation 3) is refused.
        t.ready(b'T', false);
        t.client_message(Some(&states(&[("public.t.a", Phase::Tokenized, 2, 3)])));
        assert!(t.check(&version("public.t.a", 2, 3)).is_err());
        // Other columns' changes do not count.
        assert!(t.check(&version("public.t.b", 1, 7)).is_ok());
        // Nothing read when the transaction began: refused.
        let mut none = TransactionStates::default();
        none.client_message(None);
        assert!(none.check(&version("public.t.a", 1, 2)).is_err());
    }
}
