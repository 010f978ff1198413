"""Stage 1: fine-tune an encoder with a classification head on a task's train split."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from compress.augment import MASK
from compress.checkpoint import save_classifier
from compress.device import TrainRuntime, choose_runtime, on_device
from compress.metrics import multi_hot
from compress.tasks import Examples, Label, TaskSpec
from compress.training import Resume, TrainingConfig, adamw_with_warmup, run_steps, subsample
from contract.artifact import ProblemType

# transformers' names: the loss (cross-entropy or a sigmoid per label) follows from them.
HF_PROBLEM_TYPES = {"single_label": "single_label_classification",
                    "multi_label": "multi_label_classification"}


def label_tensor(labels: Sequence[Label], count: int, problem_type: ProblemType) -> torch.Tensor:
    """Training targets: class indices, or multi-hot float rows for a multi-label task."""
    if problem_type == "multi_label":
        return torch.from_numpy(multi_hot(labels, count).astype(np.float32))
    return torch.tensor(labels)


@dataclass(frozen=True)
class FinetuneConfig(TrainingConfig):
    threads: int | None = None


def load_pretrained_classifier(
    model: str, spec: TaskSpec
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load an encoder (local folder or hub id) with a head sized and named for the task.

    Eager attention: SDPA exports to ONNX in a shape ORT's BERT fusion does not recognise.
    """
    labels = spec.label_names
    classifier = AutoModelForSequenceClassification.from_pretrained(
        model,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        problem_type=HF_PROBLEM_TYPES[spec.problem_type],
        # A classifier with another label set (a user's fine-tuned model, re-tuned for a new
        # task) gets a fresh head instead of a size-mismatch error.
        ignore_mismatched_sizes=True,
        attn_implementation="eager",
    )
    tokenizer = AutoTokenizer.from_pretrained(model)
    return classifier, tokenizer


def with_mask_token(texts: list[str | tuple[str, str]],
                    tokenizer: PreTrainedTokenizerBase) -> list[str | tuple[str, str]]:
    """`texts` with the augmentation mask ([MASK]) written as `tokenizer`'s mask token."""
    token = getattr(tokenizer, "mask_token", None)
    if not token or token == MASK:
        return texts

    def swap(text: str) -> str:
        return text.replace(MASK, token) if MASK in text else text

    return [(swap(t[0]), swap(t[1])) if isinstance(t, tuple) else swap(t) for t in texts]


def hf_tokenize(
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str | tuple[str, str]],
    max_length: int,
    **options: object,
) -> dict[str, Any]:
    """Tokenize single texts or (text, text) pairs with an HF tokenizer, truncating; the mask of
    augmented texts becomes this tokenizer's own mask token."""
    texts = with_mask_token(texts, tokenizer)
    if texts and isinstance(texts[0], tuple):
        first = [t[0] for t in texts]
        second = [t[1] for t in texts]
        return dict(tokenizer(first, second, truncation=True, max_length=max_length, **options))
    return dict(tokenizer(list(texts), truncation=True, max_length=max_length, **options))


def finetune(
    model: str, spec: TaskSpec, train: Examples, config: FinetuneConfig, out_dir: Path,
    runtime: TrainRuntime | None = None, resume: Resume | None = None,
) -> Path:
    """Train `model` on `train`, save model + tokenizer (with label names) to `out_dir`."""
    runtime = runtime or choose_runtime()
    if config.threads:  # the config's own thread count wins over the command's default
        runtime = replace(runtime, threads=config.threads)
    runtime.apply()
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    data = subsample(train, config.max_examples, rng)
    classifier, tokenizer = load_pretrained_classifier(model, spec)
    encoded = hf_tokenize(tokenizer, data.texts, config.max_length)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    total_steps = max(1, int(math.ceil(len(data) / config.batch_size) * config.epochs))
    schedule = adamw_with_warmup(list(classifier.named_parameters()), config.learning_rate,
                                 config.weight_decay, total_steps, config.warmup_ratio)

    def step_loss(batch_ids: list[int]) -> torch.Tensor:
        features = [{k: encoded[k][i] for k in encoded} for i in batch_ids]
        batch = dict(tokenizer.pad(features, return_tensors="pt"))
        batch["labels"] = label_tensor([data.labels[i] for i in batch_ids],
                                       len(spec.label_names), spec.problem_type)
        loss: torch.Tensor = classifier(**runtime.move(batch)).loss
        return loss

    with on_device(classifier, runtime):
        classifier.train()
        run_steps(step_loss, {"model": classifier}, lengths, config.batch_size, total_steps,
                  schedule, rng, f"finetune {spec.name}", runtime, resume)
    classifier.eval()
    return save_classifier(classifier, tokenizer, out_dir)
