"""The artifact contract shared by compress/ and app/: versioning and integrity checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compress.pretrained import resolve_model
from contract.artifact import ArtifactError, read_manifest, verified_variant_path
from tests.conftest import TinyRepo


def _copy(tiny_repo: TinyRepo, tmp_path: Path) -> Path:
    target = tmp_path / "sst2"
    shutil.copytree(tiny_repo.root / "sst2", target)
    return target


def test_verified_variant_path_refuses_a_changed_file(tiny_repo: TinyRepo, tmp_path: Path) -> None:
    folder = _copy(tiny_repo, tmp_path)
    manifest = read_manifest(folder)
    with (folder / "cpu-int8" / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        verified_variant_path(folder, manifest, "cpu-int8")


def test_verified_variant_path_names_missing_variants(tiny_repo: TinyRepo) -> None:
    folder = tiny_repo.root / "sst2"
    with pytest.raises(ArtifactError, match="no 'gpu-int4' variant"):
        verified_variant_path(folder, read_manifest(folder), "gpu-int4")


def test_read_manifest_refuses_an_unknown_format_version(tiny_repo: TinyRepo,
                                                         tmp_path: Path) -> None:
    folder = _copy(tiny_repo, tmp_path)
    raw = json.loads((folder / "manifest.json").read_text())
    raw["format"] = 2
    (folder / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="format 2 is not supported"):
        read_manifest(folder)


def test_read_manifest_reports_a_folder_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"no manifest\.json"):
        read_manifest(tmp_path)


def test_packaged_model_resolves_to_a_verified_folder() -> None:
    folder = Path(resolve_model("packaged:minilm-l6"))
    assert (folder / "config.json").is_file()


def test_unknown_packaged_model_is_refused() -> None:
    with pytest.raises(ArtifactError, match="unknown packaged model"):
        resolve_model("packaged:nope")


def test_plain_model_ids_pass_through_unchanged() -> None:
    assert resolve_model("bert-base-uncased") == "bert-base-uncased"
