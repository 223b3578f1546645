"""Spate: a Kafka-protocol event streaming platform.

Today the package inspects Spate partition directories; the producer, consumer, admin client
and embedded broker arrive with Spate's client library.
"""

from spate._native import SpateError, __version__, dump_partition_text, inspect_partition

__all__ = ["SpateError", "__version__", "dump_partition_text", "inspect_partition"]
