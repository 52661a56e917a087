//! Protection transforms: format-preserving tokens (FF1), masks and keys. Pure: no I/O
//! except key-file loading in [`keys`].
pub mod ff1;
