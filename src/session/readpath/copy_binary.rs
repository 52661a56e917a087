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

/// Where a binary COPY stream stands, and the bytes not forwarded yet (at most one
/// incomplete unit once [`BinaryRows::consume`] has run).
#[derive(Debug)]
pub(super) struct BinaryRows {
    stage: Stage,
    width: usize,
    buf: Vec<u8>,
    /// Bound on the bytes of one incomplete tuple (or header) held.
    max: usize,
    /// The incomplete tuple at the start of `buf`: fields already seen whole, and where the
    /// next one starts. Parsing resumes there instead of rescanning the tuple.
    resume: (usize, usize),
    /// `buf` must hold this many bytes before parsing can make progress: a row sent in many
    /// tiny CopyData messages costs O(1) per message, not a rescan.
    need: usize,
}

/// What went wrong.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Malformed(pub &'static str);

/// One complete unit of the stream, found by [`BinaryRows::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unit {
    /// Bytes forwarded as they are: the header, the trailer.
    Raw(std::ops::Range<usize>),
    /// A tuple: its 16-bit field count at `at`, then `width` fields from `first` in
    /// [`Parsed::fields`].
    Tuple { at: usize, first: usize },
}

/// The complete units [`BinaryRows::parse`] found at the start of [`BinaryRows::held`].
#[derive(Debug, Default)]
pub(super) struct Parsed {
    pub units: Vec<Unit>,
    /// Every field of the complete tuples: its value's range in the held bytes, `None` for
    /// NULL.
    pub fields: Vec<Option<std::ops::Range<usize>>>,
    /// The held bytes these units cover.
    pub end: usize,
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
            buf: Vec::new(),
            max,
            resume: (0, 2),
            need: 0,
        }
    }

    pub(super) fn width(&self) -> usize {
        self.width
    }

    /// The bytes held: [`Parsed`] ranges point into them.
    pub(super) fn held(&self) -> &[u8] {
        &self.buf
    }

    /// Drops the `end` bytes of the units just forwarded.
    pub(super) fn consume(&mut self, end: usize) {
        self.buf.drain(..end.min(self.buf.len()));
    }

    /// Appends `data` after what is held and finds the complete units at the start of the
    /// held bytes. The caller forwards them (a tuple with its at-rest fields replaced),
    /// then calls [`Self::consume`] with [`Parsed::end`].
    pub(super) fn parse(&mut self, data: &[u8]) -> Result<Parsed, Malformed> {
        let mut parsed = Parsed::default();
        if self.stage == Stage::Ended && !data.is_empty() {
            return Err(Malformed("COPY data after the end marker"));
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() < self.need {
            return Ok(parsed);
        }
        let input = self.buf.as_slice();
        let mut at = 0;
        loop {
            match self.stage {
                Stage::Header => {
                    let Some(ext) = i32_at(input, at + 15) else {
                        self.need = at + 19;
                        break;
                    };
                    if &input[at..at + 11] != SIGNATURE {
                        return Err(Malformed("the COPY signature is not PGCOPY"));
                    }
                    let flags = i32_at(input, at + 11).unwrap_or(0);
                    if flags & WITH_OIDS != 0 {
                        return Err(Malformed("COPY data with OIDs"));
                    }
                    let ext = usize::try_from(ext)
                        .map_err(|_| Malformed("a negative header extension"))?;
                    if ext > self.max {
                        return Err(Malformed("a header extension too long"));
                    }
                    let end = at + 19 + ext;
                    if end > input.len() {
                        self.need = end;
                        break;
                    }
                    parsed.units.push(Unit::Raw(at..end));
                    at = end;
                    self.stage = Stage::Tuples;
                }
                Stage::Tuples => {
                    let Some(count) = i16_at(input, at) else {
                        self.need = at + 2;
                        break;
                    };
                    if count == -1 {
                        parsed.units.push(Unit::Raw(at..at + 2));
                        at += 2;
                        self.stage = Stage::Ended;
                        continue;
                    }
                    if usize::try_from(count).ok() != Some(self.width) {
                        return Err(Malformed(
                            "a tuple's field count differs from the COPY's columns",
                        ));
                    }
                    // The whole tuple first: nothing is emitted before it is complete. Only
                    // the tuple at the start of the held bytes can have been seen before.
                    let (mut k, mut p) = if at == 0 { self.resume } else { (0, 2) };
                    let mut complete = true;
                    while k < self.width {
                        let Some(len) = i32_at(input, at + p) else {
                            self.need = at + p + 4;
                            complete = false;
                            break;
                        };
                        let size = match len {
                            -1 => 0,
                            len => usize::try_from(len)
                                .map_err(|_| Malformed("a negative field length"))?,
                        };
                        if size > self.max {
                            return Err(Malformed("a field longer than the limit"));
                        }
                        if at + p + 4 + size > input.len() {
                            self.need = at + p + 4 + size;
                            complete = false;
                            break;
                        }
                        p += 4 + size;
                        k += 1;
                    }
                    if !complete {
                        self.resume = (k, p);
                        if p > self.max + 64 {
                            return Err(Malformed("a tuple longer than the limit"));
                        }
                        break;
                    }
                    let first = parsed.fields.len();
                    let mut q = at + 2;
                    for _ in 0..self.width {
                        let len = i32_at(input, q).unwrap_or(-1);
                        q += 4;
                        if len == -1 {
                            parsed.fields.push(None);
                            continue;
                        }
                        let end = q + len as usize;
                        parsed.fields.push(Some(q..end));
                        q = end;
                    }
                    parsed.units.push(Unit::Tuple { at, first });
                    self.resume = (0, 2);
                    at = q;
                }
                Stage::Ended => {
                    if at < input.len() {
                        return Err(Malformed("COPY data after the end marker"));
                    }
                    break;
                }
            }
        }
        parsed.end = at;
        self.need = self.need.saturating_sub(at);
        Ok(parsed)
    }

    /// CopyDone: an incomplete tuple or header was sent.
    pub(super) fn finish(&self) -> Result<(), &'static str> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err("the binary COPY data ends inside a tuple")
        }
    }

    /// Writes the units of `parsed` to `out`: raw bytes as they are, each tuple with field
    /// `i` replaced by `replace(index in parsed.fields, i)` when that gives `Some` (a
    /// replaced field is never NULL).
    pub(super) fn emit<'t>(
        &self,
        parsed: &Parsed,
        out: &mut Vec<u8>,
        mut replace: impl FnMut(usize, usize) -> Result<Option<&'t [u8]>, Malformed>,
    ) -> Result<(), Malformed> {
        for unit in &parsed.units {
            match unit {
                Unit::Raw(r) => out.extend_from_slice(&self.buf[r.clone()]),
                Unit::Tuple { at, first } => {
                    out.extend_from_slice(&self.buf[*at..*at + 2]);
                    for i in 0..self.width {
                        let field = parsed.fields.get(first + i).cloned().flatten();
                        let value = match replace(first + i, i)? {
                            Some(token) => token,
                            None => match &field {
                                Some(r) => &self.buf[r.clone()],
                                None => {
                                    out.extend_from_slice(&(-1i32).to_be_bytes());
                                    continue;
                                }
                            },
                        };
                        let n = i32::try_from(value.len())
                            .map_err(|_| Malformed("a token too long"))?;
                        out.extend_from_slice(&n.to_be_bytes());
                        out.extend_from_slice(value);
                    }
                }
            }
        }
        Ok(())
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

    /// Feeds `chunk`, forwarding the complete units with field 1 upper-cased.
    fn feed(rows: &mut BinaryRows, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
        let parsed = rows.parse(chunk)?;
        let upper: Vec<Option<Vec<u8>>> = parsed
            .fields
            .iter()
            .map(|f| f.clone().map(|r| rows.held()[r].to_ascii_uppercase()))
            .collect();
        rows.emit(&parsed, out, |at, i| {
            Ok(if i == 1 { upper[at].as_deref() } else { None })
        })?;
        rows.consume(parsed.end);
        Ok(())
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
                feed(&mut rows, chunk, &mut out).unwrap();
            }
            rows.finish().unwrap();
            assert_eq!(out, want, "chunks of {size}");
        }
        // Without a trailer (PostgreSQL accepts the end of data at a tuple boundary).
        let mut rows = BinaryRows::new(3, 1 << 20);
        let mut out = Vec::new();
        let cut = stream(&[&[Some("1"), Some("abc"), None]], false);
        feed(&mut rows, &cut, &mut out).unwrap();
        assert!(rows.finish().is_ok());
    }

    #[test]
    fn malformed_streams_are_errors_and_forward_no_partial_tuple() {
        let good = stream(&[&[Some("1"), Some("secret"), None]], true);
        // Cut inside the tuple: only the header is emitted, and CopyDone fails.
        let mut rows = BinaryRows::new(3, 1 << 20);
        let mut out = Vec::new();
        feed(&mut rows, &good[..good.len() - 8], &mut out).unwrap();
        assert_eq!(out.len(), 11 + 8 + 3);
        assert!(rows.finish().is_err());
        let bad = |input: &[u8], width: usize| {
            let mut rows = BinaryRows::new(width, 1 << 20);
            feed(&mut rows, input, &mut Vec::new()).is_err()
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
