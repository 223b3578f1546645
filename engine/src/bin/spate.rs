//! The `spate` command line.

use std::io::{self, BufRead};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use spate_engine::broker::config::ServeSettings;
use spate_engine::runtime;
use spate_engine::runtime::alloc::LazyLargeAllocations;
use spate_engine::storage::backend::{DmaStorage, StdStorage};
use spate_engine::storage::batch::build::{batch, NewRecord};
use spate_engine::storage::dump::dump_partition;
use spate_engine::storage::{LogConfig, PartitionLog};

#[derive(Parser)]
#[command(
    name = "spate",
    version,
    about = "Spate: a Kafka-protocol event streaming platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker. With no arguments: a single-node broker on 127.0.0.1:9092 with its data in
    /// ./spate-data, one executor per core. Stop it with Ctrl-C or SIGTERM: it finishes the
    /// requests in flight, syncs every partition and exits 0.
    Serve(Box<ServeArgs>),
    /// Work with a partition directory directly (no broker).
    #[command(subcommand)]
    Log(LogCommand),
}

#[derive(Subcommand)]
enum LogCommand {
    /// Print every batch of every segment with its CRC status, and check the indexes
    /// (like Kafka's DumpLogSegments). Read-only.
    Dump {
        /// The partition directory.
        dir: PathBuf,
    },
    /// Append records to a partition directory through the glommio DMA backend: one record per
    /// line of standard input, or generated ones with --generate.
    Append(AppendArgs),
    /// Print records of a partition directory, one value per line. Like append, it recovers
    /// the directory first (cutting a torn tail), as the broker will.
    Read {
        /// The partition directory.
        dir: PathBuf,
        /// First offset to print.
        #[arg(long, default_value_t = 0)]
        from_offset: i64,
        /// Most records to print.
        #[arg(long, default_value_t = 100)]
        max_records: usize,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// A TOML file with any of the settings below (same names, with underscores; topic
    /// defaults in a [topic_defaults] table). Flags win over the file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: ServeSettings,
}

#[derive(Args)]
struct AppendArgs {
    /// The partition directory (created if missing).
    dir: PathBuf,
    /// Generate this many records instead of reading standard input.
    #[arg(long)]
    generate: Option<u64>,
    /// Size of each generated record value.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 64)]
    batch_records: usize,
    /// Segment size in bytes (segment.bytes).
    #[arg(long, default_value_t = 1 << 30)]
    segment_bytes: u32,
    /// Sync after every append instead of only at the end.
    #[arg(long)]
    sync_every_append: bool,
}

/// Keeps a hostile length prefix in a request from aborting the broker; see the module docs.
#[global_allocator]
static ALLOCATOR: LazyLargeAllocations = LazyLargeAllocations;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Log(LogCommand::Dump { dir }) => dump(dir),
        Command::Log(LogCommand::Append(args)) => append(args),
        Command::Log(LogCommand::Read {
            dir,
            from_offset,
            max_records,
        }) => read(dir, from_offset, max_records),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("spate: {error}");
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<ExitCode, Box<dyn std::error::Error + Send + Sync>>;

fn serve(args: ServeArgs) -> CliResult {
    let file = match &args.config {
        Some(path) => ServeSettings::from_file(path)?,
        None => ServeSettings::default(),
    };
    let config = args.settings.over(file).resolve()?;
    runtime::serve(config)?;
    Ok(ExitCode::SUCCESS)
}

fn dump(dir: PathBuf) -> CliResult {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()).into());
    }
    let dump = futures_lite::future::block_on(dump_partition(&StdStorage, &dir))?;
    println!("{dump}");
    Ok(if dump.is_healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn append(args: AppendArgs) -> CliResult {
    let config = LogConfig {
        segment_bytes: args.segment_bytes,
        flush_messages: if args.sync_every_append { 1 } else { u64::MAX },
        ..LogConfig::default()
    };
    let batch_records = args.batch_records.max(1);
    runtime::run_local(move || async move {
        let (mut log, report) =
            PartitionLog::open(DmaStorage, &args.dir, config, runtime::now_ms()).await?;
        if !report.truncations.is_empty() {
            eprintln!("recovery cut {} torn tail(s)", report.truncations.len());
        }
        let started = Instant::now();
        let mut records = Vec::with_capacity(batch_records);
        let mut appended = 0u64;
        let mut bytes = 0u64;
        let mut first_offset = None;
        let mut lines = io::stdin().lock().lines();
        let value = Bytes::from(vec![b'x'; args.record_bytes]);
        loop {
            let next = match args.generate {
                Some(count) if appended + (records.len() as u64) < count => Some(value.clone()),
                Some(_) => None,
                None => lines.next().transpose()?.map(Bytes::from),
            };
            let done = next.is_none();
            if let Some(value) = next {
                records.push(NewRecord::value(value, runtime::now_ms()));
            }
            if records.len() == batch_records || (done && !records.is_empty()) {
                let encoded = batch(&records);
                bytes += encoded.len() as u64;
                let now_ms = runtime::now_ms();
                let info = log.append(encoded, 0, now_ms).await?;
                if info.sync_due {
                    log.flush(now_ms).await?;
                }
                first_offset.get_or_insert(info.base_offset);
                appended += records.len() as u64;
                records.clear();
            }
            if done {
                break;
            }
        }
        log.flush(runtime::now_ms()).await?;
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "appended {appended} records ({bytes} bytes) at offsets {}..{} in {elapsed:.3} s \
             ({:.1} MiB/s); log now holds offsets {}..{} in {} segment(s)",
            first_offset.unwrap_or(log.log_end_offset()),
            log.log_end_offset(),
            bytes as f64 / elapsed.max(1e-9) / (1 << 20) as f64,
            log.log_start_offset(),
            log.log_end_offset(),
            log.segment_count(),
        );
        log.close(runtime::now_ms()).await?;
        Ok(ExitCode::SUCCESS)
    })?
}

fn read(dir: PathBuf, from_offset: i64, max_records: usize) -> CliResult {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()).into());
    }
    futures_lite::future::block_on(async move {
        let (mut log, _) =
            PartitionLog::open(StdStorage, &dir, LogConfig::default(), runtime::now_ms()).await?;
        let mut offset = from_offset.max(log.log_start_offset());
        let mut printed = 0;
        while printed < max_records && offset < log.log_end_offset() {
            let fetched = log.read(offset, 1 << 20, None).await?;
            let bytes = fetched.to_bytes();
            let mut buffer = bytes.clone();
            let record_sets = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut buffer)
                .map_err(|error| format!("decoding batches: {error}"))?;
            for record in record_sets.iter().flat_map(|set| &set.records) {
                if record.offset < offset || printed >= max_records {
                    continue;
                }
                let value = record.value.as_deref().unwrap_or_default();
                println!("{}\t{}", record.offset, String::from_utf8_lossy(value));
                printed += 1;
                offset = record.offset + 1;
            }
        }
        log.close(runtime::now_ms()).await?;
        Ok(ExitCode::SUCCESS)
    })
}
