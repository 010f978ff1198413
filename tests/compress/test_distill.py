"""Knowledge distillation: losses, student initialisation, the teacher-logit cache, tokenizers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compress import distill as distill_module
from compress import teacher_engine
from compress.checkpoint import load_classifier
from compress.distill import (
    DistilConfig,
    DistilError,
    attention_loss,
    distil,
    hidden_loss,
    init_student,
    layer_map,
    select_layers,
    soft_loss,
    teacher_logits,
    teacher_logits_of,
)
from compress.finetune import hf_tokenize
from compress.tasks import Examples, get_task, load_split
from tests.conftest import TinyRepo, build_tiny_bert

SST2 = get_task("sst2")


def _student_logits(checkpoint: Path, texts: list[str | tuple[str, str]]) -> np.ndarray:
    model, tokenizer = load_classifier(checkpoint)
    with torch.no_grad():
        batch = hf_tokenize(tokenizer, texts, 64, padding=True, return_tensors="pt")
        return model(**batch).logits.numpy()


def _soft(student: np.ndarray, teacher: np.ndarray) -> float:
    return float(soft_loss(torch.from_numpy(student), torch.from_numpy(teacher), 2.0))


def test_distillation_lowers_the_soft_loss_and_moves_predictions_toward_the_teacher(
        tiny_repo: TinyRepo, tmp_path: Path) -> None:
    train = load_split(SST2, "train", tiny_repo.data_dir)
    held = load_split(SST2, "dev", tiny_repo.data_dir)
    targets = teacher_logits(tiny_repo.sst2_teacher, held.texts, 64)
    model, tokenizer = init_student(str(tiny_repo.base_model), SST2, 1)
    model.save_pretrained(tmp_path / "before")
    tokenizer.save_pretrained(tmp_path / "before")
    before = _student_logits(tmp_path / "before", held.texts)
    config = DistilConfig(epochs=3, batch_size=16, learning_rate=2e-3, max_length=64)
    distil(model, tokenizer, tiny_repo.sst2_teacher, train, config, tmp_path / "after")
    after = _student_logits(tmp_path / "after", held.texts)
    assert _soft(after, targets) < 0.5 * _soft(before, targets)
    agree_before = np.mean(before.argmax(-1) == targets.argmax(-1))
    agree_after = np.mean(after.argmax(-1) == targets.argmax(-1))
    assert agree_after > agree_before and agree_after >= 0.9


def test_soft_loss_is_zero_only_when_student_matches_teacher() -> None:
    teacher = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    assert float(soft_loss(teacher.clone(), teacher, 2.0)) == pytest.approx(0.0, abs=1e-7)
    assert float(soft_loss(-teacher, teacher, 2.0)) > 0.1


def test_hidden_loss_ignores_padding_positions() -> None:
    teacher = torch.zeros(1, 3, 4)
    student = torch.zeros(1, 3, 4)
    student[0, 2] = 5.0  # differs only at a padded token
    assert float(hidden_loss(student, teacher, torch.tensor([[1, 1, 0]]))) == 0.0
    assert float(hidden_loss(student, teacher, torch.tensor([[1, 1, 1]]))) > 0.0


def test_attention_loss_compares_head_averages_when_head_counts_differ() -> None:
    uniform = torch.full((1, 2, 3, 3), 1 / 3)
    peaked = torch.tensor([[0.98, 0.01, 0.01]]).expand(1, 4, 3, 3)
    mask = torch.ones(1, 3)
    assert float(attention_loss(uniform[:, :1].expand(1, 4, 3, 3), uniform, mask)) == \
        pytest.approx(0.0, abs=1e-6)
    assert float(attention_loss(peaked, uniform, mask)) > 0.5


def test_layer_map_spreads_student_layers_over_the_teacher() -> None:
    assert layer_map(3, 6) == [(1, 2), (2, 4), (3, 6)]
    assert layer_map(2, 2) == [(1, 1), (2, 2)]


def test_select_layers_accepts_lists_counts_and_every_other() -> None:
    assert select_layers(6, "every_other") == [0, 2, 4]
    assert select_layers(6, 3) == [0, 2, 4]
    assert select_layers(6, [5, 1]) == [1, 5]
    assert select_layers(6, None) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(DistilError):
        select_layers(6, [6])
    with pytest.raises(DistilError):
        select_layers(6, 7)


def test_student_cut_from_the_teacher_keeps_its_layer_weights(tiny_repo: TinyRepo) -> None:
    teacher, _ = load_classifier(tiny_repo.sst2_teacher)
    student, _ = init_student(str(tiny_repo.sst2_teacher), SST2, [1])
    assert student.config.num_hidden_layers == 1
    torch.testing.assert_close(student.bert.encoder.layer[0].output.dense.weight,
                               teacher.bert.encoder.layer[1].output.dense.weight)
    torch.testing.assert_close(student.classifier.weight, teacher.classifier.weight)


def test_teacher_logits_are_cached_and_reused(tiny_repo: TinyRepo, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    texts: list[str | tuple[str, str]] = ["the film was good", "a dull plot", "fun"]
    first = teacher_logits(tiny_repo.sst2_teacher, texts, 64, tmp_path)
    assert len(list(tmp_path.glob("teacher-logits-*.npy"))) == 1

    def no_teacher(*_: object) -> None:
        raise AssertionError("the teacher was run again")

    monkeypatch.setattr(teacher_engine, "load_classifier", no_teacher)
    np.testing.assert_array_equal(teacher_logits(tiny_repo.sst2_teacher, texts, 64, tmp_path),
                                  first)
    with pytest.raises(AssertionError, match="run again"):  # other texts miss the cache
        teacher_logits(tiny_repo.sst2_teacher, texts[:2], 64, tmp_path)


def _char_level_teacher(folder: Path) -> Path:
    """A teacher with another tokenizer: every word is split into letters."""
    return build_tiny_bert(folder, char_level=True)


def test_teacher_with_another_tokenizer_is_run_on_its_own_encoding(tmp_path: Path) -> None:
    teacher_dir = _char_level_teacher(tmp_path / "teacher")
    texts: list[str | tuple[str, str]] = ["the movie was wonderful", "boring"]
    model, tokenizer = load_classifier(teacher_dir)
    own = hf_tokenize(tokenizer, texts, 64, padding=True, return_tensors="pt")
    assert own["input_ids"].shape[1] > 6  # letters, not words
    with torch.no_grad():
        expected = model(**own).logits.numpy()
    np.testing.assert_allclose(teacher_logits(teacher_dir, texts, 64), expected, atol=1e-5)


def test_distillation_from_a_teacher_with_another_tokenizer_trains_the_student(
        tiny_repo: TinyRepo, tmp_path: Path) -> None:
    teacher_dir = _char_level_teacher(tmp_path / "teacher")
    train = load_split(SST2, "train", tiny_repo.data_dir).head(200)
    student, tokenizer = init_student(str(tiny_repo.base_model), SST2, 1)
    config = DistilConfig(epochs=2, batch_size=16, learning_rate=2e-3, max_length=64)
    out = distil(student, tokenizer, teacher_dir, train, config, tmp_path / "student")
    targets = teacher_logits(teacher_dir, train.texts[:50], 64)
    before = _student_logits(tiny_repo.base_model, train.texts[:50])
    after = _student_logits(out, train.texts[:50])
    assert _soft(after, targets) < _soft(before, targets)


def test_layer_transfer_refuses_tokenizers_that_do_not_line_up(
        tiny_repo: TinyRepo, tmp_path: Path) -> None:
    teacher_dir = _char_level_teacher(tmp_path / "teacher")
    train = load_split(SST2, "train", tiny_repo.data_dir).head(20)
    student, tokenizer = init_student(str(tiny_repo.base_model), SST2, 1)
    config = DistilConfig(epochs=1, batch_size=8, hidden_weight=1.0, max_length=64)
    with pytest.raises(DistilError, match="token-aligned"):
        distil(student, tokenizer, teacher_dir, train, config, tmp_path / "student")


def test_hidden_and_attention_transfer_train_a_narrower_student_through_a_projection(
        tiny_repo: TinyRepo, tmp_path: Path) -> None:
    """Student hidden 16 vs teacher 32: hidden states go through a learned projection."""
    from transformers import BertConfig, BertForSequenceClassification

    teacher, tokenizer = load_classifier(tiny_repo.sst2_teacher)
    config = BertConfig(vocab_size=teacher.config.vocab_size, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                        id2label=teacher.config.id2label, label2id=teacher.config.label2id,
                        attn_implementation="eager")
    torch.manual_seed(0)
    student = BertForSequenceClassification(config)
    train = load_split(SST2, "train", tiny_repo.data_dir).head(64)
    layered = DistilConfig(epochs=2, batch_size=16, learning_rate=2e-3, hidden_weight=1.0,
                           attention_weight=1.0, max_length=64)
    out = distil(student, tokenizer, tiny_repo.sst2_teacher, train, layered, tmp_path / "s")
    reloaded, _ = load_classifier(out)
    assert reloaded.config.hidden_size == 16
    assert not any(name.startswith("projection") for name, _ in reloaded.named_parameters())


def test_subsampled_distillation_uses_at_most_max_examples(tiny_repo: TinyRepo,
                                                           tmp_path: Path) -> None:
    train = Examples(["good", "bad", "fun", "dull"] * 10, [1, 0, 1, 0] * 10)
    student, tokenizer = init_student(str(tiny_repo.base_model), SST2, 1)
    config = DistilConfig(epochs=1, batch_size=4, max_examples=8, max_length=64)
    distil(student, tokenizer, tiny_repo.sst2_teacher, train, config, tmp_path / "s", tmp_path)
    with np.load(next(tmp_path.glob("teacher-logits-*.rows.npz"))) as cached:
        assert cached["logits"].shape == (40, 2)  # rows kept by their index in the split
        assert int(cached["done"].sum()) == 8  # but only the sampled ones computed


def test_teacher_logits_are_computed_once_per_row_across_stages(tiny_repo: TinyRepo,
                                                                 tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) \
        -> None:
    train = Examples([f"good film {i}" for i in range(30)], [1] * 30)
    asked: list[int] = []
    real = distill_module.teacher_logits

    def counting(teacher_dir: Path, texts: list[str], max_length: int,
                 **options: Path | None) -> np.ndarray:
        asked.append(len(texts))
        return real(teacher_dir, texts, max_length, **options)

    monkeypatch.setattr(distill_module, "teacher_logits", counting)
    first = teacher_logits_of(tiny_repo.sst2_teacher, train, list(range(0, 20)), 64, tmp_path)
    second = teacher_logits_of(tiny_repo.sst2_teacher, train, list(range(10, 30)), 64, tmp_path)
    assert asked == [20, 10]  # the second stage computes only the rows the first did not
    assert np.allclose(first[10:], second[:10])


def test_distil_command_cuts_layers_and_writes_a_student(tiny_repo: TinyRepo,
                                                         tmp_path: Path) -> None:
    from compress.__main__ import main

    out = tmp_path / "student"
    assert main(["distil", "--task", "sst2", "--teacher", str(tiny_repo.sst2_teacher),
                 "--layers", "1", "--data-dir", str(tiny_repo.data_dir), "--out", str(out),
                 "--max-train-examples", "64", "--batch-size", "16"]) == 0
    assert load_classifier(out)[0].config.num_hidden_layers == 1


def test_teacher_logits_are_saved_chunk_by_chunk_so_a_stopped_run_keeps_its_rows(
        tiny_repo: TinyRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train = Examples([f"fine film {i}" for i in range(25)], [1] * 25)
    real = distill_module.teacher_logits
    calls: list[int] = []

    def stops_on_the_third_chunk(teacher_dir: Path, texts: list[str], max_length: int,
                                 **options: Path | None) -> np.ndarray:
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the session stops here
        return real(teacher_dir, texts, max_length, **options)

    monkeypatch.setattr(distill_module, "LOGIT_CHUNK_ROWS", 10)
    monkeypatch.setattr(distill_module, "teacher_logits", stops_on_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        teacher_logits_of(tiny_repo.sst2_teacher, train, list(range(25)), 64, tmp_path)
    calls.clear()

    def counting(teacher_dir: Path, texts: list[str], max_length: int,
                 **options: Path | None) -> np.ndarray:
        calls.append(len(texts))
        return real(teacher_dir, texts, max_length, **options)

    monkeypatch.setattr(distill_module, "teacher_logits", counting)
    resumed = teacher_logits_of(tiny_repo.sst2_teacher, train, list(range(25)), 64, tmp_path)
    assert calls == [5]  # the two saved chunks are not computed again
    assert resumed.shape == (25, 2)


def test_a_bf16_training_run_keeps_its_teacher_logits_apart_from_fp32_runs(
        tiny_repo: TinyRepo, tmp_path: Path) -> None:
    from compress.device import TrainRuntime

    train = Examples(["good", "bad", "fun", "dull"] * 10, [1, 0, 1, 0] * 10)
    config = DistilConfig(epochs=1, batch_size=4, max_examples=8, max_length=64)
    for precision in ("fp32", "bf16"):
        student, tokenizer = init_student(str(tiny_repo.base_model), SST2, 1)
        distil(student, tokenizer, tiny_repo.sst2_teacher, train, config,
               tmp_path / precision, tmp_path / "cache", TrainRuntime("cpu", precision, 1))
    assert len(list((tmp_path / "cache").glob("teacher-logits-*.rows.npz"))) == 2
