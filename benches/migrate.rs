//! `tokengate migrate` and `rekey` throughput (issue 14), not a timed test and not run in CI:
//! a throwaway PostgreSQL, a table of `ROWS` (default 200,000) SSNs in clear, then
//! [`tokengate::atrest::migrate`] (plaintext → key version 1) and [`tokengate::atrest::rekey`]
//! (1 → 2, grace 0) in batches of `BATCH` (default 1000) rows, each batch one transaction.
//! Prints rows/s for both, and checks a sample of rows against FF1 directly.
//!
//! Run: `cargo bench --bench migrate` (env: ROWS=200000, BATCH=1000).
mod common;

use common::env_or;
use std::time::Duration;
use tokengate::atrest::{Column, Options, Outcome, Quiet};
use tokengate::embedded_pg::{EmbeddedPostgres, PgOptions};
use tokengate::protect::keys::{DEFAULT_KEY_NAME, Key, KeyRing};
use tokengate::protect::{Action, ColumnTransform, TransformSpec};

fn main() {
    let rows = env_or("ROWS", 200_000) as i64;
    let batch = env_or("BATCH", 1000) as usize;
    let pg = EmbeddedPostgres::start(&PgOptions {
        superuser_password: "migrate-bench-pw".into(),
        ..PgOptions::default()
    })
    .expect("start PostgreSQL");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut client = pg.connect_admin("postgres").await.expect("connect");
        client
            .batch_execute(&format!(
                "CREATE TABLE people (id bigint PRIMARY KEY, name text, ssn char(11));
                 INSERT INTO people
                 SELECT g, 'person ' || g,
                        lpad((g % 1000)::text, 3, '0') || '-' || lpad((g % 100)::text, 2, '0')
                        || '-' || lpad((g % 10000)::text, 4, '0')
                   FROM generate_series(1, {rows}) g;"
            ))
            .await
            .expect("load");
        client
            .batch_execute("VACUUM ANALYZE people")
            .await
            .expect("vacuum");
        let mut keys = KeyRing::default();
        keys.insert(DEFAULT_KEY_NAME, 1, Key::from_bytes([7; 32]));
        let column = Column {
            schema: "public".into(),
            table: "people".into(),
            column: "ssn".into(),
            label: "ssn".into(),
            format: "digits".into(),
        };
        let options = Options {
            batch_size: batch,
            grace: Duration::ZERO,
            ..Options::default()
        };
        let report = |what: &str, outcome: Outcome| match outcome {
            Outcome::Done { rows, elapsed, .. } => println!(
                "{what}: {rows} rows in {:.2}s = {:.0} rows/s (batch {batch})",
                elapsed.as_secs_f64(),
                rows as f64 / elapsed.as_secs_f64()
            ),
            other => panic!("{what}: {other:?}"),
        };
        let done = tokengate::atrest::migrate(&mut client, &keys, &column, &options, &Quiet)
            .await
            .expect("migrate");
        report("migrate", done);
        keys.insert(DEFAULT_KEY_NAME, 2, Key::from_bytes([8; 32]));
        let done = tokengate::atrest::rekey(&mut client, &keys, &column, &options, &Quiet)
            .await
            .expect("rekey");
        report("rekey 1->2", done);
        // A sample is exactly FF1 of the plaintext under version 2.
        let mut spec = TransformSpec::new(Action::Token("digits".parse().unwrap()), "ssn");
        spec.key_version = Some(2);
        let t = ColumnTransform::new(&spec, 25, 0, &keys).unwrap();
        for row in client
            .query("SELECT id, ssn::text FROM people WHERE id % 9973 = 1", &[])
            .await
            .unwrap()
        {
            let id: i64 = row.get(0);
            let plain = format!("{:03}-{:02}-{:04}", id % 1000, id % 100, id % 10000);
            let mut out = Vec::new();
            t.apply(plain.as_bytes(), &mut out).unwrap();
            assert_eq!(row.get::<_, String>(1).as_bytes(), out, "row {id}");
        }
    });
    pg.stop();
}
