//! Criterion micro-benchmarks of the storage layer. Each reports throughput. `cargo bench`
//! measures; the test suite runs each once (`cargo test --benches`) so they cannot rot. The
//! ratios against fio are measured by `benches/storage-vs-fio.sh` (see BENCHMARKS.md).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use spate_benches::workloads::{
    append_throughput, batch_64k_of_1k_records, log_with_segments, lookup_time,
    newest_segments_start, record_batch, sequential_read,
};
use spate_engine::runtime::run_local;
use spate_engine::storage::batch;
use spate_engine::storage::index::{OffsetEntry, OffsetIndex};

fn batch_validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_validation");
    for (name, bytes) in [
        ("64KiB_of_1KiB_records", batch_64k_of_1k_records()),
        ("64KiB_of_100B_records", record_batch(560, 100)),
    ] {
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(BenchmarkId::new("validate", name), |b| {
            b.iter(|| batch::validate(&bytes).expect("valid"))
        });
        group.bench_function(BenchmarkId::new("validate_stored_crc_only", name), |b| {
            b.iter(|| batch::validate_stored(&bytes).expect("valid"))
        });
    }
    group.finish();
}

fn index_lookup(c: &mut Criterion) {
    let mut index = OffsetIndex::new();
    for i in 0..262_144u32 {
        index.push(OffsetEntry {
            relative_offset: i * 4,
            position: i * 4096,
        });
    }
    let mut group = c.benchmark_group("index_lookup");
    group.throughput(Throughput::Elements(1));
    group.bench_function("floor_in_full_1GiB_segment_index", |b| {
        let mut probe = 0u32;
        b.iter(|| {
            probe = probe.wrapping_add(7919) % (262_144 * 4);
            index.floor(probe)
        })
    });
    group.finish();

    let mut group = c.benchmark_group("offset_lookup_by_segment_count");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    for segments in [10usize, 10_000] {
        let mut log = futures_lite::future::block_on(log_with_segments(segments));
        // Within the newest segments, which stay open: what a consumer near the tail pays.
        let first = newest_segments_start(&log, 4);
        group.bench_function(BenchmarkId::from_parameter(segments), |b| {
            b.iter_custom(|iters| {
                futures_lite::future::block_on(lookup_time(&mut log, first, iters)) * iters as u32
            })
        });
    }
    group.finish();
}

fn append_and_read(c: &mut Criterion) {
    let template = batch_64k_of_1k_records();
    let mut group = c.benchmark_group("dma_log");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Bytes(template.len() as u64));
    group.bench_function("append_64KiB_batch_no_fsync", |b| {
        b.iter_custom(|iters| {
            let template = template.clone();
            run_local(move || async move {
                let dir = tempfile::tempdir_in(".").expect("tempdir");
                append_throughput(dir.path(), &template, iters).await.0
            })
            .expect("glommio executor")
        })
    });
    group.bench_function("sequential_read_per_64KiB", |b| {
        b.iter_custom(|iters| {
            let template = template.clone();
            run_local(move || async move {
                let dir = tempfile::tempdir_in(".").expect("tempdir");
                append_throughput(dir.path(), &template, iters).await;
                sequential_read(dir.path(), 1 << 20).await.0
            })
            .expect("glommio executor")
        })
    });
    group.finish();
}

criterion_group!(benches, batch_validation, index_lookup, append_and_read);
criterion_main!(benches);
