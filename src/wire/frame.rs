//! Framing of regular (tagged) protocol messages: a 1-byte tag and a 4-byte big-endian length
//! that counts itself but not the tag.
use super::WireError;

/// Size of a tagged message header.
pub const HEADER_LEN: usize = 5;

/// The header of a tagged message found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Whole frame length: tag + length field + body.
    pub frame_len: usize,
}

impl Header {
    pub fn body_len(&self) -> usize {
        self.frame_len - HEADER_LEN
    }
}

/// Reads the header at the start of `buf`, or `None` if fewer than 5 bytes are buffered.
/// `max_frame` bounds the frame size so that a hostile length cannot make us buffer forever.
pub fn peek_header(buf: &[u8], max_frame: usize) -> Result<Option<Header>, WireError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(WireError::BadLength { len });
    }
    let frame_len = len as usize + 1;
    if frame_len > max_frame {
        return Err(WireError::TooLarge {
            len: frame_len,
            max: max_frame,
        });
    }
    Ok(Some(Header {
        tag: buf[0],
        frame_len,
    }))
}

/// Starts a tagged message in `out`; finish it with [`end_message`].
pub fn begin_message(out: &mut Vec<u8>, tag: u8) -> usize {
    let start = out.len();
    out.push(tag);
    out.extend_from_slice(&[0, 0, 0, 0]);
    start
}

/// Patches the length field of the message begun at `start`.
pub fn end_message(out: &mut [u8], start: usize) {
    let len = (out.len() - start - 1) as u32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_five_bytes() {
        assert_eq!(peek_header(b"Q\0\0\0", 100), Ok(None));
    }

    #[test]
    fn header_reads_tag_and_length() {
        let h = peek_header(b"Q\0\0\0\x09select", 100).unwrap().unwrap();
        assert_eq!(h.tag, b'Q');
        assert_eq!(h.frame_len, 10);
        assert_eq!(h.body_len(), 5);
    }

    #[test]
    fn header_rejects_short_length() {
        assert_eq!(
            peek_header(b"Q\0\0\0\x03", 100),
            Err(WireError::BadLength { len: 3 })
        );
    }

    #[test]
    fn header_rejects_oversize() {
        assert_eq!(
            peek_header(b"D\x7f\xff\xff\xff", 1 << 20),
            Err(WireError::TooLarge {
                len: 0x8000_0000,
                max: 1 << 20
            })
        );
    }

    #[test]
    fn begin_end_message_patch_length() {
        let mut out = Vec::new();
        let s = begin_message(&mut out, b'Z');
        out.push(b'I');
        end_message(&mut out, s);
        assert_eq!(out, b"Z\0\0\0\x05I");
    }
}
