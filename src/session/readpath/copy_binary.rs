//! COPY ... FROM STDIN (FORMAT binary) into columns stored as tokens (issue 14): the PGCOPY
//! stream is read as it arrives, whatever the CopyData chunking, and re-emitted with the
//! at-rest fields replaced.
//!
//! The stream (PostgreSQL's "Binary Format" of COPY): an 11-byte signature, a 32-bit flags
//! word, a 32-bit header-extension length and that many bytes; then tuples, each a 16-bit
//! field count followed by that many fields (a 32-bit length, -1 for NULL, and the bytes);
//! then a 16-bit -1 trailer. A tuple is emitted only once it is complete, so nothing of a
//! value that still has to be tokenized is ever forwarded. Anything PostgreSQL would not read
//! as such a stream (a wrong signature, OIDs, a wrong field count, a negative length, bytes
//! after the trailer, a tuple cut off at CopyDone) is an error, and the caller turns the COPY
//! into a CopyFail.

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// The header's OIDs flag (bit 16): tuples would carry an extra OID field.
const WITH_OIDS: i32 = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Header,
    Tuples,
    /// The -1 trailer was read: nothing may follow.
    Ended,
}

/// Where a binary COPY stream stands, and the bytes of an incomplete unit.
#[derive(Debug)]
pub(super) struct BinaryRows {
    stage: Stage,
    width: usize,
    pending: Vec<u8>,
    /// Bound on the bytes of one incomplete tuple (or header) held.
    max: usize,
}

/// What went wrong, or the caller's own error from tokenizing a field.
#[derive(Debug)]
pub(super) enum BinaryError<E> {
    Malformed(&'static str),
    Field(E),
}

fn i16_at(b: &[u8], at: usize) -> Option<i16> {
    b.get(at..at + 2).map(|v| i16::from_be_bytes([v[0], v[1]]))
}

fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    b.get(at..at + 4)
        .map(|v| i32::from_be_bytes([v[0], v[1], v[2], v[3]]))
}

impl BinaryRows {
    pub(super) fn new(width: usize, max: usize) -> Self {
        BinaryRows {
            stage: Stage::Header,
            width,
            pending: Vec::new(),
            max,
        }
    }

    /// Reads `data` after what is pending; writes every complete unit to `out`, with field
    /// `i` of each tuple replaced by `rewrite(i, value)` when that returns `Some`.
    pub(super) fn feed<E>(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
        mut rewrite: impl FnMut(usize, &[u8]) -> Result<Option<Vec<u8>>, E>,
    ) -> Result<(), BinaryError<E>> {
        let joined;
        let input: &[u8] = if self.pending.is_empty() {
            data
        } else {
            let mut p = std::mem::take(&mut self.pending);
            p.extend_from_slice(data);
            joined = p;
            &joined
        };
        let mut at = 0;
        loop {
            match self.stage {
                Stage::Header => {
                    let Some(ext) = i32_at(input, at + 15) else {
                        break;
                    };
                    if &input[at..at + 11] != SIGNATURE {
                        return Err(BinaryError::Malformed("the COPY signature is not PGCOPY"));
                    }
                    let flags = i32_at(input, at + 11).unwrap_or(0);
                    if flags & WITH_OIDS != 0 {
                        return Err(BinaryError::Malformed("COPY data with OIDs"));
                    }
                    let ext = usize::try_from(ext)
                        .map_err(|_| BinaryError::Malformed("a negative header extension"))?;
                    let end = at + 19 + ext;
                    if end > input.len() {
                        if ext > self.max {
                            return Err(BinaryError::Malformed("a header extension too long"));
                        }
                        break;
                    }
                    out.extend_from_slice(&input[at..end]);
                    at = end;
                    self.stage = Stage::Tuples;
                }
                Stage::Tuples => {
                    let Some(count) = i16_at(input, at) else {
                        break;
                    };
                    if count == -1 {
                        out.extend_from_slice(&input[at..at + 2]);
                        at += 2;
                        self.stage = Stage::Ended;
                        continue;
                    }
                    if usize::try_from(count).ok() != Some(self.width) {
                        return Err(BinaryError::Malformed(
                            "a tuple's field count differs from the COPY's columns",
                        ));
                    }
                    // The whole tuple first: nothing is emitted before it is complete.
                    let mut p = at + 2;
                    let mut complete = true;
                    for _ in 0..self.width {
                        let Some(len) = i32_at(input, p) else {
                            complete = false;
                            break;
                        };
                        p += 4;
                        if len == -1 {
                            continue;
                        }
                        let len = usize::try_from(len)
                            .map_err(|_| BinaryError::Malformed("a negative field length"))?;
                        if len > self.max {
                            return Err(BinaryError::Malformed("a field longer than the limit"));
                        }
                        p += len;
                        if p > input.len() {
                            complete = false;
                            break;
                        }
                    }
                    if !complete {
                        break;
                    }
                    out.extend_from_slice(&input[at..at + 2]);
                    let mut q = at + 2;
                    for i in 0..self.width {
                        let len = i32_at(input, q).unwrap_or(-1);
                        if len == -1 {
                            out.extend_from_slice(&input[q..q + 4]);
                            q += 4;
                            continue;
                        }
                        let end = q + 4 + len as usize;
                        let value = &input[q + 4..end];
                        match rewrite(i, value).map_err(BinaryError::Field)? {
                            Some(token) => {
                                let n = i32::try_from(token.len())
                                    .map_err(|_| BinaryError::Malformed("a token too long"))?;
                                out.extend_from_slice(&n.to_be_bytes());
                                out.extend_from_slice(&token);
                            }
                            None => out.extend_from_slice(&input[q..end]),
                        }
                        q = end;
                    }
                    at = q;
                }
                Stage::Ended => {
                    if at < input.len() {
                        return Err(BinaryError::Malformed("COPY data after the end marker"));
                    }
                    break;
                }
            }
        }
        let rest = &input[at..];
        if rest.len() > self.max + 64 {
            return Err(BinaryError::Malformed("a tuple longer than the limit"));
        }
        self.pending = rest.to_vec();
        Ok(())
    }

    /// CopyDone: an incomplete tuple or header was sent.
    pub(super) fn finish(&self) -> Result<(), &'static str> {
        if self.pending.is_empty() {
            Ok(())
        } else {
            Err("the binary COPY data ends inside a tuple")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(rows: &[&[Option<&str>]], trailer: bool) -> Vec<u8> {
        let mut b = SIGNATURE.to_vec();
        b.extend_from_slice(&0i32.to_be_bytes());
        b.extend_from_slice(&3i32.to_be_bytes());
        b.extend_from_slice(b"ext");
        for row in rows {
            b.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for f in *row {
                match f {
                    None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(v) => {
                        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        b.extend_from_slice(v.as_bytes());
                    }
                }
            }
        }
        if trailer {
            b.extend_from_slice(&(-1i16).to_be_bytes());
        }
        b
    }

    fn upper(i: usize, v: &[u8]) -> Result<Option<Vec<u8>>, ()> {
        Ok((i == 1).then(|| v.to_ascii_uppercase()))
    }

    #[test]
    fn every_chunking_gives_the_same_rewritten_stream() {
        let input = stream(
            &[
                &[Some("1"), Some("abc"), None],
                &[Some("2"), None, Some("x")],
            ],
            true,
        );
        let want = stream(
            &[
                &[Some("1"), Some("ABC"), None],
                &[Some("2"), None, Some("x")],
            ],
            true,
        );
        for size in 1..=input.len() {
            let mut rows = BinaryRows::new(3, 1 << 20);
            let mut out = Vec::new();
            for chunk in input.chunks(size) {
                rows.feed(chunk, &mut out, upper).unwrap();
            }
            rows.finish().unwrap();
            assert_eq!(out, want, "chunks of {size}");
        }
        // Without a trailer (PostgreSQL accepts the end of data at a tuple boundary).
        let mut rows = BinaryRows::new(3, 1 << 20);
        let mut out = Vec::new();
        let cut = stream(&[&[Some("1"), Some("abc"), None]], false);
        rows.feed(&cut, &mut out, upper).unwrap();
        assert!(rows.finish().is_ok());
    }

    #[test]
    fn malformed_streams_are_errors_and_forward_no_partial_tuple() {
        let good = stream(&[&[Some("1"), Some("secret"), None]], true);
        // Cut inside the tuple: only the header is emitted, and CopyDone fails.
        let mut rows = BinaryRows::new(3, 1 << 20);
        let mut out = Vec::new();
        rows.feed(&good[..good.len() - 8], &mut out, upper).unwrap();
        assert_eq!(out.len(), 11 + 8 + 3);
        assert!(rows.finish().is_err());
        let bad = |input: &[u8], width: usize| {
            let mut rows = BinaryRows::new(width, 1 << 20);
            rows.feed(input, &mut Vec::new(), upper).is_err()
        };
        assert!(bad(&good, 2), "field count");
        let mut sig = good.clone();
        sig[0] = b'X';
        assert!(bad(&sig, 3));
        let mut oids = good.clone();
        oids[11..15].copy_from_slice(&WITH_OIDS.to_be_bytes());
        assert!(bad(&oids, 3));
        let mut after = good.clone();
        after.push(0);
        assert!(bad(&after, 3));
        let mut negative = stream(&[], false);
        negative.extend_from_slice(&1i16.to_be_bytes());
        negative.extend_from_slice(&(-2i32).to_be_bytes());
        assert!(bad(&negative, 1));
        let mut huge = stream(&[], false);
        huge.extend_from_slice(&1i16.to_be_bytes());
        huge.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(bad(&huge, 1));
    }
}
