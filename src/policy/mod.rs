//! The policy model: YAML parsing with locations, validation, composition per role, and
//! hot reload.
//!
//! - [`node`]: the located YAML tree (serde-saphyr, strict booleans, duplicates kept).
//! - [`validate`]: tree to [`Policy`], collecting every error with `file:line:column`.
//! - [`model`]: labels, columns, role rules, actions, classes, statement kinds.
//! - [`hints`]: plain-words explanations of common YAML and policy mistakes.
//! - [`formats`]: token format names and mask specs (to be swapped for `protect`'s parsers).
//! - [`compose`]: [`Policy::for_role`] and the cached [`RoleView`] the read path queries.
//! - [`store`]: [`PolicyStore`], the atomically swapped current policy and its reloaders.
//! - [`weaken`]: whether a file is whole, and what a new policy would protect less.
//! - [`detect`]: pure detectors for values and names that look sensitive (`policy check`).
pub mod compose;
pub mod detect;
pub mod error;
pub mod formats;
pub mod hints;
pub mod model;
pub mod node;
pub mod store;
pub mod validate;
pub mod weaken;

pub use compose::{ColumnDecision, RoleView, RowLimit};
pub use error::{Diagnostic, PolicyError};
pub use formats::{MaskSpec, TokenFormat};
pub use model::{
    Action, AuditLevel, Class, ColumnName, DerivedSet, DerivedUse, Policy, StatementKind,
};
pub use store::{PolicyStore, WatchError, WatchHandle};

impl Policy {
    /// Parses and validates policy text; `source` names the file in messages.
    pub fn from_yaml(text: &str, source: &str) -> Result<Policy, PolicyError> {
        validate::build(text, source)
    }

    /// Reads, parses and validates a policy file.
    pub fn load(path: &std::path::Path) -> Result<Policy, PolicyError> {
        store::read_and_build(path).map(|(policy, _text)| policy)
    }
}

#[cfg(test)]
mod tests;
