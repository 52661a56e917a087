//! COPY ... FROM STDIN into columns stored as tokens (issue 14): the client's CopyData is
//! rewritten with every at-rest field replaced by its FF1 token before PostgreSQL sees it.
//!
//! Rows are handled a CopyData message at a time, not a row at a time: the complete rows of
//! a message are split into fields first, the values of each at-rest column are tokenized in
//! one batched call ([`crate::protect::Tokenizer::tokenize_many`], several times faster per
//! value than one by one), then the rows are written out. A row split across messages waits
//! in a buffer that only grows: each message is scanned once, so a row sent in many tiny
//! messages costs linear time, and a row longer than [`MAX_COPY_LINE`] fails the COPY.
//!
//! Text and CSV lines are split here; the binary PGCOPY stream in [`super::copy_binary`].
//! A row that cannot be tokenized (see [`CopyInState`]) fails the whole COPY: nothing more is
//! forwarded, and the client's CopyDone becomes a CopyFail.
use super::copy_binary::{BinaryRows, Malformed};
use super::objects::Planned;
use super::write::Tokenizers;
use super::{Pending, ReadPath, cstr};
use crate::errors::Code;
use crate::plan::Refusal;
use crate::plan::write::AtRest;
use crate::protect::token::Crypted;
use crate::sql::{CopyKind, Field};
use crate::wire::frontend;
use std::ops::Range;

/// Tokenized COPY rows are sent on once this many bytes are held (and at CopyDone).
const COPY_FLUSH: usize = 64 << 10;

/// Bound on one COPY row (text or CSV line, binary tuple) tokengate holds while waiting for
/// its end: past it the COPY fails (TG182) instead of buffering without end.
pub(super) const MAX_COPY_LINE: usize = 16 << 20;

/// A COPY ... FROM STDIN whose rows are being tokenized.
pub(super) struct CopyInState {
    plan: crate::plan::write::CopyIn,
    /// For each field position of a row, the index of its at-rest column in `plan.fields`.
    at_rest: Vec<Option<usize>>,
    /// Text and CSV: the start of a line whose end has not arrived yet.
    partial: Vec<u8>,
    lines: u64,
    /// The first row that could not be tokenized: the rest is dropped and the COPY fails.
    failed: Option<Refusal>,
    tokenizers: Tokenizers,
    /// FORMAT binary: the PGCOPY stream's state.
    binary: Option<BinaryRows>,
    /// Tokenized rows not yet sent, as one CopyData frame being built (the server gets a few
    /// large messages instead of one per client message; COPY FROM has no reply before
    /// CopyDone, so holding them back changes nothing the client sees).
    held: Vec<u8>,
    /// Scratch kept across messages: the fields of the lines being rewritten.
    batch: Batch,
}

/// The rows of one message, split, with the values of each at-rest column gathered.
#[derive(Default)]
struct Batch {
    /// Per line: its content range (without `\r` and `\n`), whether it ended in `\r`, and
    /// its fields in `fields` (`None`: forwarded as it is, e.g. the header).
    lines: Vec<(Range<usize>, bool, Option<Range<usize>>)>,
    fields: Vec<Field>,
    /// Per at-rest column: the ranges of its non-NULL values, in row order.
    values: Vec<Vec<Range<usize>>>,
    /// Per at-rest column: the tokens, and each value's outcome.
    tokens: Vec<Vec<u8>>,
    results: Vec<Vec<Crypted>>,
}

impl std::fmt::Debug for CopyInState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyInState")
            .field("lines", &self.lines)
            .finish_non_exhaustive()
    }
}

fn copy_refusal(why: impl Into<String>) -> Refusal {
    Refusal::new(
        Code::AtRestValue,
        format!("COPY row for a column stored as tokens: {}", why.into()),
    )
}

/// The refusal for one value's failed tokenization.
fn value_refusal(how: &AtRest, result: &Crypted) -> Option<Refusal> {
    let why = match result {
        Ok(Some(_)) => return None,
        Ok(None) => "it would become NULL".to_string(),
        Err(e) => e.to_string(),
    };
    Some(Refusal::new(
        Code::AtRestParameter,
        format!("a value for label {} cannot be tokenized: {why}", how.label),
    ))
}

impl CopyInState {
    pub(super) fn new(plan: crate::plan::write::CopyIn) -> Self {
        let binary = (plan.format.kind == CopyKind::Binary)
            .then(|| BinaryRows::new(plan.width, MAX_COPY_LINE));
        let mut at_rest = vec![None; plan.width];
        for (j, (p, _)) in plan.fields.iter().enumerate() {
            if let Some(slot) = at_rest.get_mut(*p) {
                slot.get_or_insert(j);
            }
        }
        CopyInState {
            binary,
            held: Vec::new(),
            at_rest,
            plan,
            partial: Vec::new(),
            lines: 0,
            failed: None,
            tokenizers: Tokenizers::default(),
            batch: Batch::default(),
        }
    }

    /// Tokenizes `batch.values` (ranges into `input`) per at-rest column.
    fn tokenize(&mut self, keys: &crate::protect::KeyRing, input: &[u8]) -> Result<(), Refusal> {
        let b = &mut self.batch;
        let columns = self.plan.fields.len();
        b.tokens.resize_with(columns, Vec::new);
        b.results.resize_with(columns, Vec::new);
        for (j, (_, how)) in self.plan.fields.iter().enumerate() {
            let values: Vec<&[u8]> = b.values[j].iter().map(|r| &input[r.clone()]).collect();
            b.tokens[j].clear();
            b.results[j] = self
                .tokenizers
                .get(keys, how)?
                .tokenize_many(&values, &mut b.tokens[j]);
        }
        Ok(())
    }

    fn clear_values(&mut self) {
        let columns = self.plan.fields.len();
        self.batch.values.resize_with(columns, Vec::new);
        self.batch.values.iter_mut().for_each(Vec::clear);
    }

    /// Rewrites the complete tuples of a binary COPY chunk into `out`.
    fn binary(
        &mut self,
        keys: &crate::protect::KeyRing,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Refusal> {
        let Some(mut rows) = self.binary.take() else {
            return Err(copy_refusal("not a binary COPY"));
        };
        let result = self.binary_with(&mut rows, keys, data, out);
        self.binary = Some(rows);
        result
    }

    fn binary_with(
        &mut self,
        rows: &mut BinaryRows,
        keys: &crate::protect::KeyRing,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Refusal> {
        let parsed = rows
            .parse(data)
            .map_err(|Malformed(why)| copy_refusal(why))?;
        if parsed.units.is_empty() {
            return Ok(());
        }
        self.clear_values();
        let width = rows.width();
        for (at, field) in parsed.fields.iter().enumerate() {
            if let (Some(j), Some(r)) = (self.at_rest[at % width], field) {
                // text, varchar and bpchar travel as their UTF-8 bytes in binary COPY too.
                if std::str::from_utf8(&rows.held()[r.clone()]).is_err() {
                    return Err(copy_refusal("a value is not valid UTF-8 text"));
                }
                self.batch.values[j].push(r.clone());
            }
        }
        self.tokenize(keys, rows.held())?;
        let b = &self.batch;
        let mut next = vec![0usize; self.plan.fields.len()];
        let mut refusal = None;
        let emitted = rows.emit(&parsed, out, |at, i| {
            let (Some(j), Some(Some(_))) = (self.at_rest[i], parsed.fields.get(at)) else {
                return Ok(None);
            };
            let result = &b.results[j][next[j]];
            next[j] += 1;
            if let Some(r) = value_refusal(&self.plan.fields[j].1, result) {
                refusal = Some(r);
                return Err(Malformed("a value cannot be tokenized"));
            }
            match result {
                Ok(Some(range)) => Ok(Some(&b.tokens[j][range.clone()])),
                _ => Err(Malformed("a value cannot be tokenized")),
            }
        });
        if let Some(r) = refusal {
            return Err(r);
        }
        emitted.map_err(|Malformed(why)| copy_refusal(why))?;
        rows.consume(parsed.end);
        Ok(())
    }

    /// Splits one line of `input` (without its `\n`) into `batch`, gathering its at-rest
    /// values; everything PostgreSQL could read differently from tokengate is refused.
    fn split_line(&mut self, input: &[u8], line: Range<usize>) -> Result<(), Refusal> {
        self.lines += 1;
        let format = &self.plan.format;
        let b = &mut self.batch;
        let (content, cr) = match input[line.clone()].strip_suffix(b"\r") {
            Some(c) => (line.start..line.start + c.len(), true),
            None => (line.clone(), false),
        };
        let text = format.kind == CopyKind::Text;
        let bytes = &input[content.clone()];
        if (self.lines == 1 && format.header) || (text && bytes == b"\\.") {
            b.lines.push((line, false, None));
            return Ok(());
        }
        let first = b.fields.len();
        if !format.split_into(bytes, &mut b.fields) {
            return Err(copy_refusal("a CSV value spanning lines"));
        }
        let count = b.fields.len() - first;
        if count != self.plan.width {
            return Err(copy_refusal(format!(
                "line {} has {count} fields where the COPY lists {}",
                self.lines, self.plan.width
            )));
        }
        let null = format.null.as_bytes();
        let quote = format.quote;
        for (i, field) in b.fields[first..].iter_mut().enumerate() {
            // Field ranges become positions in `input`.
            field.range = content.start + field.range.start..content.start + field.range.end;
            let raw = &input[field.range.clone()];
            // Text format: a backslash anywhere but in the NULL marker is an escape
            // PostgreSQL reads (`\` + tab is a tab in the value, `\` + newline continues the
            // row), so its fields may not be the ones tokengate split: refused, whichever
            // field holds it.
            if text && raw != null && raw.contains(&b'\\') {
                return Err(copy_refusal("a backslash escape in a row"));
            }
            let Some(j) = self.at_rest[i] else {
                continue;
            };
            if !field.quoted && raw == null {
                continue;
            }
            let value = if field.quoted {
                let inner = raw.len() >= 2;
                let inner =
                    field.range.start + usize::from(inner)..field.range.end - usize::from(inner);
                let v = &input[inner.clone()];
                if v.contains(&quote) || v.contains(&format.escape) {
                    return Err(copy_refusal("an escaped quote in a value"));
                }
                inner
            } else {
                field.range.clone()
            };
            if !text && !field.quoted && raw.contains(&quote) {
                return Err(copy_refusal("a quote inside an unquoted value"));
            }
            b.values[j].push(value);
        }
        b.lines.push((content, cr, Some(first..b.fields.len())));
        Ok(())
    }

    /// Rewrites the complete lines of `input` (each ended by `\n`) into `out`.
    fn text_lines(
        &mut self,
        keys: &crate::protect::KeyRing,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Refusal> {
        self.clear_values();
        self.batch.lines.clear();
        self.batch.fields.clear();
        // A row PostgreSQL would read otherwise ends the batch; the rows before it are still
        // tokenized first, so the refusal the client gets is the first row's in order.
        let mut split_error = None;
        let mut start = 0;
        while let Some(n) = memchr(b'\n', &input[start..]) {
            if let Err(r) = self.split_line(input, start..start + n) {
                split_error = Some(r);
                break;
            }
            start += n + 1;
        }
        self.tokenize(keys, input)?;
        let format = &self.plan.format;
        let (sep, quote, null) = (format.delimiter, format.quote, format.null.as_bytes());
        let b = &self.batch;
        let mut next = vec![0usize; self.plan.fields.len()];
        for (line, cr, fields) in &b.lines {
            let Some(fields) = fields else {
                out.extend_from_slice(&input[line.clone()]);
                out.push(b'\n');
                continue;
            };
            for (i, field) in b.fields[fields.clone()].iter().enumerate() {
                if i > 0 {
                    out.push(sep);
                }
                let raw = &input[field.range.clone()];
                let Some(j) = self.at_rest[i] else {
                    out.extend_from_slice(raw);
                    continue;
                };
                if !field.quoted && raw == null {
                    out.extend_from_slice(raw);
                    continue;
                }
                let result = &b.results[j][next[j]];
                next[j] += 1;
                if let Some(r) = value_refusal(&self.plan.fields[j].1, result) {
                    return Err(r);
                }
                let token = match result {
                    Ok(Some(range)) => &b.tokens[j][range.clone()],
                    _ => return Err(copy_refusal("a value cannot be tokenized")),
                };
                if token
                    .iter()
                    .any(|&c| c == sep || c == b'\\' || c == b'\n' || c == b'\r' || c == quote)
                    || token == null
                {
                    return Err(copy_refusal("a token would need escaping"));
                }
                if field.quoted {
                    out.push(quote);
                    out.extend_from_slice(token);
                    out.push(quote);
                } else {
                    out.extend_from_slice(token);
                }
            }
            if *cr {
                out.push(b'\r');
            }
            out.push(b'\n');
        }
        split_error.map_or(Ok(()), Err)
    }
}

/// The first position of `byte` in `hay`.
fn memchr(byte: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == byte)
}

impl ReadPath {
    /// A COPY FROM STDIN into at-rest columns is in progress: the relay hands its CopyData
    /// and CopyDone bodies here.
    pub fn rewrites_copy_in(&self) -> bool {
        self.copy_in.is_some()
    }

    /// The COPY FROM STDIN of a Query whose rows must be tokenized: only as the Query's only
    /// statement.
    pub(super) fn copy_in_of(
        &self,
        statements: &[Planned],
    ) -> Result<Option<CopyInState>, Refusal> {
        let copies: Vec<_> = statements
            .iter()
            .filter_map(|s| s.at_rest.as_ref().and_then(|a| a.copy.clone()))
            .collect();
        match copies.as_slice() {
            [] => Ok(None),
            [one] if statements.len() == 1 => Ok(Some(CopyInState::new(one.clone()))),
            _ => Err(Refusal::new(
                Code::AtRestUnsupported,
                "a COPY FROM into columns stored as tokens must be the only statement of its query",
            )),
        }
    }

    /// An Execute: the COPY FROM STDIN it starts, if its portal is one.
    pub(super) fn executed(&mut self, portal: &[u8]) {
        self.copy_in = self
            .copy_portals
            .get(portal)
            .map(|c| CopyInState::new(c.clone()));
    }

    /// Rewrites the complete rows of one CopyData message (a partial last row waits for the
    /// next). After a row that cannot be tokenized, the rest is dropped.
    pub(super) fn client_copy_data(&mut self, body: &[u8]) -> super::ClientVerdict {
        use super::ClientVerdict;
        let keys = self.keys.clone();
        let Some(state) = self.copy_in.as_mut() else {
            return ClientVerdict::Forward;
        };
        if state.failed.is_some() {
            return ClientVerdict::Replace(Vec::new());
        }
        let mut out = std::mem::take(&mut state.held);
        if out.is_empty() {
            out.reserve(COPY_FLUSH + COPY_FLUSH / 4);
            crate::wire::frame::begin_message(&mut out, frontend::COPY_DATA);
        }
        let done = if state.binary.is_some() {
            state.binary(&keys, body, &mut out)
        } else {
            state.text(&keys, body, &mut out)
        };
        if let Err(r) = done {
            state.failed = Some(r);
            state.partial = Vec::new();
            return ClientVerdict::Replace(Vec::new());
        }
        if out.len() < COPY_FLUSH {
            state.held = out;
            return ClientVerdict::Replace(Vec::new());
        }
        crate::wire::frame::end_message(&mut out, 0);
        ClientVerdict::Replace(out)
    }

    /// CopyDone: the last line without a newline is flushed; a failed COPY becomes a
    /// CopyFail, so PostgreSQL stores none of it.
    pub(super) fn client_copy_done(&mut self, frame_bytes: &[u8]) -> super::ClientVerdict {
        use super::ClientVerdict;
        let keys = self.keys.clone();
        let Some(mut state) = self.copy_in.take() else {
            return ClientVerdict::Forward;
        };
        let mut out = std::mem::take(&mut state.held);
        if out.is_empty() {
            crate::wire::frame::begin_message(&mut out, frontend::COPY_DATA);
        }
        if state.failed.is_none()
            && let Some(Err(why)) = state.binary.as_ref().map(|b| b.finish())
        {
            state.failed = Some(copy_refusal(why));
        }
        if state.failed.is_none() && !state.partial.is_empty() {
            // The last line, without its newline: rewritten as a line, then the newline the
            // rewriting added is dropped again.
            let mut last = std::mem::take(&mut state.partial);
            last.push(b'\n');
            match state.text_lines(&keys, &last, &mut out) {
                Ok(()) => {
                    out.pop();
                }
                Err(r) => state.failed = Some(r),
            }
        }
        if let Some(r) = state.failed {
            self.refused(&r, None);
            // The server's error to this CopyFail (part of the COPY's Query reply) is replaced
            // by the refusal.
            match self.protocol.front_mut() {
                Some(Pending::Query(q)) => q.refusal = Some(r.clone()),
                // A COPY run through Bind/Execute (tokio-postgres' copy_in): the same.
                Some(Pending::Execute(x)) => x.failed = Some(r.clone()),
                _ => {}
            }
            self.protocol.sent(
                crate::session::protocol::Request::CopyFail,
                Pending::Refused(r.clone()),
            );
            let mut body = Vec::new();
            cstr(&mut body, r.code.error(&r.message).message.as_bytes());
            return ClientVerdict::Replace(super::frame(frontend::COPY_FAIL, &body));
        }
        self.protocol.sent(
            crate::session::protocol::Request::CopyDone,
            Pending::CopyEnd,
        );
        // The held rows and the last line without a newline, then the CopyDone.
        if out.len() <= 5 {
            return ClientVerdict::Forward;
        }
        crate::wire::frame::end_message(&mut out, 0);
        out.extend_from_slice(frame_bytes);
        ClientVerdict::Replace(out)
    }
}

impl CopyInState {
    /// Text and CSV: the complete lines of `body` (after the partial line held from before)
    /// into `out`; the new partial line is kept. Each byte is scanned for a newline once.
    fn text(
        &mut self,
        keys: &crate::protect::KeyRing,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Refusal> {
        let Some(last) = body.iter().rposition(|&b| b == b'\n') else {
            // No line ends here: the row grows (amortized O(len) per message).
            if self.partial.len() + body.len() > MAX_COPY_LINE {
                return Err(copy_refusal(format!(
                    "a row is longer than {} MiB",
                    MAX_COPY_LINE >> 20
                )));
            }
            self.partial.extend_from_slice(body);
            return Ok(());
        };
        let (complete, rest) = body.split_at(last + 1);
        if rest.len() > MAX_COPY_LINE {
            return Err(copy_refusal(format!(
                "a row is longer than {} MiB",
                MAX_COPY_LINE >> 20
            )));
        }
        let complete = if self.partial.is_empty() {
            complete
        } else {
            // The held row ends in this message: only that row is joined (the held bytes
            // plus the message up to its first newline), the other lines are read in place.
            let first = memchr(b'\n', complete).map_or(complete.len(), |n| n + 1);
            let mut joined = std::mem::take(&mut self.partial);
            if joined.len() + first > MAX_COPY_LINE {
                return Err(copy_refusal(format!(
                    "a row is longer than {} MiB",
                    MAX_COPY_LINE >> 20
                )));
            }
            joined.extend_from_slice(&complete[..first]);
            let result = self.text_lines(keys, &joined, out);
            joined.clear();
            if joined.capacity() <= 4 * COPY_FLUSH {
                self.partial = joined;
            }
            result?;
            &complete[first..]
        };
        if !complete.is_empty() {
            self.text_lines(keys, complete, out)?;
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protect::keys::{DEFAULT_KEY_NAME, Key, KeyRing};
    use crate::protect::{Output, Tokenizer};
    use std::sync::Arc;

    fn keys() -> KeyRing {
        let mut ring = KeyRing::default();
        ring.insert(DEFAULT_KEY_NAME, 3, Key::from_bytes([9; 32]));
        ring
    }

    fn at(label: &str, format: &str) -> AtRest {
        AtRest {
            label: Arc::from(label),
            format: Arc::from(format),
            speaks_tokens: false,
            column: Arc::from(format!("public.t.{label}")),
            key_version: 3,
            direction: crate::plan::write::Direction::Tokenize,
        }
    }

    fn token(label: &str, format: &str, plain: &str) -> String {
        let key = keys();
        let t = Tokenizer::new(
            key.get(DEFAULT_KEY_NAME, Some(3)).unwrap(),
            label,
            format.parse().unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        assert_eq!(
            t.tokenize(plain.as_bytes(), &mut out).unwrap(),
            Output::Value
        );
        String::from_utf8(out).unwrap()
    }

    fn copy_in(kind: CopyKind, header: bool) -> CopyInState {
        let csv = kind == CopyKind::Csv;
        CopyInState::new(crate::plan::write::CopyIn {
            format: crate::sql::CopyFormat {
                kind,
                delimiter: if csv { b',' } else { b'\t' },
                quote: b'"',
                escape: b'"',
                null: if csv { String::new() } else { "\\N".into() },
                header,
                force_not_null: false,
            },
            width: 4,
            fields: vec![
                (1, at("ssn", "digits")),
                (2, at("card", "card")),
                (3, at("mail", "email")),
            ],
        })
    }

    /// The rewritten stream: every chunking gives exactly the one-value-at-a-time tokens.
    fn run(state: &mut CopyInState, input: &[u8], chunk: usize) -> Result<Vec<u8>, Refusal> {
        let keys = keys();
        let mut out = Vec::new();
        for c in input.chunks(chunk) {
            state.text(&keys, c, &mut out)?;
        }
        if !state.partial.is_empty() {
            let mut last = std::mem::take(&mut state.partial);
            last.push(b'\n');
            state.text_lines(&keys, &last, &mut out)?;
            out.pop();
        }
        Ok(out)
    }

    #[test]
    fn text_and_csv_rows_are_tokenized_alike_whatever_the_chunking() {
        type Row<'a> = (String, Option<&'a str>, Option<&'a str>, Option<&'a str>);
        let rows: Vec<Row> = (0..40)
            .map(|i| {
                let ssn = ["123-45-6789", "987 65 4321", "555-01-0001"][i % 3];
                let card = [
                    "4111111111111111",
                    "4111 1111 1111 1111",
                    "5500000000000004",
                ][i % 3];
                let mail = [
                    "jane.doe@example.com",
                    "x123456@y.co.uk",
                    "Bobby.Tables@Example.org",
                ][i % 3];
                (
                    i.to_string(),
                    (i % 5 != 1).then_some(ssn),
                    (i % 7 != 2).then_some(card),
                    (i % 4 != 3).then_some(mail),
                )
            })
            .collect();
        for kind in [CopyKind::Text, CopyKind::Csv] {
            let csv = kind == CopyKind::Csv;
            let (sep, null) = if csv { (",", "") } else { ("\t", "\\N") };
            let mut input = String::from(if csv { "id,ssn,card,mail\n" } else { "" });
            let mut want = input.clone();
            for (n, (id, ssn, card, mail)) in rows.iter().enumerate() {
                let quoted = csv && n % 2 == 0;
                let field = |v: Option<&str>| match v {
                    Some(v) if quoted => format!("\"{v}\""),
                    Some(v) => v.to_string(),
                    None => null.to_string(),
                };
                let tok = |label: &str, format: &str, v: Option<&str>| {
                    field(v.map(|v| token(label, format, v)).as_deref())
                };
                let end = if n % 3 == 0 { "\r\n" } else { "\n" };
                input.push_str(&[id.clone(), field(*ssn), field(*card), field(*mail)].join(sep));
                input.push_str(end);
                want.push_str(
                    &[
                        id.clone(),
                        tok("ssn", "digits", *ssn),
                        tok("card", "card", *card),
                        tok("mail", "email", *mail),
                    ]
                    .join(sep),
                );
                want.push_str(end);
            }
            // The last line without its newline (flushed at CopyDone).
            input.pop();
            want.pop();
            for chunk in [1, 2, 7, 64, 1000, input.len()] {
                let mut state = copy_in(kind, csv);
                let out = run(&mut state, input.as_bytes(), chunk).unwrap();
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    want,
                    "{kind:?} in chunks of {chunk}"
                );
            }
        }
    }

    #[test]
    fn rows_that_cannot_be_tokenized_or_split_alike_are_refused() {
        for (kind, row) in [
            (
                CopyKind::Text,
                "1\t123-45-6789\t4111111111111111\ta@b\\tc.org\n",
            ),
            (CopyKind::Text, "1\t123-45-6789\t4111111111111111\n"),
            (
                CopyKind::Text,
                "1\t1234\t4111111111111111\tjane@example.com\n",
            ),
            (
                CopyKind::Text,
                "1\t123-45-6789\t4111111111111111\tno-at-sign\n",
            ),
            (
                CopyKind::Csv,
                "1,\"12\"\"3-45-6789\",4111111111111111,jane@example.com\n",
            ),
            (
                CopyKind::Csv,
                "1,123-45-6789,4111111111111111,\"jane@exa\nmple.com\"\n",
            ),
        ] {
            // Preceded by good rows in the same message and in an earlier one.
            let good = if kind == CopyKind::Csv {
                "2,123-45-6789,4111111111111111,jane@example.com\n"
            } else {
                "2\t123-45-6789\t4111111111111111\tjane@example.com\n"
            };
            let input = format!("{good}{good}{row}");
            let mut state = copy_in(kind, false);
            let result = run(&mut state, input.as_bytes(), good.len() + 3);
            assert!(result.is_err(), "{kind:?} {row:?}");
        }
        // A row longer than the bound, in small messages.
        let mut state = copy_in(CopyKind::Text, false);
        let keys = keys();
        let big = vec![b'x'; 1 << 20];
        let mut out = Vec::new();
        let mut refused = false;
        for _ in 0..=(MAX_COPY_LINE >> 20) {
            if let Err(r) = state.text(&keys, &big, &mut out) {
                assert!(r.message.contains("longer than 16 MiB"), "{}", r.message);
                refused = true;
                break;
            }
        }
        assert!(refused);
        assert!(out.is_empty(), "nothing of the row was forwarded");
    }
}
