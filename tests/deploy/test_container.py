"""The CPU serving image, built and run for real (buildah + podman): opt-in, FFS_CONTAINER_TEST=1.

Needs buildah, podman, runc and a local base image (deploy/base-image.sh) or a reachable registry;
takes 1-3 minutes. CI runs without it (no container tooling there); README says how to run it.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT, TinyRepo

pytestmark = pytest.mark.skipif(
    os.environ.get("FFS_CONTAINER_TEST") != "1",
    reason="opt-in: FFS_CONTAINER_TEST=1 builds and runs the image with buildah/podman")


def test_image_builds_serves_a_classification_and_stops_cleanly(tiny_repo: TinyRepo) -> None:
    for tool in ("buildah", "podman", "runc", "curl"):
        assert shutil.which(tool), f"{tool} is not installed (see README: container check)"
    result = subprocess.run([str(ROOT / "deploy" / "container-check.sh"), str(tiny_repo.root)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"label":' in result.stdout
    assert "stopped with exit code 0" in result.stdout
