//! The policy model: YAML parsing with locations, validation, composition per role, and
//! hot reload.
pub mod node;
