//! Format-preserving tokens: one prepared [`Tokenizer`] per (key, label, format), turning a
//! value into a token and back with FF1 (radix 10) plus cycle walking.
//!
//! Schemes, chosen so every token round-trips and keeps the value's shape:
//! - `digits`: FF1 over the ASCII digits; every other byte stays in place.
//! - `alnum`, `text`, `email`: ASCII letters and digits form one mixed-radix number (26 per letter
//!   position, case kept; 10 per digit) encrypted as a whole by FF1 over its decimal digits with
//!   cycle walking, so letters stay letters of the same case and digits stay digits. Values with
//!   more than 25 such characters are split into even chunks chained in two passes (forward,
//!   then backward) so every output character depends on every input character.
//! - `card`: see [`Tokenizer::crypt_card`]; `integer` and `date` cycle-walk within the value's
//!   class (same digit count and sign; the configured date range). A date range of fewer than
//!   1,000,000 days uses a keyed table permutation instead ([`permutation`]).
//!
//! Every value must have at least 1,000,000 possible tokens; otherwise [`SmallDomain`] decides.
mod batch;
pub use batch::Crypted;
pub mod date;
pub mod permutation;

use super::error::ProtectError;
use super::ff1::{Ff1Aes256, MIN_DOMAIN};
use super::format::{FormatKind, SmallDomain, TokenFormat};
use super::keys::Key;
use permutation::Permutation;
use std::ops::Range;
use std::sync::Arc;

/// The narrowest date range tokens are made in: below a year, a token says too little that
/// the range does not already say.
pub const MIN_DATE_RANGE_DAYS: i64 = 366;

/// Whether a transform produced a value (written to the output buffer) or SQL NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Value,
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Tokenize,
    Reveal,
}

/// Most class-preserving positions encrypted as one FF1 value (26^25 < 10^36).
const MAX_CHUNK_POSITIONS: usize = 25;

/// Failure inside a scheme before the small-domain policy is applied.
enum Refusal {
    SmallDomain(u128),
    Error(ProtectError),
}

impl From<ProtectError> for Refusal {
    fn from(error: ProtectError) -> Self {
        Refusal::Error(error)
    }
}

/// A prepared tokenizer for one key, label and format.
#[derive(Debug)]
pub struct Tokenizer {
    format: TokenFormat,
    ff1: Ff1Aes256,
    /// Negative integers use their own tweak so `-x` and `x` tokens are unrelated.
    ff1_negative: Ff1Aes256,
    tweak: Vec<u8>,
    /// Date ranges under FF1's minimum domain use a keyed table permutation instead.
    narrow_dates: Option<Arc<Permutation>>,
}

/// The type range an integer token must stay in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntRange {
    pub min: i64,
    pub max: i64,
}

impl IntRange {
    pub const INT2: IntRange = IntRange {
        min: i16::MIN as i64,
        max: i16::MAX as i64,
    };
    pub const INT4: IntRange = IntRange {
        min: i32::MIN as i64,
        max: i32::MAX as i64,
    };
    pub const INT8: IntRange = IntRange {
        min: i64::MIN,
        max: i64::MAX,
    };
}

impl Tokenizer {
    /// Prepares the FF1 state. The tweak binds the label and the format, so the same value gets
    /// unrelated tokens under different labels or formats.
    pub fn new(key: &Key, label: &str, format: TokenFormat) -> Result<Self, ProtectError> {
        let mut tweak = b"tokengate/v1\0".to_vec();
        tweak.extend_from_slice(format.kind.name().as_bytes());
        tweak.push(0);
        tweak.extend_from_slice(label.as_bytes());
        let mut narrow_dates = None;
        if let FormatKind::Date { min_day, max_day } = format.kind {
            let days = max_day - min_day + 1;
            if days < MIN_DATE_RANGE_DAYS {
                return Err(ProtectError::spec(
                    "token format",
                    &format.to_string(),
                    format!(
                        "the range holds {days} days; a date range must hold at least \
                         {MIN_DATE_RANGE_DAYS}"
                    ),
                ));
            }
            // FF1 for ranges of at least 1,000,000 days (as always: the same tokens); a
            // keyed table permutation (permutation.rs) below that, where FF1 is not allowed.
            if (days as u128) < MIN_DOMAIN {
                narrow_dates = Some(Permutation::get(key, &tweak, days as u32));
            }
        }
        let mut negative_tweak = tweak.clone();
        negative_tweak.extend_from_slice(b"\0negative");
        Ok(Tokenizer {
            format,
            ff1: Ff1Aes256::new(key.as_bytes(), 10, &tweak)?,
            ff1_negative: Ff1Aes256::new(key.as_bytes(), 10, &negative_tweak)?,
            tweak,
            narrow_dates,
        })
    }

    pub fn format(&self) -> TokenFormat {
        self.format
    }

    /// Appends the token of a text value to `out`.
    pub fn tokenize(&self, value: &[u8], out: &mut Vec<u8>) -> Result<Output, ProtectError> {
        self.crypt_text(value, out, Direction::Tokenize)
    }

    /// Appends the original value of a token to `out`.
    pub fn reveal(&self, token: &[u8], out: &mut Vec<u8>) -> Result<Output, ProtectError> {
        self.crypt_text(token, out, Direction::Reveal)
    }

    /// Tokenizes an integer within `range`: same sign and digit count. `None` means NULL.
    pub fn tokenize_int(&self, value: i64, range: IntRange) -> Result<Option<i64>, ProtectError> {
        self.apply_small_domain_int(self.crypt_int(value, range, Direction::Tokenize))
    }

    pub fn reveal_int(&self, token: i64, range: IntRange) -> Result<Option<i64>, ProtectError> {
        self.apply_small_domain_int(self.crypt_int(token, range, Direction::Reveal))
    }

    /// Tokenizes a day number (days since 1970-01-01) within the format's date range.
    pub fn tokenize_day(&self, day: i64) -> Result<i64, ProtectError> {
        self.crypt_day(day, Direction::Tokenize)
    }

    pub fn reveal_day(&self, day: i64) -> Result<i64, ProtectError> {
        self.crypt_day(day, Direction::Reveal)
    }

    fn apply_small_domain_int(
        &self,
        result: Result<i64, Refusal>,
    ) -> Result<Option<i64>, ProtectError> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(Refusal::Error(error)) => Err(error),
            Err(Refusal::SmallDomain(domain)) => match self.format.small_domain {
                SmallDomain::Null => Ok(None),
                // A number column cannot show `*`: masking falls back to refusing.
                SmallDomain::Refuse | SmallDomain::Mask => Err(ProtectError::SmallDomain {
                    format: "integer",
                    domain,
                }),
            },
        }
    }

    fn crypt_text(
        &self,
        value: &[u8],
        out: &mut Vec<u8>,
        direction: Direction,
    ) -> Result<Output, ProtectError> {
        let start = out.len();
        let name = self.format.kind.name();
        let result = match self.format.kind {
            FormatKind::Integer => {
                let number = parse_int(value).ok_or(ProtectError::bad(name, "not an integer"))?;
                let result = match self.apply_small_domain_int(self.crypt_int(
                    number,
                    IntRange::INT8,
                    direction,
                ))? {
                    Some(token) => {
                        out.extend_from_slice(token.to_string().as_bytes());
                        Output::Value
                    }
                    None => Output::Null,
                };
                return Ok(result);
            }
            FormatKind::Date { .. } => {
                let (y, m, d) = date::parse_iso_date(value)
                    .ok_or(ProtectError::bad(name, "not a YYYY-MM-DD date"))?;
                let day = self.crypt_day(date::days_from_civil(y, m, d), direction)?;
                date::write_iso_date(day, out);
                return Ok(Output::Value);
            }
            FormatKind::Digits => {
                out.extend_from_slice(value);
                self.crypt_digits(&mut out[start..], direction)
            }
            FormatKind::Card { keep_last4 } => {
                out.extend_from_slice(value);
                self.crypt_card(&mut out[start..], keep_last4, direction)
            }
            FormatKind::Alnum | FormatKind::Text => {
                if self.format.kind == FormatKind::Alnum && !value.is_ascii() {
                    return Err(ProtectError::bad(name, "non-ASCII character"));
                }
                out.extend_from_slice(value);
                let all = 0..value.len();
                self.crypt_classes(&mut out[start..], std::slice::from_ref(&all), direction)
            }
            FormatKind::Email { tokenize_domain } => {
                let ranges = email_ranges(value, tokenize_domain)?;
                out.extend_from_slice(value);
                self.crypt_classes(&mut out[start..], &ranges, direction)
            }
        };
        match result {
            Ok(()) => Ok(Output::Value),
            Err(Refusal::Error(error)) => {
                out.truncate(start);
                Err(error)
            }
            Err(Refusal::SmallDomain(domain)) => match self.format.small_domain {
                SmallDomain::Refuse => {
                    out.truncate(start);
                    Err(ProtectError::SmallDomain {
                        format: name,
                        domain,
                    })
                }
                SmallDomain::Null => {
                    out.truncate(start);
                    Ok(Output::Null)
                }
                SmallDomain::Mask => {
                    // `out` still holds the input: hide what would have been tokenized.
                    let tokenizable: fn(u8) -> bool = match self.format.kind {
                        FormatKind::Digits | FormatKind::Card { .. } => |c| c.is_ascii_digit(),
                        _ => |c| c.is_ascii_alphanumeric(),
                    };
                    for c in &mut out[start..] {
                        if tokenizable(*c) {
                            *c = b'*';
                        }
                    }
                    Ok(Output::Value)
                }
            },
        }
    }

    /// FF1 over the digits in place; other bytes untouched.
    fn crypt_digits(&self, bytes: &mut [u8], direction: Direction) -> Result<(), Refusal> {
        let count = bytes.iter().filter(|c| c.is_ascii_digit()).count();
        if count == 0 {
            return Err(ProtectError::bad("digits", "no digits").into());
        }
        check_domain(10u128.checked_pow(count as u32))?;
        let mut stack = [0u8; 40];
        let mut heap;
        let numerals: &mut [u8] = if count <= stack.len() {
            &mut stack[..count]
        } else {
            heap = vec![0u8; count];
            &mut heap
        };
        gather_digits(bytes, numerals);
        self.ff1_digits(numerals, direction)?;
        scatter_digits(numerals, bytes);
        Ok(())
    }

    fn ff1_digits(&self, numerals: &mut [u8], direction: Direction) -> Result<(), Refusal> {
        match direction {
            Direction::Tokenize => self.ff1.encrypt(numerals),
            Direction::Reveal => self.ff1.decrypt(numerals),
        }
        .map_err(|e| Refusal::Error(e.into()))
    }

    /// Card numbers: FF1 over the leading digits, then one "adjuster" digit (the last digit that
    /// is not kept) is set so the Luhn sum mod 10 equals the input's. So the token passes Luhn
    /// iff the input did, and reveal can recompute the adjuster from the token's own Luhn sum.
    /// With `keep_last4` the last four digits stay as they are.
    fn crypt_card(
        &self,
        bytes: &mut [u8],
        keep_last4: bool,
        direction: Direction,
    ) -> Result<(), Refusal> {
        let digits: usize = bytes.iter().filter(|c| c.is_ascii_digit()).count();
        let kept = if keep_last4 { 4 } else { 0 };
        if digits > 64 || digits < kept + 1 {
            return Err(ProtectError::bad("card", "digit count out of range").into());
        }
        let encrypted = digits - kept - 1;
        check_domain(10u128.checked_pow(encrypted as u32))?;
        let mut numerals = [0u8; 64];
        gather_digits(bytes, &mut numerals);
        let residue = luhn_residue(&numerals[..digits]);
        self.ff1_digits(&mut numerals[..encrypted], direction)?;
        set_card_adjuster(&mut numerals[..digits], encrypted, residue);
        scatter_digits(&numerals, bytes);
        Ok(())
    }

    /// Letters stay letters (case kept), digits stay digits, inside `ranges`; see the module doc.
    fn crypt_classes(
        &self,
        bytes: &mut [u8],
        ranges: &[Range<usize>],
        direction: Direction,
    ) -> Result<(), Refusal> {
        let positions = || {
            ranges
                .iter()
                .flat_map(|r| r.clone())
                .filter(|&i| bytes[i].is_ascii_alphanumeric())
        };
        let count = positions().count();
        let domain = positions()
            .map(|i| class_radix(bytes[i]))
            .try_fold(1u128, |acc, r| acc.checked_mul(r));
        if count == 0 {
            return Err(ProtectError::bad(self.format.kind.name(), "no letters or digits").into());
        }
        check_domain(domain.or(Some(u128::MAX)))?;
        let chunks = count.div_ceil(MAX_CHUNK_POSITIONS);
        let chunk_of = chunk_index(count, chunks);
        // Mixed-radix value and size of each chunk; on the stack for values up to 100 positions.
        let mut stack = [(0u128, 1u128); 4];
        let mut heap;
        let values: &mut [(u128, u128)] = if chunks <= stack.len() {
            &mut stack[..chunks]
        } else {
            heap = vec![(0u128, 1u128); chunks];
            &mut heap
        };
        for (ordinal, i) in positions().enumerate() {
            let (value, size) = &mut values[chunk_of(ordinal)];
            let radix = class_radix(bytes[i]);
            *value = *value * radix + class_value(bytes[i]);
            *size *= radix;
        }
        if chunks == 1 {
            let (value, size) = values[0];
            values[0].0 = self.walk(&self.ff1, None, value, size, direction)?;
        } else {
            self.crypt_chained(values, direction)?;
        }
        // Least significant position first: walk the ranges backwards.
        let mut ordinal = count;
        for range in ranges.iter().rev() {
            for i in range.clone().rev() {
                if !bytes[i].is_ascii_alphanumeric() {
                    continue;
                }
                ordinal -= 1;
                let (value, _) = &mut values[chunk_of(ordinal)];
                let radix = class_radix(bytes[i]);
                let digit = (*value % radix) as u8;
                *value /= radix;
                bytes[i] = class_char(bytes[i], digit);
            }
        }
        Ok(())
    }

    /// Two chained passes over the chunks (forward, then backward), each chunk's tweak holding
    /// its neighbour's ciphertext, so a change anywhere changes every chunk.
    fn crypt_chained(
        &self,
        values: &mut [(u128, u128)],
        direction: Direction,
    ) -> Result<(), Refusal> {
        let tweak = |pass: u8, index: usize, neighbour: u128| {
            let mut t = self.tweak.clone();
            t.push(pass);
            t.extend_from_slice(&(index as u32).to_be_bytes());
            t.extend_from_slice(&neighbour.to_be_bytes());
            t
        };
        let last = values.len() - 1;
        let forward = |values: &mut [(u128, u128)], dir: Direction| -> Result<(), Refusal> {
            let order: Box<dyn Iterator<Item = usize>> = match dir {
                Direction::Tokenize => Box::new(0..=last),
                Direction::Reveal => Box::new((0..=last).rev()),
            };
            for index in order {
                let neighbour = if index == 0 { 0 } else { values[index - 1].0 };
                let (value, size) = values[index];
                values[index].0 = self.walk(
                    &self.ff1,
                    Some(&tweak(1, index, neighbour)),
                    value,
                    size,
                    dir,
                )?;
            }
            Ok(())
        };
        let backward = |values: &mut [(u128, u128)], dir: Direction| -> Result<(), Refusal> {
            let order: Box<dyn Iterator<Item = usize>> = match dir {
                Direction::Tokenize => Box::new((0..=last).rev()),
                Direction::Reveal => Box::new(0..=last),
            };
            for index in order {
                let neighbour = if index == last {
                    0
                } else {
                    values[index + 1].0
                };
                let (value, size) = values[index];
                values[index].0 = self.walk(
                    &self.ff1,
                    Some(&tweak(2, index, neighbour)),
                    value,
                    size,
                    dir,
                )?;
            }
            Ok(())
        };
        match direction {
            Direction::Tokenize => {
                forward(values, direction)?;
                backward(values, direction)
            }
            Direction::Reveal => {
                backward(values, direction)?;
                forward(values, direction)
            }
        }
    }

    /// Cycle walking: FF1 over the decimal digits of `size - 1`, repeated until the result is
    /// below `size`, a permutation of `0..size`. At most 10x the FF1 calls on average.
    fn walk(
        &self,
        ff1: &Ff1Aes256,
        tweak: Option<&[u8]>,
        value: u128,
        size: u128,
        direction: Direction,
    ) -> Result<u128, Refusal> {
        let len = decimal_digits(size - 1);
        let mut current = value;
        loop {
            let next = match (direction, tweak) {
                (Direction::Tokenize, None) => ff1.encrypt_int(current, len),
                (Direction::Reveal, None) => ff1.decrypt_int(current, len),
                (Direction::Tokenize, Some(t)) => ff1.encrypt_int_with_tweak(t, current, len),
                (Direction::Reveal, Some(t)) => ff1.decrypt_int_with_tweak(t, current, len),
            };
            current = next.ok_or(ProtectError::bad(
                self.format.kind.name(),
                "value outside the FF1 fixed-width range",
            ))?;
            if current < size {
                return Ok(current);
            }
        }
    }

    /// Integers keep their sign and digit count and stay inside the type's range: cycle walking
    /// over the magnitudes with that many digits that the type can hold.
    fn crypt_int(&self, value: i64, range: IntRange, direction: Direction) -> Result<i64, Refusal> {
        if value < range.min || value > range.max {
            return Err(ProtectError::bad("integer", "outside the column type's range").into());
        }
        let negative = value < 0;
        let magnitude = i128::from(value).unsigned_abs();
        let digits = decimal_digits(magnitude);
        let limit = if negative {
            i128::from(range.min).unsigned_abs()
        } else {
            range.max as u128
        };
        let low = match (digits, negative) {
            (1, false) => 0,
            (1, true) => 1,
            _ => 10u128.pow(digits as u32 - 1),
        };
        let high = (10u128.pow(digits as u32) - 1).min(limit);
        let size = high - low + 1;
        check_domain(Some(size))?;
        let ff1 = if negative {
            &self.ff1_negative
        } else {
            &self.ff1
        };
        let token = low + self.walk(ff1, None, magnitude - low, size, direction)?;
        let token = i128::try_from(token).unwrap_or(i128::MAX);
        let token = if negative { -token } else { token };
        i64::try_from(token)
            .map_err(|_| ProtectError::bad("integer", "outside the column type's range").into())
    }

    fn crypt_day(&self, day: i64, direction: Direction) -> Result<i64, ProtectError> {
        let FormatKind::Date { min_day, max_day } = self.format.kind else {
            return Err(ProtectError::bad(
                self.format.kind.name(),
                "not a date format",
            ));
        };
        if day < min_day || day > max_day {
            return Err(ProtectError::bad("date", "outside the format's date range"));
        }
        if let Some(table) = &self.narrow_dates {
            // In range, so the offset fits the table (< 1,000,000).
            let offset = u32::try_from(day - min_day).unwrap_or(u32::MAX);
            let moved = match direction {
                Direction::Tokenize => table.forward(offset),
                Direction::Reveal => table.inverse(offset),
            };
            return moved
                .map(|o| min_day + i64::from(o))
                .ok_or(ProtectError::bad("date", "outside the format's date range"));
        }
        let size = (max_day - min_day + 1) as u128;
        match self.walk(&self.ff1, None, (day - min_day) as u128, size, direction) {
            Ok(offset) => Ok(min_day + offset as i64),
            Err(Refusal::Error(error)) => Err(error),
            Err(Refusal::SmallDomain(domain)) => Err(ProtectError::SmallDomain {
                format: "date",
                domain,
            }),
        }
    }
}

/// The parts of an email address whose letters and digits are tokenized: the local part, and
/// with `tokenize_domain` the domain up to its top-level domain (which stays, so the address
/// keeps a plausible domain).
fn email_ranges(value: &[u8], tokenize_domain: bool) -> Result<[Range<usize>; 2], ProtectError> {
    let at = value
        .iter()
        .rposition(|&c| c == b'@')
        .ok_or(ProtectError::bad("email", "no @"))?;
    if at == 0 || at + 1 == value.len() {
        return Err(ProtectError::bad("email", "empty local part or domain"));
    }
    let domain_end = if tokenize_domain {
        value[at + 1..]
            .iter()
            .rposition(|&c| c == b'.')
            .map_or(value.len(), |dot| at + 1 + dot)
    } else {
        at + 1
    };
    Ok([0..at, at + 1..domain_end])
}

/// Card numbers: sets the adjuster digit (the one right after the `encrypted` ones) so the
/// Luhn sum mod 10 of `numerals` (all the card's digits) equals `residue`, the input's.
fn set_card_adjuster(numerals: &mut [u8], encrypted: usize, residue: u8) {
    let digits = numerals.len();
    let adjuster = encrypted;
    let doubled = (digits - 1 - adjuster) % 2 == 1;
    numerals[adjuster] = 0;
    let rest = luhn_residue(numerals);
    let wanted = (residue + 10 - rest) % 10;
    numerals[adjuster] = (0..10)
        .find(|&d| luhn_contribution(d, doubled) == wanted)
        .unwrap_or(0);
}

/// Copies the values of the ASCII digits of `bytes`, in order, into `numerals`.
fn gather_digits(bytes: &[u8], numerals: &mut [u8]) {
    let digits = bytes.iter().filter(|c| c.is_ascii_digit());
    for (slot, c) in numerals.iter_mut().zip(digits) {
        *slot = c - b'0';
    }
}

/// Writes `numerals` back over the ASCII digits of `bytes`, in order.
fn scatter_digits(numerals: &[u8], bytes: &mut [u8]) {
    let digits = bytes.iter_mut().filter(|c| c.is_ascii_digit());
    for (c, digit) in digits.zip(numerals) {
        *c = b'0' + digit;
    }
}

/// `None` means the domain overflowed `u128`, i.e. is huge.
fn check_domain(domain: Option<u128>) -> Result<(), Refusal> {
    match domain {
        Some(size) if size < MIN_DOMAIN => Err(Refusal::SmallDomain(size)),
        _ => Ok(()),
    }
}

/// Maps the ordinal of a position to its chunk when `count` positions are split into `chunks`
/// chunks whose sizes differ by at most one (the first ones are the larger).
fn chunk_index(count: usize, chunks: usize) -> impl Fn(usize) -> usize {
    let base = count / chunks;
    let larger = count % chunks;
    move |ordinal| {
        if ordinal < larger * (base + 1) {
            ordinal / (base + 1)
        } else {
            larger + (ordinal - larger * (base + 1)) / base
        }
    }
}

fn class_radix(c: u8) -> u128 {
    if c.is_ascii_digit() { 10 } else { 26 }
}

fn class_value(c: u8) -> u128 {
    u128::from(match c {
        b'0'..=b'9' => c - b'0',
        b'A'..=b'Z' => c - b'A',
        _ => c.wrapping_sub(b'a'),
    })
}

/// The character of the same class as `like` with value `digit`.
fn class_char(like: u8, digit: u8) -> u8 {
    match like {
        b'0'..=b'9' => b'0' + digit,
        b'A'..=b'Z' => b'A' + digit,
        _ => b'a' + digit,
    }
}

fn decimal_digits(mut value: u128) -> usize {
    let mut digits = 1;
    while value >= 10 {
        value /= 10;
        digits += 1;
    }
    digits
}

/// Luhn contribution of a digit, doubled or not.
fn luhn_contribution(digit: u8, doubled: bool) -> u8 {
    if !doubled {
        digit
    } else if digit >= 5 {
        2 * digit - 9
    } else {
        2 * digit
    }
}

/// The Luhn sum mod 10 (0 for a valid number); the rightmost digit is not doubled.
pub fn luhn_residue(digits: &[u8]) -> u8 {
    digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| luhn_contribution(d, i % 2 == 1))
        .fold(0u8, |acc, c| (acc + c) % 10)
}

/// Strict PostgreSQL integer text: optional `-`, no leading zeros, no `+` or spaces.
fn parse_int(text: &[u8]) -> Option<i64> {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    if digits.is_empty()
        || !digits.iter().all(u8::is_ascii_digit)
        || (digits.len() > 1 && digits[0] == b'0')
    {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

#[cfg(test)]
mod tests;
