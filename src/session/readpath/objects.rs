//! The session's named objects as the server has confirmed them: prepared statements (protocol
//! Parse and SQL PREPARE share one namespace), portals (protocol Bind and SQL DECLARE share one
//! namespace), savepoints and the transaction's fate.
//!
//! Nothing here changes when a client message is analysed; only on the server's confirmation:
//! ParseComplete, BindComplete, CloseComplete, CommandComplete (`DECLARE CURSOR`, `CLOSE
//! CURSOR [ALL]`, `PREPARE`, `DEALLOCATE [ALL]`, `DISCARD ALL`, `SAVEPOINT`, `RELEASE`,
//! `ROLLBACK`) and ReadyForQuery's transaction status. A definition the server refuses (the
//! name exists, the transaction is aborted) leaves the old one in place, because no
//! confirmation comes. PostgreSQL's rules followed here:
//!
//! - a Parse or Bind of the unnamed statement/portal replaces it; a simple Query drops both;
//! - portals end with their transaction, except WITH HOLD cursors of a transaction that
//!   committed; portals created inside a savepoint end on ROLLBACK TO that savepoint;
//! - prepared statements are not transactional.
//!
//! When tokengate cannot be sure an object still exists with the plan it knows, it forgets it:
//! an unknown name is refused, so forgetting too much is safe and keeping too much is not.
use super::transform::ActiveResult;
use crate::plan::{Refusal, ResultPlan};
use std::collections::HashMap;
use std::sync::Arc;

/// A statement as tokengate planned it.
#[derive(Debug, Clone, Default)]
pub struct Planned {
    /// How to rewrite its result rows (None: nothing to rewrite).
    pub result: Option<Arc<ResultPlan>>,
    /// A protected column is read, used or written: server messages about it are rebuilt.
    pub sensitive: bool,
    /// What the statement does to the session's named objects once confirmed.
    pub effect: Effect,
    /// The text, for audit records (present when an audit log is configured).
    pub text: Option<Arc<str>>,
    /// Running it may change name resolution (search path, temp schema, schemas).
    pub changes_names: bool,
    /// Running it may change the catalog.
    pub is_ddl: bool,
    /// Literals and parameters to tokenize for columns stored as tokens (issue 14).
    pub at_rest: Option<Arc<crate::plan::write::AtRestPlan>>,
}

/// What a statement changes once the server confirms it.
#[derive(Debug, Clone, Default)]
pub enum Effect {
    #[default]
    None,
    /// DECLARE name [BINARY] CURSOR [WITH HOLD]: the plan is the cursor's.
    Declare {
        name: String,
        hold: bool,
        binary: bool,
        plan: Option<Arc<ResultPlan>>,
        sensitive: bool,
    },
    /// PREPARE name AS ...: the plan is EXECUTE's.
    Prepare {
        name: String,
        plan: Option<Arc<ResultPlan>>,
        sensitive: bool,
    },
    /// FETCH/MOVE: rows come by the cursor's confirmed plan.
    Fetch(String),
    /// EXECUTE name: rows come by the prepared statement's confirmed plan.
    Execute(String),
    /// CLOSE name (CLOSE ALL is told by its command tag).
    Close(String),
    /// DEALLOCATE name (DEALLOCATE ALL is told by its command tag).
    Deallocate(String),
    Savepoint(String),
    Release(String),
    RollbackTo(String),
    /// CREATE TABLE / CREATE VIEW of this name (its parts as PostgreSQL folds them): inside a
    /// transaction block, its definition is read on the session's connection.
    Created(Vec<String>),
}

/// A portal: protocol Bind or SQL cursor.
#[derive(Debug, Clone)]
pub struct Portal {
    /// `None`: created without tokengate's analysis (e.g. while the role was clear): its rows
    /// are refused for a restricted role.
    pub plan: Option<Option<Arc<ResultPlan>>>,
    /// The result being rewritten (built at Bind, with the Bind's result formats).
    pub active: Option<Arc<ActiveResult>>,
    pub sensitive: bool,
    /// A refusal decided for every later Execute (e.g. its description disagreed).
    pub failed: Option<Refusal>,
    pub text: Option<Arc<str>>,
    /// What executing it does (a prepared DECLARE, PREPARE, CLOSE...).
    pub effect: Effect,
    /// Executing it may change name resolution or the catalog.
    pub changes_names: bool,
    pub is_ddl: bool,
    pub hold: bool,
    /// A cursor declared BINARY: its rows come in binary whatever the client asks.
    pub binary: bool,
    /// Savepoints open when it was created (it ends on ROLLBACK TO any of the later ones).
    level: usize,
    /// A held cursor whose transaction committed: it survives later transaction ends.
    committed: bool,
}

impl Portal {
    pub fn new(plan: Option<Option<Arc<ResultPlan>>>, sensitive: bool) -> Self {
        Portal {
            plan,
            active: None,
            sensitive,
            failed: None,
            text: None,
            effect: Effect::None,
            changes_names: false,
            is_ddl: false,
            hold: false,
            binary: false,
            level: 0,
            committed: false,
        }
    }
}

/// A prepared statement: `None` plan when it was parsed without analysis.
#[derive(Debug, Clone)]
pub struct Statement {
    pub planned: Option<Planned>,
    pub failed: Option<Refusal>,
}

#[derive(Debug, Default)]
pub struct Objects {
    pub statements: HashMap<Vec<u8>, Statement>,
    pub portals: HashMap<Vec<u8>, Portal>,
    savepoints: Vec<String>,
    /// An error happened in the current transaction (it may still commit after ROLLBACK TO,
    /// but held cursors are then forgotten: safe).
    xact_error: bool,
    /// The transaction was ended by ROLLBACK (or PREPARE TRANSACTION).
    xact_rolled_back: bool,
}

impl Objects {
    pub fn parsed(&mut self, name: Vec<u8>, planned: Option<Planned>) {
        self.statements.insert(
            name,
            Statement {
                planned,
                failed: None,
            },
        );
    }

    pub fn bound(&mut self, name: Vec<u8>, mut portal: Portal) {
        portal.level = self.savepoints.len();
        self.portals.insert(name, portal);
    }

    pub fn closed_statement(&mut self, name: &[u8]) {
        self.statements.remove(name);
    }

    pub fn closed_portal(&mut self, name: &[u8]) {
        self.portals.remove(name);
    }

    /// A simple Query ran: PostgreSQL drops the unnamed statement and portal.
    pub fn simple_query(&mut self) {
        self.statements.remove(&b""[..]);
        self.portals.remove(&b""[..]);
    }

    /// An ErrorResponse arrived.
    pub fn error(&mut self) {
        self.xact_error = true;
    }

    /// A statement's CommandComplete, with its tag (e.g. `DECLARE CURSOR`, `ROLLBACK`).
    pub fn command_complete(&mut self, tag: &[u8], effect: &Effect) {
        let tag = tag.strip_suffix(b"\0").unwrap_or(tag);
        match (tag, effect) {
            (
                b"DECLARE CURSOR",
                Effect::Declare {
                    name,
                    hold,
                    binary,
                    plan,
                    sensitive,
                },
            ) => {
                let mut p = Portal::new(Some(plan.clone()), *sensitive);
                p.hold = *hold;
                p.binary = *binary;
                self.bound(name.as_bytes().to_vec(), p);
            }
            // Declared by a statement tokengate did not plan as DECLARE: forget nothing known,
            // but the cursor's name is not known either (FETCH from it is refused).
            (b"DECLARE CURSOR", _) => {}
            (b"CLOSE CURSOR", Effect::Close(name)) => self.closed_portal(name.as_bytes()),
            (b"CLOSE CURSOR ALL", _) => self.portals.clear(),
            (
                b"PREPARE",
                Effect::Prepare {
                    name,
                    plan,
                    sensitive,
                },
            ) => self.parsed(
                name.as_bytes().to_vec(),
                Some(Planned {
                    result: plan.clone(),
                    sensitive: *sensitive,
                    effect: Effect::None,
                    text: None,
                    changes_names: false,
                    is_ddl: false,
                    // PREPARE of a statement naming at-rest columns is refused (TG180).
                    at_rest: None,
                }),
            ),
            (b"DEALLOCATE", Effect::Deallocate(name)) => self.closed_statement(name.as_bytes()),
            (b"DEALLOCATE ALL", _) => self.statements.retain(|k, _| k.is_empty()),
            (b"DISCARD ALL", _) => {
                self.portals.clear();
                self.statements.retain(|k, _| k.is_empty());
            }
            (b"SAVEPOINT", Effect::Savepoint(name)) => self.savepoints.push(name.clone()),
            (b"RELEASE", Effect::Release(name)) => {
                if let Some(i) = self.savepoints.iter().rposition(|s| s == name) {
                    self.savepoints.truncate(i);
                    for p in self.portals.values_mut() {
                        p.level = p.level.min(i);
                    }
                } else {
                    self.unsure_of_savepoints();
                }
            }
            (b"ROLLBACK", Effect::RollbackTo(name)) => {
                if let Some(i) = self.savepoints.iter().rposition(|s| s == name) {
                    self.portals.retain(|_, p| p.level <= i);
                    self.savepoints.truncate(i + 1);
                    // The error, if any, may have been inside the rolled-back part; stay
                    // conservative about held cursors anyway.
                } else {
                    self.unsure_of_savepoints();
                }
            }
            (b"ROLLBACK", _) | (b"PREPARE TRANSACTION", _) => {
                self.xact_rolled_back = true;
                // A ROLLBACK TO tokengate did not understand: forget the transaction's portals.
                self.unsure_of_savepoints();
            }
            // A cursor or statement statement whose kind tokengate did not plan as such: it may
            // have changed any name, so forget them all.
            (b"CLOSE CURSOR" | b"PREPARE" | b"DEALLOCATE" | b"SAVEPOINT" | b"RELEASE", _) => {
                self.unsure_of_savepoints();
                self.portals.retain(|_, p| p.committed);
                if tag == b"PREPARE" || tag == b"DEALLOCATE" {
                    self.statements.clear();
                }
            }
            _ => {}
        }
    }

    /// Savepoint bookkeeping lost track: every portal of this transaction may be gone.
    fn unsure_of_savepoints(&mut self) {
        self.portals.retain(|_, p| p.committed);
        self.savepoints.clear();
    }

    /// ReadyForQuery with its transaction status (`I`, `T` or `E`).
    pub fn ready(&mut self, status: u8) {
        if status != b'I' {
            return;
        }
        // Idle: any transaction has ended. Portals end with it, except held cursors of a
        // transaction that committed.
        let committed = !self.xact_error && !self.xact_rolled_back;
        self.portals
            .retain(|_, p| p.hold && (p.committed || committed));
        for p in self.portals.values_mut() {
            p.committed = true;
            p.level = 0;
        }
        self.savepoints.clear();
        self.xact_error = false;
        self.xact_rolled_back = false;
    }

    pub fn portal(&self, name: &[u8]) -> Option<&Portal> {
        self.portals.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Option<Arc<ResultPlan>> {
        Some(Arc::new(ResultPlan::default()))
    }

    fn declare(o: &mut Objects, name: &str, hold: bool) {
        o.command_complete(
            b"DECLARE CURSOR\0",
            &Effect::Declare {
                name: name.into(),
                hold,
                binary: false,
                plan: plan(),
                sensitive: true,
            },
        );
    }

    #[test]
    fn cursors_end_with_their_transaction_unless_held_and_committed() {
        let mut o = Objects::default();
        declare(&mut o, "a", false);
        declare(&mut o, "h", true);
        o.ready(b'T');
        assert!(o.portal(b"a").is_some());
        o.command_complete(b"COMMIT", &Effect::None);
        o.ready(b'I');
        assert!(o.portal(b"a").is_none());
        assert!(o.portal(b"h").is_some());
        // A held cursor of a rolled-back transaction is gone; an older committed one is not.
        declare(&mut o, "h2", true);
        o.command_complete(b"ROLLBACK", &Effect::None);
        o.ready(b'I');
        assert!(o.portal(b"h2").is_none());
        assert!(o.portal(b"h").is_some());
        // An error in an implicit transaction aborts it.
        declare(&mut o, "h3", true);
        o.error();
        o.ready(b'I');
        assert!(o.portal(b"h3").is_none());
    }

    #[test]
    fn rollback_to_savepoint_drops_the_cursors_declared_after_it() {
        let mut o = Objects::default();
        declare(&mut o, "before", false);
        o.command_complete(b"SAVEPOINT", &Effect::Savepoint("s1".into()));
        declare(&mut o, "inside", false);
        o.command_complete(b"SAVEPOINT", &Effect::Savepoint("s2".into()));
        declare(&mut o, "deeper", false);
        o.command_complete(b"ROLLBACK", &Effect::RollbackTo("s1".into()));
        assert!(o.portal(b"before").is_some());
        assert!(o.portal(b"inside").is_none());
        assert!(o.portal(b"deeper").is_none());
        // RELEASE merges into the parent: a later ROLLBACK TO an outer savepoint drops it.
        o.command_complete(b"SAVEPOINT", &Effect::Savepoint("s3".into()));
        declare(&mut o, "released", false);
        o.command_complete(b"RELEASE", &Effect::Release("s3".into()));
        assert!(o.portal(b"released").is_some());
        o.command_complete(b"ROLLBACK", &Effect::RollbackTo("s1".into()));
        assert!(o.portal(b"released").is_none());
        assert!(o.portal(b"before").is_some());
        // An unknown savepoint name: forget everything of the transaction.
        o.command_complete(b"ROLLBACK", &Effect::RollbackTo("nope".into()));
        assert!(o.portal(b"before").is_none());
    }

    #[test]
    fn definitions_change_only_on_confirmation_and_all_forms_clear() {
        let mut o = Objects::default();
        o.parsed(b"s".to_vec(), None);
        o.command_complete(
            b"PREPARE",
            &Effect::Prepare {
                name: "p".into(),
                plan: plan(),
                sensitive: true,
            },
        );
        o.parsed(Vec::new(), None);
        assert_eq!(o.statements.len(), 3);
        o.command_complete(b"DEALLOCATE", &Effect::Deallocate("p".into()));
        assert!(!o.statements.contains_key(&b"p"[..]));
        o.command_complete(b"DEALLOCATE ALL", &Effect::None);
        assert_eq!(o.statements.len(), 1, "the unnamed statement stays");
        o.simple_query();
        assert!(o.statements.is_empty());
        declare(&mut o, "c", true);
        o.ready(b'I');
        o.command_complete(b"DISCARD ALL", &Effect::None);
        assert!(o.portals.is_empty());
        declare(&mut o, "c", false);
        o.command_complete(b"CLOSE CURSOR ALL", &Effect::None);
        assert!(o.portals.is_empty());
        // A CLOSE tokengate did not plan as such forgets every cursor of the transaction.
        declare(&mut o, "c", false);
        o.command_complete(b"CLOSE CURSOR", &Effect::None);
        assert!(o.portals.is_empty());
    }
}
