//! The Kubernetes manifests keep the properties operations rely on: 3 replicas, probes on
//! the admin port, non-root with a read-only root fs, resources, the policy ConfigMap
//! mounted as a directory (hot reload) and valid, and the key Secret owner-only.
use serde_json::Value;
use std::path::{Path, PathBuf};

fn manifest(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn deployment_is_three_hardened_replicas_with_probes() {
    let d = manifest("deployment.yaml");
    assert_eq!(d["kind"], "Deployment");
    assert_eq!(d["spec"]["replicas"], 3);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    let ports = container["ports"].as_array().unwrap();
    let port = |name: &str| {
        ports
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["containerPort"].clone())
    };
    assert_eq!(port("admin"), Some(Value::from(9187)));
    assert_eq!(port("postgres"), Some(Value::from(6432)));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "admin");
    }
    for c in pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["initContainers"].as_array().unwrap())
    {
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true, "{c}");
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert!(c["resources"]["requests"]["cpu"].is_string(), "{c}");
        assert!(c["resources"]["limits"]["memory"].is_string(), "{c}");
    }
    let env = |name: &str| {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].as_str().unwrap().to_owned())
    };
    assert_eq!(env("TOKENGATE_ADMIN").as_deref(), Some("0.0.0.0:9187"));
    let policy_file = env("TOKENGATE_POLICY").unwrap();

    // The policy is a directory mount of the ConfigMap (subPath mounts never update).
    let mounts = container["volumeMounts"].as_array().unwrap();
    let policy_mount = mounts.iter().find(|m| m["name"] == "policy").unwrap();
    assert!(policy_mount.get("subPath").is_none());
    let dir = policy_mount["mountPath"].as_str().unwrap();
    assert_eq!(
        Path::new(&policy_file).parent(),
        Some(Path::new(dir)),
        "TOKENGATE_POLICY must be inside the mounted directory"
    );
    let volumes = pod["volumes"].as_array().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap().clone();
    assert_eq!(volume("policy")["configMap"]["name"], "tokengate-policy");
    let secret = volume("keys-secret");
    assert_eq!(secret["secret"]["secretName"], "tokengate-keys");
    let mode = secret["secret"]["defaultMode"].as_u64().unwrap();
    assert_eq!(
        mode & 0o077,
        0,
        "key Secret mode {mode:o} must be owner-only"
    );
}

#[test]
fn service_and_configmap_match_the_deployment() {
    let s = manifest("service.yaml");
    let port = &s["spec"]["ports"].as_array().unwrap()[0];
    assert_eq!(
        (port["port"].as_u64(), port["targetPort"].as_str()),
        (Some(6432), Some("postgres"))
    );
    let d = manifest("deployment.yaml");
    assert_eq!(
        s["spec"]["selector"],
        d["spec"]["template"]["metadata"]["labels"]
    );
    let c = manifest("configmap-policy.yaml");
    let policy_text = c["data"]["policy.yaml"].as_str().unwrap();
    let policy = tokengate::policy::Policy::from_yaml(policy_text, "configmap-policy.yaml")
        .unwrap_or_else(|e| panic!("the shipped policy is invalid: {e}"));
    assert!(policy.for_role("analyst", &[]).alerts().is_some());
}

/// Where a container path lands in this test: under `<pod>/<volume name>` for a mounted
/// volume (longest mount path first), unchanged otherwise.
struct Mounts {
    mounts: Vec<(String, PathBuf)>,
}

impl Mounts {
    fn new(container: &Value, pod_dir: &Path) -> Mounts {
        let mut mounts: Vec<(String, PathBuf)> = container["volumeMounts"]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|m| {
                assert!(m.get("subPath").is_none(), "{m}");
                (
                    m["mountPath"]
                        .as_str()
                        .unwrap()
                        .trim_end_matches('/')
                        .to_owned(),
                    pod_dir.join(m["name"].as_str().unwrap()),
                )
            })
            .collect();
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        Mounts { mounts }
    }

    fn map(&self, word: &str) -> String {
        for (path, dir) in &self.mounts {
            if word == path {
                return dir.display().to_string();
            }
            if let Some(rest) = word.strip_prefix(&format!("{path}/")) {
                return dir.join(rest).display().to_string();
            }
        }
        word.to_owned()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    tcp.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// The Deployment as the kubelet would run it: the volumes (ConfigMap files, the key Secret
/// with its defaultMode, emptyDirs), the init container's command, then the image's entrypoint
/// with the container's args and exactly its environment (Secret references filled in) against
/// a real PostgreSQL with TLS (the manifest says sslmode=require). Only the upstream's host and
/// the listening ports are changed, and mounted paths are remapped under a temp dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_becomes_ready_with_the_manifests_env_args_and_files() {
    use std::os::unix::fs::PermissionsExt;
    use tokengate::embedded_pg::{EmbeddedPostgres, PgOptions};

    let deployment = manifest("deployment.yaml");
    let configmap = manifest("configmap-policy.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert!(
        container.get("command").is_none(),
        "the image's ENTRYPOINT (tokengate) must run"
    );

    // A PostgreSQL with TLS, the catalog role, the demo-like tables and a login role.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let pg = tokio::task::spawn_blocking(move || {
        EmbeddedPostgres::start(&PgOptions {
            superuser_password: "k8s-super-pw".into(),
            ssl: Some((cert.pem(), key.serialize_pem())),
            ..PgOptions::default()
        })
    })
    .await
    .unwrap()
    .unwrap();
    let catalog_password = "catalog-pw-from-secret";
    pg.execute("postgres", "CREATE DATABASE app").await.unwrap();
    pg.execute(
        "app",
        &format!(
            "CREATE ROLE tokengate_catalog LOGIN PASSWORD '{catalog_password}';
             CREATE ROLE analyst LOGIN PASSWORD 'analyst-pw';
             CREATE TABLE customers (id int PRIMARY KEY, email text, phone text);
             CREATE TABLE payments (id int PRIMARY KEY, card_number text);
             INSERT INTO customers VALUES (1, 'ada.lovelace@example.com', '+1 555 0134 222');
             GRANT SELECT ON customers, payments TO analyst;"
        ),
    )
    .await
    .unwrap();

    // The volumes, as the kubelet lays them out.
    let pod_dir = tempfile::tempdir().unwrap();
    let secrets = |name: &str, key: &str| -> String {
        match (name, key) {
            ("tokengate-catalog", "password") => catalog_password.to_owned(),
            _ => panic!("the test has no value for Secret {name}/{key}"),
        }
    };
    for volume in pod["volumes"].as_array().unwrap() {
        let dir = pod_dir.path().join(volume["name"].as_str().unwrap());
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(cm) = volume.get("configMap") {
            assert_eq!(cm["name"], configmap["metadata"]["name"]);
            for (file, text) in configmap["data"].as_object().unwrap() {
                std::fs::write(dir.join(file), text.as_str().unwrap()).unwrap();
            }
        } else if let Some(secret) = volume.get("secret") {
            assert_eq!(secret["secretName"], "tokengate-keys");
            // The real Secret is made from `tokengate keygen` output with an audit key.
            let mut ring = tokengate::protect::KeyRing::generate("default");
            ring.insert("audit", 1, tokengate::protect::Key::generate());
            let file = dir.join("keys.json");
            ring.write_new(&file, true).unwrap();
            let mode = secret["defaultMode"].as_u64().unwrap() as u32;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        } else {
            assert!(volume.get("emptyDir").is_some(), "{volume}");
        }
    }

    // Init containers run their command with their own mounts.
    for init in pod["initContainers"].as_array().unwrap() {
        let mounts = Mounts::new(init, pod_dir.path());
        let command: Vec<String> = init["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                let w = w.as_str().unwrap();
                // Paths inside a `sh -c` script are words of the script.
                w.split(' ')
                    .map(|x| mounts.map(x))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let status = std::process::Command::new(&command[0])
            .args(&command[1..])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "init container {}: {command:?}",
            init["name"]
        );
    }

    // The container: entrypoint + args, exactly the manifest's environment.
    let mounts = Mounts::new(container, pod_dir.path());
    let (listen_port, admin_port) = (free_port(), free_port());
    let port_of = |name: &str| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["containerPort"]
            .as_u64()
            .unwrap()
    };
    let remap_port = |value: &str| {
        value
            .replace(
                &format!(":{}", port_of("postgres")),
                &format!(":{listen_port}"),
            )
            .replace(&format!(":{}", port_of("admin")), &format!(":{admin_port}"))
    };
    let mut env = Vec::new();
    for e in container["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_owned();
        let value = match (e.get("value"), e.get("valueFrom")) {
            (Some(v), None) => v.as_str().unwrap().to_owned(),
            (None, Some(from)) => {
                let r = &from["secretKeyRef"];
                secrets(r["name"].as_str().unwrap(), r["key"].as_str().unwrap())
            }
            _ => panic!("env {name}: value or valueFrom"),
        };
        let value = match name.as_str() {
            "TOKENGATE_UPSTREAM" => {
                let mut url = url::Url::parse(&value).unwrap();
                url.set_host(Some("127.0.0.1")).unwrap();
                url.set_port(Some(pg.port())).unwrap();
                assert_eq!(
                    url.query(),
                    Some("sslmode=require"),
                    "the upstream leg is encrypted"
                );
                url.to_string()
            }
            "TOKENGATE_LISTEN" | "TOKENGATE_ADMIN" => remap_port(&value),
            _ => mounts.map(&value),
        };
        env.push((name, value));
    }
    let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
    for required in [
        "TOKENGATE_POLICY",
        "TOKENGATE_KEYS",
        "TOKENGATE_CATALOG_USER",
        "TOKENGATE_CATALOG_PASSWORD",
        "TOKENGATE_AUDIT_LOG",
        "TOKENGATE_DRAIN_TIMEOUT",
    ] {
        assert!(
            names.contains(&required),
            "{required} is not set: {names:?}"
        );
    }
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| mounts.map(a.as_str().unwrap()))
        .collect();
    let log = pod_dir.path().join("container.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(&args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(pod_dir.path().join("stdout.log")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();

    // The probes, on the port the manifest names.
    let probe = &container["readinessProbe"]["httpGet"];
    assert_eq!(probe["port"], "admin");
    let ready_path = probe["path"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "tokengate exited ({status}) before it was ready:\n{}",
                logs()
            );
        }
        if http_get(admin_port, &ready_path) == Some(200) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{ready_path} never answered 200:\n{}",
            logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let live = container["livenessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap();
    assert_eq!(http_get(admin_port, live), Some(200));

    // The policy, keys, catalog role and audit log are all in force.
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(listen_port)
        .user("analyst")
        .password("analyst-pw")
        .dbname("app")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{e}:\n{}", logs()));
    tokio::spawn(connection);
    let email: String = client
        .query_one("SELECT email FROM customers WHERE id = 1", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}:\n{}", logs()))
        .get(0);
    assert_ne!(email, "ada.lovelace@example.com", "analyst gets a token");
    assert!(email.ends_with("@example.com"), "{email}");
    drop(client);
    let audit_path = env
        .iter()
        .find(|(n, _)| n == "TOKENGATE_AUDIT_LOG")
        .map(|(_, v)| PathBuf::from(v))
        .unwrap();
    assert!(
        audit_path.starts_with(pod_dir.path()),
        "on the audit volume"
    );

    // A rollout sends SIGTERM: the pod stops cleanly within its grace period, logging once.
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline + std::time::Duration::from_secs(60),
            "no exit after SIGTERM:\n{}",
            logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}:\n{}", logs());
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    assert!(
        audit.contains("\"role\":\"analyst\""),
        "the audit log records the analyst's statement:\n{audit}"
    );
    let text = logs();
    assert_eq!(text.matches("shutting down").count(), 1, "{text}");
    assert_eq!(text.matches("tokengate stopped").count(), 1, "{text}");
    assert!(!text.contains('\u{1b}'), "no colour codes in logs:\n{text}");
}
