//! The deployment files (deploy/), read as YAML: the sidecar Pod has both containers, the
//! probes hit tokengate's admin port, nothing is privileged, the config they mount is one
//! tokengate accepts, and the Helm chart's defaults keep the same guarantees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use tokengate::config::Config;
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every document of a YAML file.
fn docs(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn deployment(path: &str) -> Yaml {
    docs(path)
        .into_iter()
        .find(|d| d["kind"].as_str() == Some("Deployment"))
        .unwrap_or_else(|| panic!("{path}: no Deployment"))
}

fn containers(d: &Yaml) -> Vec<Yaml> {
    d["spec"]["template"]["spec"]["containers"]
        .as_vec()
        .cloned()
        .unwrap_or_default()
}

fn named<'a>(cs: &'a [Yaml], name: &str) -> &'a Yaml {
    cs.iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The container port a probe's `port` names (by name or number).
fn probe_port(container: &Yaml, probe: &str) -> i64 {
    let port = &container[probe]["httpGet"]["port"];
    if let Some(n) = port.as_i64() {
        return n;
    }
    let name = port
        .as_str()
        .unwrap_or_else(|| panic!("{probe} has no port"));
    container["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("no port named {name}"))
}

/// Nothing privileged: no privileged container, no escalation, every capability dropped, a
/// read-only root, not root.
fn assert_unprivileged(pod: &Yaml, c: &Yaml, what: &str) {
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"].as_bool(), Some(true), "{what}: privileged");
    assert_eq!(
        sc["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "{what}: escalation"
    );
    assert_eq!(
        sc["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "{what}: writable root"
    );
    let dropped = sc["capabilities"]["drop"]
        .as_vec()
        .cloned()
        .unwrap_or_default();
    assert!(
        dropped.iter().any(|c| c.as_str() == Some("ALL")),
        "{what}: capabilities kept"
    );
    assert!(
        sc["capabilities"]["add"].is_badvalue() || sc["capabilities"]["add"].is_null(),
        "{what}: capabilities added"
    );
    let non_root = sc["runAsNonRoot"]
        .as_bool()
        .or(pod["runAsNonRoot"].as_bool());
    assert_eq!(non_root, Some(true), "{what}: may run as root");
    assert_ne!(
        pod["hostNetwork"].as_bool(),
        Some(true),
        "{what}: host network"
    );
}

/// The admin port of a tokengate config file.
fn admin_port(config: &Config) -> i64 {
    config
        .admin_listen
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn check_tokengate(d: &Yaml, config_path: &str, what: &str) {
    let pod = &d["spec"]["template"]["spec"];
    let cs = containers(d);
    let tg = named(&cs, "tokengate");
    // The config it mounts is one tokengate accepts (the key file and the store URL come from
    // the environment the Pod sets).
    let config = Config::from_toml(
        &read(config_path),
        [(
            "TOKENGATE_ADMIN__KEY".to_owned(),
            "a-test-admin-key-of-some-length".to_owned(),
        )],
    )
    .unwrap_or_else(|e| panic!("{config_path}: {e}"));
    let admin = admin_port(&config);
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(
            probe_port(tg, probe),
            admin,
            "{what}: {probe} on the admin port"
        );
    }
    assert_eq!(
        tg["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        tg["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert!(
        tg["resources"]["limits"]["memory"].as_str().is_some(),
        "{what}: a memory limit"
    );
    for c in &cs {
        assert_unprivileged(
            &pod["securityContext"],
            c,
            &format!("{what}/{}", c["name"].as_str().unwrap_or("?")),
        );
    }
    assert_ne!(
        pod["automountServiceAccountToken"].as_bool(),
        Some(true),
        "{what}: no Kubernetes API token needed"
    );
}

#[test]
fn the_sidecar_pod_runs_the_api_and_tokengate_unprivileged() {
    let d = deployment("deploy/kustomize/base-sidecar/deployment.yaml");
    let cs = containers(&d);
    assert_eq!(cs.len(), 2, "the API and tokengate");
    named(&cs, "my-api");
    check_tokengate(
        &d,
        "deploy/kustomize/base-sidecar/tokengate.toml",
        "sidecar",
    );
    // The kustomize base carries its own copy of the example: they must not drift.
    assert_eq!(
        read("deploy/kustomize/base-sidecar/tokengate.toml"),
        read("config/examples/sidecar.toml")
    );
}

#[test]
fn the_gateway_runs_tokengate_unprivileged() {
    let d = deployment("deploy/kustomize/base-gateway/deployment.yaml");
    check_tokengate(
        &d,
        "deploy/kustomize/base-gateway/tokengate.toml",
        "gateway",
    );
    assert!(
        d["spec"]["replicas"].as_i64().unwrap_or(1) >= 2,
        "more than one replica"
    );
}

#[test]
fn every_yaml_file_parses_and_the_chart_defaults_are_unprivileged() {
    let mut dirs = vec![root().join("deploy")];
    let mut checked = 0;
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                // Helm templates are Go templates, not YAML, until rendered.
                if !path.ends_with("templates") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let text = std::fs::read_to_string(&path).unwrap();
                YamlLoader::load_from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "{checked} YAML files");

    let values = &docs("deploy/helm/tokengate/values.yaml")[0];
    // The chart's tokengate container takes `securityContext` as is.
    let mut container = yaml_rust2::yaml::Hash::new();
    container.insert(
        Yaml::String("securityContext".into()),
        values["securityContext"].clone(),
    );
    assert_unprivileged(
        &values["podSecurityContext"],
        &Yaml::Hash(container),
        "chart",
    );
    assert_eq!(
        values["livenessProbe"]["httpGet"]["port"].as_str(),
        Some("admin")
    );
    assert_eq!(
        values["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
}
