#!/usr/bin/env bash
# The whole test suite, from a fresh machine: checks and installs what the tests need
# (Rust components, protoc, JDK 17+, Maven, Toxiproxy, Prometheus and its Alertmanager,
# the OpenTelemetry Collector, Chromium and chromedriver, Node.js 20+ and PostgreSQL 15),
# starts a real Kafka broker (KRaft, official jars) unless KAFKA_BOOTSTRAP_SERVERS points
# at one, a real Unleash with its PostgreSQL unless UNLEASH_PG_URL points at one, then
# runs cargo fmt --check, cargo clippy -D warnings and cargo test.
#
# Caches live outside the clone in $CHAOSGATE_CACHE (default ~/.cache/chaosgate):
# the cargo target dir, the Kafka jars, the Go tools, the unleash-server npm install.
# Warm runs are fast.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CHAOSGATE_CACHE=${CHAOSGATE_CACHE:-$HOME/.cache/chaosgate}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CHAOSGATE_CACHE/target}
mkdir -p "$CHAOSGATE_CACHE"

say() { printf '==> %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

apt_updated=0
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "error: $* missing and not root: install it (apt-get install $*)" >&2
    exit 1
  fi
  if [ "$apt_updated" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- Rust -------------------------------------------------------------------------------
have cargo || { echo "error: cargo not found: install Rust with rustup" >&2; exit 1; }
if have rustup; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

# --- Java and Maven, for the Kafka broker --------------------------------------------
java_major() { java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}'; }
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  if ! have java || [ "$(java_major)" -lt 17 ]; then
    say "installing a JDK 17 (Kafka 4 needs Java 17 or newer)"
    apt_install openjdk-17-jdk-headless
  fi
  have mvn || { say "installing Maven"; apt_install maven; }
fi

# --- protoc, for the dev-dependency open-feature-flagd (Debian packages) ----------------
# chaosgate's own build.rs needs no protoc (protox), but open-feature-flagd's build.rs
# runs prost-build, which does: protobuf-compiler ships protoc, libprotobuf-dev the
# google/protobuf/*.proto it imports (only a Recommends of the compiler).
if [ -z "${PROTOC:-}" ] && { ! have protoc || [ ! -f /usr/include/google/protobuf/struct.proto ]; }; then
  say "installing protobuf-compiler and libprotobuf-dev (Debian packages; tests/flagd_serve.rs's provider needs protoc to build)"
  apt_install protobuf-compiler libprotobuf-dev
fi

# --- Test tools: Toxiproxy (Go module proxy) and Prometheus (Debian) ------------------
export GOBIN=${GOBIN:-$CHAOSGATE_CACHE/go/bin}
export PATH="$GOBIN:$PATH"
# Toxiproxy's server (module github.com/Shopify/toxiproxy/v2, package cmd/server).
toxiproxy_bin="$GOBIN/toxiproxy-server"
if [ -z "${TOXIPROXY_SERVER:-}" ] && [ ! -x "$toxiproxy_bin" ]; then
  have go || { echo "error: go not found: it is needed to install Toxiproxy" >&2; exit 1; }
  say "installing Toxiproxy v2.5.0 with go install"
  GOBIN="$CHAOSGATE_CACHE/go/toxiproxy" go install github.com/Shopify/toxiproxy/v2/cmd/server@v2.5.0
  mkdir -p "$GOBIN"
  mv "$CHAOSGATE_CACHE/go/toxiproxy/server" "$toxiproxy_bin"
fi
export TOXIPROXY_SERVER=${TOXIPROXY_SERVER:-$toxiproxy_bin}
if ! have prometheus; then
  say "installing Prometheus (Debian package)"
  apt_install prometheus
fi
export PROMETHEUS_BIN=${PROMETHEUS_BIN:-$(command -v prometheus)}
# Prometheus Alertmanager: tests/alertmanager.rs runs the real one against
# `chaosgate connect alertmanager` (it fails, never skips, without it). The Debian
# package's postinst starts no daemon where policy-rc.d forbids it; the test starts its own.
if [ -z "${ALERTMANAGER_BIN:-}" ] && ! have prometheus-alertmanager; then
  say "installing Prometheus Alertmanager (Debian package)"
  apt_install --no-install-recommends prometheus-alertmanager
fi
export ALERTMANAGER_BIN=${ALERTMANAGER_BIN:-$(command -v prometheus-alertmanager)}
# The OpenTelemetry Collector (OTLP receiver, file exporter) for the trace tests, built
# from the Go module proxy once (minutes cold, nothing warm).
if [ -z "${OTELCOL_BIN:-}" ]; then
  say "building the OpenTelemetry Collector (once)"
  bash tests/otelcol/build.sh
  export OTELCOL_BIN=$CHAOSGATE_CACHE/otelcol-chaosgate/otelcol-chaosgate
fi

# --- Chromium and chromedriver, for the view's browser test (Debian packages) -------------
# tests/view_browser.rs drives headless Chromium over WebDriver; it fails (never skips)
# without them.
if [ -z "${CHROMIUM_BIN:-}" ] || [ -z "${CHROMEDRIVER_BIN:-}" ]; then
  if ! have chromium || ! have chromedriver; then
    say "installing chromium and chromium-driver (Debian packages)"
    apt_install chromium chromium-driver
  fi
fi
export CHROMIUM_BIN=${CHROMIUM_BIN:-$(command -v chromium)}
export CHROMEDRIVER_BIN=${CHROMEDRIVER_BIN:-$(command -v chromedriver)}

# --- Node.js, PostgreSQL 15 and curl, for Unleash (Debian packages) -----------------------
# tests/support/unleash.rs starts one Unleash per test on the PostgreSQL that
# deploy/local/unleash.sh runs; the Unleash tests fail (never skip) without them.
if [ -z "${UNLEASH_PG_URL:-}" ] || [ -z "${UNLEASH_SERVER_JS:-}" ]; then
  if ! have node || ! have npm; then
    say "installing Node.js and npm (Debian packages; Unleash 7.5 needs Node.js 20 or newer)"
    apt_install nodejs npm
  fi
  if [ ! -x /usr/lib/postgresql/15/bin/initdb ] && [ -z "${UNLEASH_PG_BIN:-}" ]; then
    say "installing PostgreSQL 15 (Debian package)"
    apt_install postgresql-15 postgresql-client-15
  fi
  have curl || { say "installing curl"; apt_install curl; }
fi

# --- Kafka -------------------------------------------------------------------------------
started_kafka=0
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  say "starting the local Kafka broker"
  # A SASL/PLAIN listener too, for the bad-credentials test (not exported: the tests'
  # own brokers must not take its port).
  sasl_port=${KAFKA_SASL_PORT:-19094}
  KAFKA_SASL_PORT=$sasl_port deploy/local/kafka.sh start
  started_kafka=1
  eval "$(KAFKA_SASL_PORT=$sasl_port deploy/local/kafka.sh env)"
fi

started_unleash=0
cleanup() {
  if [ "$started_unleash" = 1 ] && [ "${KEEP_UNLEASH:-0}" != 1 ]; then
    deploy/local/unleash.sh stop || true
  fi
  if [ "$started_kafka" = 1 ] && [ "${KEEP_KAFKA:-0}" != 1 ]; then
    deploy/local/kafka.sh stop || true
  fi
}
trap cleanup EXIT

# --- Unleash and its PostgreSQL --------------------------------------------------------------
# The script's PostgreSQL holds one database per Unleash test; UNLEASH_SERVER_JS is the
# server each test starts on its own port. UNLEASH_URL/UNLEASH_ADMIN_TOKEN name the
# script's own Unleash, for poking by hand. KEEP_UNLEASH=1 leaves both running.
if [ -z "${UNLEASH_PG_URL:-}" ] || [ -z "${UNLEASH_SERVER_JS:-}" ]; then
  say "starting the local Unleash and its PostgreSQL"
  started_unleash=1
  deploy/local/unleash.sh start
  eval "$(deploy/local/unleash.sh env)"
fi

# --- The checks ---------------------------------------------------------------------------
say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
say "cargo test (Kafka at $KAFKA_BOOTSTRAP_SERVERS, Unleash PostgreSQL at $UNLEASH_PG_URL)"
cargo test --no-fail-fast
