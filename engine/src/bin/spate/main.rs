//! The `spate` command line.

mod bench;

use std::io::{self, BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use spate_engine::broker::config::ServeSettings;
use spate_engine::broker::quotas::{EntityName, QuotaEntity};
use spate_engine::client::admin::{Admin, NewTopic};
use spate_engine::client::config::{ConfigError, ConsumerConfig, ProducerConfig};
use spate_engine::client::consumer::{Consumer, ConsumerRecord, StartAt};
use spate_engine::client::producer::{Producer, ProducerRecord};
use spate_engine::client::ClientError;
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
    /// Create, list, describe and delete topics on a running broker.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Describe the cluster of a running broker.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Produce standard input's lines to a topic, one record per line.
    Produce(ProduceArgs),
    /// Print a topic's records: every partition (or the one given), or with --group the
    /// partitions the group gives this consumer, committing what was printed.
    Consume(ConsumeArgs),
    /// List, describe (members, assignments, lag), reset the offsets of, and delete consumer
    /// groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Load generators: produce or consume, with throughput and latency percentiles.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Set, remove and list client quotas (produce and fetch byte rates per client id or
    /// user, or their defaults), as Kafka's kafka-configs.sh --entity-type clients does.
    #[command(subcommand)]
    Quota(QuotaCommand),
}

#[derive(Subcommand)]
enum QuotaCommand {
    /// Set quota values of a client id, a user, or both (values in bytes per second).
    Set {
        #[command(flatten)]
        entity: QuotaEntityArgs,
        /// Bytes per second the entity may produce (producer_byte_rate).
        #[arg(long, value_name = "BYTES")]
        producer_byte_rate: Option<f64>,
        /// Bytes per second the entity may fetch (consumer_byte_rate).
        #[arg(long, value_name = "BYTES")]
        consumer_byte_rate: Option<f64>,
        /// Percent of one core the broker may spend on the entity's requests
        /// (request_percentage).
        #[arg(long, value_name = "PERCENT")]
        request_percentage: Option<f64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove quota values of an entity (all of them unless some are named).
    Remove {
        #[command(flatten)]
        entity: QuotaEntityArgs,
        /// The values to remove: producer_byte_rate, consumer_byte_rate, request_percentage.
        #[arg(long = "key", value_name = "KEY")]
        keys: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List every quota.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
struct QuotaEntityArgs {
    /// The client id (Kafka's client.id) the quota is for.
    #[arg(long, value_name = "ID")]
    client_id: Option<String>,
    /// The quota is the default for every client id without its own.
    #[arg(long, conflicts_with = "client_id")]
    client_id_default: bool,
    /// The user the quota is for (without authentication, every client is ANONYMOUS).
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// The quota is the default for every user without its own.
    #[arg(long, conflicts_with = "user")]
    user_default: bool,
}

impl QuotaEntityArgs {
    fn entity(&self) -> Result<QuotaEntity, ClientError> {
        let name = |named: &Option<String>, default: bool| match (named, default) {
            (Some(name), _) => Some(EntityName::Named(name.clone())),
            (None, true) => Some(EntityName::Default),
            (None, false) => None,
        };
        let entity = QuotaEntity {
            user: name(&self.user, self.user_default),
            client_id: name(&self.client_id, self.client_id_default),
        };
        if entity.user.is_none() && entity.client_id.is_none() {
            return Err(ClientError::Config(ConfigError::Invalid {
                name: "quota entity".into(),
                value: String::new(),
                reason: "name a client id, a user or a default (--client-id, --user, \
                         --client-id-default, --user-default)"
                    .into(),
            }));
        }
        Ok(entity)
    }
}

#[derive(Subcommand)]
enum GroupCommand {
    /// List groups with their state.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A group's state, members with their partitions, and committed offsets with lag.
    Describe {
        /// Group id.
        group: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a group without members, and its committed offsets.
    Delete {
        /// Group id.
        group: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Move a group's committed offsets for a topic (the group must have no members). Shows
    /// the plan; --execute applies it.
    ResetOffsets(ResetOffsetsArgs),
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("to").required(true).args(
    ["to_earliest", "to_latest", "to_offset", "to_timestamp", "shift_by"]
)))]
struct ResetOffsetsArgs {
    /// Group id.
    group: String,
    /// Topic whose offsets move.
    #[arg(long)]
    topic: String,
    /// Only this partition, repeatable [default: every partition].
    #[arg(long = "partition")]
    partitions: Vec<i32>,
    /// To the first record of each partition.
    #[arg(long)]
    to_earliest: bool,
    /// To the end of each partition (skip everything not yet read).
    #[arg(long)]
    to_latest: bool,
    /// To this offset (clamped to each partition's log start and end).
    #[arg(long)]
    to_offset: Option<i64>,
    /// To the first record at or after this time, in ms since the epoch.
    #[arg(long)]
    to_timestamp: Option<i64>,
    /// Move the committed offsets by this many records (negative: back).
    #[arg(long, allow_hyphen_values = true)]
    shift_by: Option<i64>,
    /// Apply the plan; without it only the plan is shown (a dry run).
    #[arg(long)]
    execute: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
struct ConsumeArgs {
    /// Topic.
    topic: String,
    /// Read only this partition [default: all].
    #[arg(long, conflicts_with = "group")]
    partition: Option<i32>,
    /// Start at the first record of each partition [default: only new records]; with
    /// --group, of each partition without a committed offset.
    #[arg(long, conflicts_with_all = ["offset", "timestamp"])]
    from_beginning: bool,
    /// Start at this offset (of each partition read).
    #[arg(long, conflicts_with_all = ["timestamp", "group"])]
    offset: Option<i64>,
    /// Start at the first record at or after this time, in ms since the epoch.
    #[arg(long, conflicts_with = "group")]
    timestamp: Option<i64>,
    /// Stop after this many records.
    #[arg(long)]
    max_messages: Option<u64>,
    /// Stop when every partition has been read to its end (kcat's -e).
    #[arg(long)]
    exit_at_end: bool,
    /// Read as a member of this consumer group: partitions are shared with the group's other
    /// members, reading starts at the group's committed offsets, and what is printed is
    /// committed (every auto.commit.interval.ms, and on exit).
    #[arg(long)]
    group: Option<String>,
    /// Output per record, as kcat's -f: %t topic, %p partition, %o offset, %T timestamp,
    /// %k key, %s value, %h headers, \n and \t.
    #[arg(long, default_value = "%s\\n")]
    format: String,
    /// A consumer property by Kafka's name, repeatable.
    #[arg(long = "property", value_name = "NAME=VALUE", value_parser = parse_key_value)]
    properties: Vec<(String, String)>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
struct ProduceArgs {
    /// Topic (created if the broker creates topics on first use).
    topic: String,
    /// Split each line at the first SEP into key and value (lines without it have no key).
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// A header on every record, repeatable: --header source=cli
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_key_value)]
    headers: Vec<(String, String)>,
    /// Send every record to this partition [default: by key (murmur2, as the Java client), sticky for keyless records].
    #[arg(long)]
    partition: Option<i32>,
    /// At most this many records per second [default: as fast as possible].
    #[arg(long, value_name = "RECORDS_PER_SECOND")]
    rate: Option<f64>,
    /// A producer property by Kafka's name, repeatable: --property acks=1 --property compression.type=zstd
    #[arg(long = "property", value_name = "NAME=VALUE", value_parser = parse_key_value)]
    properties: Vec<(String, String)>,
    #[command(flatten)]
    client: ClientArgs,
}

/// How a client command prints its results.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    /// Human-readable tables.
    Table,
    /// JSON, for scripts.
    Json,
}

#[derive(Args)]
struct ClientArgs {
    /// A broker to start from (Kafka's bootstrap.servers; several separated by commas).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9092")]
    bootstrap_server: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Partitions [default: the broker's num.partitions].
        #[arg(long)]
        partitions: Option<i32>,
        /// Replication factor [default: the broker's].
        #[arg(long)]
        replication_factor: Option<i16>,
        /// A topic config, repeatable: --config retention.ms=3600000
        #[arg(long = "config", value_name = "NAME=VALUE", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List topics.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a topic's partitions, leaders and replicas.
    Describe {
        /// Topic name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a topic's configs or grow its partitions.
    Alter {
        /// Topic name.
        name: String,
        /// Grow the topic to this many partitions (keys of existing records keep their place;
        /// new records of a key may land elsewhere).
        #[arg(long)]
        partitions: Option<i32>,
        /// Set a config, repeatable: --config retention.ms=86400000
        #[arg(long = "config", value_name = "NAME=VALUE", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
        /// Remove a config override (back to the broker's default), repeatable.
        #[arg(long = "delete-config", value_name = "NAME")]
        delete_configs: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a topic and its data.
    Delete {
        /// Topic name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete the records before an offset (Kafka's kafka-delete-records): the partition's log
    /// start moves up to it.
    DeleteRecords {
        /// Topic name.
        name: String,
        /// Delete the records before this offset; -1 for every record up to the high watermark.
        #[arg(long, allow_hyphen_values = true)]
        before: i64,
        /// Only this partition, repeatable [default: every partition].
        #[arg(long = "partition")]
        partitions: Vec<i32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Move a partition's replicas onto other brokers (Kafka's kafka-reassign-partitions): the
    /// new ones catch up, then the old ones are dropped. In a cluster only.
    Reassign {
        /// Topic name.
        name: String,
        /// The partition.
        #[arg(long)]
        partition: i32,
        /// The broker ids to hold it, preferred leader first: --replicas 2,3,4
        #[arg(long, value_delimiter = ',', required_unless_present = "cancel")]
        replicas: Vec<i32>,
        /// Cancel the move in progress instead (back to the replicas before it).
        #[arg(long, conflicts_with = "replicas")]
        cancel: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the partition moves in progress.
    Reassignments {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// The cluster id, the controller and the brokers.
    Info {
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {text:?}"))?;
    Ok((name.trim().to_owned(), value.trim().to_owned()))
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
        // Colours for a terminal only: a log file gets plain text.
        .with_ansi(io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_) | Command::Consume(_)) {
        // A command piped into `head` stops quietly when the reader goes, as Unix tools do,
        // instead of panicking in println!. Sockets are unaffected (std sends with
        // MSG_NOSIGNAL). The broker keeps Rust's default of ignoring SIGPIPE, and so does
        // `spate consume`, which handles a closed pipe itself (it commits what it printed and
        // leaves its group).
        // SAFETY: setting a signal's disposition to the default before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Log(LogCommand::Dump { dir }) => dump(dir),
        Command::Log(LogCommand::Append(args)) => append(args),
        Command::Log(LogCommand::Read {
            dir,
            from_offset,
            max_records,
        }) => read(dir, from_offset, max_records),
        Command::Topic(command) => return client_command(topic(command)),
        Command::Produce(args) => return client_command(produce(args)),
        Command::Consume(args) => return client_command(consume(args)),
        Command::Group(command) => return client_command(group(command)),
        Command::Bench(command) => return client_command(bench::bench(command)),
        Command::Cluster(ClusterCommand::Info { client }) => {
            return client_command(cluster_info(client))
        }
        Command::Quota(command) => return client_command(quota(command)),
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

/// Exit codes of the commands that talk to a broker, for scripts: 0 done, 1 anything else
/// (bad arguments, a protocol error), 3 the broker refused (a Kafka error, printed by name),
/// 4 no broker could be reached.
const EXIT_REFUSED: u8 = 3;
const EXIT_UNREACHABLE: u8 = 4;

fn client_command(result: Result<(), ClientError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("spate: {error}");
            match error {
                ClientError::Kafka { .. } => ExitCode::from(EXIT_REFUSED),
                ClientError::Connect { .. } | ClientError::Io { .. } => {
                    ExitCode::from(EXIT_UNREACHABLE)
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn admin(client: &ClientArgs) -> Result<Admin, ClientError> {
    Admin::from_properties([("bootstrap.servers", client.bootstrap_server.as_str())])
}

fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("plain data serializes")
    );
}

fn topic(command: TopicCommand) -> Result<(), ClientError> {
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
            client,
        } => {
            let topic = NewTopic {
                name: name.clone(),
                partitions: partitions.unwrap_or(-1),
                replication_factor: replication_factor.unwrap_or(-1),
                configs: configs.into_iter().collect(),
            };
            let mut admin = admin(&client)?;
            admin.create_topics(&[topic])?.remove(0)?;
            match client.output {
                Output::Json => print_json(&serde_json::json!({ "created": name })),
                Output::Table => println!("created topic {name}"),
            }
        }
        TopicCommand::List { client } => {
            let topics = admin(&client)?.describe_topics(None)?;
            match client.output {
                Output::Json => print_json(&topics),
                Output::Table => {
                    let rows = topics
                        .iter()
                        .map(|topic| {
                            vec![
                                topic.name.clone(),
                                topic.partitions.len().to_string(),
                                topic.id.to_string(),
                                if topic.internal { "yes" } else { "" }.to_owned(),
                            ]
                        })
                        .collect();
                    print_table(&["TOPIC", "PARTITIONS", "ID", "INTERNAL"], rows);
                }
            }
        }
        TopicCommand::Describe { name, client } => {
            let topics = admin(&client)?.describe_topics(Some(std::slice::from_ref(&name)))?;
            match client.output {
                Output::Json => print_json(&topics[0]),
                Output::Table => {
                    let topic = &topics[0];
                    println!(
                        "topic {} (id {}), {} partitions",
                        topic.name,
                        topic.id,
                        topic.partitions.len()
                    );
                    let list = |ids: &[i32]| {
                        ids.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    let rows = topic
                        .partitions
                        .iter()
                        .map(|partition| {
                            vec![
                                partition.partition.to_string(),
                                partition.leader.to_string(),
                                list(&partition.replicas),
                                list(&partition.isr),
                            ]
                        })
                        .collect();
                    print_table(&["PARTITION", "LEADER", "REPLICAS", "ISR"], rows);
                }
            }
        }
        TopicCommand::Alter {
            name,
            partitions,
            configs,
            delete_configs,
            client,
        } => {
            if partitions.is_none() && configs.is_empty() && delete_configs.is_empty() {
                return Err(ClientError::InvalidState(
                    "nothing to change: give --partitions, --config or --delete-config".into(),
                ));
            }
            let mut admin = admin(&client)?;
            if !configs.is_empty() || !delete_configs.is_empty() {
                admin.alter_topic_configs(&name, &configs, &delete_configs)?;
            }
            if let Some(partitions) = partitions {
                admin.create_partitions(&name, partitions)?;
            }
            match client.output {
                Output::Json => print_json(&serde_json::json!({ "altered": name })),
                Output::Table => println!("altered topic {name}"),
            }
        }
        TopicCommand::DeleteRecords {
            name,
            before,
            partitions,
            client,
        } => {
            let mut admin = admin(&client)?;
            let partitions = if partitions.is_empty() {
                admin
                    .describe_topics(Some(std::slice::from_ref(&name)))?
                    .into_iter()
                    .flat_map(|topic| topic.partitions.into_iter().map(|p| p.partition))
                    .collect()
            } else {
                partitions
            };
            let wanted = partitions
                .iter()
                .map(|partition| ((name.clone(), *partition), before))
                .collect();
            let mut rows = Vec::new();
            for ((topic, partition), result) in admin.delete_records(&wanted)? {
                rows.push((topic, partition, result?));
            }
            match client.output {
                Output::Json => print_json(
                    &rows
                        .iter()
                        .map(|(topic, partition, start)| {
                            serde_json::json!({"topic": topic, "partition": partition, "log_start_offset": start})
                        })
                        .collect::<Vec<_>>(),
                ),
                Output::Table => print_table(
                    &["TOPIC", "PARTITION", "LOG-START-OFFSET"],
                    rows.iter()
                        .map(|(topic, partition, start)| {
                            vec![topic.clone(), partition.to_string(), start.to_string()]
                        })
                        .collect(),
                ),
            }
        }
        TopicCommand::Reassign {
            name,
            partition,
            replicas,
            cancel,
            client,
        } => {
            let target = (!cancel).then_some(replicas.as_slice());
            admin(&client)?.alter_partition_reassignment(&name, partition, target)?;
            let what = if cancel { "cancelled" } else { "started" };
            match client.output {
                Output::Json => print_json(&serde_json::json!({
                    "topic": name, "partition": partition, "reassignment": what,
                })),
                Output::Table => println!("reassignment of {name}-{partition} {what}"),
            }
        }
        TopicCommand::Reassignments { client } => {
            let moves = admin(&client)?.list_partition_reassignments()?;
            match client.output {
                Output::Json => print_json(&moves),
                Output::Table => {
                    let list = |ids: &[i32]| {
                        ids.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    let rows = moves
                        .iter()
                        .map(|moving| {
                            vec![
                                moving.topic.clone(),
                                moving.partition.to_string(),
                                list(&moving.replicas),
                                list(&moving.adding),
                                list(&moving.removing),
                            ]
                        })
                        .collect();
                    print_table(
                        &["TOPIC", "PARTITION", "REPLICAS", "ADDING", "REMOVING"],
                        rows,
                    );
                }
            }
        }
        TopicCommand::Delete { name, client } => {
            admin(&client)?
                .delete_topics(std::slice::from_ref(&name))?
                .remove(0)?;
            match client.output {
                Output::Json => print_json(&serde_json::json!({ "deleted": name })),
                Output::Table => println!("deleted topic {name}"),
            }
        }
    }
    Ok(())
}

fn quota(command: QuotaCommand) -> Result<(), ClientError> {
    match command {
        QuotaCommand::Set {
            entity,
            producer_byte_rate,
            consumer_byte_rate,
            request_percentage,
            client,
        } => {
            let changes: Vec<(String, Option<f64>)> = [
                ("producer_byte_rate", producer_byte_rate),
                ("consumer_byte_rate", consumer_byte_rate),
                ("request_percentage", request_percentage),
            ]
            .into_iter()
            .filter_map(|(key, value)| value.map(|value| (key.to_owned(), Some(value))))
            .collect();
            if changes.is_empty() {
                return Err(ClientError::Config(ConfigError::Invalid {
                    name: "quota".into(),
                    value: String::new(),
                    reason: "give --producer-byte-rate, --consumer-byte-rate or \
                             --request-percentage"
                        .into(),
                }));
            }
            admin(&client)?.alter_client_quota(&entity.entity()?, &changes)
        }
        QuotaCommand::Remove {
            entity,
            keys,
            client,
        } => {
            let keys = if keys.is_empty() {
                vec![
                    "producer_byte_rate".to_owned(),
                    "consumer_byte_rate".to_owned(),
                ]
            } else {
                keys
            };
            let changes: Vec<_> = keys.into_iter().map(|key| (key, None)).collect();
            admin(&client)?.alter_client_quota(&entity.entity()?, &changes)
        }
        QuotaCommand::List { client } => {
            let quotas = admin(&client)?.describe_client_quotas()?;
            let describe = |name: &Option<EntityName>| match name {
                None => String::new(),
                Some(EntityName::Default) => "<default>".to_owned(),
                Some(EntityName::Named(name)) => name.clone(),
            };
            match client.output {
                Output::Json => {
                    let json: Vec<_> = quotas
                        .iter()
                        .map(|(entity, values)| {
                            serde_json::json!({
                                "user": entity.user.as_ref().map(|_| describe(&entity.user)),
                                "client_id": entity.client_id.as_ref().map(|_| describe(&entity.client_id)),
                                "values": values,
                            })
                        })
                        .collect();
                    print_json(&json);
                }
                Output::Table => {
                    let rows = quotas
                        .iter()
                        .flat_map(|(entity, values)| {
                            values.iter().map(move |(key, value)| {
                                vec![
                                    describe(&entity.user),
                                    describe(&entity.client_id),
                                    key.clone(),
                                    value.to_string(),
                                ]
                            })
                        })
                        .collect();
                    print_table(&["USER", "CLIENT-ID", "QUOTA", "VALUE"], rows);
                }
            }
            Ok(())
        }
    }
}

fn cluster_info(client: ClientArgs) -> Result<(), ClientError> {
    let cluster = admin(&client)?.describe_cluster()?;
    match client.output {
        Output::Json => print_json(&cluster),
        Output::Table => {
            println!(
                "cluster {}, controller {}",
                cluster.cluster_id.as_deref().unwrap_or("(none)"),
                cluster.controller_id
            );
            let rows = cluster
                .brokers
                .iter()
                .map(|broker| {
                    vec![
                        broker.id.to_string(),
                        format!("{}:{}", broker.host, broker.port),
                        broker.rack.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(&["BROKER", "ADDRESS", "RACK"], rows);
        }
    }
    Ok(())
}

/// Prints left-aligned columns, as wide as their widest cell.
fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|header| header.to_string()).collect());
    for row in rows {
        line(row);
    }
}

fn produce(args: ProduceArgs) -> Result<(), ClientError> {
    let mut properties = vec![(
        "bootstrap.servers".to_owned(),
        args.client.bootstrap_server.clone(),
    )];
    properties.extend(args.properties);
    let config = ProducerConfig::from_properties(properties)?;
    let producer = Producer::new(config)?;
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let first_error = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let headers: Vec<(String, Option<Bytes>)> = args
        .headers
        .into_iter()
        .map(|(name, value)| (name, Some(Bytes::from(value))))
        .collect();
    let started = Instant::now();
    let mut sent = 0u64;
    for line in io::stdin().lock().lines() {
        let line = line
            .map_err(|error| ClientError::Protocol(format!("reading standard input: {error}")))?;
        let (key, value) = match args
            .key_separator
            .as_deref()
            .and_then(|sep| line.split_once(sep))
        {
            Some((key, value)) => (Some(Bytes::from(key.to_owned())), value.to_owned()),
            None => (None, line),
        };
        if let Some(rate) = args.rate.filter(|rate| *rate > 0.0) {
            let due = started + std::time::Duration::from_secs_f64(sent as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let record = ProducerRecord {
            topic: args.topic.clone(),
            partition: args.partition,
            key,
            value: Some(Bytes::from(value)),
            headers: headers.clone(),
            timestamp_ms: None,
        };
        let (failed, first_error) = (
            std::sync::Arc::clone(&failed),
            std::sync::Arc::clone(&first_error),
        );
        producer.send_with_callback(record, move |result| {
            if let Err(error) = result {
                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                first_error
                    .lock()
                    .expect("not poisoned")
                    .get_or_insert(error.message);
            }
        })?;
        sent += 1;
    }
    producer.close();
    let failed = failed.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "produced {} of {sent} records to {} in {:.2} s",
        sent - failed,
        args.topic,
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        let error = first_error
            .lock()
            .expect("not poisoned")
            .take()
            .unwrap_or_default();
        return Err(ClientError::Kafka {
            code: -1,
            name: "DELIVERY_FAILED".into(),
            message: Some(format!(
                "{failed} records were not delivered; the first: {error}"
            )),
        });
    }
    Ok(())
}

fn consume(args: ConsumeArgs) -> Result<(), ClientError> {
    let mut properties = vec![(
        "bootstrap.servers".to_owned(),
        args.client.bootstrap_server.clone(),
    )];
    if let Some(group) = &args.group {
        properties.push(("group.id".to_owned(), group.clone()));
        let reset = if args.from_beginning {
            "earliest"
        } else {
            "latest"
        };
        properties.push(("auto.offset.reset".to_owned(), reset.to_owned()));
    }
    properties.extend(args.properties);
    let config = ConsumerConfig::from_properties(properties)?;
    let mut consumer = Consumer::new(config)?;
    if args.group.is_some() {
        consumer.subscribe(std::slice::from_ref(&args.topic))?;
    } else {
        let partitions = match args.partition {
            Some(partition) => vec![partition],
            None => consumer.partitions_of(&args.topic)?,
        };
        let assigned: Vec<(String, i32)> = partitions
            .iter()
            .map(|p| (args.topic.clone(), *p))
            .collect();
        consumer.assign(&assigned);
        let start = if args.from_beginning {
            StartAt::Beginning
        } else if let Some(offset) = args.offset {
            StartAt::Offset(offset)
        } else if let Some(timestamp) = args.timestamp {
            StartAt::Timestamp(timestamp)
        } else {
            StartAt::End
        };
        for partition in &partitions {
            consumer.seek(&args.topic, *partition, start)?;
        }
    }
    // SIGINT and SIGTERM end the loop, so that a group member commits and leaves the group
    // (which then rebalances at once rather than after the session timeout).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(|error| {
            ClientError::InvalidState(format!("installing signal handlers: {error}"))
        })?;
    }
    let format = args.format.replace("\\n", "\n").replace("\\t", "\t");
    let mut printed = 0u64;
    let stdout = io::stdout();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let records = consumer.poll(std::time::Duration::from_millis(500))?;
        for (index, record) in records.iter().enumerate() {
            let line = match args.client.output {
                Output::Table => format_record(&format, record),
                Output::Json => format!("{}\n", record_json(record)),
            };
            use std::io::Write as _;
            let mut out = stdout.lock();
            if out
                .write_all(line.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                // The reader went away (a pipe into head): what was not printed stays unread.
                unread(&mut consumer, &records[index..])?;
                consumer.close();
                return Ok(());
            }
            printed += 1;
            if args.max_messages.is_some_and(|max| printed >= max) {
                unread(&mut consumer, &records[index + 1..])?;
                consumer.close();
                return Ok(());
            }
        }
        if args.exit_at_end && consumer.at_end() {
            break;
        }
    }
    consumer.close();
    Ok(())
}

/// Puts records returned by poll but not printed back: each partition's position goes back to
/// its first such record, so the group's commit does not count them as read.
fn unread(consumer: &mut Consumer, records: &[ConsumerRecord]) -> Result<(), ClientError> {
    let mut first: std::collections::BTreeMap<(String, i32), i64> = Default::default();
    for record in records {
        first
            .entry((record.topic.clone(), record.partition))
            .or_insert(record.offset);
    }
    for ((topic, partition), offset) in &first {
        consumer.seek(topic, *partition, StartAt::Offset(*offset))?;
    }
    if consumer.group_generation().is_some() && !first.is_empty() {
        consumer.commit(Some(first))?;
    }
    Ok(())
}

fn reset_offsets(args: ResetOffsetsArgs) -> Result<(), ClientError> {
    use spate_engine::client::admin::OffsetReset;
    let reset = if args.to_earliest {
        OffsetReset::Earliest
    } else if args.to_latest {
        OffsetReset::Latest
    } else if let Some(offset) = args.to_offset {
        OffsetReset::Offset(offset)
    } else if let Some(timestamp) = args.to_timestamp {
        OffsetReset::Timestamp(timestamp)
    } else {
        OffsetReset::ShiftBy(
            args.shift_by
                .expect("clap requires one of the --to options"),
        )
    };
    let mut admin = admin(&args.client)?;
    let partitions = (!args.partitions.is_empty()).then_some(args.partitions.as_slice());
    let plan = admin.plan_offset_reset(&args.group, &args.topic, partitions, reset)?;
    if args.execute {
        admin.reset_group_offsets(&args.group, &plan)?;
    }
    match args.client.output {
        Output::Json => print_json(&serde_json::json!({
            "group": args.group,
            "executed": args.execute,
            "offsets": plan
                .iter()
                .map(|((topic, partition), offset)| {
                    serde_json::json!({"topic": topic, "partition": partition, "offset": offset})
                })
                .collect::<Vec<_>>(),
        })),
        Output::Table => {
            print_table(
                &["TOPIC", "PARTITION", "NEW-OFFSET"],
                plan.iter()
                    .map(|((topic, partition), offset)| {
                        vec![topic.clone(), partition.to_string(), offset.to_string()]
                    })
                    .collect(),
            );
            if !args.execute {
                eprintln!("dry run: nothing changed; add --execute to apply");
            }
        }
    }
    Ok(())
}

fn format_record(format: &str, record: &ConsumerRecord) -> String {
    let text = |bytes: &Option<Bytes>| {
        bytes
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default()
            .into_owned()
    };
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(character) = chars.next() {
        if character != '%' {
            out.push(character);
            continue;
        }
        match chars.next() {
            Some('t') => out.push_str(&record.topic),
            Some('p') => out.push_str(&record.partition.to_string()),
            Some('o') => out.push_str(&record.offset.to_string()),
            Some('T') => out.push_str(&record.timestamp_ms.to_string()),
            Some('k') => out.push_str(&text(&record.key)),
            Some('s') => out.push_str(&text(&record.value)),
            Some('h') => {
                let headers: Vec<String> = record
                    .headers
                    .iter()
                    .map(|(name, value)| format!("{name}={}", text(value)))
                    .collect();
                out.push_str(&headers.join(","));
            }
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// One record as a JSON object, for `--output json` (one object per line).
fn record_json(record: &ConsumerRecord) -> serde_json::Value {
    let text = |bytes: &Option<Bytes>| {
        bytes
            .as_deref()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
    };
    serde_json::json!({
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp_ms,
        "key": text(&record.key),
        "value": text(&record.value),
        "headers": record
            .headers
            .iter()
            .map(|(name, value)| serde_json::json!([name, text(value)]))
            .collect::<Vec<_>>(),
    })
}

fn group(command: GroupCommand) -> Result<(), ClientError> {
    match command {
        GroupCommand::List { client } => {
            let groups = admin(&client)?.list_groups()?;
            match client.output {
                Output::Json => print_json(&groups),
                Output::Table => {
                    let rows = groups
                        .iter()
                        .map(|group| {
                            vec![
                                group.group_id.clone(),
                                group.state.clone(),
                                group.protocol_type.clone(),
                            ]
                        })
                        .collect();
                    print_table(&["GROUP", "STATE", "TYPE"], rows);
                }
            }
        }
        GroupCommand::Describe { group, client } => {
            let described = admin(&client)?.describe_group(&group)?;
            match client.output {
                Output::Json => print_json(&described),
                Output::Table => {
                    println!(
                        "group {} is {} ({} members{})",
                        described.group_id,
                        described.state,
                        described.members.len(),
                        if described.assignor.is_empty() {
                            String::new()
                        } else {
                            format!(", assignor {}", described.assignor)
                        }
                    );
                    let owner = |topic: &str, partition: i32| {
                        described
                            .members
                            .iter()
                            .find(|member| {
                                member
                                    .assignment
                                    .iter()
                                    .any(|(t, p)| t == topic && *p == partition)
                            })
                            .map(|member| format!("{} ({})", member.member_id, member.client_host))
                            .unwrap_or_else(|| "-".into())
                    };
                    let rows = described
                        .offsets
                        .iter()
                        .map(|offset| {
                            vec![
                                offset.topic.clone(),
                                offset.partition.to_string(),
                                offset.committed.to_string(),
                                offset.end.to_string(),
                                offset.lag.to_string(),
                                owner(&offset.topic, offset.partition),
                            ]
                        })
                        .collect();
                    print_table(
                        &["TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "MEMBER"],
                        rows,
                    );
                }
            }
        }
        GroupCommand::ResetOffsets(args) => reset_offsets(args)?,
        GroupCommand::Delete { group, client } => {
            admin(&client)?
                .delete_groups(std::slice::from_ref(&group))?
                .remove(0)?;
            match client.output {
                Output::Json => print_json(&serde_json::json!({ "deleted": group })),
                Output::Table => println!("deleted group {group}"),
            }
        }
    }
    Ok(())
}
