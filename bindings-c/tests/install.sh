#!/usr/bin/env bash
# `make install` into a temporary prefix, then builds the examples with nothing but
# pkg-config's flags and runs the C++ one (it embeds its own broker) against the installed
# shared library. Run by ./test.sh; PROFILE=debug reuses the test build.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
make --no-print-directory -s install PREFIX="$prefix" PROFILE="${PROFILE:-debug}"
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
test "$(pkg-config --modversion spate)" = "$(sed -n 's/^version = "\(.*\)"/\1/p' ../Cargo.toml | head -n 1)"
# shellcheck disable=SC2046
cc -std=c11 -Wall -Wextra -Werror examples/producer.c $(pkg-config --cflags --libs spate) -o "$prefix/producer"
# shellcheck disable=SC2046
c++ -std=c++17 -Wall -Wextra -Werror examples/roundtrip.cpp $(pkg-config --cflags --libs spate) -o "$prefix/roundtrip"
output=$(LD_LIBRARY_PATH="$prefix/lib" "$prefix/roundtrip")
expected=$'0 0 key-0 value-0\n0 1 key-1 value-1\n0 2 key-2 value-2'
if [ "$output" != "$expected" ]; then
    echo "roundtrip against the installed libspate.so printed:" >&2
    echo "$output" >&2
    exit 1
fi
echo "installed libspate: pkg-config builds and runs the examples"
