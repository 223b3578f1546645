//! `spate log dump`: every batch with its CRC status, and index consistency.

use spate_engine::storage::backend::SimulatedStorage;
use spate_engine::storage::dump::{dump_partition, IndexStatus};

use super::util::{block_on, numbered_batch, open, partition_dir, segment_log_path, small_config};

#[test]
fn dump_lists_batches_and_flags_damage() {
    block_on(async {
        let storage = SimulatedStorage::new();
        let mut log = open(&storage, &small_config()).await;
        for n in 0..100 {
            log.append(numbered_batch(n * 2, 2, 1_000 + n as i64), 0, 0)
                .await
                .unwrap();
        }
        let segments = log.segment_count();
        log.close(0).await.unwrap();

        let dump = dump_partition(&storage, &partition_dir()).await.unwrap();
        assert!(dump.is_healthy(), "{dump}");
        assert_eq!(dump.segments.len(), segments);
        let batches: usize = dump
            .segments
            .iter()
            .map(|segment| segment.batches.len())
            .sum();
        assert_eq!(batches, 100);
        assert_eq!(dump.checkpoint.unwrap().recovery_point, 200);
        assert!(
            matches!(dump.segments[0].offset_index, IndexStatus::Checked { entries, .. } if entries > 0)
        );
        let text = dump.to_string();
        assert!(
            text.contains("baseOffset: 0 lastOffset: 1 count: 2 position: 0"),
            "{text}"
        );
        assert!(text.ends_with("healthy"));

        storage.corrupt_byte(&segment_log_path(&partition_dir(), 0), 70, 0x04);
        storage.corrupt_byte(
            &partition_dir().join("00000000000000000000.index"),
            18,
            0x04,
        );
        let dump = dump_partition(&storage, &partition_dir()).await.unwrap();
        assert!(!dump.is_healthy());
        let problems: Vec<_> = dump.segments[0]
            .batches
            .iter()
            .filter_map(|batch| batch.problem.as_ref())
            .collect();
        assert_eq!(problems.len(), 1, "{dump}");
        assert!(problems[0].contains("CRC"));
        assert!(matches!(
            dump.segments[0].offset_index,
            IndexStatus::Damaged(_)
        ));
        assert!(dump.to_string().contains("BAD"));
    });
}
