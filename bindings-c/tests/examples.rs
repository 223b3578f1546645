//! The C and C++ examples, compiled with -Wall -Wextra -Werror, run against brokers started by
//! this test (and one the C++ example embeds itself); the C programs again under valgrind and
//! the C++ one under AddressSanitizer and LeakSanitizer: no leak, no invalid access.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{compile, crate_dir};
use spate_engine::broker::config::ServeSettings;
use spate_engine::runtime::server::{start, Placement, RunningBroker};

struct Broker {
    running: Option<RunningBroker>,
    _data: tempfile::TempDir,
}

impl Broker {
    fn start(auto_create_topics: bool) -> Broker {
        let data = tempfile::tempdir().expect("tempdir");
        let config = ServeSettings {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            data_dir: Some(data.path().to_owned()),
            cores: Some(1),
            auto_create_topics: Some(auto_create_topics),
            group_initial_rebalance_delay_ms: Some(0),
            ..ServeSettings::default()
        }
        .resolve()
        .expect("settings");
        Broker {
            running: Some(start(config, Placement::Unbound).expect("broker starts")),
            _data: data,
        }
    }

    fn address(&self) -> String {
        self.running
            .as_ref()
            .expect("running")
            .listen_address()
            .to_string()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().expect("broker stops");
        }
    }
}

struct Programs {
    dir: tempfile::TempDir,
}

impl Programs {
    fn new() -> Programs {
        Programs {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn build(&self, source: &str, extra: &[&str]) -> PathBuf {
        let source = crate_dir().join(source);
        let name = format!(
            "{}{}",
            source.file_stem().expect("a file").to_string_lossy(),
            if extra.is_empty() { "" } else { "-sanitized" }
        );
        let binary = self.dir.path().join(name);
        compile(&source, &binary, extra);
        binary
    }
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("{} runs: {error}", program.display()))
}

/// Runs `program` under valgrind's memcheck; fails on any error or definite leak.
fn run_under_valgrind(program: &Path, args: &[&str]) -> Output {
    let output = Command::new("valgrind")
        .args([
            "--quiet",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--show-leak-kinds=definite",
        ])
        .arg(program)
        .args(args)
        .output()
        .expect("valgrind runs (apt install valgrind)");
    assert_ne!(
        output.status.code(),
        Some(99),
        "valgrind found errors in {}:\n{}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn check_consumed(output: &str, count: usize) {
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), count, "{output}");
    let mut values: Vec<usize> = lines
        .iter()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 5, "{line}");
            let index: usize = fields[3]
                .strip_prefix("value-")
                .expect("a value")
                .parse()
                .expect("an index");
            assert_eq!(fields[2], format!("key-{}", index % 10), "{line}");
            assert_eq!(fields[4], format!("index={index}"), "{line}");
            index
        })
        .collect();
    values.sort_unstable();
    assert_eq!(values, (0..count).collect::<Vec<_>>());
}

#[test]
fn producer_and_consumer_examples_round_trip_through_a_broker() {
    let broker = Broker::start(true);
    let programs = Programs::new();
    let producer = programs.build("examples/producer.c", &[]);
    let consumer = programs.build("examples/consumer.c", &[]);
    let address = broker.address();

    let produced = stdout(&run(&producer, &[&address, "events", "200"]));
    assert_eq!(produced.trim(), "delivered 200 of 200 records");
    check_consumed(
        &stdout(&run(&consumer, &[&address, "events", "readers", "200"])),
        200,
    );
    // The group committed: a second run of the same group has nothing left to read.
    let again = run(&consumer, &[&address, "events", "readers", "1"]);
    assert_eq!(
        again.status.code(),
        Some(1),
        "the group resumed past its commit"
    );

    // The same programs under valgrind: no invalid access, no leak.
    let produced = stdout(&run_under_valgrind(&producer, &[&address, "checked", "50"]));
    assert_eq!(produced.trim(), "delivered 50 of 50 records");
    check_consumed(
        &stdout(&run_under_valgrind(
            &consumer,
            &[&address, "checked", "checked-readers", "50"],
        )),
        50,
    );
}

#[test]
fn cpp_wrapper_round_trips_through_an_embedded_broker() {
    let programs = Programs::new();
    let roundtrip = programs.build("examples/roundtrip.cpp", &[]);
    let expected = "0 0 key-0 value-0\n0 1 key-1 value-1\n0 2 key-2 value-2\n";
    assert_eq!(stdout(&run(&roundtrip, &[])), expected);
    // Under AddressSanitizer and LeakSanitizer (valgrind does not know io_uring, which the
    // embedded broker needs).
    let sanitized = programs.build(
        "examples/roundtrip.cpp",
        &["-fsanitize=address", "-fno-omit-frame-pointer"],
    );
    // The slow unwinder sees through Rust frames, which the suppressions match on.
    let suppressions = crate_dir().join("tests/lsan.supp");
    let output = Command::new(&sanitized)
        .env("ASAN_OPTIONS", "detect_leaks=1:fast_unwind_on_malloc=0")
        .env(
            "LSAN_OPTIONS",
            format!(
                "suppressions={}:print_suppressions=0",
                suppressions.display()
            ),
        )
        .output()
        .expect("runs");
    assert_eq!(stdout(&output), expected);
}

#[test]
fn transactions_commit_and_abort_and_carry_offsets() {
    let broker = Broker::start(true);
    let programs = Programs::new();
    let transactions = programs.build("tests/c/transactions.c", &[]);
    let address = broker.address();
    assert_eq!(stdout(&run(&transactions, &[&address])).trim(), "ok");
}

#[test]
fn error_paths_return_their_status_and_message() {
    let broker = Broker::start(false);
    let programs = Programs::new();
    let errors = programs.build("tests/c/errors.c", &[]);
    let address = broker.address();
    let output = stdout(&run(&errors, &[&address]));
    assert!(!output.contains("FAILED"), "{output}");
    assert_eq!(output.lines().count(), 32, "{output}");
    let output = stdout(&run_under_valgrind(&errors, &[&address]));
    assert!(!output.contains("FAILED"), "{output}");
}
