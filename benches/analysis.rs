//! SQL analysis cost: a full parse + analyse of a ~200-byte join SELECT versus a cache hit
//! (normalise + lookup) for the same statement with different literals.
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use tokengate::sql::{AnalysisCache, LexSettings, StaticCatalog, analyze, fingerprint};

const JOIN_SELECT: &str = "SELECT c.id, c.full_name, c.email, p.amount, p.paid_at \
    FROM customers c JOIN payments p ON p.customer_id = c.id \
    WHERE c.city = 'Paris' AND p.amount > 100 AND p.paid_at >= '2024-01-01' \
    ORDER BY p.paid_at DESC LIMIT 50";

fn bench(c: &mut Criterion) {
    let catalog = StaticCatalog::demo();
    let cache = AnalysisCache::new(10_000);
    let lex = LexSettings::default();
    cache.get_or_analyze(JOIN_SELECT, lex, &catalog, 1);
    // Same shape, other literals: a hit must not need the exact text.
    let variant = JOIN_SELECT
        .replace("'Paris'", "'Lyon'")
        .replace("100", "250");
    assert!(cache.get(&variant, lex, 1).is_some());

    let mut group = c.benchmark_group("analysis");
    group.bench_function("parse_and_analyze", |b| {
        b.iter(|| analyze(black_box(JOIN_SELECT), &catalog))
    });
    group.bench_function("cache_hit", |b| {
        b.iter(|| cache.get_or_analyze(black_box(&variant), lex, &catalog, 1))
    });
    group.bench_function("fingerprint", |b| {
        b.iter(|| fingerprint(black_box(&variant)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
