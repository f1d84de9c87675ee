#!/usr/bin/env bash
# Runs every test of pipeline-telemetry. It first installs what the integration tests need and
# a fresh machine lacks: a real Prometheus server and promtool (Debian package `prometheus`).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  echo "scripts/test.sh: installing the Debian package 'prometheus' for the integration tests"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus
  # The package may start its own server on :9090; the tests start their own instances.
  $sudo service prometheus stop >/dev/null 2>&1 || true
fi

cargo test --all-features "$@"
