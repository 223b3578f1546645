//! Shared pieces of Spate's benchmarks: workload builders used by the criterion benches in
//! `benches/` and by the `storage-bench` tool that `storage-vs-fio.sh` compares against fio.

pub mod workloads;
