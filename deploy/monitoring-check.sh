#!/usr/bin/env bash
# Proof that monitoring works for real: Debian's Prometheus scrapes the service with
# deploy/prometheus/prometheus.yml (pointed at loopback) and every query of the Grafana dashboard
# returns data, with a series for each pool and task. Results: runs/monitoring-check/results.md.
#
#   deploy/monitoring-check.sh [MODEL_REPOSITORY]      (default: models/, e.g. after `make demo`)
#
# Finds prometheus and promtool on PATH, or installs Debian's `prometheus` package when run as root.
set -euo pipefail

cd "$(dirname "$0")/.."
repository=${1:-models}
python=.venv/bin/python

if ! command -v prometheus > /dev/null || ! command -v promtool > /dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "prometheus and promtool are not installed: run as root, or apt-get install prometheus" >&2
        exit 2
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus > /dev/null
fi
if [ ! -x "$python" ]; then
    make setup
fi
exec "$python" -m deploy.checks.monitoring_check --repository "$repository" \
    --out "${OUT:-runs/monitoring-check}"
