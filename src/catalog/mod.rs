//! The catalog cache: what tokengate knows about the upstream's relations and roles, per
//! database. It maps RowDescription's `(table_oid, attnum)` to `schema.table.column`, lists a
//! relation's columns for `*` expansion, keeps view definitions so views resolve to base
//! columns, and knows each role's (transitive) group memberships for policy matching.
//!
//! [`snapshot`] builds an immutable [`Snapshot`] from catalog rows (pure); [`cache`] loads it
//! over a metadata connection and refreshes it on DDL and on a TTL.
pub mod at_rest;
pub mod at_rest_cache;
pub mod cache;
pub mod session;
pub mod snapshot;

pub use at_rest::{AtRestStates, ColumnState, Phase};
pub use cache::{CatalogCache, CatalogError, CatalogSettings, load_snapshot};
pub use session::SessionCatalog;
pub use snapshot::{Column, Relation, RelationKind, Snapshot};
