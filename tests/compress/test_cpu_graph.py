"""CPU graphs run Add + LayerNormalization, not ORT's SkipLayerNormalization (compress/optimize.py
`split_skip_layer_norm`, contract/session.py): the same outputs, and ORT does not fuse them back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from app.core.service import slow_cpu_graphs
from compress.optimize import operator_counts, split_skip_layer_norm
from contract.artifact import read_manifest
from contract.session import CPU_DISABLED_OPTIMIZERS, default_disabled_optimizers, open_session

HIDDEN = 16


def _skip_layer_norm_graph(path: Path, with_bias: bool, with_beta: bool, opset: int = 17) -> Path:
    """input, skip -> SkipLayerNormalization -> MatMul (a consumer, as in an encoder)."""
    rng = np.random.default_rng(0)
    weights = {name: rng.normal(size=HIDDEN).astype(np.float32) for name in ("gamma", "beta", "bias")}
    weights["w"] = rng.normal(size=(HIDDEN, HIDDEN)).astype(np.float32)
    inputs = ["x", "skip", "gamma", "beta" if with_beta else "", "bias" if with_bias else ""]
    while not inputs[-1]:
        inputs.pop()
    nodes = [helper.make_node("SkipLayerNormalization", inputs, ["normed"], name="sln",
                              domain="com.microsoft", epsilon=1e-12),
             helper.make_node("MatMul", ["normed", "w"], ["y"], name="mm")]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "seq", HIDDEN])
         for n in ("x", "skip")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    result: np.ndarray = session.run(["y"], feeds)[0]
    return result


def _feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {name: rng.normal(size=(3, 5, HIDDEN)).astype(np.float32) for name in ("x", "skip")}


@pytest.mark.parametrize(("with_bias", "with_beta"), [(True, True), (False, True), (True, False)])
def test_split_skip_layer_norm_gives_the_fused_kernels_outputs(
        tmp_path: Path, with_bias: bool, with_beta: bool) -> None:
    fused = _skip_layer_norm_graph(tmp_path / "fused.onnx", with_bias, with_beta)
    split = tmp_path / "split.onnx"
    split.write_bytes(fused.read_bytes())
    assert split_skip_layer_norm(split) == 1
    counts = operator_counts(split)
    assert "SkipLayerNormalization" not in counts
    assert counts["LayerNormalization"] == 1
    assert counts["Add"] == (2 if with_bias else 1)
    np.testing.assert_allclose(_run(split, _feeds()), _run(fused, _feeds()), rtol=1e-4, atol=1e-4)


def test_split_leaves_a_graph_without_opset_17_layer_norm_alone(tmp_path: Path) -> None:
    graph = _skip_layer_norm_graph(tmp_path / "old.onnx", True, True, opset=14)
    assert split_skip_layer_norm(graph) == 0
    assert operator_counts(graph)["SkipLayerNormalization"] == 1


def test_a_cpu_session_keeps_add_and_layer_norm_apart(tmp_path: Path) -> None:
    graph = _skip_layer_norm_graph(tmp_path / "g.onnx", True, True)
    split_skip_layer_norm(graph)

    def optimized_ops(disabled: tuple[str, ...]) -> dict[str, int]:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"opt{len(disabled)}.onnx")
        ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"],
                             disabled_optimizers=list(disabled) or None)
        return operator_counts(tmp_path / f"opt{len(disabled)}.onnx")

    assert "SkipLayerNormalization" in optimized_ops(())  # ORT's default fuses them back
    kept = optimized_ops(default_disabled_optimizers(["CPUExecutionProvider"]))
    assert "SkipLayerNormalization" not in kept
    assert kept["LayerNormalization"] == 1


def test_only_cpu_only_sessions_go_without_the_fusion() -> None:
    assert default_disabled_optimizers(["CPUExecutionProvider"]) == CPU_DISABLED_OPTIMIZERS
    assert default_disabled_optimizers([("CUDAExecutionProvider", {"device_id": "0"}),
                                        "CPUExecutionProvider"]) == ()


def test_open_session_runs_the_split_graph(tmp_path: Path) -> None:
    fused = _skip_layer_norm_graph(tmp_path / "fused.onnx", True, True)
    split = tmp_path / "split.onnx"
    split.write_bytes(fused.read_bytes())
    split_skip_layer_norm(split)
    got = open_session(split, threads=1).run(["y"], _feeds())[0]
    np.testing.assert_allclose(got, _run(fused, _feeds()), rtol=1e-4, atol=1e-4)


def test_a_server_names_cpu_graphs_built_before_the_split(fast_repo: Path) -> None:
    manifest = read_manifest(fast_repo / "sst2")
    assert slow_cpu_graphs(manifest, ["fp32", "cpu-int8", "gpu-fp16"]) == []  # built now: split
    old = manifest.variants["cpu-int8"]
    manifest.variants["cpu-int8"] = old.model_copy(update={
        "operators": {**old.operators, "SkipLayerNormalization": 12}})
    assert slow_cpu_graphs(manifest, ["cpu-int8", "gpu-fp16"]) == ["cpu-int8"]
