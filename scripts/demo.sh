#!/usr/bin/env bash
# The main job on a fresh machine: builds chaosgate and runs its embedded demo.
# Needs only Rust; the build cache lives outside the clone ($CHAOSGATE_CACHE).
set -euo pipefail
cd "$(dirname "$0")/.."
export CHAOSGATE_CACHE=${CHAOSGATE_CACHE:-$HOME/.cache/chaosgate}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CHAOSGATE_CACHE/target}
command -v cargo >/dev/null || { echo "error: cargo not found: install Rust with rustup" >&2; exit 1; }
cargo build --quiet
"$CARGO_TARGET_DIR/debug/chaosgate" validate deploy/examples
exec "$CARGO_TARGET_DIR/debug/chaosgate" demo --catalog deploy/examples
