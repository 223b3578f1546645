"""The native module behind the ``spate`` package (see ``spate`` for the public names)."""

from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypedDict,
    Union,
    type_check_only,
    final,
)

from typing_extensions import Self

from spate._errors import SpateError
from spate._types import TopicPartition

__version__: str
__all__ = [
    "Admin",
    "Consumer",
    "ConsumerGroupMetadata",
    "DeliveryFuture",
    "EmbeddedBroker",
    "Producer",
    "Record",
    "RecordMetadata",
    "__version__",
    "dump_partition_text",
    "inspect_partition",
    "stop_embedded_brokers",
]

_Payload = Union[bytes, bytearray, memoryview, str, None]
_Headers = Union[Sequence[Tuple[str, _Payload]], Mapping[str, _Payload], None]
_Servers = Union[str, Sequence[str]]
_Partition = Tuple[str, int]
_RebalanceCallback = Callable[["Consumer", List[TopicPartition]], object]

@final
class RecordMetadata:
    """Where a record was written: its topic, partition, offset and timestamp."""

    @property
    def topic(self) -> str:
        """The topic."""
    @property
    def partition(self) -> int:
        """The partition."""
    @property
    def offset(self) -> int:
        """The record's offset (-1 with acks=0, which gets no answer)."""
    @property
    def timestamp_ms(self) -> int:
        """The record's timestamp in ms: its create time, or the broker's for LogAppendTime
        topics."""

@final
class DeliveryFuture:
    """The result of ``Producer.send``, to wait for. Safe to use from any thread."""

    def done(self) -> bool:
        """Whether the result is known."""
    def result(self, timeout: Optional[float] = None) -> RecordMetadata:
        """Where the record was written, waiting up to ``timeout`` seconds (forever for None).
        Raises the error that kept it from being delivered, or spate.TimeoutError."""
    def exception(self, timeout: Optional[float] = None) -> Optional[SpateError]:
        """The error that kept the record from being delivered, or None once it was."""
    def add_done_callback(self, callback: Callable[["DeliveryFuture"], object]) -> None:
        """Calls ``callback(future)`` once the result is known: at once if it is, else on the
        producer's network thread, as ``concurrent.futures`` does."""

@final
class Producer:
    """A Kafka producer; see the package documentation. Safe to share between threads."""

    def __new__(
cls, bootstrap_servers: _Servers, **config: Any) -> Self: ...
    def send(
        self,
        topic: str,
        value: _Payload = None,
        key: _Payload = None,
        headers: _Headers = None,
        partition: Optional[int] = None,
        timestamp_ms: Optional[int] = None,
        on_delivery: Optional[
            Callable[[Optional[SpateError], Optional[RecordMetadata]], object]
        ] = None,
    ) -> DeliveryFuture:
        """Queues a record for ``topic`` and returns its DeliveryFuture."""
    def poll(self, timeout: Optional[float] = 0.0) -> int:
        """Serves on_delivery callbacks of records whose results are known."""
    def flush(self, timeout: Optional[float] = None) -> None:
        """Waits until every record is delivered or failed; raises spate.TimeoutError."""
    def close(self, timeout: Optional[float] = None) -> None:
        """Flushes and stops the background thread."""
    def init_transactions(self) -> None:
        """Registers ``transactional_id`` with its coordinator, fencing earlier producers."""
    def begin_transaction(self) -> None:
        """Opens a transaction."""
    def send_offsets_to_transaction(
        self, offsets: Mapping[_Partition, int], group_metadata: "ConsumerGroupMetadata"
    ) -> None:
        """Commits a consumer group's offsets inside the open transaction."""
    def commit_transaction(self) -> None:
        """Sends the transaction's records and commits it."""
    def abort_transaction(self) -> None:
        """Aborts the open transaction."""
    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
    def __len__(self) -> int: ...
    def __enter__(self) -> "Producer": ...
    def __exit__(
        self,
        *_exc: Union[Type[BaseException], BaseException, TracebackType, None],
    ) -> bool: ...

@final
class ConsumerGroupMetadata:
    """A consumer's group, member and generation (``Consumer.group_metadata()``)."""

    @property
    def group_id(self) -> str: ...
    @property
    def generation_id(self) -> int: ...
    @property
    def member_id(self) -> str: ...

@final
class Record:
    """A record read from a partition."""

    @property
    def topic(self) -> str:
        """The topic."""
    @property
    def partition(self) -> int:
        """The partition."""
    @property
    def offset(self) -> int:
        """The offset."""
    @property
    def timestamp_ms(self) -> int:
        """The timestamp, in ms since the Unix epoch."""
    @property
    def key(self) -> Optional[bytes]:
        """The key, or None."""
    @property
    def value(self) -> Optional[bytes]:
        """The value, or None (a tombstone)."""
    @property
    def headers(self) -> List[Tuple[str, Optional[bytes]]]:
        """The headers: ``(name, value)`` pairs."""

@final
class Consumer:
    """A Kafka consumer; see the package documentation. Calls from several threads are
    serialised."""

    def __new__(
        cls,
        bootstrap_servers: _Servers,
        group_id: Optional[str] = None,
        topics: Union[str, Iterable[str], None] = None,
        **config: Any,
    ) -> Self: ...
    def subscribe(
        self,
        topics: Union[str, Iterable[str]],
        on_assign: Optional[_RebalanceCallback] = None,
        on_revoke: Optional[_RebalanceCallback] = None,
        on_lost: Optional[_RebalanceCallback] = None,
    ) -> None:
        """Joins the group to share the partitions of ``topics`` with its other members."""
    def unsubscribe(self) -> None:
        """Leaves the group's subscription."""
    def subscription(self) -> List[str]:
        """The subscribed topics, sorted."""
    def assign(self, partitions: Iterable[_Partition]) -> None:
        """Reads exactly these partitions from now on, ending any subscription."""
    def assignment(self) -> List[TopicPartition]:
        """The partitions this consumer reads."""
    def poll(self, timeout_ms: int = 0, max_records: Optional[int] = None) -> List[Record]:
        """Records, waiting up to ``timeout_ms`` for some."""
    def __iter__(self) -> Iterator[Record]: ...
    def __next__(self) -> Record: ...
    def commit(
        self, offsets: Optional[Mapping[_Partition, int]] = None, asynchronous: bool = False
    ) -> None:
        """Commits offsets (the positions when None) for the group."""
    def committed(self, partitions: Iterable[_Partition]) -> Dict[TopicPartition, int]:
        """The group's committed offsets of ``partitions``."""
    def group_metadata(self) -> ConsumerGroupMetadata:
        """The group, member and generation this consumer commits as."""
    def seek(self, partition: _Partition, offset: int) -> None:
        """Reads ``partition`` from ``offset`` at the next poll."""
    def seek_to_beginning(self, *partitions: _Partition) -> None:
        """Reads these partitions (all assigned ones when none are given) from the start."""
    def seek_to_end(self, *partitions: _Partition) -> None:
        """Reads these partitions (all assigned ones when none are given) from the end."""
    def position(self, partition: _Partition) -> Optional[int]:
        """The offset of the next record ``poll`` returns, or None until known."""
    def watermarks(self, partition: _Partition) -> Tuple[int, int]:
        """The partition's log start and log end offsets."""
    def offsets_for_times(
        self, timestamps: Mapping[_Partition, int]
    ) -> Dict[TopicPartition, Optional[int]]:
        """The first offset at or after each timestamp, or None."""
    def pause(self, *partitions: _Partition) -> None:
        """Stops fetching these partitions until ``resume``."""
    def resume(self, *partitions: _Partition) -> None:
        """Fetches these paused partitions again."""
    def paused(self) -> List[TopicPartition]:
        """The paused partitions."""
    def close(self) -> None:
        """Commits (with auto commit), leaves the group and stops."""
    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
    def __enter__(self) -> "Consumer": ...
    def __exit__(
        self,
        *_exc: Union[Type[BaseException], BaseException, TracebackType, None],
    ) -> bool: ...

@type_check_only
class PartitionDescription(TypedDict):
    partition: int
    leader: int
    replicas: List[int]
    isr: List[int]

@type_check_only
class TopicDescription(TypedDict):
    name: str
    id: str
    internal: bool
    partitions: List[PartitionDescription]

@type_check_only
class GroupListing(TypedDict):
    group_id: str
    protocol_type: str
    state: str

@type_check_only
class PartitionLag(TypedDict):
    topic: str
    partition: int
    committed: int
    end: int
    lag: int

@type_check_only
class GroupMember(TypedDict):
    member_id: str
    group_instance_id: Optional[str]
    client_id: str
    client_host: str
    assignment: List[TopicPartition]

@type_check_only
class GroupDescription(TypedDict):
    group_id: str
    state: str
    protocol_type: str
    assignor: str
    members: List[GroupMember]
    offsets: List[PartitionLag]

@type_check_only
class BrokerDescription(TypedDict):
    id: int
    host: str
    port: int
    rack: Optional[str]

@type_check_only
class ClusterDescription(TypedDict):
    cluster_id: Optional[str]
    controller_id: int
    brokers: List[BrokerDescription]

@final
class Admin:
    """A Kafka admin client. Calls from several threads are serialised."""

    def __new__(
cls, bootstrap_servers: _Servers, **config: Any) -> Self: ...
    def create_topic(
        self,
        name: str,
        num_partitions: Optional[int] = None,
        replication_factor: Optional[int] = None,
        config: Optional[Mapping[str, Union[str, int, float, bool]]] = None,
    ) -> None:
        """Creates a topic."""
    def delete_topic(self, name: str) -> None:
        """Deletes a topic and its data."""
    def list_topics(self, internal: bool = False) -> List[str]:
        """The topic names, sorted."""
    def describe_topic(self, name: str) -> TopicDescription:
        """A topic's id and partitions."""
    def alter_topic_config(
        self,
        topic: str,
        set: Optional[Mapping[str, Union[str, int, float, bool]]] = None,
        delete: Optional[Sequence[str]] = None,
    ) -> None:
        """Sets and removes topic settings."""
    def create_partitions(self, topic: str, total: int) -> None:
        """Grows ``topic`` to ``total`` partitions."""
    def list_groups(self) -> List[GroupListing]:
        """The groups the cluster knows."""
    def describe_group(self, group_id: str) -> GroupDescription:
        """A group's state, members and offsets."""
    def delete_group(self, group_id: str) -> None:
        """Deletes a group without members."""
    def list_group_offsets(self, group_id: str) -> List[PartitionLag]:
        """A group's committed offsets with their lag."""
    def reset_group_offsets(
        self,
        group_id: str,
        topic: str,
        to: Union[str, int, None] = None,
        timestamp_ms: Optional[int] = None,
        shift_by: Optional[int] = None,
        partitions: Optional[Sequence[int]] = None,
        dry_run: bool = False,
    ) -> Dict[TopicPartition, int]:
        """Moves a group's committed offsets for ``topic``."""
    def describe_cluster(self) -> ClusterDescription:
        """The cluster id, controller and brokers."""
    def close(self) -> None:
        """Closes the connections."""
    def __enter__(self) -> "Admin": ...
    def __exit__(
        self,
        *_exc: Union[Type[BaseException], BaseException, TracebackType, None],
    ) -> bool: ...

@final
class EmbeddedBroker:
    """A Spate broker running inside this Python process, on threads it owns."""

    def __new__(
        cls,
        data_dir: Union[str, "PathLike[str]", None] = None,
        port: int = 0,
        host: str = "127.0.0.1",
        **config: Any,
    ) -> Self: ...
    @property
    def bootstrap_servers(self) -> str:
        """``"host:port"`` for the clients' bootstrap_servers."""
    @property
    def port(self) -> int:
        """The port the broker listens on."""
    @property
    def data_dir(self) -> Path:
        """The data directory (absolute)."""
    @property
    def running(self) -> bool:
        """Whether the broker is serving."""
    def stop(self) -> None:
        """Stops the broker; removes a temporary data directory."""
    def __enter__(self) -> "EmbeddedBroker": ...
    def __exit__(
        self,
        *_exc: Union[Type[BaseException], BaseException, TracebackType, None],
    ) -> bool: ...

def stop_embedded_brokers() -> None:
    """Stops every embedded broker still running (the package registers it with atexit)."""

def inspect_partition(dir: Union[str, "PathLike[str]"]) -> Dict[str, Any]:
    """Inspects a partition directory (read-only)."""

def dump_partition_text(dir: Union[str, "PathLike[str]"]) -> str:
    """The report ``spate log dump`` prints for a partition directory."""
