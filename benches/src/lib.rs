//! Shared pieces of Spate's benchmarks: workload builders used by the criterion benches in
//! `benches/` and by the `storage-bench` tool that `storage-vs-fio.sh` compares against fio,
//! and the blocking Kafka connection of the `group-bench` tool.

pub mod kafka;
pub mod workloads;
