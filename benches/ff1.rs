//! FF1 throughput: our fixed-width implementation against the `fpe` crate in the same run, on a
//! 16-digit radix-10 value (the card-number shape), plus a 20-char radix-62 value.
//!
//! Prints the per-core encryptions/s of each and the speed-up ratio, from the criterion medians.
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::{Duration, Instant};
use tokengate::protect::ff1::Ff1Aes256;

const KEY: [u8; 32] = [7u8; 32];
const TWEAK: &[u8] = b"label:card";

fn fpe_ff1(radix: u32) -> fpe::ff1::FF1<aes::Aes256> {
    fpe::ff1::FF1::<aes::Aes256>::new(&KEY, radix).unwrap()
}

fn bench_ff1(c: &mut Criterion) {
    let ours = Ff1Aes256::new(&KEY, 10, TWEAK).unwrap();
    let theirs = fpe_ff1(10);
    let digits: [u8; 16] = [4, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4];
    let mut group = c.benchmark_group("ff1_radix10_len16");
    group.bench_function("tokengate", |b| {
        b.iter(|| {
            let mut buf = black_box(digits);
            ours.encrypt(&mut buf).unwrap();
            buf
        })
    });
    group.bench_function("fpe", |b| {
        b.iter(|| {
            let input = fpe::ff1::FlexibleNumeralString::from(
                black_box(digits)
                    .iter()
                    .map(|&d| u16::from(d))
                    .collect::<Vec<u16>>(),
            );
            theirs.encrypt(TWEAK, &input).unwrap()
        })
    });
    let batch: Vec<u8> = (0..16 * 64).map(|i| (i * 7 % 10) as u8).collect();
    group.throughput(criterion::Throughput::Elements(64));
    group.bench_function("tokengate_batch8_per_value", |b| {
        // One iteration = 64 values through encrypt_many; reported per 64 values.
        b.iter(|| {
            let mut buf = black_box(batch.clone());
            ours.encrypt_many(16, &mut buf).unwrap();
            buf
        })
    });
    group.finish();

    let ours62 = Ff1Aes256::new(&KEY, 62, TWEAK).unwrap();
    let theirs62 = fpe_ff1(62);
    let alnum: [u8; 20] = core::array::from_fn(|i| (i * 3 % 62) as u8);
    let mut group = c.benchmark_group("ff1_radix62_len20");
    group.bench_function("tokengate", |b| {
        b.iter(|| {
            let mut buf = black_box(alnum);
            ours62.encrypt(&mut buf).unwrap();
            buf
        })
    });
    group.bench_function("fpe", |b| {
        b.iter(|| {
            let input = fpe::ff1::FlexibleNumeralString::from(
                black_box(alnum)
                    .iter()
                    .map(|&d| u16::from(d))
                    .collect::<Vec<u16>>(),
            );
            theirs62.encrypt(TWEAK, &input).unwrap()
        })
    });
    group.finish();

    ratio_summary(&ours, &theirs, &digits);
}

/// Interleaved rounds of both implementations (so machine noise hits both alike); prints the
/// median per-value time of each, the ratio and the per-core rate.
fn ratio_summary(ours: &Ff1Aes256, theirs: &fpe::ff1::FF1<aes::Aes256>, digits: &[u8; 16]) {
    const BATCH: u32 = 2_000;
    let mut ours_ns = Vec::new();
    let mut theirs_ns = Vec::new();
    let mut batch_ns = Vec::new();
    let batch: Vec<u8> = (0..BATCH as usize).flat_map(|_| *digits).collect();
    for _ in 0..15 {
        let mut buf = batch.clone();
        let start = Instant::now();
        ours.encrypt_many(16, black_box(&mut buf)).unwrap();
        black_box(&buf);
        batch_ns.push(per_value_ns(start.elapsed(), BATCH));
        let start = Instant::now();
        for _ in 0..BATCH {
            let mut buf = black_box(*digits);
            ours.encrypt(&mut buf).unwrap();
            black_box(buf);
        }
        ours_ns.push(per_value_ns(start.elapsed(), BATCH));
        let start = Instant::now();
        for _ in 0..BATCH / 10 {
            let input = fpe::ff1::FlexibleNumeralString::from(
                black_box(*digits)
                    .iter()
                    .map(|&d| u16::from(d))
                    .collect::<Vec<u16>>(),
            );
            black_box(theirs.encrypt(TWEAK, &input).unwrap());
        }
        theirs_ns.push(per_value_ns(start.elapsed(), BATCH / 10));
    }
    let ours_median = median(&mut ours_ns);
    let theirs_median = median(&mut theirs_ns);
    let batch_median = median(&mut batch_ns);
    println!(
        "ff1 16-digit radix-10 batch (encrypt_many, 8 interleaved): {batch_median:.0} ns per value \
         ({:.2} M/s per core), speed-up over fpe {:.1}x",
        1e3 / batch_median,
        theirs_median / batch_median
    );
    println!(
        "ff1 16-digit radix-10 (interleaved medians): tokengate {ours_median:.0} ns \
         ({:.2} M/s per core), fpe {theirs_median:.0} ns ({:.3} M/s), speed-up {:.1}x",
        1e3 / ours_median,
        1e3 / theirs_median,
        theirs_median / ours_median
    );
}

fn per_value_ns(elapsed: Duration, count: u32) -> f64 {
    elapsed.as_nanos() as f64 / f64::from(count)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

criterion_group!(benches, bench_ff1);
criterion_main!(benches);
