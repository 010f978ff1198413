"""The teacher's logits on its fused ONNX graph: used only when it labels as PyTorch does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compress import teacher_engine
from compress.augment import MASK
from compress.tasks import get_task, load_split
from compress.teacher_engine import MAX_ENGINE_DIFF, choose_engine, torch_engine
from tests.conftest import TinyRepo

SST2 = get_task("sst2")


def _texts(tiny_repo: TinyRepo) -> list[str | tuple[str, str]]:
    texts = load_split(SST2, "train", tiny_repo.data_dir).texts[:200]
    return [*texts, f"a {MASK} film"]


def test_a_large_job_runs_on_the_fused_graph_with_pytorchs_answers(
        tiny_repo: TinyRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(teacher_engine, "MIN_TEXTS_FOR_ONNX", 100)
    texts = _texts(tiny_repo)
    engine = choose_engine(tiny_repo.sst2_teacher, texts, 64, tmp_path)
    assert (tmp_path / f"teacher-graph-{teacher_engine.weights_digest(tiny_repo.sst2_teacher)}"
            / "fused-cpu.onnx").is_file()
    expected = torch_engine(tiny_repo.sst2_teacher, 64)(texts)
    got = engine(texts)
    assert np.abs(expected - got).max() <= MAX_ENGINE_DIFF
    assert (expected.argmax(-1) == got.argmax(-1)).all()


def test_a_graph_that_answers_differently_is_not_used(
        tiny_repo: TinyRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(teacher_engine, "MIN_TEXTS_FOR_ONNX", 100)
    reference = torch_engine(tiny_repo.sst2_teacher, 64)

    def flipped(*_: object) -> teacher_engine.Engine:
        return lambda texts: -reference(texts)

    monkeypatch.setattr(teacher_engine, "onnx_engine", flipped)
    texts = _texts(tiny_repo)
    engine = choose_engine(tiny_repo.sst2_teacher, texts, 64, tmp_path)
    np.testing.assert_array_equal(engine(texts[:20]), reference(texts[:20]))


def test_a_small_job_or_no_cache_folder_stays_on_pytorch(
        tiny_repo: TinyRepo, tmp_path: Path) -> None:
    texts = _texts(tiny_repo)
    for folder in (None, tmp_path):
        choose_engine(tiny_repo.sst2_teacher, texts, 64, folder)
    assert not list(tmp_path.iterdir())


def test_bf16_training_labels_with_pytorch_bf16_when_it_keeps_the_labels(
        tiny_repo: TinyRepo, tmp_path: Path) -> None:
    texts = _texts(tiny_repo)
    fp32 = torch_engine(tiny_repo.sst2_teacher, 64)(texts)
    got = choose_engine(tiny_repo.sst2_teacher, texts, 64, tmp_path, bf16=True)(texts)
    expected = torch_engine(tiny_repo.sst2_teacher, 64, bf16=True)(texts)
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got, fp32)  # bf16's rounding: not the fp32 engine
    assert not list(tmp_path.iterdir())  # no fused graph was needed


def test_bf16_that_changes_a_label_falls_back_to_fp32(
        tiny_repo: TinyRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = torch_engine(tiny_repo.sst2_teacher, 64)
    real = teacher_engine.torch_engine

    def engine(teacher: Path, max_length: int, batch_size: int = 64,
               bf16: bool = False) -> teacher_engine.Engine:
        if bf16:
            return lambda texts: -reference(texts)
        return real(teacher, max_length, batch_size)

    monkeypatch.setattr(teacher_engine, "torch_engine", engine)
    texts = _texts(tiny_repo)
    chosen = choose_engine(tiny_repo.sst2_teacher, texts, 64, None, bf16=True)
    np.testing.assert_array_equal(chosen(texts[:20]), reference(texts[:20]))


def test_bf16_logits_are_cached_apart_from_fp32_logits(tiny_repo: TinyRepo,
                                                       tmp_path: Path) -> None:
    from compress.distill import teacher_logits

    texts = _texts(tiny_repo)[:40]
    teacher_logits(tiny_repo.sst2_teacher, texts, 64, tmp_path / "cache")
    teacher_logits(tiny_repo.sst2_teacher, texts, 64, tmp_path / "cache", bf16=True)
    assert len(list((tmp_path / "cache").glob("teacher-logits-*.npy"))) == 2
