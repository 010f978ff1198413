"""The folders are the architecture: imports only point the allowed way (docs/architecture.md).

    contract/      the artifact and encoding contract: imports nothing else of ours
    compress/      offline pipeline: contract only
    app/runtime/   worker processes and frames: contract and app.settings only
    app/core/      request -> batch -> answer: runtime, settings, contract; no HTTP (no web
                   framework, no status numbers: it raises app/core/errors.py)
    app/api/       HTTP: core, runtime, settings, contract; maps the core's errors (api/errors.py)
    loadtest/      black-box HTTP client: contract and compress.tasks (task data) only
    bench/         benchmarks that drive servers or pools: may import anything
    deploy/        the deploy checks (deploy/checks): may import anything
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

OURS = ("app", "bench", "compress", "contract", "deploy", "loadtest", "tests")
# module prefix -> prefixes of ours it may import (the first matching prefix decides)
ALLOWED: list[tuple[str, tuple[str, ...]]] = [
    ("contract", ("contract",)),
    ("compress", ("compress", "contract")),
    ("app.runtime", ("app.runtime", "app.settings", "contract")),
    ("app.settings", ("app.settings",)),
    ("app.core", ("app.core", "app.runtime", "app.settings", "contract")),
    ("app.api", ("app.api", "app.core", "app.runtime", "app.settings", "contract")),
    ("app", ("app", "contract")),
    ("loadtest", ("loadtest", "contract", "compress.tasks")),
    ("bench", OURS[:-1]),
    ("deploy", OURS[:-1]),
]


def _modules() -> list[tuple[str, Path]]:
    found = []
    for package in OURS[:-1]:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found.append((".".join(p for p in parts if p != "__init__"), path))
    return found


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return [name for name in names if name.split(".")[0] in OURS]


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _allowed_for(module: str) -> tuple[str, ...]:
    return next(allowed for prefix, allowed in ALLOWED if _within(module, prefix))


def _crossing(module: str, path: Path) -> list[str]:
    allowed = _allowed_for(module)
    # "from app.core import inference" names app.core.inference too: judge the module part.
    return sorted({name for name in _imports(path)
                   if not any(_within(name, prefix) for prefix in allowed)
                   and not any(_within(prefix, name) for prefix in allowed)})


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_imports_stay_within_the_layers(module: str, path: Path) -> None:
    assert _crossing(module, path) == [], f"{module} imports across the architecture's lines"


def test_the_layer_check_catches_a_crossing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from app.api.handle import handle\nimport compress.build\n")
    assert _crossing("app.core.inference", bad) == ["app.api.handle", "app.api.handle.handle",
                                                    "compress.build"]
    assert _crossing("bench.table3", bad) == []


# The core knows no protocol: no web framework, no HTTP status number (app/api/errors.py maps the
# core's typed errors to each protocol's codes).
WEB_FRAMEWORKS = ("fastapi", "starlette", "uvicorn", "http", "grpc")
HTTP_STATUSES = frozenset({400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 499, 500, 502, 503,
                           504})


def _protocol_words(path: Path) -> list[str]:
    """Web-framework imports and HTTP status numbers in a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in WEB_FRAMEWORKS]
        elif isinstance(node, ast.ImportFrom) and node.module and \
                node.module.split(".")[0] in WEB_FRAMEWORKS:
            found.append(node.module)
        elif isinstance(node, ast.Constant) and type(node.value) is int and \
                node.value in HTTP_STATUSES:
            found.append(f"status {node.value} (line {node.lineno})")
    return found


CORE = sorted((ROOT / "app" / "core").rglob("*.py"))


@pytest.mark.parametrize("path", CORE, ids=[p.name for p in CORE])
def test_the_core_knows_no_protocol(path: Path) -> None:
    assert _protocol_words(path) == [], f"{path.name} decides HTTP; raise app/core/errors.py"


def test_the_protocol_check_catches_a_framework_and_a_status(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from starlette.responses import Response\nimport fastapi\n"
                   "def refuse():\n    return 429\n")
    assert _protocol_words(bad) == ["starlette.responses", "fastapi", "status 429 (line 4)"]
