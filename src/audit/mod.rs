//! The audit trail: one hash-chained JSON line per audited statement, written off the data
//! path, and verified by `tokengate audit verify`.
//!
//! - [`record`]: what a record says ([`AuditRecord`]) and its JSON shape. Pure.
//! - [`chain`]: sealing records into HMAC-chained lines and parsing them back. Pure.
//! - [`verify`]: finding the first line that breaks a chain, and why. Pure.
//! - [`writer`]: [`AuditLog`], the bounded queue, the writer thread, rotation, fsync and the
//!   failure modes.
//!
//! The session decides per statement whether to audit ([`should_audit`]), checks
//! [`AuditLog::accepting`] before running a statement that needs auditing, and hands the
//! finished record to [`AuditLog::record`], which never blocks.
pub mod chain;
pub mod record;
pub mod verify;
pub mod writer;

pub use record::{AuditRecord, ColumnAudit, LossNotice, RefusalAudit};
pub use verify::{Break, BreakKind, Summary, Verifier};
pub use writer::{AuditError, AuditLog};

use crate::policy::AuditLevel;
use serde::Deserialize;
use std::path::PathBuf;

/// The key name used for the chain's HMAC when the config names none.
pub const DEFAULT_AUDIT_KEY: &str = "audit";

/// `audit:` in the serve configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The current log file; rotated files are `<path>.1` (newest) … `<path>.N` (oldest).
    pub path: PathBuf,
    #[serde(default)]
    pub fsync: FsyncMode,
    /// Rotate before a write would take the file past this size; 0 never rotates.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Leave the statement text out of records (the fingerprint stays).
    #[serde(default)]
    pub redact_text: bool,
    /// The key-file entry whose active version keys the chain's HMAC.
    #[serde(default = "default_key_name")]
    pub key_name: String,
    /// Records waiting for the writer before `record` counts them as dropped.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
}

impl AuditConfig {
    /// The defaults for a log at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        AuditConfig {
            path: path.into(),
            fsync: FsyncMode::default(),
            max_bytes: default_max_bytes(),
            on_failure: OnFailure::default(),
            redact_text: false,
            key_name: default_key_name(),
            queue_capacity: default_queue_capacity(),
        }
    }
}

fn default_max_bytes() -> u64 {
    100 * 1024 * 1024
}

fn default_key_name() -> String {
    DEFAULT_AUDIT_KEY.to_owned()
}

fn default_queue_capacity() -> usize {
    8192
}

/// When the writer calls `fsync` (`sync_data`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// After every batch the writer drains from the queue (group commit).
    Always,
    /// At most once a second while there are unsynced writes.
    #[default]
    Interval,
    /// Never; the OS decides (a crash may lose the last seconds).
    Never,
}

/// What happens while the log cannot be written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Fail closed: [`AuditLog::accepting`] turns false, so the session refuses statements
    /// that need auditing; records already queued are kept and retried.
    #[default]
    Refuse,
    /// Keep serving; records that cannot be written are dropped, counted, and noted in the
    /// chain by a `records_lost` line once writing works again.
    Continue,
}

/// Whether a statement gets an audit record: always when it touched a protected column or
/// was refused, and every statement for roles with `audit: all`.
pub fn should_audit(level: Option<AuditLevel>, touched_protected: bool, refused: bool) -> bool {
    touched_protected || refused || level == Some(AuditLevel::All)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_audit_widens_with_audit_all() {
        for level in [None, Some(AuditLevel::Protected)] {
            assert!(!should_audit(level, false, false));
            assert!(should_audit(level, true, false));
            assert!(should_audit(level, false, true));
        }
        assert!(should_audit(Some(AuditLevel::All), false, false));
    }

    #[test]
    fn config_defaults_and_names() {
        let config: AuditConfig =
            serde_json::from_str(r#"{"path":"/var/log/tokengate/audit.log"}"#).unwrap();
        assert_eq!(config, AuditConfig::new("/var/log/tokengate/audit.log"));
        assert_eq!(config.on_failure, OnFailure::Refuse);
        assert_eq!(config.fsync, FsyncMode::Interval);
        let config: AuditConfig = serde_json::from_str(
            r#"{"path":"a","fsync":"always","max_bytes":10,"on_failure":"continue","redact_text":true,"key_name":"k","queue_capacity":3}"#,
        )
        .unwrap();
        assert_eq!(
            (config.fsync, config.on_failure, config.max_bytes),
            (FsyncMode::Always, OnFailure::Continue, 10)
        );
        assert!(
            serde_json::from_str::<AuditConfig>(r#"{"path":"a","fsync":"sometimes"}"#).is_err()
        );
    }
}
