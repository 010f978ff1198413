"""The golden check: the build records what each CPU variant answered on the check texts, on the
build's CPU; a server runs the same texts through the same graph at load and compares.

Integer kernels differ by CPU family (contract/cpu_features.py), so an INT8 artifact built on one
family can answer differently on another; the check says so at start-up and in `/v1/models`
instead of letting the served accuracy silently differ from the manifest's. A few milliseconds
for a small model: one batch of the check texts per variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.artifact import Golden, Manifest
from contract.cpu_features import int8_kernel_family
from contract.encoding import TextInput
from contract.predictor import OnnxPredictor

# Variants computed on the CPU provider: the ones a CPU's kernels decide.
CPU_VARIANTS = ("fp32", "cpu-int8")
GOLDEN_TEXTS = 32
# fp32 reductions in another order, or another thread count, move logits by ~1e-6; a different
# kernel family moves INT8 logits by far more.
GOLDEN_TOLERANCE = 1e-3


@dataclass(frozen=True)
class GoldenResult:
    """One variant's answers at load against the build's."""

    variant: str
    texts: int
    max_abs_logit_diff: float
    label_agreement: float
    recorded_kernels: str  # the family whose recorded answers were compared (build's or checked)
    here_kernels: str

    @property
    def matches(self) -> bool:
        return self.label_agreement == 1.0 and self.max_abs_logit_diff <= GOLDEN_TOLERANCE

    def as_dict(self) -> dict[str, object]:
        return {"variant": self.variant, "texts": self.texts, "matches": self.matches,
                "max_abs_logit_diff": self.max_abs_logit_diff,
                "label_agreement": self.label_agreement,
                "recorded_kernels": self.recorded_kernels,
                "here_kernels": self.here_kernels}


def _predictor(folder: Path, manifest: Manifest, graph: Path) -> OnnxPredictor:
    return OnnxPredictor(graph, folder / manifest.tokenizer, manifest.model_inputs,
                         manifest.max_length, manifest.pad_token_id, threads=1)


def record_golden(folder: Path, manifest: Manifest, texts: list[TextInput]) -> Golden:
    """What this machine's CPU answers on `texts` with every CPU variant of the artifact."""
    texts = texts[:GOLDEN_TEXTS]
    logits = {}
    for name in CPU_VARIANTS:
        if name in manifest.variants:
            graph = folder / manifest.variants[name].file
            values = _predictor(folder, manifest, graph).logits_in_batches(texts)
            logits[name] = [[float(x) for x in row] for row in values]
    return Golden(int8_kernels=int8_kernel_family(), texts=texts, logits=logits)


def check_golden(folder: Path, manifest: Manifest, variant: str, graph: Path) \
        -> GoldenResult | None:
    """This CPU's answers on the golden texts against those recorded for its kernel family (by
    `compress check`), else the build's; None when the artifact recorded none for `variant`."""
    here = int8_kernel_family()
    golden = manifest.golden_for(here)
    if golden is None or variant not in golden.logits:
        return None
    expected = np.asarray(golden.logits[variant], dtype=np.float32)
    got = _predictor(folder, manifest, graph).logits_in_batches(golden.texts)
    return GoldenResult(variant=variant, texts=len(golden.texts),
                        max_abs_logit_diff=float(np.abs(got - expected).max()),
                        label_agreement=float(np.mean(got.argmax(-1) == expected.argmax(-1))),
                        recorded_kernels=golden.int8_kernels, here_kernels=here)
