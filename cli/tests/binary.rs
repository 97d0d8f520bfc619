//! The `chainfold` binary as a user runs it: exit codes, one-line errors, replay and tail on the
//! real broker (`CHAINFOLD_KAFKA_BROKERS`, started by `scripts/stack up`).

use std::process::Command;

fn chainfold() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chainfold"));
    command.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    command.env_remove("RUST_LOG");
    command
}

#[test]
fn an_unreachable_database_exits_non_zero_with_one_clear_line() {
    let output = chainfold()
        .args([
            "project",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/nowhere",
            "--database-connect-timeout",
            "2s",
        ])
        .output()
        .expect("run chainfold");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().expect("an error line");
    assert!(
        last.starts_with("chainfold: could not start projector: could not connect to Postgres at 127.0.0.1:1/nowhere"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        !stderr.contains("nobody@"),
        "the URL's credentials must not be printed: {stderr}"
    );
}

#[test]
fn an_invalid_flag_value_is_refused_before_anything_starts() {
    let output = chainfold()
        .args(["project", "--batch-wait", "5 parsecs"])
        .output()
        .expect("run chainfold");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--batch-wait"));
}

#[test]
fn replay_then_tail_prints_partition_offset_key_and_payload() {
    let prefix = format!("{}.", chainfold_testkit::unique("cli"));
    let brokers = chainfold_testkit::kafka_brokers();
    let replay = chainfold()
        .args([
            "ingest",
            "replay",
            "--dataset",
            "polygon",
            "--topic-prefix",
            &prefix,
            "--kafka-brokers",
            &brokers,
        ])
        .output()
        .expect("run replay");
    let stdout = String::from_utf8_lossy(&replay.stdout);
    assert!(
        replay.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(
        stdout.contains("published 1724 events (1724 lending, 0 amm)"),
        "{stdout}"
    );

    let topic = format!("{prefix}chainfold.lending.v1");
    let tail = chainfold()
        .args(["tail", &topic, "-n", "3", "--kafka-brokers", &brokers])
        .output()
        .expect("run tail");
    assert!(
        tail.status.success(),
        "{}",
        String::from_utf8_lossy(&tail.stderr)
    );
    let printed = String::from_utf8_lossy(&tail.stdout);
    let headers: Vec<&str> = printed.lines().filter(|l| l.starts_with(&topic)).collect();
    assert_eq!(headers.len(), 3, "{printed}");
    for line in headers {
        assert!(line.contains('@') && line.contains(" key=0x"), "{line}");
    }
    assert!(printed.contains("\"schema_version\":1"), "{printed}");
}
