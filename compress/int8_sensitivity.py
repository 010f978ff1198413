"""Which nodes cost INT8 its accuracy: a per-node sensitivity sweep, and the most sensitive nodes
kept in fp32.

Each node ORT's quantizer would turn into an integer kernel (Attention, MatMul, the embedding's
layer norm, ...) is quantized alone, with static scales calibrated as the served graph's are,
and scored by how far the graph's logits move from the fp32 graph's on the calibration texts
(mean squared difference; label flips reported beside it). Keeping the top nodes in fp32 trades a
little speed for fidelity and stays batch-invariant: a float node computes each row on its own.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from compress.quantize import Feeds, WeightFormat, quantize_static_int8
from compress.smooth import DEFAULT_ALPHA
from contract.session import open_session

# What ORT's dynamic quantizer quantizes in a fused transformer graph.
QUANTIZED_OPS = ("Attention", "MatMul", "Gemm", "EmbedLayerNormalization", "Gather")


@dataclass(frozen=True)
class NodeSensitivity:
    """How far quantizing one node alone moves the logits from fp32's."""

    node: str
    op_type: str
    mse: float
    label_flips: int


def quantizable_nodes(fused: Path) -> list[tuple[str, str]]:
    """(name, op type) of every named node the quantizer would make integer."""
    model = onnx.load(str(fused), load_external_data=False)
    weights = {t.name for t in model.graph.initializer}
    return [(n.name, n.op_type) for n in model.graph.node
            if n.op_type in QUANTIZED_OPS and n.name and any(i in weights for i in n.input)]


def _logits(graph: Path, batches: Sequence[Feeds]) -> np.ndarray:
    session = open_session(graph, threads=1)
    output = session.get_outputs()[0].name
    return np.concatenate([session.run([output], feeds)[0] for feeds in batches])


def sensitivity(fused: Path, calibration: Callable[[], Sequence[Feeds]],
                smooth_alpha: float = DEFAULT_ALPHA,
                weights: WeightFormat = "s7") -> list[NodeSensitivity]:
    """Every quantizable node, most sensitive first (`calibration`: one text per batch)."""
    batches = calibration()
    reference = _logits(fused, batches)
    scores = []
    with tempfile.TemporaryDirectory() as scratch:
        graph = Path(scratch) / "one.onnx"
        for name, op_type in quantizable_nodes(fused):
            quantize_static_int8(fused, graph, batches, only=[name], smooth_alpha=smooth_alpha,
                                 weights=weights)
            got = _logits(graph, batches)
            scores.append(NodeSensitivity(
                name, op_type, float(np.mean((got - reference) ** 2)),
                int(np.sum(got.argmax(-1) != reference.argmax(-1)))))
    return sorted(scores, key=lambda s: s.mse, reverse=True)


def most_sensitive(scores: Sequence[NodeSensitivity], count: int) -> list[str]:
    """Names of the `count` nodes to keep in fp32."""
    return [s.node for s in scores[:count]]
