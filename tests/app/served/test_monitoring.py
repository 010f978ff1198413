"""Monitoring: the counters a dashboard queries exist from start-up, and (opt-in, it needs Debian's
prometheus) a real Prometheus scraping the service answers every dashboard query."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from app.api.app import create_app
from app.core.service import prepare_service, start_service, stop_service
from app.settings import load_settings
from tests.conftest import ROOT, TinyRepo
from tests.fakes import fake_pools


def test_counters_of_events_not_yet_seen_are_exported_at_zero(fast_repo: Path) -> None:
    async def scenario() -> str:
        settings = load_settings(model_repository=fast_repo, routing={"sst2": "gpu"},
                                 gpu_pool={"providers": ["CPUExecutionProvider"]})
        service = prepare_service(settings)
        await start_service(service, fake_pools()[1])
        try:
            transport = httpx.ASGITransport(app=create_app(service))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return (await client.get("/metrics")).text
        finally:
            await stop_service(service)

    text = asyncio.run(scenario())
    for series in ('ffs_rows_dropped_total{pool="gpu"} 0.0',
                   'ffs_worker_restarts_total{pool="cpu"} 0.0',
                   'ffs_rejected_requests_total{reason="deadline",task="sst2"} 0.0',
                   'ffs_rows_spilled_total{from_pool="gpu",reason="down",task="sst2",to_pool="cpu"} 0.0',
                   'ffs_pool_ready{pool="gpu"} 1.0'):
        assert series in text


@pytest.mark.skipif(os.environ.get("FFS_MONITORING_TEST") != "1",
                    reason="opt-in: FFS_MONITORING_TEST=1 runs deploy/monitoring-check.sh (needs "
                           "Debian's prometheus, or root to install it)")
def test_prometheus_answers_every_dashboard_query(tiny_repo: TinyRepo, tmp_path: Path) -> None:
    result = subprocess.run(["deploy/monitoring-check.sh", str(tiny_repo.root)], cwd=ROOT,
                            env={**os.environ, "OUT": str(tmp_path)}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    found = re.search(r"(\d+) of (\d+) dashboard queries returned data", result.stdout)
    assert found is not None and found.group(1) == found.group(2)
