use super::*;
use proptest::prelude::*;

fn key() -> Key {
    Key::from_bytes([42; 32])
}

fn tokenizer(format: &str, label: &str) -> Tokenizer {
    Tokenizer::new(&key(), label, format.parse().unwrap()).unwrap()
}

fn token(t: &Tokenizer, value: &str) -> String {
    let mut out = Vec::new();
    assert_eq!(
        t.tokenize(value.as_bytes(), &mut out).unwrap(),
        Output::Value
    );
    String::from_utf8(out).unwrap()
}

fn reveal(t: &Tokenizer, value: &str) -> String {
    let mut out = Vec::new();
    assert_eq!(t.reveal(value.as_bytes(), &mut out).unwrap(), Output::Value);
    String::from_utf8(out).unwrap()
}

/// The class of each char: digit, upper, lower or the char itself.
fn shape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '0'..='9' => '9',
            'A'..='Z' => 'A',
            'a'..='z' => 'a',
            other => other,
        })
        .collect()
}

#[test]
fn digits_keep_separators_and_round_trip() {
    let t = tokenizer("digits", "phone");
    for value in ["+1 (555) 013-4567", "123-45-6789", "4111111111111111"] {
        let tok = token(&t, value);
        assert_eq!(shape(&tok), shape(value));
        assert_ne!(tok, value);
        assert_eq!(reveal(&t, &tok), value);
        assert_eq!(token(&t, value), tok, "deterministic");
    }
}

#[test]
fn labels_and_keys_change_tokens() {
    let value = "123-45-6789";
    let a = token(&tokenizer("digits", "ssn"), value);
    let b = token(&tokenizer("digits", "phone"), value);
    assert_ne!(a, b);
    let other_key =
        Tokenizer::new(&Key::from_bytes([1; 32]), "ssn", "digits".parse().unwrap()).unwrap();
    assert_ne!(token(&other_key, value), a);
}

#[test]
fn alnum_and_text_keep_classes() {
    let t = tokenizer("alnum", "plate");
    let value = "AB-12cd-34";
    let tok = token(&t, value);
    assert_eq!(shape(&tok), shape(value));
    assert_eq!(reveal(&t, &tok), value);
    let mut out = Vec::new();
    assert!(t.tokenize("Zoë12345".as_bytes(), &mut out).is_err());

    let t = tokenizer("text", "name");
    let value = "José Müller, 42 rue de la Paix";
    let tok = token(&t, value);
    assert_eq!(shape(&tok), shape(value));
    assert_eq!(tok.chars().filter(|c| !c.is_ascii()).count(), 2);
    assert_eq!(reveal(&t, &tok), value);
}

#[test]
fn long_text_is_chained_so_one_change_changes_every_chunk() {
    let t = tokenizer("text", "notes");
    let value = "The quick brown fox jumps over the lazy dog 0123456789 again and again";
    let tok = token(&t, value);
    assert_eq!(shape(&tok), shape(value));
    assert_eq!(reveal(&t, &tok), value);
    // Change the last letter: the first word's token must change too.
    let changed = value.replace("again and again", "again and agaim");
    let tok2 = token(&t, &changed);
    assert_ne!(tok[..10], tok2[..10]);
    assert_eq!(reveal(&t, &tok2), changed);
}

#[test]
fn email_keeps_domain_or_tokenizes_it() {
    let t = tokenizer("email", "email");
    let value = "john.smith+news@example.com";
    let tok = token(&t, value);
    assert!(tok.ends_with("@example.com"));
    assert_eq!(shape(&tok), shape(value));
    assert_eq!(reveal(&t, &tok), value);

    let t = tokenizer("email:tokenize-domain", "email");
    let tok = token(&t, value);
    assert!(tok.ends_with(".com"));
    assert!(!tok.ends_with("@example.com"));
    assert_eq!(shape(&tok), shape(value));
    assert_eq!(reveal(&t, &tok), value);
    let mut out = Vec::new();
    assert!(t.tokenize(b"not-an-email", &mut out).is_err());
}

fn luhn_valid(s: &str) -> bool {
    let digits: Vec<u8> = s
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|c| c - b'0')
        .collect();
    luhn_residue(&digits) == 0
}

#[test]
fn card_stays_luhn_valid_and_keeps_last4() {
    assert!(luhn_valid("4111 1111 1111 1111"));
    assert!(!luhn_valid("4111 1111 1111 1112"));
    let t = tokenizer("card:keep-last4", "card");
    let value = "4111 1111 1111 1111";
    let tok = token(&t, value);
    assert!(luhn_valid(&tok));
    assert!(tok.ends_with("1111"));
    assert_eq!(shape(&tok), shape(value));
    assert_eq!(reveal(&t, &tok), value);

    let t = tokenizer("card", "card");
    let tok = token(&t, value);
    assert!(luhn_valid(&tok));
    assert_eq!(reveal(&t, &tok), value);
    let invalid = "4111111111111112";
    let tok = token(&t, invalid);
    assert!(!luhn_valid(&tok));
    assert_eq!(reveal(&t, &tok), invalid);
}

#[test]
fn integers_keep_sign_digits_and_type_range() {
    let t = tokenizer("integer", "id");
    for (value, range) in [
        (1_234_567i64, IntRange::INT4),
        (-1_234_567, IntRange::INT4),
        (2_147_483_647, IntRange::INT4),
        (-2_147_483_648, IntRange::INT4),
        (i64::MAX, IntRange::INT8),
        (i64::MIN, IntRange::INT8),
        (1_000_000_000_000, IntRange::INT8),
    ] {
        let tok = t.tokenize_int(value, range).unwrap().unwrap();
        assert_eq!(tok.signum(), value.signum());
        assert_eq!(
            tok.unsigned_abs().to_string().len(),
            value.unsigned_abs().to_string().len()
        );
        assert!(tok >= range.min && tok <= range.max);
        assert_eq!(t.reveal_int(tok, range).unwrap(), Some(value));
    }
    assert_eq!(token(&t, "-9876543210"), {
        let tok = t
            .tokenize_int(-9_876_543_210, IntRange::INT8)
            .unwrap()
            .unwrap();
        tok.to_string()
    });
}

#[test]
fn small_domains_are_refused_masked_or_nulled() {
    let refuse = tokenizer("digits", "pin");
    let mut out = b"prefix".to_vec();
    let err = refuse.tokenize(b"1234", &mut out).unwrap_err();
    assert!(matches!(
        err,
        ProtectError::SmallDomain { domain: 10_000, .. }
    ));
    assert_eq!(out, b"prefix", "nothing of the value is left behind");

    let mask = tokenizer("digits:small=mask", "pin");
    assert_eq!(token(&mask, "12-34"), "**-**");
    let null = tokenizer("alnum:small=null", "code");
    let mut out = Vec::new();
    assert_eq!(null.tokenize(b"AB", &mut out).unwrap(), Output::Null);
    assert!(out.is_empty());
    // 26^5 = 11,881,376 is enough; 26^4 = 456,976 is not.
    assert_eq!(
        reveal(&refuse_alnum(), &token(&refuse_alnum(), "ABCDE")),
        "ABCDE"
    );
    assert!(refuse_alnum().tokenize(b"ABCD", &mut Vec::new()).is_err());
    // int2 never has a million values per digit class; int4 6-digit values have 900,000.
    let int = tokenizer("integer", "n");
    assert!(int.tokenize_int(12_345, IntRange::INT2).is_err());
    assert!(int.tokenize_int(123_456, IntRange::INT4).is_err());
    assert_eq!(
        tokenizer("integer:small=null", "n")
            .tokenize_int(5, IntRange::INT2)
            .unwrap(),
        None
    );
    let card = tokenizer("card:keep-last4", "card");
    // 10 digits keep 4 and derive 1: only 5 digits (100,000 tokens) are encrypted.
    assert!(card.tokenize(b"1234567890", &mut Vec::new()).is_err());
    assert!(card.tokenize(b"12345678901", &mut Vec::new()).is_ok());
}

fn refuse_alnum() -> Tokenizer {
    tokenizer("alnum", "code")
}

#[test]
fn dates_stay_valid_and_in_range() {
    let t = tokenizer("date", "dob");
    let tok = token(&t, "1985-07-14");
    assert!(date::parse_iso_date(tok.as_bytes()).is_some());
    assert_ne!(tok, "1985-07-14");
    assert_eq!(reveal(&t, &tok), "1985-07-14");
    let narrow = "date:1000-01-01..3999-12-31".parse().unwrap();
    let t = Tokenizer::new(&key(), "dob", narrow).unwrap();
    for day in [-300_000i64, 0, 5_000, 700_000] {
        let tok = t.tokenize_day(day).unwrap();
        let (y, _, _) = date::civil_from_days(tok);
        assert!((1000..=3999).contains(&y));
        assert_eq!(t.reveal_day(tok).unwrap(), day);
    }
    assert!(t.tokenize_day(date::days_from_civil(4000, 1, 1)).is_err());
    let one_year = "date:2024-01-01..2024-12-30".parse().unwrap();
    assert!(Tokenizer::new(&key(), "dob", one_year).is_err());
}

/// A plausible range (1900-2099: 73,049 days, too few for FF1) keeps tokens plausible: every
/// token is a valid date in the range, reveal inverts it, and tokens are deterministic.
#[test]
fn narrow_date_ranges_keep_tokens_plausible() {
    let spec = "date:1900-01-01..2099-12-31";
    let t = Tokenizer::new(&key(), "dob", spec.parse().unwrap()).unwrap();
    let again = Tokenizer::new(&key(), "dob", spec.parse().unwrap()).unwrap();
    let mut unchanged = 0;
    for value in [
        "1900-01-01",
        "1953-02-28",
        "1985-07-14",
        "2000-02-29",
        "2099-12-31",
    ] {
        let tok = token(&t, value);
        let (y, _, _) = date::parse_iso_date(tok.as_bytes()).unwrap();
        assert!((1900..=2099).contains(&y), "{value} -> {tok}");
        assert_eq!(reveal(&t, &tok), value);
        assert_eq!(token(&again, value), tok);
        unchanged += usize::from(tok == value);
    }
    assert!(unchanged <= 1);
    assert!(t.tokenize_day(date::days_from_civil(1899, 12, 31)).is_err());
    assert!(t.tokenize_day(date::days_from_civil(2100, 1, 1)).is_err());
    // The default and wide ranges are FF1 as before: tokens do not change.
    let wide = tokenizer("date", "dob");
    assert_eq!(
        token(&wide, "1985-07-14"),
        token(
            &tokenizer("date:0001-01-01..9999-12-31", "dob"),
            "1985-07-14"
        )
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn text_round_trips_and_keeps_shape(value in "[a-zA-Z0-9 .,@é-]{0,80}") {
        let t = tokenizer("text", "p");
        let mut out = Vec::new();
        match t.tokenize(value.as_bytes(), &mut out) {
            Ok(Output::Value) => {
                let tok = String::from_utf8(out).unwrap();
                prop_assert_eq!(shape(&tok), shape(&value));
                prop_assert_eq!(reveal(&t, &tok), value);
            }
            Ok(Output::Null) => prop_assert!(false, "refuse mode never nulls"),
            Err(ProtectError::SmallDomain { domain, .. }) => prop_assert!(domain < 1_000_000),
            Err(ProtectError::BadValue { .. }) => {
                prop_assert!(!value.bytes().any(|c| c.is_ascii_alphanumeric()))
            }
            Err(other) => prop_assert!(false, "{}", other),
        }
    }

    #[test]
    fn integers_round_trip(value in any::<i64>()) {
        let t = tokenizer("integer:small=null", "p");
        if let Some(tok) = t.tokenize_int(value, IntRange::INT8).unwrap() {
            prop_assert_eq!(t.reveal_int(tok, IntRange::INT8).unwrap(), Some(value));
            prop_assert_eq!(tok.signum(), value.signum());
        }
    }

    #[test]
    fn cards_round_trip_and_preserve_luhn(digits in "[0-9]{12,19}", keep in any::<bool>()) {
        let t = tokenizer(if keep { "card:keep-last4" } else { "card" }, "c");
        let tok = token(&t, &digits);
        prop_assert_eq!(luhn_valid(&tok), luhn_valid(&digits));
        prop_assert_eq!(reveal(&t, &tok), digits);
    }
}

#[test]
fn debug_output_redacts_key_material() {
    let debug = format!("{:?}", tokenizer("digits", "ssn"));
    assert!(debug.contains("[redacted]"));
    // The test key is 32 bytes of 42; a leaked schedule or key would print runs of numbers.
    assert!(!debug.contains("42, 42"));
}

/// The batched path gives, value for value, exactly the one-at-a-time result (token bytes,
/// NULL, or the same error), for tokenize and reveal, whatever values share the batch.
fn assert_batch_matches(format: &str, values: &[Vec<u8>]) {
    let t = tokenizer(format, "batch");
    let inputs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    for reveal in [false, true] {
        let mut out = b"before".to_vec();
        let batched = if reveal {
            t.reveal_many(&inputs, &mut out)
        } else {
            t.tokenize_many(&inputs, &mut out)
        };
        assert_eq!(batched.len(), inputs.len());
        for (value, got) in inputs.iter().zip(&batched) {
            let mut one = Vec::new();
            let want = if reveal {
                t.reveal(value, &mut one)
            } else {
                t.tokenize(value, &mut one)
            };
            match (want, got) {
                (Ok(Output::Value), Ok(Some(range))) => assert_eq!(
                    &out[range.clone()],
                    one.as_slice(),
                    "{format} {:?} (reveal {reveal})",
                    String::from_utf8_lossy(value)
                ),
                (Ok(Output::Null), Ok(None)) => {}
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                (want, got) => panic!(
                    "{format} {:?} (reveal {reveal}): one at a time {want:?}, batched {got:?}",
                    String::from_utf8_lossy(value)
                ),
            }
        }
        assert_eq!(&out[..6], b"before", "the buffer's earlier bytes are kept");
    }
}

#[test]
fn batches_match_one_at_a_time_on_edge_cases() {
    let values: Vec<Vec<u8>> = [
        "",
        "123-45-6789",
        "123 45 6789",
        "+1 (555) 013-4567",
        "12345",
        "123456",
        "4111111111111111",
        "4111 1111 1111 1111",
        "1234567890",
        "12345678901",
        "1234567890123456789012345678901234567890123",
        "00000000",
        "abc",
        "jane.doe@example.com",
        "a@b",
        "@example.com",
        "no-at-sign",
        "x@y.co.uk",
        "José Müller, 42 rue de la Paix",
        "AB-12cd-34",
        "Zoë12345",
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789",
        "1985-07-14",
        "-12345678",
        "42",
        "0",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    for format in [
        "digits",
        "digits:small=mask",
        "digits:small=null",
        "card",
        "card:keep-last4",
        "card:keep-last4,small=null",
        "alnum",
        "alnum:small=mask",
        "text",
        "text:small=null",
        "email",
        "email:tokenize-domain",
        "email:small=mask",
        "integer",
        "date",
    ] {
        assert_batch_matches(format, &values);
        // Many values of one length in one batch (more than one AES interleave group).
        let same: Vec<Vec<u8>> = (0..37u64)
            .map(|i| format!("{:03}-{:02}-{:04}", i * 7 % 1000, i % 100, i * 31 % 10_000))
            .map(String::into_bytes)
            .collect();
        assert_batch_matches(format, &same);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn batches_match_one_at_a_time(
        values in prop::collection::vec("[a-zA-Z0-9 .@é+()-]{0,40}", 0..40),
        digits in prop::collection::vec("[0-9]{0,24}", 0..40),
        format in prop::sample::select(vec![
            "digits", "card", "card:keep-last4", "alnum:small=mask", "text", "text:small=null",
            "email", "email:tokenize-domain",
        ]),
    ) {
        let mut all: Vec<Vec<u8>> = values.into_iter().map(String::into_bytes).collect();
        all.extend(digits.into_iter().map(String::into_bytes));
        assert_batch_matches(format, &all);
    }
}
