"""SmoothQuant (Xiao et al. 2023) on a fused fp32 graph, before static INT8.

Transformer activations have a few outlier channels (after LayerNorm, 10-15x the median channel's
range on MiniLM), and one per-tensor activation scale spends most of INT8's 256 steps on them. For
every node that will become an integer GEMM (Attention's packed QKV weights, a MatMul with a
weight initializer) this inserts `x * (1 / s)` before it and scales the weight's input rows by `s`,
with `s_j = max|x_j| ** alpha / max|W_j| ** (1 - alpha)`: in fp32 the graph computes the same
function (up to rounding), and the quantizer sees flatter activations and slightly rougher
weights. The inserted `Mul` works on each row alone, so the graph stays batch-invariant.

The `Mul` costs 3% at batch 1 and 6% in batches of 16 on the demo model (bench.int8); folding it
into the `QuantizeLinear` as a per-channel scale computes the same but ran 4x slower on ORT's CPU
kernels (its per-axis path is not vectorised), so it stays a node of its own.

ORT's own SmoothQuant option needs Intel Neural Compressor's ONNX adaptor (a large dependency tree
for one transform) and only applies to its QDQ static path, not to the dynamic-then-frozen graph
this project serves; hence these few lines.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from contract.artifact import CompressError
from contract.session import open_session

Feeds = dict[str, np.ndarray]
# Measured on a MiniLM-L6 SST-2 model on an AVX512-VNNI/AMX CPU (docs/compression.md, "INT8 that
# keeps accuracy"): labels equal to fp32 on 98.7% of dev at 0 (off), 97.4% at 0.5, 99.3-99.5% at
# 0.75-0.85.
DEFAULT_ALPHA = 0.8
SMOOTHED_OPS = ("Attention", "MatMul")
# Channels that never fire or weight rows that are all zero keep a scale of 1.
MIN_MAGNITUDE = 1e-5


def smoothable_nodes(model: onnx.ModelProto) -> list[int]:
    """Indices of the nodes whose second input is a 2-D weight initializer (the integer GEMMs)."""
    weights = {i.name for i in model.graph.initializer if len(i.dims) == 2}
    uses = Counter(name for n in model.graph.node for name in n.input)
    # A weight two nodes share (tied) cannot carry two nodes' scales.
    return [index for index, n in enumerate(model.graph.node)
            if n.op_type in SMOOTHED_OPS and len(n.input) > 1 and n.input[1] in weights
            and uses[n.input[1]] == 1]


def channel_maxima(graph: Path, inputs: list[str], batches: Iterable[Feeds]) -> dict[str, np.ndarray]:
    """max |x_j| over every token of every batch, per last-axis channel, for each named tensor."""
    model = onnx.load(str(graph))
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_empty_tensor_value_info(name)
                              for name in inputs if name not in known)
    probe = graph.with_name(graph.stem + ".smooth-probe.onnx")
    onnx.save(model, str(probe))
    maxima: dict[str, np.ndarray] = {}
    try:
        session = open_session(probe)
        for feeds in batches:
            for name, value in zip(inputs, session.run(inputs, feeds), strict=True):
                found = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
                maxima[name] = np.maximum(maxima[name], found) if name in maxima else found
    finally:
        probe.unlink(missing_ok=True)
    if len(maxima) != len(inputs):
        raise CompressError("smoothing needs at least one calibration batch")
    return maxima


def smoothing_scales(activation_max: np.ndarray, weight: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = max|x_j|^alpha / max|W_j|^(1-alpha), 1 where either side is (near) zero."""
    weight_max = np.abs(weight).max(axis=1)
    live = (activation_max > MIN_MAGNITUDE) & (weight_max > MIN_MAGNITUDE)
    scales = np.ones_like(activation_max, dtype=np.float32)
    scales[live] = (activation_max[live] ** alpha / weight_max[live] ** (1.0 - alpha))
    return scales.astype(np.float32)


def smooth_graph(graph: Path, out_path: Path, batches: Iterable[Feeds],
                 alpha: float = DEFAULT_ALPHA) -> int:
    """Write `graph` smoothed for INT8 to `out_path`; returns how many nodes were smoothed."""
    if not 0.0 < alpha <= 1.0:
        raise CompressError(f"smoothing alpha {alpha}: expected a value in (0, 1]")
    model = onnx.load(str(graph))
    targets = set(smoothable_nodes(model))
    nodes = list(model.graph.node)
    maxima = channel_maxima(graph, sorted({nodes[i].input[0] for i in targets}), batches)
    initializers = {i.name: i for i in model.graph.initializer}
    ordered: list[onnx.NodeProto] = []
    for index, node in enumerate(nodes):
        if index in targets:
            ordered.append(_smooth_node(node, f"{node.op_type}_{index}", initializers,
                                        maxima[node.input[0]], alpha, model))
        ordered.append(node)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return len(targets)


def _smooth_node(node: onnx.NodeProto, fallback_name: str,
                 initializers: dict[str, onnx.TensorProto], activation_max: np.ndarray,
                 alpha: float, model: onnx.ModelProto) -> onnx.NodeProto:
    """Scale `node`'s weight rows in place, point it at a new `x * (1 / s)`; returns that Mul."""
    weight = numpy_helper.to_array(initializers[node.input[1]])
    scales = smoothing_scales(activation_max, weight, alpha)
    initializers[node.input[1]].CopyFrom(
        numpy_helper.from_array((weight * scales[:, None]).astype(np.float32), node.input[1]))
    name = node.name or fallback_name
    inverse, smoothed = f"{name}_smooth_inverse", f"{node.input[0]}_smoothed_for_{name}"
    model.graph.initializer.append(numpy_helper.from_array(1.0 / scales, inverse))
    mul = helper.make_node("Mul", [node.input[0], inverse], [smoothed], name=f"{name}_smooth")
    node.input[0] = smoothed
    return mul
