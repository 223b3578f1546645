#!/usr/bin/env bash
# Runs Spate's whole test suite: formatting and lint gates, every Rust test (unit, integration,
# property, doc, criterion benches once in test mode), the seeded storage simulation, the C
# example, the Python package and the real Kafka clients (kcat, confluent-kafka, kafka-python)
# against a running broker. Installs what the tests need when it is missing (apt and pip
# packages), so that on a fresh machine this command alone passes.
set -euo pipefail
cd "$(dirname "$0")"
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
# A Debian system Python refuses pip installs outside a venv (PEP 668); the tests install into
# whichever python3 runs them.
export PIP_BREAK_SYSTEM_PACKAGES=1

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing_apt=()
command -v cc >/dev/null 2>&1 || missing_apt+=(gcc libc6-dev)
# The C library's tests: the C++ example, valgrind and AddressSanitizer runs, make install and
# pkg-config.
command -v c++ >/dev/null 2>&1 || missing_apt+=(g++)
command -v valgrind >/dev/null 2>&1 || missing_apt+=(valgrind)
command -v make >/dev/null 2>&1 || missing_apt+=(make)
command -v pkg-config >/dev/null 2>&1 || missing_apt+=(pkg-config)
command -v python3 >/dev/null 2>&1 || missing_apt+=(python3 python3-pip python3-venv)
command -v kcat >/dev/null 2>&1 || missing_apt+=(kcat)
command -v setpriv >/dev/null 2>&1 || missing_apt+=(util-linux)
if [ ${#missing_apt[@]} -gt 0 ]; then
    echo "== installing apt packages: ${missing_apt[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_apt[@]}"
fi
# The real-client tests: librdkafka through confluent-kafka, and kafka-python with the
# libraries its snappy, lz4 and zstd codecs need.
# mypy checks the Python package's type stubs (mypy --strict, stubtest).
if ! python3 -c "import pytest, confluent_kafka, kafka, snappy, lz4.frame, zstandard, mypy" >/dev/null 2>&1; then
    echo "== installing pip packages: pytest confluent-kafka kafka-python python-snappy lz4 zstandard mypy"
    python3 -m pip install --quiet --disable-pip-version-check \
        pytest confluent-kafka 'kafka-python>=2.0' python-snappy lz4 zstandard mypy
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test (unit, integration, property; benches once in test mode)"
cargo test --workspace --all-targets
echo "== cargo test --doc"
cargo test --workspace --doc

echo "== C library: make install, then the examples built with pkg-config"
bash bindings-c/tests/install.sh

echo "== storage simulation: 300 seeds"
cargo build --quiet -p spate-sim
"$target_dir/debug/spate-sim" storage --seeds 300 --steps 2000 | tail -n 1

echo "== cluster simulation (optimized): 200 seeds, seed replay, injected bugs caught"
cargo test --quiet -p spate-sim --release --features mutations --test cluster --test mutations -- --nocapture

echo "== Python package: pip install ./bindings-python, then pytest"
cargo build --quiet -p spate-engine --bin spate
python3 -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./bindings-python
SPATE_BIN="$target_dir/debug/spate" python3 -m pytest -q -p no:logging bindings-python/tests

echo "== real Kafka clients against spate serve: kcat, confluent-kafka, kafka-python"
SPATE_BIN="$target_dir/debug/spate" python3 -m pytest -q tests/clients
