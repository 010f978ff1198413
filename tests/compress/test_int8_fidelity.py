"""A served answer is the model's answer: static INT8 gives a row the same logits alone and in any
batch, the build says which INT8 it made, and the accuracy served over HTTP is the manifest's."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compress.build import BuildPlan, package_artifact
from compress.evaluate import INVARIANCE_TOLERANCE
from compress.packaging import spec_for_checkpoint
from compress.quantize import ActivationRange, Int8Settings, activation_ranges, freeze_activation_scales
from compress.tasks import get_task, load_split
from contract.artifact import Manifest, read_manifest
from contract.predictor import OnnxPredictor
from contract.session import open_session
from tests.conftest import FILLER, NEGATIVE, POSITIVE, RunningServer, TinyRepo


def _dynamic_quantize_graph(path: Path) -> Path:
    """x -> DynamicQuantizeLinear -> (y, scale, zero point): ORT's own formula."""
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "scale", "zp"])
    graph = helper.make_graph(
        [node], "dql", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [None]),
         helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("zp", TensorProto.UINT8, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("low,high", [(-1.5, 3.0), (0.2, 7.0), (-4.0, -0.5), (-0.01, 0.02)])
def test_calibrated_range_gives_the_scale_dynamic_quantization_would(tmp_path: Path, low: float,
                                                                     high: float) -> None:
    session = open_session(_dynamic_quantize_graph(tmp_path / "dql.onnx"))
    _, scale, zero_point = session.run(None, {"x": np.array([low, high], dtype=np.float32)})
    ours = ActivationRange(low, high).scale_and_zero_point()
    assert ours[0] == pytest.approx(float(scale), rel=1e-6)
    assert ours[1] == int(zero_point)


def test_freezing_replaces_every_dynamic_quantization_and_runs(tmp_path: Path) -> None:
    graph = _dynamic_quantize_graph(tmp_path / "dql.onnx")
    ranges = activation_ranges(graph, [{"x": np.array([-1.0, 2.0], np.float32)},
                                       {"x": np.array([-3.0, 1.0], np.float32)}], percentile=100)
    assert ranges == {"x": ActivationRange(-3.0, 2.0)}
    # The frozen node keeps only its quantized output; the scale and zero point become constants.
    model = onnx.load(str(graph))
    del model.graph.output[1:]
    onnx.save(model, str(graph))
    out = tmp_path / "static.onnx"
    assert freeze_activation_scales(graph, ranges, out) == 1
    frozen = onnx.load(str(out))
    assert [n.op_type for n in frozen.graph.node] == ["QuantizeLinear"]
    (y,) = open_session(out).run(None, {"x": np.array([-3.0, 0.0, 2.0], np.float32)})
    assert y.tolist() == [0, 153, 255]


def test_calibration_percentile_drops_a_rare_outlier(tmp_path: Path) -> None:
    graph = _dynamic_quantize_graph(tmp_path / "dql.onnx")
    batches = [{"x": np.array([-1.0, 1.0], np.float32)} for _ in range(199)]
    batches.append({"x": np.array([-1.0, 50.0], np.float32)})
    assert activation_ranges(graph, batches, percentile=99).get("x") == ActivationRange(-1.0, 1.0)
    assert activation_ranges(graph, batches, percentile=100)["x"].high == 50.0


# -- a tiny BERT packaged both ways ----------------------------------------------------------

def _texts(count: int, seed: int) -> list[str]:
    """Mixed lengths (1 to 30 words), so that batches carry much padding."""
    rng = random.Random(seed)
    words = POSITIVE + NEGATIVE + FILLER
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 30))) for _ in range(count)]


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory, tiny_repo: TinyRepo) -> dict[str, Path]:
    """The tiny trained BERT packaged with static and with dynamic INT8 (a random model's logits
    hardly vary between inputs: INT8 noise would be as large as the signal)."""
    work = tmp_path_factory.mktemp("int8")
    checkpoint = tiny_repo.sst2_teacher
    spec = spec_for_checkpoint(checkpoint, None, "sst2", "single", 64)
    made = {}
    for int8 in ("static", "dynamic"):
        out = work / int8 / "sst2"
        plan = BuildPlan(spec=spec, base_model=str(checkpoint), out_dir=out,
                         work_dir=work / int8 / "runs",
                         int8=Int8Settings(int8))  # type: ignore[arg-type]
        package_artifact(spec, checkpoint, None, plan, _texts(64, seed=1))
        made[int8] = out
    return made


def _alone_and_mixed(folder: Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    manifest = read_manifest(folder)
    predictor = OnnxPredictor(folder / manifest.variants["cpu-int8"].file,
                              folder / manifest.tokenizer, manifest.model_inputs,
                              manifest.max_length, manifest.pad_token_id, threads=1)
    rows = predictor.encode(texts)
    alone = np.concatenate([predictor.run_rows([row]) for row in rows])
    mixed = np.zeros_like(alone)
    order = list(range(len(rows)))
    random.Random(5).shuffle(order)
    sizes = [1, 3, 8, 17, 32]
    start = 0
    while start < len(order):
        picked = order[start : start + sizes[start % len(sizes)]]
        mixed[picked] = predictor.run_rows([rows[i] for i in picked])
        start += len(picked)
    return alone, mixed


@pytest.mark.slow
def test_static_int8_gives_a_row_the_same_logits_alone_and_in_any_batch(
        packaged: dict[str, Path]) -> None:
    alone, mixed = _alone_and_mixed(packaged["static"], _texts(200, seed=7))
    assert np.abs(alone).max() > 1.0 and len(set(alone.argmax(1))) == 2  # a meaningful check
    assert np.abs(alone - mixed).max() <= INVARIANCE_TOLERANCE
    assert (alone.argmax(1) == mixed.argmax(1)).all()


@pytest.mark.slow
def test_dynamic_int8_logits_move_with_the_batch(packaged: dict[str, Path]) -> None:
    """The control: the same check tells the two apart."""
    alone, mixed = _alone_and_mixed(packaged["dynamic"], _texts(200, seed=7))
    assert np.abs(alone - mixed).max() > 10 * INVARIANCE_TOLERANCE


@pytest.mark.slow
def test_manifest_says_which_int8_it_is_and_whether_it_is_batch_invariant(
        packaged: dict[str, Path]) -> None:
    static = read_manifest(packaged["static"]).variants["cpu-int8"]
    dynamic = read_manifest(packaged["dynamic"]).variants["cpu-int8"]
    assert (static.quantization, static.batch_invariant) == ("static", True)
    assert static.calibration is not None and "64 check texts" in static.calibration
    assert (dynamic.quantization, dynamic.batch_invariant) == ("dynamic", False)
    checks = {(c.variant, c.reference) for c in read_manifest(packaged["static"]).checks}
    assert ("cpu-int8", "batch 1") in checks and ("cpu-int8", "fp32") in checks


# -- served accuracy ------------------------------------------------------------------------

def _manifest_accuracy(manifest: Manifest) -> float:
    return next(m.value for m in manifest.metrics
                if m.variant == "cpu-int8" and m.name == "accuracy")


def _served_labels(url: str, texts: list[str], per_request: int, concurrency: int) -> list[str]:
    chunks = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    with httpx.Client(base_url=url, timeout=60.0) as http:
        def ask(chunk: list[str]) -> list[str]:
            response = http.post("/v1/classify/sst2", json={"inputs": chunk})
            response.raise_for_status()
            return [r["label"] for r in response.json()["results"]]

        with ThreadPoolExecutor(concurrency) as pool:
            return [label for labels in pool.map(ask, chunks) for label in labels]


@pytest.mark.parametrize("per_request,concurrency", [(1, 1), (1, 8), (5, 4), (16, 3)])
def test_accuracy_served_over_http_is_the_manifests(server: RunningServer, tiny_repo: TinyRepo,
                                                    per_request: int, concurrency: int) -> None:
    manifest = read_manifest(tiny_repo.root / "sst2")
    dev = load_split(get_task("sst2"), "dev", tiny_repo.data_dir)
    texts = [str(t) for t in dev.texts]
    labels = _served_labels(server.url, texts, per_request, concurrency)
    correct = sum(manifest.labels.index(got) == gold for got, gold in zip(labels, dev.labels,
                                                                          strict=True))
    assert round(correct / len(texts), 6) == _manifest_accuracy(manifest)
