#!/bin/sh
# Peak memory of the LTX codec while streaming a 1 GiB snapshot through the
# encoder and the decoder (examples/ltx_rss.rs). Target: peak RSS < 20 MB.
set -eu
cd "$(dirname "$0")/.."
cargo build --release --example ltx_rss
exec cargo run --quiet --release --example ltx_rss
