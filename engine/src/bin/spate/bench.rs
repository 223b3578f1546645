//! `spate bench produce|consume`: a load generator on Spate's client library.
//!
//! Produce latency runs from when a record was *due* (its slot in the target rate's schedule)
//! to its acknowledgement, so a stall of the broker shows in the percentiles rather than
//! slowing the generator down (coordinated omission, as Gil Tene named it). Without a target
//! rate there is no schedule: latency then runs from the send call, and the output says so.
//! Consume latency is end to end, from each record's create timestamp, for records written
//! during the run (by a producer running beside it).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use spate_engine::client::admin::{Admin, NewTopic};
use spate_engine::client::config::{ConsumerConfig, ProducerConfig};
use spate_engine::client::consumer::{Consumer, StartAt};
use spate_engine::client::producer::{Producer, ProducerRecord};
use spate_engine::client::ClientError;
use spate_engine::rng::SplitMix64;

use crate::{parse_key_value, print_json, print_table, ClientArgs, Output};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Produce records as fast as possible or at a target rate; report throughput and
    /// acknowledgement latency.
    Produce(ProduceBenchArgs),
    /// Read a topic from the beginning of every partition; report throughput.
    Consume(ConsumeBenchArgs),
}

#[derive(Args)]
pub struct ProduceBenchArgs {
    /// Topic (created with --partitions when missing).
    #[arg(long)]
    topic: String,
    /// Run this long.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many records instead (whichever comes first).
    #[arg(long)]
    records: Option<u64>,
    /// Bytes of each record's value.
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    record_size: usize,
    /// Keys drawn uniformly from this many distinct keys (murmur2 places them); 0 for keyless
    /// records (sticky partitioning).
    #[arg(long, default_value_t = 0)]
    keys: u64,
    /// Partitions of the topic when it is created here.
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// acks: 0, 1 or all.
    #[arg(long, default_value = "1")]
    acks: String,
    /// compression.type: none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    compression: String,
    /// linger.ms.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// batch.size in bytes.
    #[arg(long, default_value_t = 1_000_000)]
    batch_size: usize,
    /// Target rate in records per second [default: as fast as the producer takes them].
    #[arg(long, value_name = "RECORDS_PER_SECOND")]
    rate: Option<f64>,
    /// Any other producer property by Kafka's name, repeatable.
    #[arg(long = "property", value_name = "NAME=VALUE", value_parser = parse_key_value)]
    properties: Vec<(String, String)>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
pub struct ConsumeBenchArgs {
    /// Topic.
    #[arg(long)]
    topic: String,
    /// Run at most this long.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many records (whichever comes first).
    #[arg(long)]
    records: Option<u64>,
    /// Any consumer property by Kafka's name, repeatable (fetch.max.bytes, ...).
    #[arg(long = "property", value_name = "NAME=VALUE", value_parser = parse_key_value)]
    properties: Vec<(String, String)>,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn bench(command: BenchCommand) -> Result<(), ClientError> {
    match command {
        BenchCommand::Produce(args) => produce(args),
        BenchCommand::Consume(args) => consume(args),
    }
}

/// Latencies from 1 µs to 10 minutes, 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Printable random bytes: compressible about as much as typical text payloads.
/// The bench needs spread, not secrecy, and the same run twice writes the same bytes: its keys
/// and payloads come from a seeded [`SplitMix64`].
fn payload(size: usize, random: &mut SplitMix64) -> Bytes {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ";
    let alphabet_len = u64::try_from(ALPHABET.len()).expect("small");
    (0..size)
        .map(|_| {
            let index = usize::try_from(random.below(alphabet_len)).expect("small");
            ALPHABET[index]
        })
        .collect::<Vec<u8>>()
        .into()
}

fn ensure_topic(client: &ClientArgs, topic: &str, partitions: i32) -> Result<(), ClientError> {
    let mut admin =
        Admin::from_properties([("bootstrap.servers", client.bootstrap_server.as_str())])?;
    let created = admin
        .create_topics(&[NewTopic {
            name: topic.to_owned(),
            partitions,
            replication_factor: -1,
            configs: BTreeMap::new(),
        }])?
        .remove(0);
    match created {
        Err(error) if error.is(kafka_protocol::error::ResponseError::TopicAlreadyExists) => Ok(()),
        other => other,
    }
}

/// A one-line progress display on a terminal, redrawn at most every 200 ms; silent when
/// standard error is not a terminal (a script or a test).
struct Progress {
    enabled: bool,
    started: Instant,
    total: Duration,
    last_drawn: Instant,
}

impl Progress {
    fn new(total: Duration) -> Progress {
        Progress {
            enabled: std::io::stderr().is_terminal(),
            started: Instant::now(),
            total,
            last_drawn: Instant::now(),
        }
    }

    fn update(&mut self, records: u64, bytes: u64) {
        if !self.enabled || self.last_drawn.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last_drawn = Instant::now();
        let elapsed = self.started.elapsed().as_secs_f64();
        let fraction = (elapsed / self.total.as_secs_f64().max(f64::EPSILON)).min(1.0);
        const WIDTH: usize = 30;
        // Rounded down, within 0..=WIDTH by the `min` above.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let filled = (fraction * WIDTH as f64) as usize;
        let rate = per_second(records, elapsed);
        eprint!(
            "\r[{}{}] {elapsed:5.1}/{:.0} s {rate:>10.0} records/s {:>8.1} MiB/s ",
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            self.total.as_secs_f64(),
            per_second(bytes, elapsed) / 1_048_576.0,
        );
        let _ = std::io::stderr().flush();
    }

    fn finish(&self) {
        if self.enabled {
            eprintln!();
        }
    }
}

// Counts far below 2^52 convert to f64 exactly enough for a rate.
#[allow(clippy::cast_precision_loss)]
fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// Milliseconds, from a histogram of microseconds.
// Microsecond latencies below 2^52 convert to f64 exactly.
#[allow(clippy::cast_precision_loss)]
fn quantile_ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

#[allow(clippy::cast_precision_loss)]
fn latency_json(histogram: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "count": histogram.len(),
        "p50": quantile_ms(histogram, 0.5),
        "p99": quantile_ms(histogram, 0.99),
        "p999": quantile_ms(histogram, 0.999),
        "max": histogram.max() as f64 / 1000.0,
    })
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

struct Tally {
    acknowledged: AtomicU64,
    failed: AtomicU64,
    latency_us: Mutex<Histogram<u64>>,
    first_error: Mutex<Option<String>>,
}

fn produce(args: ProduceBenchArgs) -> Result<(), ClientError> {
    if args.record_size == 0 {
        return Err(ClientError::InvalidState(
            "--record-size must be at least 1".into(),
        ));
    }
    if args
        .rate
        .is_some_and(|rate| !(rate > 0.0 && rate.is_finite()))
    {
        return Err(ClientError::InvalidState(
            "--rate must be a positive number".into(),
        ));
    }
    ensure_topic(&args.client, &args.topic, args.partitions)?;
    let mut properties = vec![
        (
            "bootstrap.servers".to_owned(),
            args.client.bootstrap_server.clone(),
        ),
        ("acks".to_owned(), args.acks.clone()),
        ("compression.type".to_owned(), args.compression.clone()),
        ("linger.ms".to_owned(), args.linger_ms.to_string()),
        ("batch.size".to_owned(), args.batch_size.to_string()),
    ];
    properties.extend(args.properties.iter().cloned());
    let producer = Producer::new(ProducerConfig::from_properties(properties)?)?;
    let mut random = SplitMix64::new(0x5EED);
    let value = payload(args.record_size, &mut random);
    let keys: Vec<Bytes> = (0..args.keys)
        .map(|index| Bytes::from(format!("key-{index}")))
        .collect();
    let tally = Arc::new(Tally {
        acknowledged: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        latency_us: Mutex::new(latency_histogram()),
        first_error: Mutex::new(None),
    });
    let stop = stop_on_signals()?;
    let duration = Duration::from_secs_f64(args.duration.max(0.0));
    let limit = args.records.unwrap_or(u64::MAX);
    let mut progress = Progress::new(duration);
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < limit && started.elapsed() < duration && !stop.load(Ordering::Relaxed) {
        let due = match args.rate {
            Some(rate) => {
                // Counts below 2^52: exact in f64.
                #[allow(clippy::cast_precision_loss)]
                let due = started + Duration::from_secs_f64(sent as f64 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                due
            }
            None => Instant::now(),
        };
        let key = if keys.is_empty() {
            None
        } else {
            let index = usize::try_from(random.below(args.keys)).expect("fewer keys than usize");
            Some(keys[index].clone())
        };
        let record = ProducerRecord {
            topic: args.topic.clone(),
            key,
            value: Some(value.clone()),
            ..ProducerRecord::default()
        };
        let tally_for_callback = Arc::clone(&tally);
        producer.send_with_callback(record, move |result| match result {
            Ok(_) => {
                tally_for_callback
                    .acknowledged
                    .fetch_add(1, Ordering::Relaxed);
                let latency = micros(due.elapsed());
                let mut histogram = tally_for_callback.latency_us.lock().expect("not poisoned");
                histogram.saturating_record(latency);
            }
            Err(error) => {
                tally_for_callback.failed.fetch_add(1, Ordering::Relaxed);
                tally_for_callback
                    .first_error
                    .lock()
                    .expect("not poisoned")
                    .get_or_insert_with(|| error.to_string());
            }
        })?;
        sent += 1;
        if sent % 1024 == 0 {
            let acknowledged = tally.acknowledged.load(Ordering::Relaxed);
            progress.update(acknowledged, acknowledged * args.record_size as u64);
        }
    }
    producer.flush();
    let seconds = started.elapsed().as_secs_f64();
    progress.finish();
    producer.close();

    let acknowledged = tally.acknowledged.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let bytes = acknowledged * args.record_size as u64;
    let histogram = tally.latency_us.lock().expect("not poisoned").clone();
    let latency_from = if args.rate.is_some() {
        "due time (corrected for coordinated omission)"
    } else {
        "send call (no target rate, so no schedule to correct against)"
    };
    let report = serde_json::json!({
        "mode": "produce",
        "topic": args.topic,
        "settings": {
            "record_size": args.record_size,
            "keys": args.keys,
            "acks": args.acks,
            "compression": args.compression,
            "linger_ms": args.linger_ms,
            "batch_size": args.batch_size,
            "target_rate": args.rate,
        },
        "records": acknowledged,
        "failed": failed,
        "bytes": bytes,
        "seconds": seconds,
        "records_per_second": per_second(acknowledged, seconds),
        "mib_per_second": per_second(bytes, seconds) / 1_048_576.0,
        "latency_ms": latency_json(&histogram),
        "latency_measured_from": latency_from,
    });
    match args.client.output {
        Output::Json => print_json(&report),
        Output::Table => {
            print_table(
                &[
                    "RECORDS",
                    "RECORDS/S",
                    "MIB/S",
                    "P50 MS",
                    "P99 MS",
                    "P99.9 MS",
                    "MAX MS",
                    "FAILED",
                ],
                vec![vec![
                    acknowledged.to_string(),
                    format!("{:.0}", per_second(acknowledged, seconds)),
                    format!("{:.1}", per_second(bytes, seconds) / 1_048_576.0),
                    format!("{:.3}", quantile_ms(&histogram, 0.5)),
                    format!("{:.3}", quantile_ms(&histogram, 0.99)),
                    format!("{:.3}", quantile_ms(&histogram, 0.999)),
                    format!("{:.3}", report["latency_ms"]["max"].as_f64().unwrap_or(0.0)),
                    failed.to_string(),
                ]],
            );
            println!("latency measured from each record's {latency_from}");
        }
    }
    if failed > 0 {
        let first = tally
            .first_error
            .lock()
            .expect("not poisoned")
            .clone()
            .unwrap_or_default();
        return Err(ClientError::Kafka {
            code: -1,
            name: "DELIVERY_FAILED".into(),
            message: Some(format!(
                "{failed} records were not delivered; the first: {first}"
            )),
        });
    }
    Ok(())
}

/// A flag set by SIGINT or SIGTERM, so that a run stopped early still reports.
fn stop_on_signals() -> Result<Arc<AtomicBool>, ClientError> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(|error| {
            ClientError::InvalidState(format!("installing signal handlers: {error}"))
        })?;
    }
    Ok(stop)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

fn consume(args: ConsumeBenchArgs) -> Result<(), ClientError> {
    let mut properties = vec![
        (
            "bootstrap.servers".to_owned(),
            args.client.bootstrap_server.clone(),
        ),
        ("max.poll.records".to_owned(), "10000".to_owned()),
    ];
    properties.extend(args.properties.iter().cloned());
    let mut consumer = Consumer::new(ConsumerConfig::from_properties(properties)?)?;
    let partitions: Vec<(String, i32)> = consumer
        .partitions_of(&args.topic)?
        .into_iter()
        .map(|partition| (args.topic.clone(), partition))
        .collect();
    consumer.assign(&partitions);
    for (topic, partition) in &partitions {
        consumer.seek(topic, *partition, StartAt::Beginning)?;
    }
    let stop = stop_on_signals()?;
    let duration = Duration::from_secs_f64(args.duration.max(0.0));
    let limit = args.records.unwrap_or(u64::MAX);
    let mut progress = Progress::new(duration);
    let mut latency_us = latency_histogram();
    let started = Instant::now();
    let started_ms = now_ms();
    let (mut records, mut bytes) = (0u64, 0u64);
    while records < limit && started.elapsed() < duration && !stop.load(Ordering::Relaxed) {
        let left = duration.saturating_sub(started.elapsed());
        let polled = consumer.poll(left.min(Duration::from_millis(500)))?;
        let now = now_ms();
        for record in &polled {
            records += 1;
            let size = record.key.as_ref().map_or(0, Bytes::len)
                + record.value.as_ref().map_or(0, Bytes::len);
            bytes += size as u64;
            if record.timestamp_ms >= started_ms {
                let latency = u64::try_from((now - record.timestamp_ms).max(0)).unwrap_or(0) * 1000;
                latency_us.saturating_record(latency.max(1));
            }
        }
        progress.update(records, bytes);
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.finish();
    let report = serde_json::json!({
        "mode": "consume",
        "topic": args.topic,
        "partitions": partitions.len(),
        "records": records,
        "bytes": bytes,
        "seconds": seconds,
        "records_per_second": per_second(records, seconds),
        "mib_per_second": per_second(bytes, seconds) / 1_048_576.0,
        "end_to_end_latency_ms": latency_json(&latency_us),
    });
    match args.client.output {
        Output::Json => print_json(&report),
        Output::Table => {
            print_table(
                &["RECORDS", "RECORDS/S", "MIB/S", "E2E P50 MS", "E2E P99 MS"],
                vec![vec![
                    records.to_string(),
                    format!("{:.0}", per_second(records, seconds)),
                    format!("{:.1}", per_second(bytes, seconds) / 1_048_576.0),
                    if latency_us.is_empty() {
                        "-".into()
                    } else {
                        format!("{:.1}", quantile_ms(&latency_us, 0.5))
                    },
                    if latency_us.is_empty() {
                        "-".into()
                    } else {
                        format!("{:.1}", quantile_ms(&latency_us, 0.99))
                    },
                ]],
            );
            if latency_us.is_empty() {
                println!("no record was written during the run, so no end-to-end latency");
            }
        }
    }
    Ok(())
}
