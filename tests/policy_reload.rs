//! Hot reload through the file watcher and `reload_now`: good edits take effect, bad ones
//! leave the old policy in force and are counted. Waits poll with a deadline; nothing
//! asserts on timing.
use std::path::Path;
use std::time::{Duration, Instant};
use tokengate::observe::metrics::{Metrics, ResultLabel};
use tokengate::policy::{PolicyStore, StatementKind};

/// A valid policy whose analyst row limit marks which version is in force.
fn policy_with_limit(limit: u64) -> String {
    format!(
        "version: 1\nlabels:\n  email: {{ class: pii, token: email }}\ncolumns:\n  public.customers.email: email\nroles:\n  analyst: {{ pii: token, row_limit: {limit} }}\n  \"*\": {{ default: deny }}\n"
    )
}

const INVALID: &str = "version: 1\nroles:\n  analyst: { pii: tokenize }\n";

fn limit_in_force(store: &PolicyStore) -> Option<u64> {
    store.current().for_role("analyst", &[]).row_limit()
}

fn reloads(metrics: &Metrics, result: &str) -> u64 {
    metrics
        .policy_reloads_total
        .get_or_create(&ResultLabel {
            result: result.into(),
        })
        .get()
}

/// Polls `cond` every 20 ms for up to 10 s.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn setup(limit: u64) -> (tempfile::TempDir, std::path::PathBuf, PolicyStore, Metrics) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy_with_limit(limit)).unwrap();
    let (_registry, metrics) = Metrics::standalone();
    let store = PolicyStore::load(&path, metrics.clone()).unwrap();
    (dir, path, store, metrics)
}

fn atomic_save(path: &Path, text: &str) {
    let tmp = path.with_file_name(".policy.yaml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn reload_now_swaps_a_good_file_and_keeps_the_old_one_on_error() {
    let (_dir, path, store, metrics) = setup(100);
    assert_eq!(store.generation(), 1);
    assert_eq!(metrics.policy_generation.get(), 1);
    let before = store.current();

    std::fs::write(&path, policy_with_limit(200)).unwrap();
    assert_eq!(store.reload_now().unwrap(), 2);
    assert_eq!(limit_in_force(&store), Some(200));
    assert_eq!(metrics.policy_generation.get(), 2);
    assert_eq!(reloads(&metrics, "ok"), 1);
    // A snapshot taken before the reload is unchanged: statements in flight keep theirs.
    assert_eq!(before.for_role("analyst", &[]).row_limit(), Some(100));

    std::fs::write(&path, INVALID).unwrap();
    let err = store.reload_now().unwrap_err();
    let text = err.to_string();
    assert!(text.contains("policy.yaml:3:"), "{text}");
    assert!(text.contains("unknown action 'tokenize'"), "{text}");
    assert_eq!(store.generation(), 2);
    assert_eq!(limit_in_force(&store), Some(200));
    assert_eq!(reloads(&metrics, "error"), 1);
    assert_eq!(metrics.policy_generation.get(), 2);
}

#[test]
fn load_rejects_an_invalid_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, INVALID).unwrap();
    let (_registry, metrics) = Metrics::standalone();
    assert!(PolicyStore::load(&path, metrics).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_in_place_takes_effect() {
    let (_dir, path, store, _metrics) = setup(100);
    let _watch = store.spawn_watchers().unwrap();
    std::fs::write(&path, policy_with_limit(250)).unwrap();
    wait_for("the edit to load", || limit_in_force(&store) == Some(250)).await;
    assert!(store.generation() >= 2);
    assert!(
        store
            .current()
            .for_role("analyst", &[])
            .statement_allowed(StatementKind::Select)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_edit_is_rejected_and_counted() {
    let (_dir, path, store, metrics) = setup(100);
    let _watch = store.spawn_watchers().unwrap();
    std::fs::write(&path, INVALID).unwrap();
    wait_for("the error to be counted", || {
        reloads(&metrics, "error") >= 1
    })
    .await;
    assert_eq!(store.generation(), 1);
    assert_eq!(limit_in_force(&store), Some(100));
    assert_eq!(reloads(&metrics, "ok"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_rename_save_is_picked_up() {
    let (_dir, path, store, _metrics) = setup(100);
    let _watch = store.spawn_watchers().unwrap();
    atomic_save(&path, &policy_with_limit(300));
    wait_for("the renamed file to load", || {
        limit_in_force(&store) == Some(300)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_edits_ends_in_the_last_good_file() {
    let (_dir, path, store, metrics) = setup(100);
    let _watch = store.spawn_watchers().unwrap();
    for limit in [101, 102, 103] {
        std::fs::write(&path, policy_with_limit(limit)).unwrap();
    }
    atomic_save(&path, INVALID);
    atomic_save(&path, &policy_with_limit(104));
    std::fs::write(&path, INVALID).unwrap();
    atomic_save(&path, &policy_with_limit(105));
    wait_for("the last good file", || limit_in_force(&store) == Some(105)).await;
    // The final file is good, so nothing after it may count as the policy in force.
    assert_eq!(metrics.policy_generation.get() as u64, store.generation());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_stops_watching() {
    let (_dir, path, store, metrics) = setup(100);
    let watch = store.spawn_watchers().unwrap();
    std::fs::write(&path, policy_with_limit(110)).unwrap();
    wait_for("the first edit", || limit_in_force(&store) == Some(110)).await;
    drop(watch);

    // A second, still-watching store on the same file is the control: once it has seen
    // the next edit, the dropped watcher would have seen it too.
    let (_registry, control_metrics) = Metrics::standalone();
    let control = PolicyStore::load(&path, control_metrics).unwrap();
    let _control_watch = control.spawn_watchers().unwrap();
    std::fs::write(&path, policy_with_limit(120)).unwrap();
    wait_for("the control store to reload", || {
        limit_in_force(&control) == Some(120)
    })
    .await;
    assert_eq!(limit_in_force(&store), Some(110));
    assert_eq!(reloads(&metrics, "ok"), 1);
}

/// The policy with the analyst's email action, to tell strengthening from weakening.
fn policy_with_action(action: &str) -> String {
    policy_with_limit(100).replace("pii: token", &format!("pii: {action}"))
}

fn email_action(store: &PolicyStore) -> tokengate::policy::Action {
    store
        .current()
        .for_role("analyst", &[])
        .column("public.customers.email")
        .unwrap()
        .action
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_holds_a_weakening_edit_until_an_explicit_reload() {
    use tokengate::policy::Action;
    let (_dir, path, store, metrics) = setup(100);
    let _watch = store.spawn_watchers().unwrap();
    // Stronger: applied by the watcher.
    atomic_save(&path, &policy_with_action("mask"));
    wait_for("the stronger policy", || {
        email_action(&store) == Action::Mask
    })
    .await;
    // Weaker (mask -> clear): held, counted, the old policy stays.
    atomic_save(&path, &policy_with_action("clear"));
    wait_for("the hold to be counted", || reloads(&metrics, "held") >= 1).await;
    assert_eq!(email_action(&store), Action::Mask);
    // A cut that drops the column's label is weaker too (and a cut before roles: is invalid).
    std::fs::write(
        &path,
        "version: 1\nlabels: {}\ncolumns: {}\nroles:\n  \"*\": { default: deny }\n",
    )
    .unwrap();
    wait_for("the second hold", || reloads(&metrics, "held") >= 2).await;
    std::fs::write(&path, "version: 1\n").unwrap();
    wait_for("the cut to be rejected", || reloads(&metrics, "error") >= 1).await;
    assert_eq!(email_action(&store), Action::Mask);
    // The operator's explicit reload applies what the file says.
    atomic_save(&path, &policy_with_action("clear"));
    store.reload_now().unwrap();
    assert_eq!(email_action(&store), Action::Clear);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_weakening_reload_lets_the_watcher_apply_it() {
    use tokengate::policy::Action;
    let (_dir, path, store, _metrics) = setup(100);
    store.set_allow_weakening_reload(true);
    let _watch = store.spawn_watchers().unwrap();
    atomic_save(&path, &policy_with_action("clear"));
    wait_for("the weaker policy", || {
        email_action(&store) == Action::Clear
    })
    .await;
}

#[test]
fn a_file_without_its_sections_or_catch_all_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    let (_registry, metrics) = Metrics::standalone();
    for text in [
        "version: 1\n".to_string(),
        "version: 1\nlabels:\n  email: { class: pii }\n".to_string(),
        policy_with_limit(1).replace("  \"*\": { default: deny }\n", ""),
    ] {
        std::fs::write(&path, &text).unwrap();
        let err = PolicyStore::load(&path, metrics.clone())
            .err()
            .expect(&text)
            .to_string();
        assert!(err.contains("section") || err.contains("\"*\""), "{err}");
    }
}
