//! `tokengate serve` with a policy and key file: startup refuses bad files with a located
//! message; a running server hot-reloads and keeps the old policy when an edit is invalid.
use crate::harness::*;
use std::path::Path;

fn serve_binary(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--admin", "off"])
        .args(["--upstream", "postgres://127.0.0.1:1?sslmode=disable"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn serve_refuses_an_invalid_policy_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "version: 1\nlabels:\n  email: { class: pii, token: emial }\n",
    )
    .unwrap();
    let (ok, err) = serve_binary(&["--policy", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("bad.yaml:3:"), "{err}");
    assert!(err.contains("emial"), "{err}");
}

#[test]
fn serve_refuses_a_missing_or_exposed_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let (ok, err) = serve_binary(&["--keys", missing.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("nope.json"), "{err}");

    let keys = dir.path().join("keys.json");
    let keygen = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["keygen", "--out", keys.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(keygen.status.success());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, err) = serve_binary(&["--keys", keys.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("keys.json") && err.to_lowercase().contains("readable"),
        "{err}"
    );
}

async fn generation_and_errors(proxy: &tokengate::server::RunningServer) -> (f64, f64) {
    let text = metrics_text(proxy).await;
    (
        metric(&text, "tokengate_policy_generation"),
        metric(&text, "tokengate_policy_reloads_total{result=\"error\"}"),
    )
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn running_server_hot_reloads_and_keeps_the_last_good_policy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    let demo_policy = crate::crm::crm_policy_text();
    std::fs::write(&path, &demo_policy).unwrap();
    let p = path.clone();
    let proxy = proxy_with(move |c| {
        c.policy = Some(p);
        c.catalog_user = Some("postgres".into());
        c.catalog_password = Some(SUPERUSER_PW.into());
        // The edit below gives a new role clear access: a weakening the watcher applies
        // only with this setting (tests/integration/robust.rs covers the default).
        c.allow_weakening_reload = true;
    })
    .await;
    assert_eq!(generation_and_errors(&proxy).await, (1.0, 0.0));

    // An invalid edit is rejected; the old policy stays in force.
    write_atomically(&path, &format!("{demo_policy}\nroles: {{}}\n"));
    assert!(eventually(10, async || generation_and_errors(&proxy).await.1 >= 1.0).await);
    assert_eq!(generation_and_errors(&proxy).await.0, 1.0);
    let store = proxy.context.policy.as_ref().unwrap();
    assert!(
        store.current().roles().len() >= 4,
        "old policy still in force"
    );

    // A valid edit takes effect.
    write_atomically(&path, &demo_policy.replace("app_admin", "app_owner"));
    assert!(eventually(10, async || generation_and_errors(&proxy).await.0 == 2.0).await);
    let view = store.current().for_role("app_owner", &[]);
    assert!(view.fully_clear());

    // Sessions keep working throughout.
    let (_, via) = pair(&proxy, "scram_user", "scram-pw").await;
    assert_eq!(
        via.query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

/// The tools that connect to the upstream themselves (`policy check --upstream`, `migrate`,
/// `rekey`) negotiate TLS like the proxy: `tls_user` may log in only over TLS, so this fails
/// with `sslmode=disable` and works with `require` and the default `prefer` (it failed for
/// every mode when the tools connected without TLS support).
#[test]
fn upstream_tools_speak_tls_like_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "version: 1\nlabels:\n  ssn: { class: pii, mask: \"***-**-####\" }\ncolumns: {}\nroles:\n  \"*\": { default: deny }\n",
    )
    .unwrap();
    let check = |query: &str| {
        let url = format!(
            "postgres://tls_user:tls-pw@127.0.0.1:{}/postgres{query}",
            cluster().port()
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args([
                "policy",
                "check",
                policy.to_str().unwrap(),
                "--upstream",
                &url,
            ])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    for query in ["?sslmode=require", ""] {
        let out = check(query);
        assert!(out.contains("columns checked"), "{query}: {out}");
    }
    let out = check("?sslmode=disable");
    assert!(
        out.contains("no encryption") && !out.contains("columns checked"),
        "{out}"
    );
}
