//! `examples/deploy/kubernetes/`: the core resources pass the Kubernetes
//! schemas (the offline `kubernetes-validate`, strict: no unknown field),
//! every `PAYTRACE_*` variable they set is one the binary reads, and the
//! names that tie the resources together (ports, labels, Secrets) agree.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn manifests() -> PathBuf {
    repo().join("examples/deploy/kubernetes")
}

fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(manifests().join(file)).expect("the manifest");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).expect("YAML"))
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// `kubernetes-validate --strict FILES` from the pinned virtualenv.
fn validate(files: &[&Path]) -> std::process::Output {
    let validator = manifests().join(".venv/bin/kubernetes-validate");
    assert!(
        validator.exists(),
        "the Kubernetes validator is not installed: run `python3 -m venv examples/deploy/kubernetes/.venv && \
         examples/deploy/kubernetes/.venv/bin/pip install -r examples/deploy/kubernetes/requirements.txt` \
         (scripts/test.sh does)"
    );
    Command::new(validator)
        .arg("--strict")
        .args(files)
        .output()
        .expect("the validator runs")
}

#[test]
fn the_core_resources_pass_the_kubernetes_schemas_strictly() {
    let file = manifests().join("aggregator.yaml");
    let out = validate(&[&file]);
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    for resource in [
        "serviceaccount/paytrace-aggregator",
        "persistentvolumeclaim/paytrace-aggregator-state",
        "deployment/paytrace-aggregator",
        "service/paytrace-aggregator",
    ] {
        assert!(
            report.contains(&format!("passed for resource {resource}")),
            "{resource} not validated:\n{report}"
        );
    }

    // The validator is strict: a misspelt field fails it.
    let text = std::fs::read_to_string(&file).expect("the manifest");
    let misspelt = text.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem");
    assert_ne!(misspelt, text);
    let copy = paytrace_testkit::temp_file("misspelt-aggregator.yaml", &misspelt);
    assert!(
        !validate(&[&copy]).status.success(),
        "a misspelt field passed"
    );
}

#[test]
fn every_variable_the_manifests_set_is_one_the_binary_reads() {
    let help = Command::new(env!("CARGO_BIN_EXE_paytrace-aggregator"))
        .args(["serve", "--help"])
        .output()
        .expect("the binary runs");
    let help = String::from_utf8_lossy(&help.stdout);
    for (file, workload) in [
        ("aggregator.yaml", "Deployment"),
        ("replicas/aggregator.yaml", "StatefulSet"),
    ] {
        let docs = documents(file);
        let container = &kind(&docs, workload)["spec"]["template"]["spec"]["containers"][0];
        let names: Vec<&str> = container["env"]
            .as_sequence()
            .expect("env")
            .iter()
            .filter_map(|e| e["name"].as_str())
            .filter(|n| n.starts_with("PAYTRACE_"))
            .collect();
        assert!(names.len() >= 5, "{file}: {names:?}");
        for name in names {
            assert!(
                help.contains(&format!("env: {name}=")),
                "{file}: `serve` reads no {name}"
            );
        }
        assert_eq!(container["args"][0].as_str(), Some("serve"), "{file}");
    }
}

/// The replicas' StatefulSet: strictly valid; each replica lists every
/// pod by its stable name under the headless Service, on the API port; the
/// state directory is each pod's own claimed volume.
#[test]
fn the_replicas_find_each_other_by_their_stable_names() {
    let file = manifests().join("replicas/aggregator.yaml");
    let out = validate(&[&file]);
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("passed for resource statefulset/paytrace-aggregator"),
        "{report}"
    );

    let docs = documents("replicas/aggregator.yaml");
    let set = kind(&docs, "StatefulSet");
    let headless = kind(&docs, "Service");
    assert_eq!(headless["spec"]["clusterIP"].as_str(), Some("None"));
    let service = set["spec"]["serviceName"].as_str().expect("serviceName");
    assert_eq!(headless["metadata"]["name"].as_str(), Some(service));
    let name = set["metadata"]["name"].as_str().expect("a name");
    let replicas = set["spec"]["replicas"].as_u64().expect("replicas");
    let pod = &set["spec"]["template"];
    for (k, v) in headless["spec"]["selector"]
        .as_mapping()
        .expect("a selector")
    {
        assert_eq!(&pod["metadata"]["labels"][k.as_str().expect("a key")], v);
    }
    let container = &pod["spec"]["containers"][0];
    let env = |var: &str| {
        container["env"]
            .as_sequence()
            .expect("env")
            .iter()
            .find(|e| e["name"].as_str() == Some(var))
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("no {var}"))
            .to_owned()
    };
    let api_port = container["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .find(|p| p["name"].as_str() == Some("api"))
        .and_then(|p| p["containerPort"].as_u64())
        .expect("an api port");
    let peers: Vec<String> = env("PAYTRACE_PEER").split(',').map(str::to_owned).collect();
    let expected: Vec<String> = (0..replicas)
        .map(|i| format!("https://{name}-{i}.{service}.monitoring.svc:{api_port}"))
        .collect();
    assert_eq!(peers, expected, "every pod, by its stable name");
    let claim = set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
        .as_str()
        .expect("a claim template");
    let state_dir = env("PAYTRACE_STATE_DIR");
    assert!(
        container["volumeMounts"]
            .as_sequence()
            .expect("mounts")
            .iter()
            .any(|m| m["name"].as_str() == Some(claim)
                && m["mountPath"].as_str() == Some(state_dir.as_str())),
        "each replica's state on its own claimed volume"
    );
}

#[test]
fn ports_labels_and_secrets_agree_across_the_resources() {
    let docs = documents("aggregator.yaml");
    let pod = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let container_ports: Vec<(&str, u64)> = container["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().expect("named"),
                p["containerPort"].as_u64().expect("a number"),
            )
        })
        .collect();
    // The binary's default ports, which --all-interfaces binds.
    assert_eq!(
        container_ports,
        [("otlp-grpc", 4317), ("otlp-http", 4318), ("api", 8686)]
    );
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["port"].as_str(), Some("api"), "{probe}");
        assert_eq!(
            get["scheme"].as_str(),
            Some("HTTPS"),
            "{probe}: the listeners serve TLS"
        );
        assert!(
            matches!(get["path"].as_str(), Some("/healthz" | "/readyz")),
            "{probe}"
        );
    }
    let pod_labels = &kind(&docs, "Deployment")["spec"]["template"]["metadata"]["labels"];
    let service = kind(&docs, "Service");
    for (k, v) in service["spec"]["selector"]
        .as_mapping()
        .expect("a selector")
    {
        assert_eq!(
            &pod_labels[k.as_str().expect("a key")],
            v,
            "the Service selects the pods"
        );
    }
    let service_ports: Vec<&str> = service["spec"]["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .map(|p| {
            let target = p["targetPort"].as_str().expect("a named target");
            assert!(
                container_ports.iter().any(|(n, _)| *n == target),
                "{target} is no container port"
            );
            p["name"].as_str().expect("named")
        })
        .collect();

    // Every path the variables name is on a mounted volume; the state
    // directory is the claimed one.
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_sequence()
        .expect("mounts")
        .iter()
        .map(|m| m["mountPath"].as_str().expect("a path"))
        .collect();
    for e in container["env"].as_sequence().expect("env") {
        if let Some(path) = e["value"].as_str().filter(|v| v.starts_with('/')) {
            assert!(
                mounts
                    .iter()
                    .any(|m| path == *m || path.starts_with(&format!("{m}/"))),
                "{path} is on no mounted volume"
            );
        }
    }
    let claim = kind(&docs, "PersistentVolumeClaim")["metadata"]["name"].as_str();
    let state_volume = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["persistentVolumeClaim"]["claimName"].as_str() == claim)
        .expect("a volume of the claim");
    let state_dir = container["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .find(|e| e["name"].as_str() == Some("PAYTRACE_STATE_DIR"))
        .and_then(|e| e["value"].as_str())
        .expect("PAYTRACE_STATE_DIR");
    assert!(
        container["volumeMounts"]
            .as_sequence()
            .expect("mounts")
            .iter()
            .any(
                |m| m["name"] == state_volume["name"] && m["mountPath"].as_str() == Some(state_dir)
            ),
        "the state directory is the claimed volume"
    );
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));

    // The ServiceMonitor (a custom resource the validator has no schema
    // for) selects the Service and scrapes a port it has, over TLS.
    let monitors = documents("servicemonitor.yaml");
    let monitor = kind(&monitors, "ServiceMonitor");
    assert_eq!(
        monitor["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("matchLabels")
    {
        assert_eq!(
            &service["metadata"]["labels"][k.as_str().expect("a key")],
            v
        );
    }
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert!(service_ports.contains(&endpoint["port"].as_str().expect("a port")));
    assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
    assert_eq!(endpoint["scheme"].as_str(), Some("https"));
    let ca_secret = endpoint["tlsConfig"]["ca"]["secret"]["name"].as_str();
    let tls_volume = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"].as_str() == Some("tls"))
        .expect("a tls volume");
    assert_eq!(ca_secret, tls_volume["secret"]["secretName"].as_str());
}
