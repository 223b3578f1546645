"""Fixtures for the real-client tests: a Spate broker process on a free port with its own
data directory, started from the binary named by $SPATE_BIN (default: target/debug/spate)."""

import os
import pathlib
import random
import signal
import socket
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SPATE_BIN = os.environ.get("SPATE_BIN") or str(ROOT / "target" / "debug" / "spate")


_PORTS = iter(random.Random(os.getpid()).sample(range(20000, 32000), 12000))


def free_port():
    """A free port, distinct from every other this run asked for, below Linux's ephemeral range
    (32768..): outgoing connections (a client reconnecting to a stopped broker can even connect
    to itself) and port-0 binds take theirs from that range, never this one."""
    for port in _PORTS:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port left below the ephemeral range")


class Broker:
    """One `spate serve` process."""

    def __init__(self, data_dir, *extra_args, cores=2):
        self.data_dir = pathlib.Path(data_dir)
        self.port = free_port()
        self.metrics_port = free_port()
        self.extra_args = list(extra_args)
        self.cores = cores
        self.process = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-broker.log"

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    def command(self):
        return [
            SPATE_BIN, "serve",
            "--data-dir", str(self.data_dir),
            "--listen", self.bootstrap,
            "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
            "--cores", str(self.cores),
            *self.extra_args,
        ]

    def start(self, timeout_s=30):
        # A connection alone does not prove this process listens: right after a restart the
        # previous process's socket can still take connections while the kernel tears its
        # io_uring down. So wait for this process to say it is ready, too.
        readies = self.full_log().count("Spate broker ready")
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"spate exited with {self.process.returncode}: {self.log()}")
            ready = self.full_log().count("Spate broker ready") > readies
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    if ready:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"spate did not start listening: {self.log()}")

    def full_log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout_s=60):
        """SIGTERM, then wait; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def metrics(self):
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as reply:
            return reply.read().decode()


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """A broker with Kafka's default of creating topics on first use."""
    spate = Broker(tmp_path_factory.mktemp("spate") / "data").start()
    yield spate
    assert spate.stop() == 0, spate.log()


@pytest.fixture(scope="module")
def strict_broker(tmp_path_factory):
    """A broker that creates topics only when asked (auto_create_topics off)."""
    spate = Broker(tmp_path_factory.mktemp("spate") / "data", "--auto-create-topics", "false").start()
    yield spate
    assert spate.stop() == 0, spate.log()


def unique_topic(prefix):
    return f"{prefix}-{time.monotonic_ns()}"
