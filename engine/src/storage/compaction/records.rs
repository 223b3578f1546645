//! The records inside one stored batch, as the cleaner sees them: where each one lies, its
//! key, whether it is a tombstone, and its offset and timestamp deltas. Compressed record
//! sections are decompressed here and compressed again with the same codec.

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Decompressor, Gzip, Lz4, Snappy, Zstd};

use crate::storage::batch::{read_varint, read_varlong, BatchHeader, Codec, BATCH_HEADER_BYTES};

/// One record of a batch's (decompressed) record section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordView {
    /// Where the record starts (its length varint) in the section.
    pub start: usize,
    /// Where it ends.
    pub end: usize,
    /// Where its attributes byte is (after the length varint).
    pub body_start: usize,
    /// Where the field after the timestamp delta starts (the offset delta).
    pub after_timestamp: usize,
    /// Offset relative to the batch's base offset.
    pub offset_delta: i32,
    /// Timestamp relative to the batch's base timestamp.
    pub timestamp_delta: i64,
    /// The key's range in the section; `None` for a record without a key.
    pub key: Option<(usize, usize)>,
    /// A null value: a tombstone for its key.
    pub is_tombstone: bool,
}

/// A batch's record section: borrowed from the batch when it is not compressed.
#[derive(Debug)]
pub(crate) enum Section<'a> {
    /// Uncompressed: the batch's own bytes.
    Borrowed(&'a [u8]),
    /// Decompressed.
    Owned(Bytes),
}

impl std::ops::Deref for Section<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Section::Borrowed(bytes) => bytes,
            Section::Owned(bytes) => bytes,
        }
    }
}

/// The record section of a whole stored batch, decompressed when the batch is compressed.
///
/// # Errors
/// A sentence when the codec is unknown or the data does not decompress.
pub(crate) fn record_section<'a>(
    batch: &'a [u8],
    header: &BatchHeader,
) -> Result<Section<'a>, String> {
    let end = header.size_bytes().min(batch.len());
    if end < BATCH_HEADER_BYTES {
        return Err("a batch shorter than its header".into());
    }
    let codec = header.codec().map_err(|error| error.to_string())?;
    if codec == Codec::None {
        return Ok(Section::Borrowed(&batch[BATCH_HEADER_BYTES..end]));
    }
    let mut data = Bytes::copy_from_slice(&batch[BATCH_HEADER_BYTES..end]);
    let take_all = |buf: &mut Bytes| Ok(buf.copy_to_bytes(buf.remaining()));
    let decompressed = match codec {
        Codec::None => unreachable!("returned above"),
        Codec::Gzip => Gzip::decompress(&mut data, take_all),
        Codec::Snappy => Snappy::decompress(&mut data, take_all),
        Codec::Lz4 => Lz4::decompress(&mut data, take_all),
        Codec::Zstd => Zstd::decompress(&mut data, take_all),
    };
    decompressed
        .map(Section::Owned)
        .map_err(|error| format!("{codec} records do not decompress: {error:#}"))
}

/// Compresses a record section with `codec`.
///
/// # Errors
/// A sentence when the compressor fails.
pub(crate) fn compress_section(codec: Codec, section: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = BytesMut::new();
    let put = |buf: &mut BytesMut| {
        buf.extend_from_slice(section);
        Ok(())
    };
    let result = match codec {
        Codec::None => {
            out.extend_from_slice(section);
            Ok(())
        }
        Codec::Gzip => Gzip::compress(&mut out, put),
        Codec::Snappy => Snappy::compress(&mut out, put),
        Codec::Lz4 => Lz4::compress(&mut out, put),
        Codec::Zstd => Zstd::compress(&mut out, put),
    };
    result.map_err(|error| format!("{codec} compression failed: {error:#}"))?;
    Ok(out.to_vec())
}

/// Finds the `count` records of a record section.
///
/// # Errors
/// A sentence naming the first record that does not parse.
pub(crate) fn parse_records(section: &[u8], count: i32) -> Result<Vec<RecordView>, String> {
    let mut records = Vec::with_capacity(count.clamp(0, 1 << 16) as usize);
    let mut position = 0;
    for index in 0..count {
        let malformed = |reason: &str| format!("record {index}: {reason}");
        let mut cursor = &section[position..];
        let length = read_varint(&mut cursor).ok_or_else(|| malformed("bad length"))?;
        let body_start = section.len() - cursor.len();
        let length = usize::try_from(length).map_err(|_| malformed("negative length"))?;
        let end = body_start
            .checked_add(length)
            .filter(|&end| end <= section.len() && length > 0)
            .ok_or_else(|| malformed("length out of bounds"))?;
        let mut body = &section[body_start + 1..end];
        let timestamp_delta = read_varlong(&mut body).ok_or_else(|| malformed("bad timestamp"))?;
        let after_timestamp = end - body.len();
        let offset_delta = read_varint(&mut body).ok_or_else(|| malformed("bad offset delta"))?;
        let key_length = read_varint(&mut body).ok_or_else(|| malformed("bad key length"))?;
        let key = if key_length < 0 {
            None
        } else {
            let key_start = end - body.len();
            let key_length = key_length as usize;
            if key_length > body.len() {
                return Err(malformed("key out of bounds"));
            }
            body = &body[key_length..];
            Some((key_start, key_start + key_length))
        };
        let value_length = read_varint(&mut body).ok_or_else(|| malformed("bad value length"))?;
        records.push(RecordView {
            start: position,
            end,
            body_start,
            after_timestamp,
            offset_delta,
            timestamp_delta,
            key,
            is_tombstone: value_length < 0,
        });
        position = end;
    }
    if position != section.len() {
        return Err(format!(
            "{} bytes after the last record",
            section.len() - position
        ));
    }
    Ok(records)
}

/// Whether any record of a whole, checked batch has no key (a compacted topic refuses them).
///
/// # Errors
/// A sentence when the records do not decompress or parse.
pub(crate) fn has_keyless_record(batch: &[u8]) -> Result<bool, String> {
    let header = BatchHeader::parse(batch).map_err(|error| error.to_string())?;
    let section = record_section(batch, &header)?;
    let records = parse_records(&section, header.records_count)?;
    Ok(records.iter().any(|record| record.key.is_none()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::build::{self, NewRecord};

    fn record(key: Option<&str>, value: Option<&str>, timestamp_ms: i64) -> NewRecord {
        NewRecord {
            key: key.map(|key| Bytes::copy_from_slice(key.as_bytes())),
            value: value.map(|value| Bytes::copy_from_slice(value.as_bytes())),
            timestamp_ms,
            headers: vec![("h".into(), Some(Bytes::from_static(b"v")))],
        }
    }

    #[test]
    fn finds_keys_tombstones_and_deltas() {
        let batch = build::batch(&[
            record(Some("a"), Some("1"), 100),
            record(None, Some("2"), 105),
            record(Some("bb"), None, 103),
        ])
        .freeze();
        let header = BatchHeader::parse(&batch).unwrap();
        let section = record_section(&batch, &header).unwrap();
        let records = parse_records(&section, header.records_count).unwrap();
        assert_eq!(records.len(), 3);
        let key = |view: &RecordView| view.key.map(|(start, end)| section[start..end].to_vec());
        assert_eq!(key(&records[0]), Some(b"a".to_vec()));
        assert_eq!(key(&records[1]), None);
        assert_eq!(key(&records[2]), Some(b"bb".to_vec()));
        assert_eq!(
            records.iter().map(|r| r.is_tombstone).collect::<Vec<_>>(),
            [false, false, true]
        );
        assert_eq!(
            records.iter().map(|r| r.offset_delta).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(
            records
                .iter()
                .map(|r| r.timestamp_delta)
                .collect::<Vec<_>>(),
            [0, 5, 3]
        );
        assert!(has_keyless_record(&batch).unwrap());
    }

    #[test]
    fn compressed_sections_round_trip() {
        let raw = b"some records, some records, some records".to_vec();
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let compressed = compress_section(codec, &raw).unwrap();
            let mut header_bytes = Vec::new();
            let header = BatchHeader {
                base_offset: 0,
                batch_length: 0,
                partition_leader_epoch: 0,
                magic: 2,
                crc: 0,
                attributes: codec as i16,
                last_offset_delta: 0,
                base_timestamp: 0,
                max_timestamp: 0,
                producer_id: -1,
                producer_epoch: -1,
                base_sequence: -1,
                records_count: 1,
            };
            header.write_to(&mut header_bytes);
            header_bytes.extend_from_slice(&compressed);
            crate::storage::batch::seal(&mut header_bytes);
            let batch = Bytes::from(header_bytes);
            let header = BatchHeader::parse(&batch).unwrap();
            assert_eq!(
                &record_section(&batch, &header).unwrap()[..],
                &raw[..],
                "{codec}"
            );
        }
    }
}
