//! Many values through one [`Tokenizer`] at once: the bulk write paths (COPY FROM, `migrate`,
//! `rekey`) tokenize a whole chunk of rows per column in one call.
//!
//! Values are grouped by their FF1 numeral count, and each group goes through
//! [`crate::protect::ff1::Ff1::encrypt_many`] (or its integer and decrypting forms), which
//! interleaves up to eight values per AES call: several times faster per value than one at a
//! time. Only the plain case is batched (the `digits`, `card` and single-chunk `alnum`, `text`
//! and `email` schemes on a domain FF1 allows); every other value (too short, too long,
//! malformed, `integer`, `date`) takes the one-value path, so each result is exactly what
//! [`Tokenizer::tokenize`] or [`Tokenizer::reveal`] gives for that value (tests compare them).
use super::{
    Direction, MAX_CHUNK_POSITIONS, Tokenizer, class_char, class_radix, class_value,
    decimal_digits, email_ranges, gather_digits, luhn_residue, scatter_digits, set_card_adjuster,
};
use crate::protect::error::ProtectError;
use crate::protect::ff1::MIN_DOMAIN;
use crate::protect::format::FormatKind;
use crate::protect::token::Output;
use std::ops::Range;

/// One value's outcome: its token's bytes in the caller's buffer, `None` for SQL NULL (a
/// small domain with `small=null`), or why it cannot be tokenized.
pub type Crypted = Result<Option<Range<usize>>, ProtectError>;

/// A value whose FF1 work is batched: where its input copy sits in `out`, and its scheme.
enum Job {
    /// The number of digits, all encrypted.
    Digits { count: usize },
    /// The number of leading digits FF1 encrypts (the rest: the adjuster and kept digits).
    Card { encrypted: usize },
    /// The class-preserving positions of `ranges`, as one mixed-radix number below `size`.
    Classes {
        ranges: [Range<usize>; 2],
        size: u128,
    },
}

/// Values with the same numeral count, batched together.
struct Group<T> {
    len: usize,
    items: Vec<T>,
    /// (index into the values, where its copy starts in `out`)
    members: Vec<(usize, usize)>,
}

fn group<T>(groups: &mut Vec<Group<T>>, len: usize) -> &mut Group<T> {
    let at = match groups.iter().position(|g| g.len == len) {
        Some(at) => at,
        None => {
            groups.push(Group {
                len,
                items: Vec::new(),
                members: Vec::new(),
            });
            groups.len() - 1
        }
    };
    &mut groups[at]
}

impl Tokenizer {
    /// Tokenizes each of `values`, appending the tokens to `out`: the same bytes as
    /// [`Self::tokenize`] on each value in turn, but with FF1 batched across values.
    pub fn tokenize_many(&self, values: &[&[u8]], out: &mut Vec<u8>) -> Vec<Crypted> {
        self.crypt_many(values, out, Direction::Tokenize)
    }

    /// Reveals each of `values` like [`Self::reveal`], batched.
    pub fn reveal_many(&self, values: &[&[u8]], out: &mut Vec<u8>) -> Vec<Crypted> {
        self.crypt_many(values, out, Direction::Reveal)
    }

    fn crypt_many(
        &self,
        values: &[&[u8]],
        out: &mut Vec<u8>,
        direction: Direction,
    ) -> Vec<Crypted> {
        let mut results: Vec<Crypted> = Vec::with_capacity(values.len());
        let mut numerals: Vec<Group<u8>> = Vec::new();
        let mut jobs: Vec<Option<Job>> = Vec::with_capacity(values.len());
        let mut walks: Vec<Group<(u128, u128)>> = Vec::new();
        for (i, &value) in values.iter().enumerate() {
            let start = out.len();
            out.extend_from_slice(value);
            let mut digits = [0u8; 64];
            let job = self.plan(value, &mut digits);
            match &job {
                Some(Job::Digits { count }) => {
                    let g = group(&mut numerals, *count);
                    g.items.extend_from_slice(&digits[..*count]);
                    g.members.push((i, start));
                }
                Some(Job::Card { encrypted }) => {
                    let g = group(&mut numerals, *encrypted);
                    g.items.extend_from_slice(&digits[..*encrypted]);
                    g.members.push((i, start));
                }
                Some(Job::Classes { ranges, size }) => {
                    let number = ranges
                        .iter()
                        .flat_map(|r| r.clone())
                        .map(|k| value[k])
                        .filter(u8::is_ascii_alphanumeric)
                        .fold(0u128, |acc, c| acc * class_radix(c) + class_value(c));
                    let g = group(&mut walks, decimal_digits(size - 1));
                    g.items.push((number, *size));
                    g.members.push((i, start));
                }
                None => {
                    out.truncate(start);
                    let result = self
                        .crypt_text(value, out, direction)
                        .map(|o| (o == Output::Value).then_some(start..out.len()));
                    results.push(result);
                    jobs.push(None);
                    continue;
                }
            }
            results.push(Ok(Some(start..start + value.len())));
            jobs.push(job);
        }
        for g in &mut numerals {
            let done = match direction {
                Direction::Tokenize => self.ff1.encrypt_many(g.len, &mut g.items),
                Direction::Reveal => self.ff1.decrypt_many(g.len, &mut g.items),
            };
            for (k, &(i, start)) in g.members.iter().enumerate() {
                let end = start + values[i].len();
                if let Err(e) = &done {
                    results[i] = Err(e.clone().into());
                    continue;
                }
                let numerals = &g.items[k * g.len..(k + 1) * g.len];
                let bytes = &mut out[start..end];
                match &jobs[i] {
                    Some(Job::Card { encrypted }) => {
                        let mut all = [0u8; 64];
                        let digits = bytes.iter().filter(|c| c.is_ascii_digit()).count();
                        gather_digits(bytes, &mut all);
                        let residue = luhn_residue(&all[..digits]);
                        all[..*encrypted].copy_from_slice(numerals);
                        set_card_adjuster(&mut all[..digits], *encrypted, residue);
                        scatter_digits(&all[..digits], bytes);
                    }
                    _ => scatter_digits(numerals, bytes),
                }
            }
        }
        for g in &mut walks {
            if self.walk_many(g, direction).is_none() {
                // Outside the fixed-width path (not expected): one value at a time.
                for &(i, start) in &g.members {
                    results[i] = self.one(values[i], start, out, direction);
                }
                continue;
            }
            for (&(number, _), &(i, start)) in g.items.iter().zip(&g.members) {
                let Some(Job::Classes { ranges, .. }) = &jobs[i] else {
                    continue;
                };
                write_classes(&mut out[start..start + values[i].len()], ranges, number);
            }
        }
        results
    }

    /// The one-value path for the value whose copy starts at `start` in `out`.
    fn one(&self, value: &[u8], start: usize, out: &mut [u8], direction: Direction) -> Crypted {
        let mut token = Vec::with_capacity(value.len());
        let output = self.crypt_text(value, &mut token, direction)?;
        let end = start + value.len();
        if output == Output::Null || token.len() != value.len() {
            // Only same-length schemes are batched; anything else would be a bug: refuse.
            return Err(ProtectError::bad(
                self.format.kind.name(),
                "batched token of another length",
            ));
        }
        out[start..end].copy_from_slice(&token);
        Ok(Some(start..end))
    }

    /// Whether `value` takes the batched path, and how. For `digits` and `card`, `digits`
    /// receives the values of its first 64 ASCII digits.
    fn plan(&self, value: &[u8], digits: &mut [u8; 64]) -> Option<Job> {
        let mut gather = || {
            let mut count = 0;
            for &c in value {
                if c.is_ascii_digit() {
                    if let Some(slot) = digits.get_mut(count) {
                        *slot = c - b'0';
                    }
                    count += 1;
                }
            }
            count
        };
        match self.format.kind {
            FormatKind::Digits => {
                let count = gather();
                (count >= self.ff1.min_len() && self.ff1.int_len_supported(count))
                    .then_some(Job::Digits { count })
            }
            FormatKind::Card { keep_last4 } => {
                let digits = gather();
                let kept = if keep_last4 { 4 } else { 0 };
                if digits > 64 || digits < kept + 1 {
                    return None;
                }
                let encrypted = digits - kept - 1;
                (encrypted >= self.ff1.min_len() && self.ff1.int_len_supported(encrypted))
                    .then_some(Job::Card { encrypted })
            }
            FormatKind::Alnum | FormatKind::Text | FormatKind::Email { .. } => {
                let ranges = match self.format.kind {
                    FormatKind::Alnum if !value.is_ascii() => return None,
                    FormatKind::Email { tokenize_domain } => {
                        email_ranges(value, tokenize_domain).ok()?
                    }
                    _ => [0..value.len(), value.len()..value.len()],
                };
                let positions = ranges
                    .iter()
                    .flat_map(|r| r.clone())
                    .filter(|&k| value[k].is_ascii_alphanumeric());
                let mut count = 0;
                let mut size = 1u128;
                for k in positions {
                    count += 1;
                    if count > MAX_CHUNK_POSITIONS {
                        return None;
                    }
                    size *= class_radix(value[k]);
                }
                let len = decimal_digits(size.checked_sub(1)?);
                (count > 0 && size >= MIN_DOMAIN && self.ff1.int_len_supported(len))
                    .then_some(Job::Classes { ranges, size })
            }
            FormatKind::Integer | FormatKind::Date { .. } => None,
        }
    }

    /// Cycle walking (see `Tokenizer::walk`) for a group of numbers at once: every number not
    /// yet below its size goes through FF1 again, batched with the others still walking.
    fn walk_many(&self, g: &mut Group<(u128, u128)>, direction: Direction) -> Option<()> {
        let mut walking: Vec<usize> = (0..g.items.len()).collect();
        let mut current: Vec<u128> = Vec::with_capacity(walking.len());
        while !walking.is_empty() {
            current.clear();
            current.extend(walking.iter().map(|&k| g.items[k].0));
            match direction {
                Direction::Tokenize => self.ff1.encrypt_int_many(g.len, &mut current)?,
                Direction::Reveal => self.ff1.decrypt_int_many(g.len, &mut current)?,
            }
            let mut still = 0;
            for n in 0..walking.len() {
                let k = walking[n];
                g.items[k].0 = current[n];
                if current[n] >= g.items[k].1 {
                    walking[still] = k;
                    still += 1;
                }
            }
            walking.truncate(still);
        }
        Some(())
    }
}

/// Writes the mixed-radix `number` back over the letters and digits of `ranges` in `bytes`,
/// least significant position last (as `Tokenizer::crypt_classes` does for one chunk).
fn write_classes(bytes: &mut [u8], ranges: &[Range<usize>; 2], mut number: u128) {
    for range in ranges.iter().rev() {
        for k in range.clone().rev() {
            if !bytes[k].is_ascii_alphanumeric() {
                continue;
            }
            let radix = class_radix(bytes[k]);
            let digit = (number % radix) as u8;
            number /= radix;
            bytes[k] = class_char(bytes[k], digit);
        }
    }
}
