//! The read path's policy calls: `for_role` (cached view) and `RoleView::column`, against a
//! plain `HashMap<String, _>` lookup as the baseline measured in the same run.
use criterion::{Criterion, criterion_group, criterion_main};
use std::collections::HashMap;
use std::hint::black_box;
use tokengate::policy::Policy;

fn demo() -> Policy {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/demo.yaml");
    Policy::load(&path).expect("demo policy is valid")
}

fn bench(c: &mut Criterion) {
    let policy = demo();
    let groups = vec!["analyst".to_string(), "staff".to_string()];
    let baseline: HashMap<String, u32> = policy
        .columns()
        .iter()
        .enumerate()
        .map(|(i, col)| (col.name.canonical(), i as u32))
        .collect();
    let mut g = c.benchmark_group("policy");
    g.bench_function("baseline_hashmap_get", |b| {
        b.iter(|| baseline.get(black_box("public.customers.email")).copied())
    });
    g.bench_function("for_role_cached", |b| {
        b.iter(|| policy.for_role(black_box("bob"), black_box(&groups)))
    });
    let view = policy.for_role("bob", &groups);
    g.bench_function("view_column", |b| {
        b.iter(|| {
            view.column(black_box("public.customers.email"))
                .map(|d| d.action)
        })
    });
    g.bench_function("view_column_parts", |b| {
        b.iter(|| {
            view.column_parts(
                black_box("public"),
                black_box("customers"),
                black_box("email"),
            )
            .map(|d| d.action)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
