#!/usr/bin/env bash
# Builds the OpenTelemetry Collector used by tests/telemetry.rs (an OTLP receiver and a
# file exporter) from the Go module proxy, into $CHAOSGATE_CACHE/otelcol-chaosgate/.
# Does nothing when the binary is there already. Needs Go; takes a few minutes cold.
#
# Why not `builder` alone: its `go mod tidy` step also fetches the test-only
# dependencies of the contrib file exporter, one of which the module proxy does not
# serve; `go get` + `go build` resolve only what the binary imports.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${CHAOSGATE_CACHE:-$HOME/.cache/chaosgate}
version=v0.165.0
dist=$cache/otelcol-chaosgate
binary=$dist/otelcol-chaosgate
export GOBIN=${GOBIN:-$cache/go/bin}
export GOFLAGS=${GOFLAGS:--mod=mod}

if [ -x "$binary" ]; then
  exit 0
fi
command -v go >/dev/null || { echo "error: go not found (needed to build the collector)" >&2; exit 1; }
if [ ! -x "$GOBIN/builder" ]; then
  go install "go.opentelemetry.io/collector/cmd/builder@$version"
fi
mkdir -p "$cache"
rm -rf "$dist"
# Generate main.go and components.go only (output_path is relative: run in the cache).
(cd "$cache" && "$GOBIN/builder" --config "$here/builder.yaml" --skip-compilation --skip-get-modules >/dev/null)
cd "$dist"
go mod init otelcol-chaosgate >/dev/null 2>&1
go get "go.opentelemetry.io/collector/receiver/otlpreceiver@$version" \
  "github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter@$version" >/dev/null 2>&1
go get . >/dev/null 2>&1
go build -trimpath -o "$binary.tmp" .
mv "$binary.tmp" "$binary"
echo "built $binary"
