//! Start, stop, restart and the refusals around them.

use std::process::Command;
use std::time::{Duration, Instant};

use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};
use spate_engine::storage::batch::build::{batch, NewRecord};

use super::util::{free_port, Broker};

fn name(text: &str) -> TopicName {
    TopicName(StrBytes::from_string(text.to_owned()))
}

fn fetch(topic: &str, offset: i64, max_wait_ms: i32) -> RequestKind {
    RequestKind::Fetch(
        FetchRequest::default()
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(vec![fetch_request::FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(1 << 20)])]),
    )
}

fn produce(topic: &str, values: &[&str]) -> RequestKind {
    let records: Vec<NewRecord> = values
        .iter()
        .map(|value| NewRecord::value(value.to_string(), 1_000))
        .collect();
    RequestKind::Produce(
        ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(name(topic))
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(batch(&records).freeze())),
                ])]),
    )
}

#[test]
fn sigterm_finishes_a_long_poll_then_restart_serves_the_same_data() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let mut broker = Broker::start(&data, &[]);
    let mut connection = broker.connect();
    // Produce does not create topics (clients ask Metadata first, which does).
    let metadata = connection.metadata_auto_create("kept");
    assert_eq!(metadata.topics[0].error_code, 0);
    let ResponseKind::Produce(produced) =
        connection.call(ApiKey::Produce, 9, produce("kept", &["a", "b", "c"]))
    else {
        panic!()
    };
    assert_eq!(produced.responses[0].partition_responses[0].error_code, 0);

    // A consumer waiting for more: shutdown answers it instead of dropping it.
    let correlation_id = connection.send(ApiKey::Fetch, 12, &fetch("kept", 3, 20_000));
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let status = broker.stop();
    assert!(status.success(), "exit {status}: {}", broker.log());
    assert!(started.elapsed() < Duration::from_secs(15));
    let mut frame = connection
        .receive_frame()
        .expect("the long poll is answered before exit");
    let header =
        ResponseHeader::decode(&mut frame, ApiKey::Fetch.response_header_version(12)).unwrap();
    assert_eq!(header.correlation_id, correlation_id);

    let broker = Broker::start(&data, &[]);
    let mut connection = broker.connect();
    let ResponseKind::Fetch(fetched) = connection.call(ApiKey::Fetch, 12, fetch("kept", 0, 0))
    else {
        panic!()
    };
    let partition = &fetched.responses[0].partitions[0];
    assert_eq!((partition.error_code, partition.high_watermark), (0, 3));
    let mut records = partition.records.clone().unwrap();
    let batches = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut records).unwrap();
    let values: Vec<_> = batches
        .iter()
        .flat_map(|set| &set.records)
        .map(|record| record.value.clone().unwrap())
        .collect();
    assert_eq!(values, ["a", "b", "c"]);
}

#[test]
fn a_second_broker_on_the_same_data_directory_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let _broker = Broker::start(&data, &[]);
    let output = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("another Spate broker is using the data directory"),
        "{stderr}"
    );
}

#[test]
fn a_taken_port_is_refused_with_its_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let work = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["serve", "--listen", &address, "--data-dir"])
        .arg(work.path().join("data"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {address}")),
        "{stderr}"
    );
}

#[test]
fn a_config_file_sets_what_flags_do_not() {
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = work.path().join("spate.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nauto_create_topics = false\n\
             [topic_defaults]\n\"log.retention.ms\" = \"12345\"\n",
            work.path().join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["serve", "--cores", "1", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(Some(child));
    let child = child.0.as_mut().unwrap();
    let address = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(address).is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut connection = super::util::Connection::open(address);
    let metadata = connection.metadata_auto_create("not-created");
    assert_eq!(
        metadata.topics[0].error_code, 3,
        "UNKNOWN_TOPIC_OR_PARTITION: auto-create is off"
    );
    let ResponseKind::DescribeConfigs(configs) = connection.call(
        ApiKey::DescribeConfigs,
        4,
        RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
            describe_configs_request::DescribeConfigsResource::default()
                .with_resource_type(4)
                .with_resource_name(StrBytes::from_static_str("1")),
        ])),
    ) else {
        panic!()
    };
    let retention = configs.results[0]
        .configs
        .iter()
        .find(|config| config.name.as_str() == "log.retention.ms")
        .unwrap();
    assert_eq!(retention.value.as_deref(), Some("12345"));
    assert_eq!(retention.config_source, 4, "STATIC_BROKER_CONFIG");
    // SAFETY: kill with a pid we own.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn too_little_locked_memory_is_explained() {
    // Drop the capability to raise limits, cap locked memory at 64 KiB, and start.
    let setpriv = Command::new("setpriv").arg("--version").output();
    if setpriv.is_err() {
        eprintln!("setpriv is not installed; skipping");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let output = Command::new("prlimit")
        .args([
            "--memlock=65536:65536",
            "setpriv",
            "--inh-caps=-all",
            "--bounding-set=-sys_resource,-ipc_lock",
        ])
        .arg(env!("CARGO_BIN_EXE_spate"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
        ])
        .arg(work.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("ulimit -l") && stderr.contains("LimitMEMLOCK"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Kills the child if the test fails before it stops it.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// CPU seconds (user + system) the process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): utime and stime are the
    // 12th and 13th of them.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf reads a constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / per_second
}

/// A fetch asking for more bytes than the partition holds waits for new appends (not
/// re-reading the same records in a loop until max_wait_ms, which spun a shard at 100% CPU
/// for as long as a client asked).
#[test]
fn a_fetch_waiting_for_min_bytes_sleeps_instead_of_spinning() {
    let work = tempfile::tempdir().unwrap();
    let broker = Broker::start(&work.path().join("data"), &["--cores", "1"]);
    let mut connection = broker.connect();
    connection.metadata_auto_create("few");
    connection.call(ApiKey::Produce, 9, produce("few", &["a", "b"]));
    let RequestKind::Fetch(request) = fetch("few", 0, 1500) else {
        unreachable!()
    };
    let request = RequestKind::Fetch(request.with_min_bytes(1 << 20));
    let pid = broker.child.as_ref().unwrap().id();
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let ResponseKind::Fetch(response) = connection.call(ApiKey::Fetch, 12, request) else {
        panic!("not a fetch response")
    };
    let waited = started.elapsed();
    let cpu_used = cpu_seconds(pid) - cpu_before;
    let partition = &response.responses[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    assert!(partition
        .records
        .as_ref()
        .is_some_and(|records| !records.is_empty()));
    assert!(
        waited >= Duration::from_millis(1400),
        "answered after {waited:?}"
    );
    assert!(
        cpu_used < 0.25 * waited.as_secs_f64(),
        "the broker used {cpu_used:.2} s of CPU during a {waited:?} wait"
    );
}

#[test]
fn a_second_broker_on_the_same_port_is_refused_instead_of_sharing_it() {
    let work = tempfile::tempdir().unwrap();
    let first = Broker::start(&work.path().join("first"), &[]);
    let address = first.address.to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["serve", "--listen", &address, "--data-dir"])
        .arg(work.path().join("second"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {address}")),
        "{stderr}"
    );
    assert!(super::util::answers_api_versions(first.address));
}

/// The soft and hard limits on open files of process `pid`, from `/proc/<pid>/limits`.
fn open_files_limits(pid: u32) -> Option<(String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    Some((fields.next()?.to_owned(), fields.next()?.to_owned()))
}

#[test]
fn serve_raises_a_low_soft_open_files_limit_to_the_hard_one() {
    use std::os::unix::process::CommandExt;

    let data = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_spate"));
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--data-dir",
        ])
        .arg(data.path().join("data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only async-signal-safe calls (getrlimit, setrlimit) between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            limit.rlim_cur = 256;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            Ok(())
        });
    }
    let mut child = command.spawn().expect("spate starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let raised = loop {
        let limits = open_files_limits(child.id()).expect("the child's limits");
        if limits.0 != "256" || Instant::now() > deadline {
            break limits;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let hard_limit = raised.1.clone();
    let expected = if hard_limit == "unlimited" {
        "1048576".to_owned()
    } else {
        hard_limit
    };
    assert_eq!(raised.0, expected, "limits {raised:?}");
}
