//! The real psql binary: simple protocol, several statements, \copy, errors.
use crate::harness::*;

fn both(args: &[&str]) -> ((bool, String, String), (bool, String, String)) {
    let rt_proxy = tokio::runtime::Handle::current();
    let proxy = tokio::task::block_in_place(|| rt_proxy.block_on(proxy()));
    let direct = psql(cluster().port(), "scram_user", "scram-pw", args, &[]);
    let via = psql(proxy.addr.port(), "scram_user", "scram-pw", args, &[]);
    (direct, via)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_multi_statement_output_matches() {
    let (d, v) = both(&[
        "-c",
        "SELECT id, name FROM items WHERE id < 4 ORDER BY id; SELECT count(*) FROM items",
    ]);
    assert!(v.0, "{}", v.2);
    assert_eq!(v.1, d.1);
    assert!(v.1.contains("item 3") && v.1.contains("1000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_errors_match() {
    let (d, v) = both(&["-v", "ON_ERROR_STOP=1", "-c", "SELECT * FROM no_such_table"]);
    assert!(!v.0);
    assert_eq!(v.2, d.2);
    assert!(v.2.contains("relation \"no_such_table\" does not exist"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_backslash_copy_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("items.csv");
    let f = file.display().to_string();
    let script = format!(
        "\\copy (SELECT id, name FROM items WHERE id <= 50 ORDER BY id) TO '{f}' CSV\n\
         CREATE TEMP TABLE back (id int, name text);\n\
         \\copy back FROM '{f}' CSV\n\
         SELECT count(*), sum(id) FROM back;\n"
    );
    let script_path = dir.path().join("script.sql");
    std::fs::write(&script_path, script).unwrap();
    let (d, v) = both(&[
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-f",
        &script_path.display().to_string(),
    ]);
    assert!(v.0, "{}", v.2);
    assert_eq!(v.1, d.1);
    assert!(v.1.contains("50|1275"), "{}", v.1);
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 50);
}
