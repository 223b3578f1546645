"""The spate package, installed with pip, inspects partition directories written by Spate."""

import os
import shutil
import subprocess

import pytest

import spate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def spate_binary():
    found = os.environ.get("SPATE_BIN") or shutil.which("spate")
    if found:
        return found
    for profile in ("release", "debug"):
        candidate = os.path.join(REPO, "target", profile, "spate")
        if os.path.exists(candidate):
            return candidate
    pytest.fail("the spate binary is not built (cargo build --bin spate)")


def test_version_is_exposed():
    assert spate.__version__.count(".") == 2


def test_inspects_a_partition_written_by_the_cli(tmp_path):
    partition = tmp_path / "events-0"
    subprocess.run(
        [spate_binary(), "log", "append", str(partition), "--generate", "300",
         "--record-bytes", "100", "--batch-records", "50"],
        check=True, capture_output=True,
    )
    report = spate.inspect_partition(partition)
    assert report["healthy"] is True
    assert report["segments"] == 1
    assert len(report["batches"]) == 6
    assert [b["base_offset"] for b in report["batches"]] == [0, 50, 100, 150, 200, 250]
    assert all(b["crc_ok"] and b["codec"] == "none" for b in report["batches"])
    assert "baseOffset: 250 lastOffset: 299" in spate.dump_partition_text(str(partition))


def test_reports_corruption(tmp_path):
    partition = tmp_path / "events-0"
    subprocess.run(
        [spate_binary(), "log", "append", str(partition), "--generate", "100",
         "--record-bytes", "100", "--batch-records", "10"],
        check=True, capture_output=True,
    )
    segment = partition / ("0" * 20 + ".log")
    data = bytearray(segment.read_bytes())
    data[500] ^= 0xFF
    segment.write_bytes(bytes(data))
    report = spate.inspect_partition(partition)
    assert report["healthy"] is False
    assert sum(not b["crc_ok"] for b in report["batches"]) == 1


def test_missing_directory_raises_spate_error(tmp_path):
    with pytest.raises(spate.SpateError, match="is not a directory"):
        spate.inspect_partition(tmp_path / "missing")
