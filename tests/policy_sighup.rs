//! SIGHUP reloads the policy. Alone in its own test binary: the signal goes to the whole
//! process, and a stray SIGHUP before the handler is installed would end it.
use std::time::{Duration, Instant};
use tokengate::observe::metrics::Metrics;
use tokengate::policy::PolicyStore;

fn policy_with_limit(limit: u64) -> String {
    format!(
        "version: 1\nlabels:\n  email: {{ class: pii }}\ncolumns:\n  public.customers.email: email\nroles:\n  analyst: {{ pii: mask, row_limit: {limit} }}\n  \"*\": {{ default: deny }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy_with_limit(1)).unwrap();
    let (_registry, metrics) = Metrics::standalone();
    let store = PolicyStore::load(&path, metrics).unwrap();
    let _watch = store.spawn_watchers().unwrap();

    // An unchanged file: the watcher never reloads it, so only SIGHUP can bump the
    // generation (SIGHUP reloads even when the text is unchanged).
    let pid = std::process::id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.generation() < 2 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the policy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        store.current().for_role("analyst", &[]).row_limit(),
        Some(1)
    );
}
