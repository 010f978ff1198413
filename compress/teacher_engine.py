"""The engine that computes a teacher's logits over many texts: PyTorch under bf16 autocast when
the training runs in bf16 on a CPU with native bf16 (3x the fused graph's speed for MPNet-base on
AMX) and it keeps the labels; else its fused fp32 ONNX graph on ONNX Runtime when that is
faithful; else PyTorch.

Labelling tens of thousands of augmented texts with a base-size teacher is the costliest step of
distillation on a CPU. The fused graph gives the same logits as PyTorch (float32 both; they differ
by rounding only), so it is used after a check on the first texts of the call: the same label for
every one and logits within `MAX_ENGINE_DIFF`. Otherwise (or with no folder to keep the graph in,
or on a GPU, where PyTorch is fast enough) PyTorch computes them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from compress.checkpoint import load_classifier
from compress.export import export_onnx
from compress.finetune import hf_tokenize, with_mask_token
from compress.optimize import optimize, split_skip_layer_norm
from contract.cpu_quota import usable_cores
from contract.predictor import OnnxPredictor

log = logging.getLogger(__name__)
Texts = list[str | tuple[str, str]]
Engine = Callable[[Texts], np.ndarray]
MAX_ENGINE_DIFF = 1e-3
CHECK_TEXTS = 64
# Below this many texts the export and fusion (about a minute for a base-size model) do not pay.
MIN_TEXTS_FOR_ONNX = 4096


def torch_engine(teacher_dir: Path, max_length: int, batch_size: int = 64,
                 bf16: bool = False) -> Engine:
    """The teacher in PyTorch, batches of similar length; with `bf16`, under bf16 autocast (on a
    CPU with native bf16, 2-3x faster than fp32 for a base-size model; logits differ by bf16's
    rounding)."""
    teacher, tokenizer = load_classifier(teacher_dir)

    def run(texts: Texts) -> np.ndarray:
        encoded = hf_tokenize(tokenizer, texts, max_length)
        order = sorted(range(len(texts)), key=lambda i: len(encoded["input_ids"][i]))
        logits = np.zeros((len(texts), len(teacher.config.id2label or {})), dtype=np.float32)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for start in tqdm(range(0, len(order), batch_size), desc="teacher logits",
                              unit="batch", disable=len(order) <= batch_size):
                picked = order[start : start + batch_size]
                features = [{k: encoded[k][i] for k in encoded} for i in picked]
                batch = dict(tokenizer.pad(features, return_tensors="pt"))
                logits[picked] = teacher(**batch).logits.float().numpy()
        return logits

    return run


def weights_digest(teacher_dir: Path) -> str:
    """16 hex digits of the teacher's weights and config (names its graph in the cache)."""
    digest = hashlib.sha256()
    for name in ("model.safetensors", "config.json"):
        path = teacher_dir / name
        if path.is_file():
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def onnx_engine(teacher_dir: Path, folder: Path, max_length: int, batch_size: int = 64) -> Engine:
    """The teacher's fused fp32 graph on ORT (exported and fused once into `folder`)."""
    graph = folder / "fused-cpu.onnx"  # the split form: a cache of the older fused.onnx rebuilds
    if not graph.is_file():
        started = time.perf_counter()
        exported = export_onnx(teacher_dir, folder / "fp32.onnx", ["a check", "another one"])
        optimize(exported.path, folder / "fused.partial.onnx", exported.architecture)
        split_skip_layer_norm(folder / "fused.partial.onnx")  # it runs on the CPU
        (folder / "fused.partial.onnx").replace(graph)
        (folder / "inputs.txt").write_text("\n".join(exported.input_names), encoding="utf-8")
        log.info("teacher graph exported and fused in %.0f s", time.perf_counter() - started)
    _, tokenizer = load_classifier(teacher_dir)
    names = (folder / "inputs.txt").read_text(encoding="utf-8").split()
    predictor = OnnxPredictor(graph, teacher_dir / "tokenizer.json", names, max_length,
                              int(tokenizer.pad_token_id or 0), len(usable_cores()))

    def run(texts: Texts) -> np.ndarray:
        return predictor.logits_in_batches(with_mask_token(texts, tokenizer), batch_size)

    return run


def choose_engine(teacher_dir: Path, texts: Texts, max_length: int, cache_dir: Path | None,
                  bf16: bool = False) -> Engine:
    """With `bf16` (training in bf16 on a CPU with native bf16), PyTorch under bf16 autocast when
    it labels the first texts as fp32 PyTorch does; else ONNX Runtime for a large CPU job whose
    first texts it labels as PyTorch does; else PyTorch."""
    reference = torch_engine(teacher_dir, max_length)
    if bf16 and not torch.cuda.is_available():
        fast = torch_engine(teacher_dir, max_length, bf16=True)
        sample = texts[:CHECK_TEXTS]
        expected, got = reference(sample), fast(sample)
        diff = float(np.abs(expected - got).max())
        if bool((expected.argmax(-1) == got.argmax(-1)).all()):
            log.info("teacher logits in PyTorch bf16 (max diff to fp32 %.1e on %d texts, labels "
                     "equal)", diff, len(sample))
            return fast
        log.warning("bf16 changes the teacher's labels on %d texts: fp32 computes the logits",
                    len(sample))
    if cache_dir is None or len(texts) < MIN_TEXTS_FOR_ONNX or torch.cuda.is_available():
        return reference
    folder = cache_dir / f"teacher-graph-{weights_digest(teacher_dir)}"
    try:
        fast = onnx_engine(teacher_dir, folder, max_length)
    except Exception as exc:  # any export or fusion failure: PyTorch still works
        log.warning("teacher graph unavailable (%s): PyTorch computes the logits", exc)
        return reference
    sample = texts[:CHECK_TEXTS]
    expected, got = reference(sample), fast(sample)
    diff = float(np.abs(expected - got).max())
    same = bool((expected.argmax(-1) == got.argmax(-1)).all())
    if not same or diff > MAX_ENGINE_DIFF:
        log.warning("teacher graph differs from PyTorch (max %.2e, labels %s): PyTorch computes "
                    "the logits", diff, "equal" if same else "differ")
        return reference
    log.info("teacher logits on ONNX Runtime (fused fp32; max diff to PyTorch %.1e on %d texts)",
             diff, len(sample))
    return fast
