"""Every example in docs/clients.md runs against the live server (its ports swapped in)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, RunningServer

PAGE = ROOT / "docs" / "clients.md"
BLOCKS = re.findall(r"```(bash|python)\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)


def test_the_page_has_an_example_per_client() -> None:
    text = "\n".join(code for _, code in BLOCKS)
    for client in ("curl ", "import requests", "InferenceClient", "tritonclient.http",
                   "tritonclient.grpc"):
        assert client in text, client


@pytest.mark.parametrize(("language", "code"), BLOCKS,
                         ids=[f"{i}-{lang}" for i, (lang, _) in enumerate(BLOCKS)])
def test_the_example_runs(server: RunningServer, language: str, code: str) -> None:
    assert server.grpc is not None
    local = code.replace("localhost:8000", server.url.removeprefix("http://")) \
        .replace("localhost:8001", server.grpc)
    command = ["bash", "-euo", "pipefail", "-c", local] if language == "bash" else \
        [sys.executable, "-c", local]
    # The suite runs with HF_HUB_OFFLINE=1 (no hub); huggingface_hub then refuses any URL,
    # this loopback server's too. The example reaches only that server.
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip()
