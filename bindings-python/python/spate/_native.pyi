from os import PathLike
from typing import Any, Dict, Union

__version__: str

class SpateError(Exception):
    """Base class of every Spate error."""

def inspect_partition(dir: Union[str, PathLike[str]]) -> Dict[str, Any]:
    """Inspects a partition directory (read-only).

    Returns a dict with ``segments`` (int), ``healthy`` (bool) and ``batches``: a list of dicts
    with ``segment_base_offset``, ``base_offset``, ``last_offset``, ``records``, ``position``,
    ``size_bytes``, ``codec``, ``max_timestamp_ms`` and ``crc_ok``.

    Raises SpateError when the directory cannot be read.
    """

def dump_partition_text(dir: Union[str, PathLike[str]]) -> str:
    """The report ``spate log dump`` prints for a partition directory."""
