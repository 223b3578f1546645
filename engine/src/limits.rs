//! Every bound and default in one place, each with the reason for its value.

/// Kafka's `segment.bytes` default: 1 GiB. Large segments mean few files and few rolls.
pub const SEGMENT_BYTES_DEFAULT: u32 = 1 << 30;
/// Smallest segment accepted; tests use small segments to exercise rolling.
pub const SEGMENT_BYTES_MIN: u32 = 512;
/// Index entries store positions as u32, and Kafka caps `segment.bytes` at `i32::MAX`.
pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;
/// Kafka's `segment.ms` default: 7 days.
pub const SEGMENT_MS_DEFAULT: i64 = 7 * 24 * 60 * 60 * 1000;
/// Kafka's `segment.index.bytes` default: 10 MiB of offset index per segment.
pub const SEGMENT_INDEX_BYTES_DEFAULT: u32 = 10 << 20;
/// Kafka's `index.interval.bytes` default: one index entry per 4 KiB of log.
pub const INDEX_INTERVAL_BYTES_DEFAULT: u32 = 4096;
/// Kafka's `retention.ms` default: 7 days.
pub const RETENTION_MS_DEFAULT: i64 = 7 * 24 * 60 * 60 * 1000;
/// Kafka's `delete.retention.ms` default: a day.
pub const DELETE_RETENTION_MS_DEFAULT: i64 = 24 * 60 * 60 * 1000;
/// Kafka's `producer.id.expiration.ms`: one day.
pub const PRODUCER_ID_EXPIRATION_MS_DEFAULT: i64 = 24 * 60 * 60 * 1000;
/// Kafka's `max.message.bytes` default (1 MiB plus the batch overhead Kafka allows).
pub const MAX_MESSAGE_BYTES_DEFAULT: u32 = 1_048_588;
/// Newest bytes per partition kept in memory for tailing consumers. Bounded so that memory does
/// not grow with the data stored; 1 MiB covers a consumer a few batches behind.
pub const TAIL_CACHE_BYTES_DEFAULT: usize = 1 << 20;
/// Closed segments kept open (file handle and offset index) per partition: enough for a few
/// consumers reading history, few enough that file handles and index memory stay bounded.
pub const CLOSED_SEGMENT_HANDLES_DEFAULT: usize = 8;
/// Read window used when scanning for a batch: one index interval plus this, so that one read
/// usually covers the scan and the batches returned.
pub const READ_WINDOW_EXTRA_BYTES: usize = 64 << 10;

const _: () = assert!(SEGMENT_BYTES_MIN as u64 <= SEGMENT_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_DEFAULT as u64 <= SEGMENT_BYTES_MAX);
const _: () = assert!((MAX_MESSAGE_BYTES_DEFAULT as u64) < SEGMENT_BYTES_DEFAULT as u64);

/// Kafka's `socket.request.max.bytes` default: 100 MiB. Larger frames are refused from their
/// length prefix, before anything is allocated for them.
pub const SOCKET_REQUEST_MAX_BYTES_DEFAULT: usize = 100 << 20;
/// Client connections at once. Kafka's default is unlimited; a bound keeps a connection flood
/// from exhausting file descriptors.
pub const MAX_CONNECTIONS_DEFAULT: usize = 10_000;
/// Client connections from one address: enough for any real client host, few enough that one
/// misbehaving host cannot take every slot.
pub const MAX_CONNECTIONS_PER_IP_DEFAULT: usize = 1_000;
/// Requests read ahead per connection: librdkafka pipelines up to 5 produce requests per
/// partition leader by default, and more when idempotence is off; 32 keeps the socket busy
/// without buffering unbounded memory for one client.
pub const MAX_INFLIGHT_REQUESTS_PER_CONNECTION_DEFAULT: usize = 32;
/// Kafka's `log.retention.check.interval.ms` default: 5 minutes.
pub const LOG_RETENTION_CHECK_INTERVAL_MS_DEFAULT: u64 = 300_000;
/// Default of `log_background_sync_bytes` (Spate only): a partition with 1 MiB unsynced is
/// synced in the background, started by the append that crossed it. On this project's test
/// machine an fsync stalls the disk's other writes about as long as it runs, which grows with
/// what it syncs: syncs of 1 MiB keep the produce p99 at 50 MB/s several times lower than
/// syncs of 16 MiB or one large sync at each segment roll, with saturated throughput within the
/// noise (BENCHMARKS.md).
pub const LOG_BACKGROUND_SYNC_BYTES_DEFAULT: u64 = 1 << 20;
/// Kafka's `log.cleaner.backoff.ms`: how long an idle cleaner sleeps.
pub const LOG_CLEANER_BACKOFF_MS_DEFAULT: u64 = 15_000;
/// Default of `log.cleaner.io.max.bytes.per.second` (Kafka's is no limit): 50 MiB/s, since
/// the cleaner's direct reads compete with appends for the disk (see BENCHMARKS.md).
pub const LOG_CLEANER_IO_BYTES_PER_SECOND_DEFAULT: u64 = 50 << 20;
/// Kafka's `log.cleaner.dedupe.buffer.size`: 128 MiB for all cleaners.
pub const LOG_CLEANER_DEDUPE_BUFFER_SIZE_DEFAULT: usize = 128 << 20;
/// Most partitions a topic may have: each partition is a directory with open files and a
/// reserved segment extent, so a typo like 100000 should be refused, not attempted.
pub const PARTITIONS_PER_TOPIC_MAX: i32 = 10_000;
/// Default of `max_partitions_per_broker`: most partitions one broker holds.
pub const PARTITIONS_PER_BROKER_MAX_DEFAULT: usize = 100_000;
/// A consumer fetch this large starts a read of the next range (a consumer reading history).
pub const READ_AHEAD_TRIGGER_BYTES: usize = 1 << 20;
/// No read-ahead for fetches that may be larger than this, to bound memory per partition.
pub const READ_AHEAD_BYTES_MAX: usize = 16 << 20;
