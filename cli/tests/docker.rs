//! `docker/compose.yml` parsed (no Docker engine on these machines to render it): three Kafka
//! brokers with a quorum of three and volumes, every role present with a health check and a
//! command the real binary accepts, the image carrying the models and onnxruntime.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn compose() -> serde_yaml::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docker/compose.yml");
    let text = std::fs::read_to_string(&path).expect("docker/compose.yml");
    let mut value: serde_yaml::Value = serde_yaml::from_str(&text).expect("valid YAML");
    value.apply_merge().expect("merge keys resolve");
    // Merge keys nested in service definitions (`environment: { <<: *kafka-env, … }`).
    if let Some(services) = value.get_mut("services").and_then(|s| s.as_mapping_mut()) {
        for (_, service) in services.iter_mut() {
            service.apply_merge().expect("merge keys resolve");
            if let Some(env) = service.get_mut("environment") {
                env.apply_merge().expect("merge keys resolve");
            }
        }
    }
    value
}

fn help(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_chainfold"))
        .args(args)
        .arg("--help")
        .output()
        .expect("chainfold --help");
    assert!(output.status.success(), "chainfold {args:?} --help failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_compose_file_runs_every_role_on_a_three_broker_cluster_with_commands_the_binary_accepts() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    let name = |k: &serde_yaml::Value| k.as_str().expect("service name").to_owned();

    // Three brokers, each a voter of the same quorum, each with its own volume.
    let brokers: Vec<&serde_yaml::Value> = services
        .iter()
        .filter(|(k, _)| name(k).starts_with("kafka-"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(brokers.len(), 3);
    let mut ids = BTreeSet::new();
    for broker in &brokers {
        let env = &broker["environment"];
        assert_eq!(
            env["KAFKA_CONTROLLER_QUORUM_VOTERS"].as_str(),
            Some("1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093")
        );
        assert_eq!(env["KAFKA_MIN_INSYNC_REPLICAS"].as_str(), Some("2"));
        assert!(broker["image"]
            .as_str()
            .expect("image")
            .starts_with("apache/kafka:4."));
        assert!(broker["volumes"][0]
            .as_str()
            .expect("volume")
            .ends_with(":/var/lib/kafka/data"));
        assert!(broker["healthcheck"]["test"].is_sequence());
        ids.insert(env["KAFKA_NODE_ID"].as_str().expect("node id").to_owned());
    }
    assert_eq!(ids.len(), 3, "distinct node ids");
    assert!(services["postgres"]["volumes"][0]
        .as_str()
        .expect("postgres volume")
        .starts_with("pgdata:"));

    // Every role, built from the image, health-checked, with a command the binary accepts.
    let mut roles = BTreeSet::new();
    for (key, service) in services {
        if service.get("build").is_none() {
            continue;
        }
        let service_name = name(key);
        let command: Vec<String> = service["command"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{service_name} has a command"))
            .iter()
            .map(|c| c.as_str().expect("command word").to_owned())
            .collect();
        assert!(
            service["healthcheck"]["test"].is_sequence(),
            "{service_name} has a health check"
        );
        let test: Vec<&str> = service["healthcheck"]["test"]
            .as_sequence()
            .expect("test")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        if test.first() == Some(&"CMD") && test.get(1) == Some(&"chainfold") {
            check_words(
                &test[2..]
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect::<Vec<_>>(),
                &service_name,
            );
        }
        check_words(&command, &service_name);
        assert_eq!(
            service["environment"]["CHAINFOLD_TOPIC_REPLICATION"].as_str(),
            Some("3"),
            "{service_name} creates topics with replication 3"
        );
        roles.insert(command[0].clone());
    }
    for role in ["ingest", "project", "score", "risk", "actuate", "serve"] {
        assert!(
            roles.contains(role),
            "a service runs `chainfold {role}`: {roles:?}"
        );
    }

    // The image carries the models and onnxruntime; the build context leaves target/ out.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dockerfile = std::fs::read_to_string(root.join("docker/Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.contains("scoring/models"));
    assert!(dockerfile.contains("ORT_DYLIB_PATH"));
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).expect(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}

/// Checks that the subcommand path of `words` exists and that each `--flag` is one its help
/// lists.
fn check_words(words: &[String], service: &str) {
    let mut path: Vec<&str> = Vec::new();
    for word in words {
        if word.starts_with('-') {
            break;
        }
        let listed = help(&path);
        assert!(
            listed.contains(&format!("  {word}")),
            "{service}: `chainfold {}` has no subcommand {word}:\n{listed}",
            path.join(" ")
        );
        path.push(word);
    }
    let listed = help(&path);
    for flag in words.iter().filter(|w| w.starts_with("--")) {
        let flag = flag.split('=').next().expect("flag");
        assert!(
            listed.contains(flag),
            "{service}: `chainfold {}` takes no {flag}:\n{listed}",
            path.join(" ")
        );
    }
}
