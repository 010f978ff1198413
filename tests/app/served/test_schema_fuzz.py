"""schemathesis fuzzes every operation of the server's own OpenAPI schema: no 5xx, ever.

Bounded (examples per operation, fixed seed, time limit) and against 127.0.0.1 only. The model
repository operations are left out: an unload is meant to make the model's requests 503, and this
server is shared with other tests (they are tested in test_versions_fast.py and
test_model_lifecycle.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import RunningServer

CONFIG = """
[parameters]
# Real model names, so that fuzzing reaches validation and the model instead of stopping at 404.
"path.name" = "sst2"
"path.model_version" = "1"
"""


def test_no_operation_of_the_openapi_schema_returns_a_server_error(
        server: RunningServer, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    result = subprocess.run(
        [st, "--config-file", str(config), "run", f"{server.url}/openapi.json",
         "--checks", "not_a_server_error", "--max-examples", "25", "--seed", "20261121",
         "--request-timeout", "20", "--url", server.url,
         "--exclude-path-regex", "^/v2/repository/"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
