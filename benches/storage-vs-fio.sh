#!/usr/bin/env bash
# Measures Spate's storage engine next to fio on the same disk, in one run, and prints a
# markdown table of ratios (append it to BENCHMARKS.md by hand or with --append).
#
#   benches/storage-vs-fio.sh [DIR] [--append]
#
# DIR is a directory on the disk to measure (default ./bench-data); it needs REOPEN_GIB + 2 GiB
# free. fio is installed with apt when missing. Every figure is the median of ROUNDS rounds
# (default 3), each round running fio and Spate back to back, because a shared machine's disk
# drifts by tens of percent from one minute to the next; the ratios are what BENCHMARKS.md
# reports.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
dir=${1:-./bench-data}
append=${2:-}
mkdir -p "$dir"
size_mib=${SIZE_MIB:-1024}
fsync_appends=${FSYNC_APPENDS:-2000}
reopen_gib=${REOPEN_GIB:-10}
rounds=${ROUNDS:-3}

need_apt fio

fio_job() { # fio options... -> terse v3 line
    fio --output-format=terse --terse-version=3 --ioengine=io_uring --direct=1 --iodepth=1 \
        --filename="$dir/fio.dat" "$@" 2>/dev/null
}

echo "building storage-bench ..." >&2
cargo build --release --quiet -p spate-benches --bin storage-bench

all=""
for round in $(seq 1 "$rounds"); do
    echo "round $round of $rounds: fio, then Spate, in $dir ..." >&2
    # Terse v3 fields: 7 read KiB/s, 48 write KiB/s, 49 write IOPS.
    all+=$(fio_job --name=seqwrite --rw=write --bs=64k --size="${size_mib}M" \
        | awk -F';' '{printf "fio_write_mib_per_s %.1f\n", $48 / 1024}')$'\n'
    all+=$(fio_job --name=seqread --rw=read --bs=1M --size="${size_mib}M" \
        | awk -F';' '{printf "fio_read_mib_per_s %.1f\n", $7 / 1024}')$'\n'
    rm -f "$dir/fio.dat"
    all+=$(fio_job --name=writefsync --rw=write --bs=64k --fdatasync=1 --size=128M \
        | awk -F';' '{print "fio_fsync_per_s", $49}')$'\n'
    rm -f "$dir/fio.dat"
    all+=$(fio_job --name=writefsync4k --rw=write --bs=4k --fdatasync=1 --size=16M \
        | awk -F';' '{print "fio_fsync_4k_per_s", $49}')$'\n'
    rm -f "$dir/fio.dat"
    all+=$(RUST_LOG=warn ./target/release/storage-bench --dir "$dir/spate" --size-mib "$size_mib" \
        --fsync-appends "$fsync_appends" --reopen-gib "$reopen_gib")$'\n'
    rm -rf "$dir/spate"
done
out=$(echo "$all" | awk 'NF >= 2 {print $1, $2}' | sort -k1,1 -k2,2g | awk '
    {key[NR] = $1; val[NR] = $2}
    END {
        i = 1
        while (i <= NR) {
            j = i
            while (j <= NR && key[j] == key[i]) j++
            n = j - i
            print key[i], val[i + int((n - 1) / 2)]
            i = j
        }
    }')
scanned=$(echo "$all" | awk '/reopen_after_crash_(64|256)mib/ && !seen[$1]++ {gsub(/\(/, "", $4); printf "%s%s", sep, $4; sep = " / "}')

value() { echo "$out" | awk -v k="$1" '$1 == k {print $2}'; }

fio_write=$(value fio_write_mib_per_s)
fio_read=$(value fio_read_mib_per_s)
fio_fsync_iops=$(value fio_fsync_per_s)
fio_fsync_1k_iops=$(value fio_fsync_4k_per_s)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.0f%%", 100 * a / b}'; }

table=$(cat <<TABLE
### $(date -u +%Y-%m-%d) — medians of $rounds rounds — $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(df -T "$dir" | awk 'NR==2 {print $2}') on $(df "$dir" | awk 'NR==2 {print $1}'), kernel $(uname -r)

| figure | Spate | baseline (same run) | ratio | target |
| --- | --- | --- | --- | --- |
| append, 1 KiB records in 64 KiB batches, no fsync | $(value append_mib_per_s) MiB/s | fio seq O_DIRECT write 64 KiB, QD1: $fio_write MiB/s | $(ratio "$(value append_mib_per_s)" "$fio_write") | ≥ 90% |
| append + fsync per append, 64 KiB, one writer | $(value append_fsync_per_s) /s | fio write+fdatasync 64 KiB: $fio_fsync_iops /s | $(ratio "$(value append_fsync_per_s)" "$fio_fsync_iops") | ≥ 90% |
| append + fsync per append, 1 KiB, one writer | $(value append_fsync_1k_per_s) /s | fio write+fdatasync 4 KiB: $fio_fsync_1k_iops /s | $(ratio "$(value append_fsync_1k_per_s)" "$fio_fsync_1k_iops") | |
| group commit, 16 appenders, 1 KiB, fsync each | $(value group_commit_1k_16_per_s) /s | Spate, one writer, 1 KiB: $(value append_fsync_1k_per_s) /s | $(value group_commit_1k_speedup)x | ≥ 5x |
| group commit, 16 appenders, 64 KiB, fsync each | $(value group_commit_16_per_s) /s | Spate, one writer, 64 KiB: $(value append_fsync_per_s) /s | $(value group_commit_speedup)x | |
| cold sequential read, 1 MiB fetches | $(value cold_read_mib_per_s) MiB/s | fio seq O_DIRECT read 1 MiB, QD1: $fio_read MiB/s | $(ratio "$(value cold_read_mib_per_s)" "$fio_read") | ≥ 80% |
| offset lookup, 10,000 segments (newest 4 open) | $(value lookup_10000_segments_us) µs | 10 segments: $(value lookup_10_segments_us) µs | $(awk -v a="$(value lookup_10000_segments_us)" -v b="$(value lookup_10_segments_us)" 'BEGIN {printf "%.2fx", a / b}') | ~1x |
| offset lookup, cold (index loaded from disk) | $(value lookup_cold_us) µs | | | |
| reopen after clean close, ${reopen_gib} GiB | $(value "reopen_clean_${reopen_gib}gib_ms") ms | | | < 1 s |
| reopen after crash, 64 / 256 MiB after the recovery point | $(value reopen_after_crash_64mib_unrecorded_ms) / $(value reopen_after_crash_256mib_unrecorded_ms) ms | $scanned bytes scanned | $(awk -v a="$(value reopen_after_crash_256mib_unrecorded_ms)" -v b="$(value reopen_after_crash_64mib_unrecorded_ms)" 'BEGIN {printf "%.1fx for 4x the data", a / b}') | proportional |

Reproduce: \`ROUNDS=$rounds SIZE_MIB=$size_mib FSYNC_APPENDS=$fsync_appends REOPEN_GIB=$reopen_gib benches/storage-vs-fio.sh DIR\`
TABLE
)
echo "$table"
if [ "$append" = "--append" ]; then
    printf '\n%s\n' "$table" >> BENCHMARKS.md
fi
