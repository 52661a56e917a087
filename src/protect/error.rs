//! The one error type of the protect layer. Messages never contain the value being protected:
//! the read path logs them.
use super::ff1::Ff1Error;
use super::keys::KeyError;

#[derive(Debug, thiserror::Error)]
pub enum ProtectError {
    /// The column's type has no supported transform: the caller must refuse, never pass through.
    #[error("type OID {oid} is not supported by the protect layer")]
    UnsupportedType { oid: u32 },
    #[error("{transform} cannot be applied to a column of type OID {oid}")]
    UnsupportedTransformForType { transform: String, oid: u32 },
    #[error("unknown wire format code {0} (expected 0 = text or 1 = binary)")]
    UnsupportedWireFormat(i16),
    /// The value does not have the shape the format needs (the message says which part).
    #[error("bad value for {format}: {reason}")]
    BadValue {
        format: &'static str,
        reason: &'static str,
    },
    /// The value's token space is below FF1's minimum of 1,000,000 and the policy is `refuse`.
    #[error("{format} value has only {domain} possible tokens (< 1,000,000): refused as too weak")]
    SmallDomain { format: &'static str, domain: u128 },
    #[error("invalid {what} spec {spec:?}: {reason}")]
    InvalidSpec {
        what: &'static str,
        spec: String,
        reason: String,
    },
    #[error(transparent)]
    Ff1(#[from] Ff1Error),
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl ProtectError {
    pub(crate) fn bad(format: &'static str, reason: &'static str) -> Self {
        ProtectError::BadValue { format, reason }
    }

    pub(crate) fn spec(what: &'static str, spec: &str, reason: impl Into<String>) -> Self {
        ProtectError::InvalidSpec {
            what,
            spec: spec.to_owned(),
            reason: reason.into(),
        }
    }
}
