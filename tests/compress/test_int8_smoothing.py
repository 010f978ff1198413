"""SmoothQuant before static INT8: the fp32 function is unchanged, the quantized activations are
flatter, an outlier channel no longer costs the other channels their precision, and the served
graph stays batch-invariant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress.build import Calibration, Variants, make_variants
from compress.quantize import Int8Settings, calibration_batches, quantize_static_int8
from compress.smooth import channel_maxima, smooth_graph, smoothable_nodes, smoothing_scales
from compress.tasks import get_task, load_split
from contract.artifact import CompressError
from contract.predictor import OnnxPredictor
from contract.session import open_session
from tests.conftest import TinyRepo

SST2 = get_task("sst2")


def _matmul_graph(path: Path, weight: np.ndarray, tied: bool = False) -> Path:
    """x [rows, in] @ W -> y; with `tied`, a second MatMul reads the same W."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="proj")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, weight.shape[1]])]
    if tied:
        nodes.append(helper.make_node("MatMul", ["x", "W"], ["z"], name="tied"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT,
                                                     [None, weight.shape[1]]))
    graph = helper.make_graph(
        nodes, "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                    [None, weight.shape[0]])],
        outputs, [numpy_helper.from_array(weight.astype(np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _outlier_inputs(rows: int, seed: int) -> np.ndarray:
    """Activations with one channel 40x the others, as after a transformer's LayerNorm."""
    x = np.random.default_rng(seed).normal(size=(rows, 32)).astype(np.float32)
    x[:, 5] *= 40.0
    return x


def test_a_scale_is_one_where_the_channel_or_the_weight_row_is_silent() -> None:
    weight = np.array([[0.5, -2.0], [0.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    scales = smoothing_scales(np.array([4.0, 3.0, 0.0], dtype=np.float32), weight, alpha=0.5)
    assert scales[0] == pytest.approx((4.0 ** 0.5) / (2.0 ** 0.5))
    assert scales[1] == 1.0 and scales[2] == 1.0


def test_a_weight_two_nodes_share_is_not_smoothed(tmp_path: Path) -> None:
    weight = np.ones((32, 4), dtype=np.float32)
    assert smoothable_nodes(onnx.load(str(_matmul_graph(tmp_path / "one.onnx", weight)))) == [0]
    tied = onnx.load(str(_matmul_graph(tmp_path / "tied.onnx", weight, tied=True)))
    assert smoothable_nodes(tied) == []


def test_alpha_outside_zero_to_one_is_refused(tmp_path: Path) -> None:
    graph = _matmul_graph(tmp_path / "mm.onnx", np.ones((32, 4), dtype=np.float32))
    with pytest.raises(CompressError, match="alpha"):
        smooth_graph(graph, tmp_path / "out.onnx", [{"x": _outlier_inputs(4, 0)}], alpha=1.5)


def test_smoothing_an_outlier_channel_brings_int8_closer_to_fp32(tmp_path: Path) -> None:
    weight = np.random.default_rng(1).normal(size=(32, 16)).astype(np.float32)
    weight[5] *= 0.2  # the outlier channel's weight row is small (SmoothQuant's observation)
    graph = _matmul_graph(tmp_path / "mm.onnx", weight)
    calibration = [{"x": row[None, :]} for row in _outlier_inputs(200, 2)]
    test = _outlier_inputs(300, 3)
    (expected,) = open_session(graph).run(None, {"x": test})
    error = {}
    for alpha in (0.0, 0.8):
        out = tmp_path / f"int8-{alpha}.onnx"
        quantize_static_int8(graph, out, calibration, smooth_alpha=alpha)
        (got,) = open_session(out).run(None, {"x": test})
        error[alpha] = float(np.mean((got - expected) ** 2))
    assert error[0.8] < 0.5 * error[0.0]


# -- on a tiny BERT's fused graph -------------------------------------------------------------

@pytest.fixture(scope="module")
def fused(tiny_repo: TinyRepo, tmp_path_factory: pytest.TempPathFactory) -> Variants:
    train = load_split(SST2, "train", tiny_repo.data_dir)
    return make_variants(tiny_repo.sst2_teacher, tmp_path_factory.mktemp("smooth"),
                         train.texts[:8], Calibration(list(train.texts[:200]), "200 train"), 64)


def _batches(tiny_repo: TinyRepo, names: list[str], count: int) -> list[dict[str, np.ndarray]]:
    texts = load_split(SST2, "train", tiny_repo.data_dir).texts[:count]
    return list(calibration_batches(tiny_repo.sst2_teacher / "tokenizer.json", texts, names, 64))


def test_smoothing_keeps_the_fp32_graphs_logits(fused: Variants, tiny_repo: TinyRepo,
                                                tmp_path: Path) -> None:
    names = fused.exported.input_names
    smoothed = tmp_path / "smoothed.onnx"
    assert smooth_graph(fused.fused, smoothed, _batches(tiny_repo, names, 50), alpha=0.8) > 0
    texts = load_split(SST2, "dev", tiny_repo.data_dir).texts
    tokenizer = tiny_repo.sst2_teacher / "tokenizer.json"
    before = OnnxPredictor(fused.fused, tokenizer, names, 64).logits_in_batches(texts)
    after = OnnxPredictor(smoothed, tokenizer, names, 64).logits_in_batches(texts)
    np.testing.assert_allclose(after, before, atol=1e-4)


def test_at_alpha_one_every_quantized_input_channel_peaks_at_one(
        fused: Variants, tiny_repo: TinyRepo, tmp_path: Path) -> None:
    batches = _batches(tiny_repo, fused.exported.input_names, 50)
    smoothed = tmp_path / "smoothed.onnx"
    smooth_graph(fused.fused, smoothed, batches, alpha=1.0)
    model = onnx.load(str(smoothed))
    inputs = sorted({model.graph.node[i].input[0] for i in smoothable_nodes(model)})
    assert inputs and all("_smoothed_for_" in name for name in inputs)
    for name, peak in channel_maxima(smoothed, inputs, batches).items():
        live = peak[peak > 1e-4]
        np.testing.assert_allclose(live, 1.0, rtol=1e-3, err_msg=name)


def test_the_served_int8_graph_is_smoothed_and_batch_invariant(
        fused: Variants, tiny_repo: TinyRepo) -> None:
    ops = [n for n in onnx.load(str(fused.int8)).graph.node]
    assert any(n.op_type == "Mul" and n.name.endswith("_smooth") for n in ops)
    assert fused.calibration is not None and "SmoothQuant alpha 0.8" in fused.calibration
    texts = load_split(SST2, "dev", tiny_repo.data_dir).texts
    int8 = OnnxPredictor(fused.int8, tiny_repo.sst2_teacher / "tokenizer.json",
                         fused.exported.input_names, 64)
    alone = np.concatenate([int8.logits([text]) for text in texts])
    np.testing.assert_allclose(int8.logits_in_batches(texts, batch_size=16), alone, atol=1e-4)


def test_alpha_zero_gives_the_plain_static_graph(tiny_repo: TinyRepo, tmp_path: Path) -> None:
    train = load_split(SST2, "train", tiny_repo.data_dir)
    made = make_variants(tiny_repo.sst2_teacher, tmp_path, train.texts[:8],
                         Calibration(list(train.texts[:100]), "100 train"), 64,
                         Int8Settings(smooth_alpha=0.0))
    ops = onnx.load(str(made.int8)).graph.node
    assert not any(n.name.endswith("_smooth") for n in ops)
    assert made.calibration is not None and "SmoothQuant" not in made.calibration
