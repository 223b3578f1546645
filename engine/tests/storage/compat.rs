//! Batches as real Kafka clients write them, built with the `kafka-protocol` crate's encoder
//! (every codec, keys, headers, tombstones, idempotent and transactional producer fields):
//! they validate, append, and read back byte for byte, except the base offset and partition
//! leader epoch that the log assigns.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use spate_engine::storage::backend::SimulatedStorage;
use spate_engine::storage::batch::{self, Codec};

use super::util::{block_on, open, small_config};

fn client_batch(compression: Compression, producer_id: i64, transactional: bool) -> BytesMut {
    let records: Vec<Record> = (0..20)
        .map(|i| Record {
            transactional,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch: if producer_id >= 0 { 3 } else { -1 },
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: if producer_id >= 0 {
                100 + i as i32
            } else {
                i as i32 - 1
            },
            timestamp: 1_700_000_000_000 + i * 7,
            key: (i % 3 != 0).then(|| Bytes::from(format!("user-{}", i % 5))),
            value: (i % 7 != 6).then(|| {
                Bytes::from(format!(
                    "{{\"event\":{i},\"pad\":\"{}\"}}",
                    "x".repeat(i as usize * 10)
                ))
            }),
            headers: [
                ("trace-id".into(), Some(Bytes::from(format!("t{i}")))),
                ("empty".into(), None),
            ]
            .into_iter()
            .collect(),
        })
        .collect();
    let mut buffer = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buffer,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("encode");
    buffer
}

#[test]
fn client_batches_append_and_read_back_unchanged() {
    let cases = [
        (Compression::None, Codec::None),
        (Compression::Gzip, Codec::Gzip),
        (Compression::Snappy, Codec::Snappy),
        (Compression::Lz4, Codec::Lz4),
        (Compression::Zstd, Codec::Zstd),
    ];
    for (compression, codec) in cases {
        for (producer_id, transactional) in [(-1, false), (4242, false), (4243, true)] {
            block_on(async {
                let sent = client_batch(compression, producer_id, transactional);
                let validated = batch::validate(&sent).expect("client batch validates");
                assert_eq!(validated.codec, codec);
                assert_eq!(validated.header.records_count, 20);
                assert_eq!(validated.header.is_transactional(), transactional);

                let storage = SimulatedStorage::new();
                let config = spate_engine::storage::LogConfig {
                    segment_bytes: 1 << 20,
                    ..small_config()
                };
                let mut log = open(&storage, &config).await;
                log.append(client_batch(Compression::None, -1, false), 0, 0)
                    .await
                    .unwrap();
                let info = log.append(sent.clone(), 9, 0).await.unwrap();
                assert_eq!((info.base_offset, info.last_offset), (20, 39));
                log.roll(0).await.unwrap(); // read it back from the segment file, not memory
                let stored = log.read(20, 1 << 20, None).await.unwrap().to_bytes();

                assert_eq!(stored.len(), sent.len());
                assert_eq!(&stored[..8], &20i64.to_be_bytes(), "base offset assigned");
                assert_eq!(
                    &stored[12..16],
                    &9i32.to_be_bytes(),
                    "leader epoch assigned"
                );
                assert_eq!(&stored[8..12], &sent[8..12]);
                assert_eq!(
                    &stored[16..],
                    &sent[16..],
                    "everything else exactly as sent"
                );

                let mut stored_buf = stored.clone();
                let mut sent_buf = sent.freeze();
                let read_back = RecordBatchDecoder::decode(&mut stored_buf).expect("decodes");
                let original = RecordBatchDecoder::decode(&mut sent_buf).expect("decodes");
                assert_eq!(read_back.records.len(), 20);
                for (got, want) in read_back.records.iter().zip(&original.records) {
                    assert_eq!(got.offset, want.offset + 20);
                    assert_eq!(got.key, want.key);
                    assert_eq!(got.value, want.value);
                    assert_eq!(got.headers, want.headers);
                    assert_eq!(got.timestamp, want.timestamp);
                    assert_eq!(got.producer_id, want.producer_id);
                    assert_eq!(got.sequence, want.sequence);
                }
            });
        }
    }
}

#[test]
fn legacy_magic_and_unknown_codecs_are_refused() {
    let mut legacy = client_batch(Compression::None, -1, false);
    legacy[16] = 1;
    assert!(matches!(
        batch::validate(&legacy),
        Err(batch::BatchError::UnsupportedMagic { magic: 1 })
    ));
    let mut codec = client_batch(Compression::None, -1, false).to_vec();
    codec[22] |= 0x07; // codec 7
    let crc = batch::compute_crc(&codec);
    codec[17..21].copy_from_slice(&crc.to_be_bytes());
    assert!(matches!(
        batch::validate(&codec),
        Err(batch::BatchError::UnknownCodec { codec: 7 })
    ));
}
