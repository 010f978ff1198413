"""Bring your own checkpoint: tiny random classifiers of every supported architecture, each with a
tokenizer of its family trained here, packaged by the real chain and served by a real server; the
served answers are those of the same INT8 graph run in-process."""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from compress.build import BuildPlan, package_artifact
from compress.packaging import spec_for_checkpoint
from compress.tiny_models import ARCHITECTURES, build_tiny_classifier
from contract.artifact import Manifest, read_manifest, write_manifest
from contract.encoding import encode, load_tokenizer, pad_batch, softmax
from contract.predictor import OnnxPredictor
from tests.conftest import (
    FILLER,
    NEGATIVE,
    POSITIVE,
    RunningServer,
    _sentence,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.slow
# Pair tasks for two families: RoBERTa-style <s> A </s></s> B </s> and SentencePiece [CLS] A [SEP] B.
PAIR_TASKS = ("xlm-roberta", "albert")


@dataclass(frozen=True)
class Zoo:
    repo: Path
    checkpoints: dict[str, Path]


def corpus(count: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [_sentence(rng, POSITIVE + NEGATIVE) for _ in range(count)]


def texts_of(arch: str, count: int = 12) -> list[str | tuple[str, str]]:
    rng = random.Random(7)
    singles = [_sentence(rng, POSITIVE + NEGATIVE) for _ in range(2 * count)]
    if arch in PAIR_TASKS:
        return [(singles[2 * i], singles[2 * i + 1]) for i in range(count)]
    return list(singles[:count])


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    work = tmp_path_factory.mktemp("zoo")
    sentences = corpus()
    checkpoints = {}
    for arch in ARCHITECTURES:
        # MPNet's tokenizer here emits token_type_ids, which MPNet has no input for (as some
        # saved MPNet tokenizers do): the export must follow the model, not the tokenizer.
        names = ["input_ids", "token_type_ids", "attention_mask"] if arch == "mpnet" else None
        checkpoint = build_tiny_classifier(arch, work / "hf" / arch, sentences,
                                           model_input_names=names)
        kind = "pair" if arch in PAIR_TASKS else "single"
        spec = spec_for_checkpoint(checkpoint, None, f"tiny-{arch}", kind, 64)
        plan = BuildPlan(spec=spec, base_model=str(checkpoint), out_dir=work / "models" / spec.name,
                         work_dir=work / "runs" / arch)
        package_artifact(spec, checkpoint, None, plan)
        checkpoints[arch] = checkpoint
    return Zoo(work / "models", checkpoints)


@pytest.fixture(scope="module")
def zoo_server(zoo: Zoo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(zoo.repo, tmp_path_factory.mktemp("zoo-log") / "server.log",
                          FFS_CPU_POOL__WORKERS="1")
    yield server
    stop_server(server)


def manifest_of(zoo: Zoo, arch: str) -> Manifest:
    return read_manifest(zoo.repo / f"tiny-{arch}")


def in_process_scores(folder: Path, manifest: Manifest, texts: list[str | tuple[str, str]]) \
        -> np.ndarray:
    """Each text alone (batch 1, as the server runs one request of one text) on the INT8 graph."""
    predictor = OnnxPredictor(folder / "cpu-int8" / "model.onnx", folder / manifest.tokenizer,
                             manifest.model_inputs, manifest.max_length, manifest.pad_token_id)
    return np.concatenate([softmax(predictor.logits([text])) for text in texts])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_served_answers_equal_the_int8_graph_in_process(zoo: Zoo, zoo_server: RunningServer,
                                                         arch: str) -> None:
    manifest = manifest_of(zoo, arch)
    texts = texts_of(arch)
    expected = in_process_scores(zoo.repo / manifest.task, manifest, texts)
    served = []
    with httpx.Client(base_url=zoo_server.url, timeout=30) as client:
        for text in texts:  # one text per request: each runs alone, as in-process
            body = {"inputs": [text if isinstance(text, str) else list(text)],
                    "return_all_scores": True}
            response = client.post(f"/v1/classify/{manifest.task}", json=body)
            assert response.status_code == 200, response.text
            served.append([response.json()["results"][0]["scores"][n] for n in manifest.labels])
    np.testing.assert_allclose(np.array(served), expected, atol=1e-5)
    assert [manifest.labels[i] for i in np.array(served).argmax(1)] == \
        [manifest.labels[i] for i in expected.argmax(1)]


def test_graph_inputs_follow_the_model_not_the_tokenizer(zoo: Zoo) -> None:
    assert manifest_of(zoo, "mpnet").model_inputs == ["input_ids", "attention_mask"]
    assert manifest_of(zoo, "distilbert").model_inputs == ["input_ids", "attention_mask"]
    assert manifest_of(zoo, "roberta").model_inputs == ["input_ids", "attention_mask"]
    assert manifest_of(zoo, "bert").model_inputs == \
        ["input_ids", "attention_mask", "token_type_ids"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_expected_fusion_applies_and_the_others_say_why(zoo: Zoo, arch: str) -> None:
    variant = manifest_of(zoo, arch).variants["cpu-int8"]
    assert variant.fusions_missing == []
    assert variant.fusions.get("SkipLayerNormalization", 0) > 0
    if arch in ("mpnet", "deberta-v2"):
        assert "Attention" in variant.fusions_unsupported
    else:
        assert variant.fusions.get("Attention", 0) > 0
    assert all(why for why in variant.fusions_unsupported.values())


def test_a_checkpoint_without_dev_data_is_checked_not_scored(zoo: Zoo) -> None:
    manifest = manifest_of(zoo, "roberta")
    assert not manifest.evaluated and manifest.metrics == []
    checks = {check.variant: check for check in manifest.checks if check.reference == "fp32"}
    assert set(checks) == {"cpu-int8", "gpu-fp16"}
    assert checks["gpu-fp16"].texts == 64
    assert checks["gpu-fp16"].max_abs_logit_diff < 0.01
    assert checks["gpu-fp16"].label_agreement >= 0.95


def test_labels_come_from_the_checkpoint_config(zoo: Zoo, tmp_path: Path) -> None:
    import json

    folder = tmp_path / "ckpt"
    build_tiny_classifier("bert", folder, corpus(100), labels=("spam", "ham", "eggs"))
    spec = spec_for_checkpoint(folder, None, None, "single", None)
    assert spec.label_names == ["spam", "ham", "eggs"]
    assert spec.name == "ckpt" and spec.max_length == 128
    config = json.loads((folder / "config.json").read_text())
    config["problem_type"] = "multi_label_classification"
    (folder / "config.json").write_text(json.dumps(config))
    assert spec_for_checkpoint(folder, None, None, "single", None).problem_type == "multi_label"


def test_pair_windows_keep_the_first_text_whole(zoo: Zoo) -> None:
    manifest = manifest_of(zoo, "albert")
    windows_tokenizer = load_tokenizer(zoo.repo / manifest.task / manifest.tokenizer, 24,
                                       stride=4, pairs=True)
    from contract.encoding import encode_windows

    long_text = " ".join(FILLER * 3)
    [windows] = encode_windows(windows_tokenizer, [("is it good", long_text)])
    first = encode(load_tokenizer(zoo.repo / manifest.task / manifest.tokenizer, 64),
                   ["is it good"])[0].ids[:-1]
    assert len(windows) > 2
    assert all(w.ids[: len(first)].tolist() == first.tolist() for w in windows)
    feeds = pad_batch(windows, manifest.model_inputs, manifest.pad_token_id)
    assert feeds["input_ids"].shape == (len(windows), 24)


@pytest.mark.parametrize("arch", ["distilbert", "mpnet", "roberta"])
def test_distils_into_fewer_layers(zoo: Zoo, arch: str, tmp_path: Path) -> None:
    from compress.checkpoint import load_classifier
    from compress.distill import DistilConfig, distil, init_student
    from compress.tasks import Examples

    spec = spec_for_checkpoint(zoo.checkpoints[arch], None, "d", "single", 64)
    model, tokenizer = init_student(str(zoo.checkpoints[arch]), spec, 1)
    texts: list[str | tuple[str, str]] = list(corpus(64, seed=3))
    train = Examples(texts, [0, 1] * 32)
    out = distil(model, tokenizer, zoo.checkpoints[arch], train,
                 DistilConfig(epochs=1.0, batch_size=16, max_length=32), tmp_path / "student")
    student, _ = load_classifier(out)
    assert student.config.num_hidden_layers == 1


@pytest.mark.parametrize("arch", ["distilbert", "mpnet", "deberta-v2"])
def test_pruning_other_layouts_is_refused_with_what_is_supported(zoo: Zoo, arch: str) -> None:
    from compress.checkpoint import CheckpointError, load_classifier
    from compress.prune import PruneLevel

    model, _ = load_classifier(zoo.checkpoints[arch])
    with pytest.raises(CheckpointError, match="structured pruning supports bert, roberta"):
        PruneLevel.from_ratio(model, 0.5)


def test_a_tokenizer_file_that_encodes_otherwise_is_refused(zoo: Zoo) -> None:
    from transformers import AutoTokenizer

    from compress.build import check_tokenizer_parity
    from contract.artifact import CompressError

    bert = zoo.checkpoints["bert"]
    other = zoo.checkpoints["roberta"] / "tokenizer.json"  # another family and vocabulary
    with pytest.raises(CompressError, match="the served model would see other ids"):
        check_tokenizer_parity(bert, AutoTokenizer.from_pretrained(bert), other,
                               ["the movie was good"], 64)


def test_a_task_whose_labels_differ_from_the_checkpoint_is_refused(zoo: Zoo) -> None:
    from compress.tasks import get_task
    from contract.artifact import CompressError

    with pytest.raises(CompressError, match=r"its labels \(id2label\) are \['negative', "
                                            r"'positive'\], but task rte lists"):
        spec_for_checkpoint(zoo.checkpoints["bert"], get_task("rte"), None, "single", None)


def test_package_command_without_data_says_no_accuracy_was_measured(zoo: Zoo,
                                                                    tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    texts = tmp_path / "texts.txt"
    texts.write_text("the film was good\nthe plot was dull and weak\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "compress", "package", "--checkpoint",
         str(zoo.checkpoints["distilbert"]), "--name", "mine", "--check-texts", str(texts),
         "--out", str(tmp_path / "models" / "mine"), "--work-dir", str(tmp_path / "runs")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no accuracy measured" in done.stdout
    manifest = read_manifest(tmp_path / "models" / "mine")
    assert not manifest.evaluated
    assert [(c.variant, c.reference, c.texts) for c in manifest.checks] == [
        ("cpu-int8", "fp32", 2), ("gpu-fp16", "fp32", 2),
        ("fp32", "batch 1", 2), ("cpu-int8", "batch 1", 2)]


def test_models_of_one_task_from_every_architecture_are_served_side_by_side(
        zoo: Zoo, tmp_path: Path) -> None:
    """The zoo's single-text artifacts as one task (`sentiment`), each under its own name: one
    repository serves them all, each answering as its own graph does."""
    repo = tmp_path / "models"
    singles = [arch for arch in ARCHITECTURES if arch not in PAIR_TASKS]
    for arch in singles:
        folder = repo / arch
        shutil.copytree(zoo.repo / f"tiny-{arch}", folder)
        manifest = read_manifest(folder)
        write_manifest(folder, manifest.model_copy(update={"task": "sentiment", "name": arch}))
    server = start_server(repo, tmp_path / "server.log", FFS_CPU_POOL__WORKERS="1")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            cards = client.get("/v1/models").json()["models"]
            assert sorted((c["name"], c["task"]) for c in cards) == \
                sorted((arch, "sentiment") for arch in singles)
            text = texts_of("bert", 1)[0]
            for arch in singles:
                answer = client.post(f"/v1/classify/{arch}",
                                     json={"inputs": [text], "return_all_scores": True})
                assert answer.status_code == 200, answer.text
                manifest = read_manifest(repo / arch)
                expected = in_process_scores(repo / arch, manifest, [text])[0]
                served = [answer.json()["results"][0]["scores"][n] for n in manifest.labels]
                np.testing.assert_allclose(served, expected, atol=1e-5)
    finally:
        stop_server(server)
