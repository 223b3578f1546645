//! Frames between simulated nodes and clients: a 4-byte big-endian length (of kind and
//! payload), a kind byte, the payload. The same shape as the broker's controller port, over
//! `turmoil::net`.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A raft message in raft-rs's protobuf encoding.
pub(crate) const RAFT: u8 = 0;
/// A broker's request to the controller (JSON).
pub(crate) const REQUEST: u8 = 1;
/// The controller's answer to a forwarded topic request (JSON).
pub(crate) const REPLY: u8 = 2;
/// A client's topic creation: its partition count and replication factor as one byte each,
/// then the topic name.
pub(crate) const CREATE_TOPIC: u8 = 10;
/// The answer to a topic creation or reassignment: a Kafka error code, big-endian (0: done).
pub(crate) const ADMIN_ANSWER: u8 = 11;
/// A client's partition reassignment (JSON `Reassignment`).
pub(crate) const REASSIGN: u8 = 12;

/// A follower's Fetch (v12), as the `kafka-protocol` crate encodes it.
pub(crate) const FETCH: u8 = 20;
/// The leader's FetchResponse (v12).
pub(crate) const FETCH_ANSWER: u8 = 21;
/// A follower's ListOffsets (v4).
pub(crate) const LIST_OFFSETS: u8 = 22;
/// The leader's ListOffsetsResponse (v4).
pub(crate) const LIST_OFFSETS_ANSWER: u8 = 23;
/// A producer's record (JSON `ProduceRequest`).
pub(crate) const PRODUCE: u8 = 30;
/// Its answer (JSON `ProduceAnswer`).
pub(crate) const PRODUCE_ANSWER: u8 = 31;
/// A consumer's read (JSON `ConsumeRequest`).
pub(crate) const CONSUME: u8 = 32;
/// Its answer (JSON `ConsumeAnswer`).
pub(crate) const CONSUME_ANSWER: u8 = 33;
/// A consumer's request to its group's coordinator (JSON `GroupRequest`).
pub(crate) const GROUP_CALL: u8 = 34;
/// Its answer (JSON `GroupAnswer`).
pub(crate) const GROUP_ANSWER: u8 = 35;
/// A transactional producer's request to its coordinator, or a leader's verification (JSON
/// `TxnRequest`).
pub(crate) const TXN_CALL: u8 = 36;
/// Its answer (JSON `TxnAnswer`).
pub(crate) const TXN_ANSWER: u8 = 37;
/// A coordinator's transaction marker for a partition's leader (JSON `MarkerRequest`).
pub(crate) const MARKER: u8 = 38;
/// Its answer: a Kafka error code, big-endian (0: written and replicated).
pub(crate) const MARKER_ANSWER: u8 = 39;
/// The checker asks a node for its replicas' records.
pub(crate) const DUMP: u8 = 40;
/// The records (JSON `Vec<ReplicaDump>`).
pub(crate) const DUMP_ANSWER: u8 = 41;

/// Largest frame accepted.
const FRAME_BYTES_MAX: usize = 16 << 20;

/// `kind` and `payload` as one frame.
pub(crate) fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
    frame.push(kind);
    frame.extend_from_slice(payload);
    frame
}

/// Reads one frame; `None` when the connection closed or sent nonsense.
pub(crate) async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Option<(u8, Vec<u8>)> {
    let mut length = [0_u8; 4];
    stream.read_exact(&mut length).await.ok()?;
    let length = u32::from_be_bytes(length) as usize;
    if length == 0 || length > FRAME_BYTES_MAX {
        return None;
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    let payload = body.split_off(1);
    Some((body[0], payload))
}

/// Writes one frame.
pub(crate) async fn write_frame<S: AsyncWrite + Unpin>(
    stream: &mut S,
    kind: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    stream.write_all(&frame(kind, payload)).await
}
