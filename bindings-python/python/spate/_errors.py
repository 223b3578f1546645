"""Spate's exceptions. Every error the package raises is a :class:`SpateError`."""

import builtins
from typing import Optional


class SpateError(Exception):
    """Base class of every Spate error."""


class ConfigError(SpateError, ValueError):
    """A setting that is unknown, missing or has a value it cannot take.

    ``setting`` names it (with Kafka's dotted spelling), when one setting is at fault.
    """

    def __init__(self, message: str, setting: Optional[str] = None) -> None:
        super().__init__(message)
        self.setting = setting


class KafkaError(SpateError):
    """The broker answered with a Kafka error code.

    ``code`` is the number (3 for UNKNOWN_TOPIC_OR_PARTITION), ``name`` its name as Kafka's
    documentation spells it, ``retriable`` whether Kafka calls it retriable.
    """

    def __init__(self, message: str, code: int, name: str, retriable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.name = name
        self.retriable = retriable


class TopicNotFound(KafkaError):
    """UNKNOWN_TOPIC_OR_PARTITION: the topic (or the partition) does not exist."""


class TopicAlreadyExists(KafkaError):
    """TOPIC_ALREADY_EXISTS: a topic of that name exists."""


class MessageTooLarge(KafkaError):
    """MESSAGE_TOO_LARGE or RECORD_LIST_TOO_LARGE: larger than the topic or client allows."""


class NotEnoughReplicas(KafkaError):
    """NOT_ENOUGH_REPLICAS(_AFTER_APPEND): fewer in-sync replicas than min.insync.replicas."""


class TimeoutError(SpateError, builtins.TimeoutError):
    """A call did not finish within its timeout."""


class ConnectionError(SpateError, builtins.ConnectionError):
    """A broker could not be reached, or a connection to it failed."""


class StateError(SpateError):
    """A call the object cannot take in its state: closed, or a partition not assigned."""


class ProtocolError(SpateError):
    """A broker answer the client could not use, or an API version it does not speak."""


class BrokerError(SpateError):
    """An embedded broker could not start or stopped with an error."""


__all__ = [
    "BrokerError",
    "ConfigError",
    "ConnectionError",
    "KafkaError",
    "MessageTooLarge",
    "NotEnoughReplicas",
    "ProtocolError",
    "SpateError",
    "StateError",
    "TimeoutError",
    "TopicAlreadyExists",
    "TopicNotFound",
]
