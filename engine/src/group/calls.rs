//! What the group coordinator is asked ([`Call`]) and what it answers ([`Reply`]): the classic
//! group protocol's requests and responses, without their wire versions. The broker's handlers
//! translate to and from the Kafka messages; the simulation builds them directly.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;

/// Identifies a call so that its [`Reply`] can be matched to it; chosen by the caller.
pub type CallId = u64;

/// A Kafka error code, `None` for success.
pub type ErrorCode = Option<ResponseError>;

/// A request to the coordinator of one group.
#[derive(Debug, Clone)]
pub enum Call {
    /// JoinGroup.
    Join(JoinRequest),
    /// SyncGroup.
    Sync(SyncRequest),
    /// Heartbeat.
    Heartbeat(MemberRef),
    /// LeaveGroup, for one or more members.
    Leave {
        /// Group.
        group_id: String,
        /// `(member id, group instance id)` of each member leaving.
        members: Vec<(String, Option<String>)>,
    },
    /// OffsetCommit.
    Commit(CommitRequest),
    /// TxnOffsetCommit: offsets committed inside a producer's transaction, visible once its
    /// commit marker is written.
    TxnCommit(TxnCommitRequest),
    /// A transaction marker of `producer_id` was written to this coordinator's partition:
    /// its transactional offsets become committed (`commit`) or are dropped.
    TxnCompleted {
        /// The producer.
        producer_id: i64,
        /// Commit (else abort).
        commit: bool,
    },
    /// OffsetFetch for one group; `None` partitions means every committed partition.
    FetchOffsets {
        /// Group.
        group_id: String,
        /// `(topic, partition)` wanted.
        partitions: Option<Vec<(String, i32)>>,
    },
    /// DescribeGroups for one group.
    Describe {
        /// Group.
        group_id: String,
    },
    /// ListGroups: every group of this coordinator, in the given states (all when empty).
    List {
        /// State names (`Stable`, `Empty`, ...), compared case-insensitively.
        states: Vec<String>,
    },
    /// DeleteGroups for one group.
    Delete {
        /// Group.
        group_id: String,
    },
    /// OffsetDelete.
    DeleteOffsets {
        /// Group.
        group_id: String,
        /// `(topic, partition)` to delete.
        partitions: Vec<(String, i32)>,
    },
}

impl Call {
    /// The group the call is about (`None` for List, which covers all).
    pub fn group_id(&self) -> Option<&str> {
        match self {
            Call::Join(request) => Some(&request.group_id),
            Call::Sync(request) => Some(&request.member.group_id),
            Call::Heartbeat(member) => Some(&member.group_id),
            Call::Commit(request) => Some(&request.member.group_id),
            Call::TxnCommit(request) => Some(&request.member.group_id),
            Call::Leave { group_id, .. }
            | Call::FetchOffsets { group_id, .. }
            | Call::Describe { group_id }
            | Call::Delete { group_id }
            | Call::DeleteOffsets { group_id, .. } => Some(group_id),
            Call::List { .. } | Call::TxnCompleted { .. } => None,
        }
    }
}

/// Who a request comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberRef {
    /// Group.
    pub group_id: String,
    /// Member id; empty when unknown.
    pub member_id: String,
    /// Static membership id.
    pub group_instance_id: Option<String>,
    /// Generation the member believes in; -1 for none.
    pub generation_id: i32,
}

/// JoinGroup.
#[derive(Debug, Clone, Default)]
pub struct JoinRequest {
    /// Group.
    pub group_id: String,
    /// Member id; empty on the first join.
    pub member_id: String,
    /// Static membership id.
    pub group_instance_id: Option<String>,
    /// `session.timeout.ms`.
    pub session_timeout_ms: i32,
    /// `max.poll.interval.ms` (the session timeout for JoinGroup v0).
    pub rebalance_timeout_ms: i32,
    /// `consumer` for consumers.
    pub protocol_type: String,
    /// Assignor names with the member's metadata for each, in preference order.
    pub protocols: Vec<(String, Bytes)>,
    /// The client's `client.id`.
    pub client_id: String,
    /// The client's address.
    pub client_host: String,
    /// JoinGroup v4+: a new dynamic member first gets MEMBER_ID_REQUIRED and its id (KIP-394).
    pub require_known_member_id: bool,
    /// The id to give this member if it needs one: randomness is the caller's input.
    pub new_member_id: String,
}

/// One member as the leader sees it in a JoinGroup response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    /// Member id.
    pub member_id: String,
    /// Static membership id.
    pub group_instance_id: Option<String>,
    /// Its metadata for the selected protocol.
    pub metadata: Bytes,
}

/// JoinGroup's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinResponse {
    /// Error.
    pub error: ErrorCode,
    /// Generation, -1 on error.
    pub generation_id: i32,
    /// Protocol type.
    pub protocol_type: Option<String>,
    /// Selected protocol.
    pub protocol_name: Option<String>,
    /// Leader member id.
    pub leader: String,
    /// The leader already has an assignment and must not compute one (v9, static leader).
    pub skip_assignment: bool,
    /// This member's id.
    pub member_id: String,
    /// Every member with its metadata; only for the leader.
    pub members: Vec<JoinedMember>,
}

impl JoinResponse {
    fn error(error: ResponseError, member_id: &str) -> JoinResponse {
        JoinResponse {
            error: Some(error),
            generation_id: -1,
            member_id: member_id.to_owned(),
            ..JoinResponse::default()
        }
    }
}

/// SyncGroup.
#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    /// The member.
    pub member: MemberRef,
    /// Protocol type (v5+), checked when given.
    pub protocol_type: Option<String>,
    /// Protocol name (v5+), checked when given.
    pub protocol_name: Option<String>,
    /// From the leader: each member's assignment.
    pub assignments: Vec<(String, Bytes)>,
}

/// SyncGroup's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncResponse {
    /// Error.
    pub error: ErrorCode,
    /// Protocol type.
    pub protocol_type: Option<String>,
    /// Protocol name.
    pub protocol_name: Option<String>,
    /// This member's assignment.
    pub assignment: Bytes,
}

/// OffsetCommit.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    /// The member (empty id and generation -1 for consumers without a group).
    pub member: MemberRef,
    /// `(topic, partition, offset, leader epoch, metadata)`.
    pub offsets: Vec<(String, i32, i64, i32, Option<String>)>,
    /// OffsetCommit v2-v4's `retention_time_ms`: how long to keep these offsets, or -1 for the
    /// broker's rule.
    pub retention_ms: i64,
}

impl Default for CommitRequest {
    fn default() -> CommitRequest {
        CommitRequest {
            member: MemberRef::default(),
            offsets: Vec::new(),
            retention_ms: -1,
        }
    }
}

/// TxnOffsetCommit.
#[derive(Debug, Clone)]
pub struct TxnCommitRequest {
    /// The consumer group member the producer consumes for (generation -1 and an empty
    /// member id skip the member check, as before KIP-447).
    pub member: MemberRef,
    /// The transactional producer.
    pub producer_id: i64,
    /// Its epoch.
    pub producer_epoch: i16,
    /// `(topic, partition, offset, leader epoch, metadata)`.
    pub offsets: Vec<(String, i32, i64, i32, Option<String>)>,
}

/// One committed offset in an OffsetFetch answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset, -1 when none is committed.
    pub offset: i64,
    /// Leader epoch, -1 when unknown.
    pub leader_epoch: i32,
    /// Metadata string.
    pub metadata: String,
    /// An open transaction committed an offset for the partition (OffsetFetch with
    /// `require_stable` answers UNSTABLE_OFFSET_COMMIT).
    pub pending_transaction: bool,
}

/// One member in a DescribeGroups answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedMember {
    /// Member id.
    pub member_id: String,
    /// Static membership id.
    pub group_instance_id: Option<String>,
    /// `client.id`.
    pub client_id: String,
    /// Address.
    pub client_host: String,
    /// Metadata for the selected protocol (Stable groups only).
    pub metadata: Bytes,
    /// Assignment (Stable groups only).
    pub assignment: Bytes,
}

/// DescribeGroups' answer for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// Error.
    pub error: ErrorCode,
    /// State name as Kafka spells it; `Dead` for an unknown group.
    pub state: &'static str,
    /// Protocol type.
    pub protocol_type: String,
    /// Selected protocol (Stable groups only).
    pub protocol_name: String,
    /// Members.
    pub members: Vec<DescribedMember>,
}

/// One group in a ListGroups answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    /// Group id.
    pub group_id: String,
    /// Protocol type (`consumer`, or empty for groups that only commit).
    pub protocol_type: String,
    /// State name.
    pub state: &'static str,
}

/// The coordinator's answer to a [`Call`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// To [`Call::Join`].
    Join(JoinResponse),
    /// To [`Call::Sync`].
    Sync(SyncResponse),
    /// To [`Call::Heartbeat`].
    Heartbeat(ErrorCode),
    /// To [`Call::Leave`]: a group-level error and one error per member.
    Leave(ErrorCode, Vec<ErrorCode>),
    /// To [`Call::Commit`] and [`Call::TxnCommit`]: one error per offset, in request order.
    Commit(Vec<ErrorCode>),
    /// To [`Call::TxnCompleted`].
    TxnCompleted(ErrorCode),
    /// To [`Call::FetchOffsets`]: a group-level error and the offsets.
    FetchOffsets(ErrorCode, Vec<FetchedOffset>),
    /// To [`Call::Describe`].
    Describe(GroupDescription),
    /// To [`Call::List`]: an error (the coordinator is loading, say) and the groups.
    List(ErrorCode, Vec<GroupListing>),
    /// To [`Call::Delete`].
    Delete(ErrorCode),
    /// To [`Call::DeleteOffsets`]: a group-level error and one error per partition.
    DeleteOffsets(ErrorCode, Vec<ErrorCode>),
}

impl Reply {
    /// The answer to `call` when the whole coordinator is unavailable (loading, moved, failed).
    pub fn unavailable(call: &Call, error: ResponseError) -> Reply {
        match call {
            Call::Join(request) => Reply::Join(JoinResponse::error(error, &request.member_id)),
            Call::Sync(_) => Reply::Sync(SyncResponse {
                error: Some(error),
                ..SyncResponse::default()
            }),
            Call::Heartbeat(_) => Reply::Heartbeat(Some(error)),
            Call::Leave { .. } => Reply::Leave(Some(error), Vec::new()),
            Call::Commit(request) => Reply::Commit(vec![Some(error); request.offsets.len()]),
            Call::TxnCommit(request) => Reply::Commit(vec![Some(error); request.offsets.len()]),
            Call::TxnCompleted { .. } => Reply::TxnCompleted(Some(error)),
            Call::FetchOffsets { .. } => Reply::FetchOffsets(Some(error), Vec::new()),
            Call::Describe { .. } => Reply::Describe(GroupDescription {
                error: Some(error),
                state: "",
                protocol_type: String::new(),
                protocol_name: String::new(),
                members: Vec::new(),
            }),
            Call::List { .. } => Reply::List(Some(error), Vec::new()),
            Call::Delete { .. } => Reply::Delete(Some(error)),
            Call::DeleteOffsets { .. } => Reply::DeleteOffsets(Some(error), Vec::new()),
        }
    }
}

pub(super) fn join_error(error: ResponseError, member_id: &str) -> JoinResponse {
    JoinResponse::error(error, member_id)
}
