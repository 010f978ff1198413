"""/docs and /redoc work offline: their scripts and styles come from the service itself, and
(opt-in, it needs Debian's chromium) a headless browser that can reach only 127.0.0.1 renders the
operations of both protocols."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.app.inprocess.test_app import _run
from tests.conftest import start_server, stop_server
from tests.fakes import app_client


def _page_and_assets(repo: Path, page: str) -> tuple[str, dict[str, int]]:
    async def scenario() -> tuple[str, dict[str, int]]:
        async with app_client(repo) as (client, _, _):
            html = (await client.get(page)).text
            sources = re.findall(r'(?:src|href)="([^"]+)"', html) + \
                re.findall(r"url: '([^']+)'", html)
            return html, {src: (await client.get(src)).status_code for src in sources
                          if src.startswith("/")}

    return _run(scenario())  # type: ignore[no-any-return]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_nothing_from_other_hosts(fast_repo: Path, page: str) -> None:
    html, local = _page_and_assets(fast_repo, page)
    assert not re.findall(r'(?:src|href)="https?://', html)
    assert "fonts.googleapis" not in html
    assert local and set(local.values()) == {200}, local


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(os.environ.get("FFS_BROWSER_TEST") != "1" or CHROMIUM is None,
                    reason="opt-in: FFS_BROWSER_TEST=1 with Debian's chromium installed "
                           "(apt-get install chromium)")
def test_headless_chromium_renders_both_protocols_without_network(
        fast_repo: Path, tmp_path: Path) -> None:
    running = start_server(fast_repo, tmp_path / "server.log")
    try:
        result = subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
             # Every host but the loopback service fails to resolve: no CDN can be reached.
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
             "--virtual-time-budget=15000", "--dump-dom", f"{running.url}/docs"],
            capture_output=True, text=True, timeout=120)
    finally:
        stop_server(running)
    dom = result.stdout
    paths = set(re.findall(r'data-path="([^"]+)"', dom))
    assert {"/v1/classify/{name}", "/v2/models/{name}/infer"} <= paths, dom[-2000:]
    assert "Unable to render" not in dom
