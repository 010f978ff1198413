#!/usr/bin/env bash
# A fleet, run for real on one machine: three replicas of the service on 127.0.0.2-4, HAProxy in
# front with deploy/haproxy/haproxy.cfg, closed-loop load through it while one replica is killed
# (kill -9), all three are restarted one by one (SIGTERM), and a new model version is rolled
# across them. Prints per phase: requests, non-2xx, lost, refused, p50/p99 (bench/fleet.py).
#
#   deploy/fleet-check.sh [ARTIFACT]      (default: models/sst2, e.g. after `make demo`)
#
# Needs HAProxy (installed with apt-get when run as root) and the project's venv (`make setup`).
# Loopback only; every process it starts is stopped before it exits.
set -euo pipefail

cd "$(dirname "$0")/.."
artifact=${1:-models/sst2}
if ! command -v haproxy > /dev/null && [ ! -x /usr/sbin/haproxy ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -q haproxy > /dev/null
    else
        echo "HAProxy is missing: sudo apt-get install -y haproxy" >&2
        exit 2
    fi
fi
if [ ! -f "$artifact/manifest.json" ]; then
    echo "no artifact at $artifact: run \`make demo\` or pass an artifact folder" >&2
    exit 2
fi
haproxy -c -f deploy/haproxy/haproxy.cfg > /dev/null
PYTHON=${PYTHON:-.venv/bin/python}
exec "$PYTHON" -m bench fleet --artifact "$artifact" "${@:2}"
