#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each one for
# SECONDS_PER_TARGET seconds (default 600), one after the other, at the
# lowest CPU priority. Prints one line per target: executions, seconds, and
# whether it found a crash (panic, timeout, OOM), with the reproducer's path.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]
#   TARGETS="ltx_decode wal_reader" scripts/fuzz.sh 60
#   FUZZ_NO_BUILD=1 scripts/fuzz.sh     # run the binaries already built
#                                       # (e.g. while src/ is mid-edit)
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Each target starts from fuzz/seeds/<target>/ and fuzz/regressions/<target>/
# (committed, read only; a reproducer that crashes again stops the run) and
# adds what it finds to fuzz/corpus/<target>/ (not committed), so later runs
# go on from there. Crashes land in fuzz/artifacts/<target>/; minimize one
# with `cd fuzz && cargo +nightly fuzz tmin -s none <target> <file>` (or run
# the binary with -minimize_crash=1 -runs=100000 <file>) and keep
# it under fuzz/regressions/<target>/. Full logs: fuzz/target/logs/.
#
# Built without a sanitizer (`-s none`) but with debug assertions and
# overflow checks (cargo fuzz's default): the fuzzed code paths are safe
# Rust, and AddressSanitizer aborts at start-up on a false ODR report in the
# bundled SQLite (two file-static `aiOff` arrays) that the library links in.
set -u

secs=${1:-600}
case $secs in '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 2 ;; esac
targets=${TARGETS:-ltx_decode wal_reader config_parse s3_list_xml}

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz" || exit 2
logs=target/logs
mkdir -p "$logs"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: cargo install cargo-fuzz (and rustup toolchain install nightly)" >&2
  exit 2
fi

if [ -z "${FUZZ_NO_BUILD:-}" ]; then
  nice -n 19 cargo +nightly fuzz build --fuzz-dir . --target-dir target -s none || exit 1
fi
bin=target/x86_64-unknown-linux-gnu/release

# Per-target libFuzzer options: inputs up to about a real file's size, and a
# dictionary of the format's words where one helps.
opts_for() {
  case $1 in
    ltx_decode) echo "-max_len=65536" ;;
    # One frame of a 64 KiB-page WAL is 65,560 bytes after the 32-byte header.
    wal_reader) echo "-max_len=70000" ;;
    config_parse) echo "-max_len=8192 -dict=dicts/config_parse.dict" ;;
    s3_list_xml) echo "-max_len=16384 -dict=dicts/s3_list_xml.dict" ;;
  esac
}

status=0
summary=()
for t in $targets; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="$logs/$t.log"
  if [ ! -x "$bin/$t" ]; then
    echo "$t: $bin/$t is not built" >&2
    status=1
    continue
  fi
  # What `cargo fuzz run` runs, without rebuilding first.
  # shellcheck disable=SC2046
  nice -n 19 "$bin/$t" -artifact_prefix="artifacts/$t/" \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    $(opts_for "$t") "corpus/$t" "seeds/$t" $(ls -d "regressions/$t" 2>/dev/null) >"$log" 2>&1
  rc=$?
  done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1)
  if [ -n "$done_line" ] && [ $rc -eq 0 ]; then
    runs=$(echo "$done_line" | awk '{print $2}')
    took=$(echo "$done_line" | awk '{print $5}')
    line=$(printf '%-14s %12s execs in %5s s  no crash' "$t" "$runs" "$took")
  else
    status=1
    runs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" | tail -1 | awk '{print $2}')
    [ -n "$runs" ] || runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    # A panic: where and what; else libFuzzer's own verdict (timeout, OOM…).
    what=$(grep -m1 -A1 'panicked at ' "$log" | sed -E 's/^thread .* panicked at /panic at /' | cut -c1-160 | paste -sd' ' -)
    [ -n "$what" ] || what=$(grep -m1 -oE 'ERROR: libFuzzer: .*' "$log" | cut -c1-120)
    unit=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -1 | awk '{print $5}')
    line=$(printf '%-14s %12s execs        CRASH (rc %s) %s -> fuzz/%s' "$t" "${runs:-?}" "$rc" "${what:-see log}" "${unit:-?}")
  fi
  echo "$line"
  summary+=("$line")
done

echo
echo "== fuzz summary (${secs}s per target; logs in fuzz/$logs/)"
printf '%s\n' "${summary[@]}"
exit $status
