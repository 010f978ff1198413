"""The GPU variant: the fused graph with FP16 weights and compute, fp32 inputs and outputs."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnxruntime.transformers.onnx_model import OnnxModel


def convert_fp16(fused_path: Path, out_path: Path) -> None:
    """Convert an already fused fp32 graph to FP16.

    Fuse first, then convert: the fusion patterns match fp32 graphs, and FP16 Attention /
    SkipLayerNormalization kernels are what make the CUDA worker fast. Inputs (token ids) and the
    logits output stay fp32 so that the serving code is the same for every variant.
    """
    model = OnnxModel(onnx.load(str(fused_path)))
    model.convert_float_to_float16(keep_io_types=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model.save_model_to_file(str(out_path))
