//! Calendar arithmetic for the `date` format: proleptic Gregorian day numbers (days since
//! 1970-01-01) and strict ISO `YYYY-MM-DD` text, the PostgreSQL `DateStyle=ISO` output.

/// Days from 1970-01-01 to PostgreSQL's binary date epoch, 2000-01-01.
pub const PG_EPOCH_DAY: i64 = 10_957;

/// Days since 1970-01-01 of a valid (year, month, day). Howard Hinnant's algorithm.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parses exactly `YYYY-MM-DD` (years 0001-9999) into a valid calendar date.
pub fn parse_iso_date(text: &[u8]) -> Option<(i64, u32, u32)> {
    if text.len() != 10 || text[4] != b'-' || text[7] != b'-' {
        return None;
    }
    let number = |digits: &[u8]| {
        digits.iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let year = i64::from(number(&text[..4])?);
    let month = number(&text[5..7])?;
    let day = number(&text[8..])?;
    let valid = year >= 1 && (1..=12).contains(&month) && day >= 1;
    (valid && day <= days_in_month(year, month)).then_some((year, month, day))
}

/// Appends `YYYY-MM-DD` for a day number (years 1..=9999 by construction of the callers).
pub fn write_iso_date(days: i64, out: &mut Vec<u8>) {
    use std::io::Write;
    let (year, month, day) = civil_from_days(days);
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{year:04}-{month:02}-{day:02}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_numbers_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 1, 1), PG_EPOCH_DAY);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        for days in [-719_162, -1, 0, 59, 60, 11_016, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn parses_only_valid_iso_dates() {
        assert_eq!(parse_iso_date(b"2024-02-29"), Some((2024, 2, 29)));
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "0000-01-01",
            "24-01-01",
            "2024/01/01",
            "2024-01-1x",
        ] {
            assert_eq!(parse_iso_date(bad.as_bytes()), None, "{bad}");
        }
        let mut out = Vec::new();
        write_iso_date(days_from_civil(987, 6, 5), &mut out);
        assert_eq!(out, b"0987-06-05");
    }
}
