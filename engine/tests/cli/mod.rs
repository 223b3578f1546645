//! The `spate` command line, run as a user would: relative paths, a fresh directory, the
//! README's commands.

use std::path::Path;
use std::process::Command;

fn spate(cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .expect("spate runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs a client command against the broker at `bootstrap`: exit code, stdout, stderr.
fn spate_at(bootstrap: &str, args: &[&str]) -> CommandOutput {
    let output = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(args)
        .args(["--bootstrap-server", bootstrap])
        .env("RUST_LOG", "warn")
        .output()
        .expect("spate runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn append_read_and_dump_a_relative_partition_directory() {
    let work = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = spate(
        work.path(),
        &[
            "log",
            "append",
            "./spate-data/demo-0",
            "--generate",
            "1000",
            "--record-bytes",
            "100",
        ],
    );
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("appended 1000 records"), "{stdout}");

    let (ok, stdout, stderr) = spate(
        work.path(),
        &["log", "read", "./spate-data/demo-0", "--from-offset", "998"],
    );
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("998\t"));

    let (ok, stdout, stderr) = spate(work.path(), &["log", "dump", "./spate-data/demo-0"]);
    assert!(ok, "{stderr}");
    assert!(stdout.trim_end().ends_with("healthy"), "{stdout}");
}

#[test]
fn dump_reports_damage_with_exit_code_2() {
    let work = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = spate(work.path(), &["log", "append", "p-0", "--generate", "100"]);
    assert!(ok, "{stderr}");
    let segment = work.path().join("p-0/00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[2000] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["log", "dump", "p-0"])
        .current_dir(work.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stdout).contains("BAD (CRC mismatch"));
}

#[test]
fn missing_directory_is_a_clear_error() {
    let work = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = spate(work.path(), &["log", "dump", "nope"]);
    assert!(!ok);
    assert!(stderr.contains("nope is not a directory"), "{stderr}");
}

#[test]
fn serve_with_no_arguments_listens_on_9092_with_data_in_spate_data() {
    // The README's run command. Skipped when something else holds the port (a Kafka broker on
    // the developer's machine, say).
    if std::net::TcpListener::bind("127.0.0.1:9092").is_err() {
        eprintln!("127.0.0.1:9092 is taken; skipping");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spate"))
        .arg("serve")
        .current_dir(work.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut listening = false;
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect("127.0.0.1:9092").is_ok() {
            listening = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: kill with a pid we own.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(listening, "spate serve did not listen on 127.0.0.1:9092");
    assert!(status.success(), "exit {status}");
    assert!(work
        .path()
        .join("spate-data")
        .join("catalog.toml")
        .is_file());
}

/// `spate topic ...` and `spate cluster info` against a running broker, in both output
/// formats, with the exit codes scripts act on.
#[test]
fn topic_and_cluster_commands_against_a_broker() {
    let work = tempfile::tempdir().unwrap();
    let broker = crate::broker::util::Broker::start(&work.path().join("data"), &[]);
    let bootstrap = broker.address.to_string();
    let run = |args: &[&str]| spate_at(&bootstrap, args);
    let (code, stdout, stderr) = run(&[
        "topic",
        "create",
        "orders",
        "--partitions",
        "3",
        "--config",
        "retention.ms=3600000",
    ]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout.trim(), "created topic orders");
    // The broker refuses: exit code 3 and Kafka's name for the error.
    let (code, _, stderr) = run(&["topic", "create", "orders"]);
    assert_eq!(code, Some(3));
    assert!(stderr.contains("TOPIC_ALREADY_EXISTS"), "{stderr}");
    let (code, _, stderr) = run(&["topic", "create", "bad/name"]);
    assert_eq!(code, Some(3), "{stderr}");

    let (code, stdout, _) = run(&["topic", "list"]);
    assert_eq!(code, Some(0));
    let header = stdout.lines().next().unwrap();
    assert!(
        header.starts_with("TOPIC") && header.contains("PARTITIONS"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|line| line.starts_with("orders ") && line.contains(" 3 ")),
        "{stdout}"
    );
    let (code, stdout, _) = run(&["topic", "list", "--output", "json"]);
    assert_eq!(code, Some(0));
    let topics: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let orders = topics
        .as_array()
        .unwrap()
        .iter()
        .find(|topic| topic["name"] == "orders")
        .expect("listed");
    assert_eq!(orders["partitions"].as_array().unwrap().len(), 3);

    let (code, stdout, _) = run(&["topic", "describe", "orders", "--output", "json"]);
    assert_eq!(code, Some(0));
    let described: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(described["partitions"][2]["partition"], 2);
    assert_eq!(described["partitions"][0]["leader"], 1);
    let (code, stdout, _) = run(&["topic", "describe", "orders"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("3 partitions"), "{stdout}");

    // Alter: grow the partitions and set a config; a bad config is the broker's refusal.
    let (code, stdout, stderr) = run(&[
        "topic",
        "alter",
        "orders",
        "--partitions",
        "5",
        "--config",
        "retention.ms=1000",
    ]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout.trim(), "altered topic orders");
    let (_, stdout, _) = run(&["topic", "describe", "orders", "--output", "json"]);
    let described: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(described["partitions"].as_array().unwrap().len(), 5);
    let (code, _, stderr) = run(&["topic", "alter", "orders", "--config", "retention.mss=1"]);
    assert_eq!(code, Some(3), "{stderr}");
    let (code, _, stderr) = run(&["topic", "alter", "orders", "--partitions", "2"]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("INVALID_PARTITIONS"), "{stderr}");
    let (code, _, _) = run(&[
        "topic",
        "alter",
        "orders",
        "--delete-config",
        "retention.ms",
    ]);
    assert_eq!(code, Some(0));
    let (code, _, stderr) = run(&["topic", "alter", "orders"]);
    assert_eq!(code, Some(1), "{stderr}");

    let (code, stdout, _) = run(&["cluster", "info", "--output", "json"]);
    assert_eq!(code, Some(0));
    let cluster: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(cluster["controller_id"], 1);
    assert_eq!(
        cluster["brokers"][0]["port"],
        i64::from(broker.address.port())
    );
    assert_eq!(cluster["cluster_id"].as_str().map(str::len), Some(32));

    let (code, stdout, _) = run(&["topic", "delete", "orders", "--output", "json"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["deleted"],
        "orders"
    );
    let (code, _, stderr) = run(&["topic", "describe", "orders"]);
    assert_eq!(code, Some(3));
    assert!(stderr.contains("UNKNOWN_TOPIC_OR_PARTITION"), "{stderr}");

    // No broker there: exit code 4 and a hint.
    let output = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["topic", "list", "--bootstrap-server", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--bootstrap-server"));
}

/// A command's exit code, standard output and standard error.
type CommandOutput = (Option<i32>, String, String);

/// `spate topic delete-records` moves a partition's log start; `spate group reset-offsets`
/// plans (dry run), applies, clamps and refuses a group with members.
#[test]
fn delete_records_and_reset_group_offsets() {
    use std::io::Write as _;
    let work = tempfile::tempdir().unwrap();
    let broker = crate::broker::util::Broker::start(
        &work.path().join("data"),
        &["--group-initial-rebalance-delay-ms", "0"],
    );
    let bootstrap = broker.address.to_string();
    let run = |args: &[&str]| spate_at(&bootstrap, args);
    let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).expect("JSON");
    let (code, _, stderr) = run(&["topic", "create", "ledger", "--partitions", "2"]);
    assert_eq!(code, Some(0), "{stderr}");
    let mut producer = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args([
            "produce",
            "ledger",
            "--partition",
            "0",
            "--bootstrap-server",
            &bootstrap,
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = producer.stdin.take().unwrap();
    for i in 0..20 {
        writeln!(stdin, "entry-{i}").unwrap();
    }
    drop(stdin);
    assert!(producer.wait().unwrap().success());

    let (code, stdout, stderr) = run(&[
        "topic",
        "delete-records",
        "ledger",
        "--before",
        "5",
        "--partition",
        "0",
        "--output",
        "json",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(json(&stdout)[0]["log_start_offset"], 5);
    let (code, stdout, _) = run(&[
        "consume",
        "ledger",
        "--partition",
        "0",
        "--from-beginning",
        "--exit-at-end",
    ]);
    assert_eq!(code, Some(0));
    assert_eq!(stdout.lines().next(), Some("entry-5"));
    let (code, _, stderr) = run(&["topic", "delete-records", "ledger", "--before", "99"]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("OFFSET_OUT_OF_RANGE"), "{stderr}");
    let (code, _, stderr) = run(&[
        "topic",
        "delete-records",
        "ledger",
        "--before",
        "1",
        "--partition",
        "9",
    ]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("UNKNOWN_TOPIC_OR_PARTITION"), "{stderr}");

    // A group reads eight records of partition 0 and commits its positions: 13 in partition
    // 0 (after the log start 5), 0 in the empty partition 1.
    let (code, stdout, stderr) = run(&[
        "consume",
        "ledger",
        "--group",
        "auditors",
        "--from-beginning",
        "--max-messages",
        "8",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.lines().count(), 8);
    let committed = |run: &dyn Fn(&[&str]) -> CommandOutput| {
        let (_, stdout, _) = run(&["group", "describe", "auditors", "--output", "json"]);
        json(&stdout)["offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|offset| {
                (
                    offset["partition"].as_i64().unwrap(),
                    offset["committed"].as_i64().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(committed(&run), [(0, 13), (1, 0)]);

    // Dry run: a plan, nothing changed.
    let (code, stdout, stderr) = run(&[
        "group",
        "reset-offsets",
        "auditors",
        "--topic",
        "ledger",
        "--to-earliest",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("dry run"), "{stderr}");
    assert!(stdout.contains("NEW-OFFSET"), "{stdout}");
    assert_eq!(committed(&run), [(0, 13), (1, 0)]);
    let (code, stdout, stderr) = run(&[
        "group",
        "reset-offsets",
        "auditors",
        "--topic",
        "ledger",
        "--to-earliest",
        "--execute",
        "--output",
        "json",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(json(&stdout)["executed"], true);
    // The earliest of partition 0 is its new log start.
    assert_eq!(committed(&run), [(0, 5), (1, 0)]);
    let (code, _, stderr) = run(&[
        "group",
        "reset-offsets",
        "auditors",
        "--topic",
        "ledger",
        "--partition",
        "0",
        "--shift-by",
        "-2",
        "--execute",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        committed(&run),
        [(0, 5), (1, 0)],
        "clamped to the log start"
    );
    let (code, _, stderr) = run(&[
        "group",
        "reset-offsets",
        "auditors",
        "--topic",
        "ledger",
        "--partition",
        "0",
        "--to-offset",
        "1000",
        "--execute",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(committed(&run), [(0, 20), (1, 0)], "clamped to the log end");

    // With a member in the group, a reset is refused.
    let mut member = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args([
            "consume",
            "ledger",
            "--group",
            "auditors",
            "--bootstrap-server",
            &bootstrap,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, stdout, _) = run(&["group", "describe", "auditors", "--output", "json"]);
        if json(&stdout)["state"] == "Stable" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{stdout}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (code, _, stderr) = run(&[
        "group",
        "reset-offsets",
        "auditors",
        "--topic",
        "ledger",
        "--to-earliest",
        "--execute",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("stop its consumers"), "{stderr}");
    member.kill().unwrap();
    member.wait().unwrap();
}

/// `spate bench produce` and `spate bench consume` run against a broker and report what they
/// measured, as a table and as JSON.
#[test]
fn bench_produce_and_consume_report_throughput_and_latency() {
    let work = tempfile::tempdir().unwrap();
    let broker = crate::broker::util::Broker::start(&work.path().join("data"), &[]);
    let bootstrap = broker.address.to_string();
    let run = |args: &[&str]| spate_at(&bootstrap, args);
    let (code, stdout, stderr) = run(&[
        "bench",
        "produce",
        "--topic",
        "load",
        "--partitions",
        "3",
        "--records",
        "5000",
        "--record-size",
        "200",
        "--keys",
        "50",
        "--compression",
        "lz4",
        "--acks",
        "all",
        "--rate",
        "20000",
        "--output",
        "json",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(report["records"], 5000);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["bytes"], 5000 * 200);
    assert_eq!(report["latency_ms"]["count"], 5000);
    let p50 = report["latency_ms"]["p50"].as_f64().unwrap();
    let p99 = report["latency_ms"]["p99"].as_f64().unwrap();
    assert!(0.0 < p50 && p50 <= p99, "{report}");
    assert!(report["latency_measured_from"]
        .as_str()
        .unwrap()
        .contains("coordinated omission"));
    // The topic was made with three partitions, and the fifty keys spread over all of them.
    for partition in ["0", "1", "2"] {
        let (code, stdout, _) = run(&[
            "consume",
            "load",
            "--partition",
            partition,
            "--from-beginning",
            "--exit-at-end",
            "--format",
            "%k\\n",
        ]);
        assert_eq!(code, Some(0));
        assert!(
            stdout.lines().count() > 100,
            "partition {partition}: {stdout}"
        );
        assert!(stdout.lines().all(|key| key.starts_with("key-")));
    }

    let (code, stdout, stderr) = run(&[
        "bench",
        "consume",
        "--topic",
        "load",
        "--records",
        "5000",
        "--output",
        "json",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(report["records"], 5000);
    assert_eq!(report["partitions"], 3);
    assert!(report["records_per_second"].as_f64().unwrap() > 0.0);

    let (code, stdout, stderr) = run(&["bench", "produce", "--topic", "load", "--duration", "1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("RECORDS"), "{stdout}");
    assert!(stdout.contains("no target rate"), "{stdout}");
    let (code, _, stderr) = run(&["bench", "produce", "--topic", "load", "--rate", "0"]);
    assert_eq!(code, Some(1), "{stderr}");
}
