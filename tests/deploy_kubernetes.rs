//! The Kubernetes manifests keep the properties operations rely on: 3 replicas, probes on
//! the admin port, non-root with a read-only root fs, resources, the policy ConfigMap
//! mounted as a directory (hot reload) and valid, and the key Secret owner-only.
use serde_json::Value;
use std::path::Path;

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
