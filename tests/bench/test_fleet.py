"""The fleet check (deploy/fleet-check.sh, bench/fleet.py), shorter: three replicas behind
HAProxy under load through a kill -9, a rolling restart and a version roll. Opt-in: it needs
HAProxy and ports 8000 on 127.0.0.2-4 and 8080 on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bench import fleet
from tests.conftest import TinyRepo

pytestmark = pytest.mark.skipif(
    os.environ.get("FFS_FLEET_TEST") != "1" or
    not (shutil.which("haproxy") or Path("/usr/sbin/haproxy").exists()),
    reason="opt-in: FFS_FLEET_TEST=1 with HAProxy installed (apt-get install haproxy)")


def test_a_fleet_behind_haproxy_loses_no_request_through_kill_restart_and_version_roll(
        tiny_repo: TinyRepo) -> None:
    results = {r.name.split(" (")[0]: r for r in fleet.run(tiny_repo.root / "sst2", clients=8,
                                                           seconds=2.0)}
    for phase in ("kill -9 of replica 2", "rolling restart", "version 2 rolled across the fleet"):
        assert results[phase].non_2xx == 0 and results[phase].lost == 0, results[phase]
        assert results[phase].requests > 0
    assert results["fleet through HAProxy"].per_s > 0
