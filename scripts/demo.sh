#!/usr/bin/env bash
# The main job on a fresh machine: builds chaosgate and runs its embedded demo.
# Needs only Rust; the build cache lives outside the clone ($CHAOSGATE_CACHE).
set -euo pipefail
cd "$(dirname "$0")/.."
export CHAOSGATE_CACHE=${CHAOSGATE_CACHE:-$HOME/.cache/chaosgate}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CHAOSGATE_CACHE/target}
command -v cargo >/dev/null || { echo "error: cargo not found: install Rust with rustup" >&2; exit 1; }
# Until the worker and its embedded demo land, the main job checks the example catalog.
cargo run --quiet -- validate deploy/examples
