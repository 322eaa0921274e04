#!/usr/bin/env bash
# Builds the static walsync binary (x86_64-unknown-linux-musl), strips it,
# prints its size, and proves it is static: `file` says so, `ldd` finds no
# libraries, and `walsync version` runs inside an empty root (no libc, no
# /etc, nothing but the binary) through chroot or unshare.
#
#   scripts/build-static.sh   → target/x86_64-unknown-linux-musl/release/walsync
#
# Installs the Rust target and musl-tools (musl-gcc, for the bundled SQLite
# and ring's C code) when missing; apt-get needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
target=x86_64-unknown-linux-musl

if ! rustup target list --installed | grep -qx "$target"; then
  echo "==> rustup target add $target"
  rustup target add "$target"
fi
if ! command -v musl-gcc >/dev/null 2>&1; then
  echo "==> apt-get install musl-tools"
  if [ "$(id -u)" -eq 0 ]; then
    apt-get install -y musl-tools || { apt-get update && apt-get install -y musl-tools; }
  else
    sudo apt-get install -y musl-tools || { sudo apt-get update && sudo apt-get install -y musl-tools; }
  fi
fi

echo "==> cargo build --release --target $target --bin walsync"
# The bundled SQLite is built with its default flags; walsync sets its memory
# use at run time (src/watch/source.rs), so every build behaves the same.
CC_x86_64_unknown_linux_musl=musl-gcc \
  cargo build --release --target "$target" --bin walsync
bin="target/$target/release/walsync"
strip "$bin"

size=$(stat -c %s "$bin")
awk -v b="$bin" -v s="$size" 'BEGIN { printf "==> %s: %d bytes (%.2f MiB, %.2f MB)\n", b, s, s / 1048576, s / 1000000 }'
echo "==> file"
file "$bin"
file "$bin" | grep -Eq 'statically linked|static-pie linked' || { echo "not static"; exit 1; }
echo "==> ldd"
ldd "$bin" 2>&1 || true

echo "==> walsync version inside an empty root"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
cp "$bin" "$root/walsync"
echo "empty root contents: $(cd "$root" && find . -mindepth 1 | tr '\n' ' ')"
if [ "$(id -u)" -eq 0 ]; then
  echo "\$ chroot $root /walsync version"
  chroot "$root" /walsync version
else
  echo "\$ unshare -r --root=$root /walsync version"
  unshare -r --root="$root" /walsync version
fi
