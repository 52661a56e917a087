//! The PostgreSQL wire codec: tokengate's own framing plus decoders and encoders for the few
//! messages the proxy inspects or synthesizes.
//!
//! Everything else travels as the bytes it arrived as. We do not use pgwire's decoders on client
//! input: STACK.md records a panic on a malformed Bind, lossy re-encoding of query text, and errors
//! on message types it does not know, all of which a transparent relay must avoid. Backend
//! messages that need full decoding (RowDescription, DataRow) go through the same bounds-checked
//! [`Reader`], which hands out field ranges without copying.
pub mod array;
pub mod backend;
pub mod frame;
pub mod frontend;
pub mod startup;

/// Reads NUL-terminated strings and big-endian integers from a message body, never panicking:
/// every read is bounds-checked and reports [`WireError::Malformed`].
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

/// Errors decoding or framing protocol input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("message length {len} is invalid (must be at least 4)")]
    BadLength { len: u32 },
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn err(&self) -> WireError {
        WireError::Malformed(self.what)
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(self.err());
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.bytes(1)?[0])
    }

    pub fn i16(&mut self) -> Result<i16, WireError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, WireError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A count that must be non-negative (e.g. the number of parameters).
    pub fn count16(&mut self) -> Result<usize, WireError> {
        let n = self.i16()?;
        usize::try_from(n).map_err(|_| self.err())
    }

    /// A NUL-terminated string, returned without its terminator.
    pub fn cstr(&mut self) -> Result<&'a [u8], WireError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(WireError::Malformed(self.what))?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// A length-prefixed value as used by Bind and DataRow: -1 is NULL.
    pub fn value(&mut self) -> Result<Option<&'a [u8]>, WireError> {
        let len = self.i32()?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| self.err())?;
        Ok(Some(self.bytes(len)?))
    }

    /// Fails unless the whole body was consumed.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err())
        }
    }
}
