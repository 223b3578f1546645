//! A `spate serve` child process and a minimal Kafka connection for the broker tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};

use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    metadata_request, ApiKey, MetadataRequest, MetadataResponse, RequestHeader, RequestKind,
    ResponseHeader, ResponseKind, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// A free port on localhost, distinct from every other this process asked for, below Linux's
/// ephemeral range (32768..): a port-0 bind or an outgoing connection of a test running beside
/// this one takes its port from that range, so it cannot take this one before the broker binds
/// it. (CI once lost a controller's quorum port to exactly that.)
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() % COUNT;
    loop {
        let attempt = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(
            attempt < COUNT,
            "no free port left below the ephemeral range"
        );
        let port = (FIRST + (start + attempt) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A broker process.
pub struct Broker {
    pub child: Option<Child>,
    pub address: SocketAddr,
    pub log_path: PathBuf,
}

impl Broker {
    /// Starts `spate serve` on a port the kernel picks with `data_dir` and waits until it
    /// accepts. (The broker binds port 0 itself: a port found free here could be taken by a
    /// test running beside this one before the broker binds it.)
    pub fn start(data_dir: &Path, extra: &[&str]) -> Broker {
        Broker::start_at(data_dir, "127.0.0.1:0".parse().unwrap(), extra)
    }

    /// Starts `spate serve` on `address` (a restart on the same port, say; port 0 for any).
    pub fn start_at(data_dir: &Path, address: SocketAddr, extra: &[&str]) -> Broker {
        let log_path = data_dir.with_extension("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let log_start = log.metadata().unwrap().len() as usize;
        let child = Command::new(env!("CARGO_BIN_EXE_spate"))
            .args(["serve", "--listen", &address.to_string(), "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .args(if extra.contains(&"--cores") {
                &[][..]
            } else {
                &["--cores", "2"][..]
            })
            .env(
                "RUST_LOG",
                // The ready line names the address: keep it whatever the filter.
                format!(
                    "{},spate_engine::runtime::server=info",
                    std::env::var("SPATE_TEST_RUST_LOG").unwrap_or_else(|_| "info".into())
                ),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spate starts");
        let mut broker = Broker {
            child: Some(child),
            address,
            log_path,
        };
        broker.address = broker.wait_until_ready(log_start);
        broker
    }

    /// Waits for this run's "ready" log line and returns the address it names.
    fn wait_until_ready(&mut self, log_start: usize) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("spate exited with {status}: {}", self.log());
            }
            let log = self.log();
            let ready = log
                .get(log_start..)
                .unwrap_or_default()
                .lines()
                .filter(|line| line.contains("Spate broker ready"))
                .find_map(|line| line.split("listen=").nth(1)?.split_whitespace().next());
            if let Some(address) = ready {
                let address: SocketAddr = address.parse().expect("a socket address");
                assert!(
                    self.address.port() == 0 || address == self.address,
                    "asked for {}, listening on {address}",
                    self.address
                );
                return address;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("spate did not start listening: {}", self.log());
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().unwrap().is_none())
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill with a pid we own.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "spate did not stop: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A new connection.
    pub fn connect(&self) -> Connection {
        Connection::open(self.address)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A blocking Kafka connection.
pub struct Connection {
    pub stream: TcpStream,
    correlation_id: i32,
}

impl Connection {
    pub fn open(address: SocketAddr) -> Connection {
        let stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Connection {
            stream,
            correlation_id: 0,
        }
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends a request frame built from `body`.
    pub fn send(&mut self, api_key: ApiKey, version: i16, body: &RequestKind) -> i32 {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("spate-tests")));
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&[0; 4]);
        header
            .encode(&mut frame, api_key.request_header_version(version))
            .unwrap();
        body.encode(&mut frame, version).unwrap();
        let size = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        self.send_raw(&frame).unwrap();
        self.correlation_id
    }

    /// Reads one response frame, or `None` when the broker closed the connection.
    pub fn receive_frame(&mut self) -> Option<Bytes> {
        let mut size = [0; 4];
        if self.stream.read_exact(&mut size).is_err() {
            return None;
        }
        let mut frame = vec![0; u32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut frame).ok()?;
        Some(Bytes::from(frame))
    }

    /// Sends a request and decodes its response.
    pub fn call(&mut self, api_key: ApiKey, version: i16, body: RequestKind) -> ResponseKind {
        let correlation_id = self.send(api_key, version, &body);
        let mut frame = self
            .receive_frame()
            .unwrap_or_else(|| panic!("{api_key:?} v{version}: connection closed"));
        let header =
            ResponseHeader::decode(&mut frame, api_key.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, correlation_id);
        let response = ResponseKind::decode(api_key, &mut frame, version)
            .unwrap_or_else(|error| panic!("{api_key:?} v{version} response: {error}"));
        assert!(
            frame.is_empty(),
            "{api_key:?} v{version}: {} bytes left over",
            frame.len()
        );
        response
    }

    /// Metadata v12 for one topic, allowing automatic creation (as producers ask).
    pub fn metadata_auto_create(&mut self, topic: &str) -> MetadataResponse {
        let request = MetadataRequest::default()
            .with_allow_auto_topic_creation(true)
            .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
            )
            .with_name(Some(TopicName(StrBytes::from_string(topic.to_owned()))))]));
        match self.call(ApiKey::Metadata, 12, RequestKind::Metadata(request)) {
            ResponseKind::Metadata(response) => response,
            other => panic!("metadata answered {other:?}"),
        }
    }

    /// Whether the broker closed the connection (reads until EOF or timeout).
    pub fn closed_by_broker(&mut self) -> bool {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buffer = [0; 1024];
        loop {
            match self.stream.read(&mut buffer) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// Whether the broker answers ApiVersions on a new connection.
pub fn answers_api_versions(address: SocketAddr) -> bool {
    let mut connection = Connection::open(address);
    matches!(
        connection.call(
            ApiKey::ApiVersions,
            3,
            RequestKind::ApiVersions(Default::default())
        ),
        ResponseKind::ApiVersions(response) if response.error_code == 0
    )
}
