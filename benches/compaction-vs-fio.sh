#!/usr/bin/env bash
# Measures the log cleaner next to fio's sequential read on the same disk, in one run, and
# prints a markdown table row of ratios.
#
#   benches/compaction-vs-fio.sh [DIR]
#
# DIR is a directory on the disk to measure (default ./bench-data); it needs 2.5 × SIZE_MIB
# free. Each of ROUNDS rounds (default 3) runs fio and then cleaner-bench back to back; the
# medians are reported. The cleaner reads the dirty log once to build its key map, then again
# only the batches that keep a record, and writes what stays.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
dir=${1:-./bench-data}
mkdir -p "$dir"
size_mib=${SIZE_MIB:-1024}
rounds=${ROUNDS:-3}

need_apt fio
echo "building cleaner-bench ..." >&2
cargo build --release --quiet -p spate-benches --bin cleaner-bench

fio_read=()
clean=()
for round in $(seq 1 "$rounds"); do
    echo "round $round of $rounds ..." >&2
    fio_read+=("$(fio --output-format=terse --terse-version=3 --ioengine=io_uring --direct=1 \
        --iodepth=1 --filename="$dir/fio.dat" --name=seqread --rw=read --bs=1M \
        --size="${size_mib}M" 2>/dev/null | awk -F';' '{printf "%.1f", $7 / 1024}')")
    rm -f "$dir/fio.dat"
    clean+=("$(RUST_LOG=warn ./target/release/cleaner-bench --dir "$dir" --size-mib "$size_mib" \
        | awk '$1 == "clean_mib_per_s" {print $2}')")
done
read_mib=$(median "${fio_read[@]}")
clean_mib=$(median "${clean[@]}")
echo "| fio sequential read (1 MiB, O_DIRECT) | ${read_mib} MiB/s | |"
echo "| cleaner, ${size_mib} MiB dirty, 1% distinct keys | ${clean_mib} MiB/s | $(awk -v a="$clean_mib" -v b="$read_mib" 'BEGIN {printf "%.0f%%", 100 * a / b}') |"
echo "rounds: fio ${fio_read[*]}; cleaner ${clean[*]}" >&2
