//! Per-value cost of each token format and mask through `ColumnTransform::apply`, the call the
//! read path makes for every protected DataRow field. Values have typical lengths.
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use tokengate::protect::column::oid;
use tokengate::protect::{Action, ColumnTransform, Key, KeyRing, TransformSpec};

fn transform(action: Action, type_oid: u32, format_code: i16, keys: &KeyRing) -> ColumnTransform {
    ColumnTransform::new(
        &TransformSpec::new(action, "bench"),
        type_oid,
        format_code,
        keys,
    )
    .unwrap()
}

fn bench_formats(c: &mut Criterion) {
    let mut keys = KeyRing::default();
    keys.insert("default", 1, Key::from_bytes([3; 32]));
    let token = |f: &str| Action::Token(f.parse().unwrap());
    let mask = |m: &str| Action::Mask(m.parse().unwrap());
    let cases: Vec<(&str, Action, u32, i16, Vec<u8>)> = vec![
        (
            "token digits ssn",
            token("digits"),
            oid::TEXT,
            0,
            b"123-45-6789".to_vec(),
        ),
        (
            "token digits phone",
            token("digits"),
            oid::TEXT,
            0,
            b"+1 (555) 013-4567".to_vec(),
        ),
        (
            "token card keep-last4",
            token("card:keep-last4"),
            oid::TEXT,
            0,
            b"4111 1111 1111 1111".to_vec(),
        ),
        (
            "token alnum 10",
            token("alnum"),
            oid::TEXT,
            0,
            b"AB12CD34EF".to_vec(),
        ),
        (
            "token email",
            token("email"),
            oid::TEXT,
            0,
            b"john.smith@example.com".to_vec(),
        ),
        (
            "token email tokenize-domain",
            token("email:tokenize-domain"),
            oid::TEXT,
            0,
            b"john.smith@example.com".to_vec(),
        ),
        (
            "token text 30",
            token("text"),
            oid::TEXT,
            0,
            b"Jane Doe, 42 Baker Street Apt 7".to_vec(),
        ),
        (
            "token integer int8 binary",
            token("integer"),
            oid::INT8,
            1,
            1_234_567_890_123i64.to_be_bytes().to_vec(),
        ),
        (
            "token integer int4 text",
            token("integer"),
            oid::INT4,
            0,
            b"123456789".to_vec(),
        ),
        (
            "token date binary",
            token("date"),
            oid::DATE,
            1,
            5_000i32.to_be_bytes().to_vec(),
        ),
        (
            "mask last4",
            mask("last4"),
            oid::TEXT,
            0,
            b"4111 1111 1111 1111".to_vec(),
        ),
        (
            "mask pattern ssn",
            mask("***-**-####"),
            oid::TEXT,
            0,
            b"123-45-6789".to_vec(),
        ),
        (
            "mask email",
            mask("email"),
            oid::TEXT,
            0,
            b"john.smith@example.com".to_vec(),
        ),
        (
            "mask hash16",
            mask("hash:16:hex"),
            oid::TEXT,
            0,
            b"john.smith@example.com".to_vec(),
        ),
    ];
    let mut group = c.benchmark_group("column_transform");
    for (name, action, type_oid, format_code, value) in cases {
        let t = transform(action, type_oid, format_code, &keys);
        let mut out = Vec::with_capacity(64);
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                t.apply(black_box(&value), &mut out).unwrap();
                black_box(out.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_formats);
criterion_main!(benches);
