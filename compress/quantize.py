"""Stage 6 (CPU): INT8 with per-channel signed weights, in two flavours.

- **dynamic**: ORT's `quantize_dynamic`. Each `DynamicQuantizeLinear` takes one activation scale
  from the min/max of the whole tensor, so the rows of a batch (and their padding) move each
  other's logits: a sentence's label can depend on what it was batched with.
- **static** (the default, batch-invariant): the same graph with every `DynamicQuantizeLinear`
  replaced by a `QuantizeLinear` whose scale and zero point were calibrated once on training
  texts. Every row is then quantized the same way in any batch; the integer GEMMs accumulate
  exactly, so a row's logits do not depend on its neighbours. The kernels are the dynamic graph's
  (MatMulInteger, QAttention), so the speed is too, less the per-call min/max pass. Before
  quantizing, SmoothQuant moves the activations' outlier channels into the weights
  (compress/smooth.py), which keeps more labels equal to fp32's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from compress.smooth import DEFAULT_ALPHA, smooth_graph
from contract.artifact import CompressError, WeightFormat
from contract.encoding import TextInput, encode, load_tokenizer, pad_batch
from contract.session import open_session

Quantization = Literal["static", "dynamic"]
# How the weights of the integer GEMMs are stored (activations are always uint8):
# - s7: int8 per channel in [-64, 64] (ORT's reduce_range). Two u8 x s7 products fit the 16-bit
#   intermediate of AVX2 / AVX-512BW's `vpmaddubsw`, so no CPU family saturates and every x86
#   family computes the same integers: the answers measured at build hold on any x86 CPU.
# - s8: int8 per channel in [-128, 127]; exact on VNNI / AMX, saturates on AVX2 / AVX-512BW.
# - u8: uint8 per channel; ORT's u8 x u8 kernels widen to 16 bits first (exact, slower).
WEIGHT_FORMATS: tuple[WeightFormat, ...] = get_args(WeightFormat)
Feeds = dict[str, np.ndarray]
# Measured on SST-2 dev with the demo artifact (docs/benchmarks-log.md, "INT8 variants"): labels agreed
# with fp32 on 98.74% of sentences at min/max (100), 98.97% at 99.
CALIBRATION_PERCENTILE = 99.0


@dataclass(frozen=True)
class Int8Settings:
    """How a build makes its CPU INT8 graph."""

    quantization: Quantization = "static"
    keep_fp32: int = 0  # static: the most sensitive nodes (a per-node sweep) kept in fp32
    smooth_alpha: float = DEFAULT_ALPHA  # static: SmoothQuant's migration strength (0: off)
    weights: WeightFormat = "s7"

    def key(self) -> dict[str, object]:
        """What the INT8 graph depends on (a stage key): settings that static INT8 alone uses
        are left out of dynamic INT8's."""
        static = self.quantization == "static"
        return {"int8": self.quantization, "int8_keep_fp32": self.keep_fp32 if static else 0,
                "int8_smooth_alpha": self.smooth_alpha if static else 0.0,
                "int8_weights": self.weights}

    def describe(self) -> str:
        """For the manifest's calibration note."""
        return f"{self.weights} weights" + (
            f", SmoothQuant alpha {self.smooth_alpha:g}" if self.smooth_alpha else "")


def quantize_int8(in_path: Path, out_path: Path, keep_fp32: Sequence[str] = (),
                  only: Sequence[str] | None = None, weights: WeightFormat = "s7") -> None:
    """Quantize a fused fp32 graph to dynamic INT8 for the CPU pool; the nodes named in
    `keep_fp32` stay fp32 (or, with `only`, just those nodes are quantized).

    Signed weights run ~30% faster than QUInt8 on VNNI CPUs (see the formats above);
    DefaultTensorType works around ORT failing to type the weights of fused nodes ("Unable to find
    data type for weight_name").
    """
    out_path.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(
        str(in_path),
        str(out_path),
        per_channel=True,
        reduce_range=weights == "s7",
        weight_type=QuantType.QUInt8 if weights == "u8" else QuantType.QInt8,
        nodes_to_exclude=list(keep_fp32) or None,
        nodes_to_quantize=list(only) if only is not None else None,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


@dataclass(frozen=True)
class ActivationRange:
    """The calibrated range of one quantized activation, widened to include 0 as ORT does."""

    low: float
    high: float

    def scale_and_zero_point(self) -> tuple[float, int]:
        """uint8 asymmetric parameters, the formula of `DynamicQuantizeLinear`."""
        low, high = min(self.low, 0.0), max(self.high, 0.0)
        scale = (high - low) / 255.0 or 1.0
        zero_point = int(np.clip(round(-low / scale), 0, 255))
        return scale, zero_point


def calibration_batches(tokenizer_json: Path, texts: Sequence[TextInput], input_names: list[str],
                        max_length: int, pad_token_id: int = 0) -> Iterator[Feeds]:
    """One batch per text, encoded as the server encodes it."""
    tokenizer = load_tokenizer(tokenizer_json, max_length)
    for row in encode(tokenizer, texts):
        yield pad_batch([row], input_names, pad_token_id)


def _dynamic_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "DynamicQuantizeLinear"]


def activation_ranges(dynamic_graph: Path, batches: Iterable[Feeds],
                      percentile: float = CALIBRATION_PERCENTILE) -> dict[str, ActivationRange]:
    """The range of every tensor a `DynamicQuantizeLinear` quantizes: the `percentile` of the
    batches' minima and maxima (100 = plain min/max over all batches).

    Feed one text per batch: each text's extremes are then what dynamic INT8 would have used for
    it alone, and the percentile drops the rare text whose outlier would coarsen every other
    text's scale. The ranges are taken on the dynamic INT8 graph itself, so each layer is
    calibrated on the inputs it will see once the layers before it are quantized.
    """
    model = onnx.load(str(dynamic_graph))
    watched = [n.input[0] for n in _dynamic_nodes(model)]
    if not watched:  # weight-only quantization (a Gather, say): no activation to calibrate
        return {}
    known = {o.name for o in model.graph.output}
    for name in watched:
        if name not in known:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
            known.add(name)
    probe = dynamic_graph.with_name(dynamic_graph.stem + ".calibrate.onnx")
    onnx.save(model, str(probe))
    try:
        session = open_session(probe)
        lows: dict[str, list[float]] = {name: [] for name in watched}
        highs: dict[str, list[float]] = {name: [] for name in watched}
        for feeds in batches:
            values = session.run(watched, feeds)
            for name, value in zip(watched, values, strict=True):
                lows[name].append(float(value.min()))
                highs[name].append(float(value.max()))
    finally:
        probe.unlink(missing_ok=True)
    if watched and not lows[watched[0]]:
        raise CompressError("calibration needs at least one batch")
    return {name: ActivationRange(float(np.percentile(lows[name], 100.0 - percentile)),
                                  float(np.percentile(highs[name], percentile)))
            for name in watched}


def freeze_activation_scales(dynamic_graph: Path, ranges: dict[str, ActivationRange],
                             out_path: Path) -> int:
    """Write `dynamic_graph` with every `DynamicQuantizeLinear` turned into a `QuantizeLinear`
    of calibrated constants; returns how many were replaced."""
    model = onnx.load(str(dynamic_graph))
    replaced = 0
    for node in _dynamic_nodes(model):
        scale, zero_point = ranges[node.input[0]].scale_and_zero_point()
        quantized, scale_name, zero_point_name = node.output
        model.graph.initializer.extend([
            numpy_helper.from_array(np.array(scale, dtype=np.float32), scale_name),
            numpy_helper.from_array(np.array(zero_point, dtype=np.uint8), zero_point_name),
        ])
        node.op_type = "QuantizeLinear"
        node.input[:] = [node.input[0], scale_name, zero_point_name]
        node.output[:] = [quantized]
        node.name = (node.name or quantized) + "_static"
        replaced += 1
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return replaced


def quantize_static_int8(in_path: Path, out_path: Path, calibration: Iterable[Feeds],
                         percentile: float = CALIBRATION_PERCENTILE,
                         keep_fp32: Sequence[str] = (), only: Sequence[str] | None = None,
                         smooth_alpha: float = DEFAULT_ALPHA,
                         weights: WeightFormat = "s7") -> None:
    """Quantize a fused fp32 graph to batch-invariant INT8: SmoothQuant (`smooth_alpha`, 0 = off;
    compress/smooth.py), dynamic INT8, then calibrated scales (`calibration`: one text per batch,
    see `activation_ranges`). Nodes in `keep_fp32` stay fp32 (still batch-invariant: a float
    node computes each row on its own)."""
    batches = list(calibration)
    smoothed = out_path.with_name(out_path.stem + ".smoothed.onnx")
    dynamic = out_path.with_name(out_path.stem + ".dynamic.onnx")
    try:
        if smooth_alpha:
            smooth_graph(in_path, smoothed, batches, smooth_alpha)
        quantize_int8(smoothed if smooth_alpha else in_path, dynamic, keep_fp32, only, weights)
        ranges = activation_ranges(dynamic, batches, percentile)
        freeze_activation_scales(dynamic, ranges, out_path)
    finally:
        smoothed.unlink(missing_ok=True)
        dynamic.unlink(missing_ok=True)
