//! Protection transforms: format-preserving tokens (FF1), masks and keys. Pure: no I/O
//! except key-file loading in [`keys`].
//!
//! - [`ff1`]: NIST SP 800-38G FF1, fast fixed-width path verified against `fpe`.
//! - [`format`]: token format specs (`digits`, `card:keep-last4`, ...).
//! - [`token`]: the prepared [`token::Tokenizer`] implementing each format.
//! - [`mask`]: irreversible masks and the mask spec syntax.
//! - [`keys`]: the key file and [`keys::KeyRing`].
//! - [`column`]: [`column::ColumnTransform`], the per-column object the read path uses.
pub mod column;
pub mod error;
pub mod ff1;
pub mod format;
pub mod keys;
pub mod mask;
pub mod token;

pub use column::{Action, ColumnTransform, TransformSpec};
pub use error::ProtectError;
pub use format::{FormatKind, SmallDomain, TokenFormat};
pub use keys::{Key, KeyError, KeyRing};
pub use mask::{MaskSpec, Masker};
pub use token::{IntRange, Output, Tokenizer};
