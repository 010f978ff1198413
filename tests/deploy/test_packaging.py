"""House rules that code can check: the serving path never imports torch."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_the_serving_path_imports_no_torch_or_transformers() -> None:
    code = ("import sys, app.__main__, app.api.app, app.runtime.workers, app.core.batching; "
            "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules); "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
