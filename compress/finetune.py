"""Stage 1: fine-tune an encoder with a classification head on a task's train split."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
)

from compress.tasks import Examples, TaskSpec


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_examples: int | None = None
    max_length: int = 128
    seed: int = 0
    threads: int | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def load_classifier(
    model: str, spec: TaskSpec
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load an encoder (local folder or hub id) with a head sized and named for the task.

    Eager attention: SDPA exports to ONNX in a shape ORT's BERT fusion does not recognise.
    """
    labels = list(spec.labels)
    classifier = AutoModelForSequenceClassification.from_pretrained(
        model,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        attn_implementation="eager",
    )
    tokenizer = AutoTokenizer.from_pretrained(model)
    return classifier, tokenizer


def _length_bucketed_batches(
    lengths: list[int], batch_size: int, rng: random.Random
) -> list[list[int]]:
    """Shuffled batches of similar-length examples: far less padding than random batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        block = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(block[i : i + batch_size] for i in range(0, len(block), batch_size))
    rng.shuffle(batches)
    return batches


def hf_tokenize(
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str | tuple[str, str]],
    max_length: int,
    **options: object,
) -> dict[str, Any]:
    """Tokenize single texts or (text, text) pairs with an HF tokenizer, truncating."""
    if texts and isinstance(texts[0], tuple):
        first = [t[0] for t in texts]
        second = [t[1] for t in texts]
        return dict(tokenizer(first, second, truncation=True, max_length=max_length, **options))
    return dict(tokenizer(list(texts), truncation=True, max_length=max_length, **options))


def finetune(
    model: str, spec: TaskSpec, train: Examples, config: FinetuneConfig, out_dir: Path
) -> Path:
    """Train `model` on `train`, save model + tokenizer (with label names) to `out_dir`."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    data = train
    if config.max_examples is not None and config.max_examples < len(train):
        picked = rng.sample(range(len(train)), config.max_examples)
        data = Examples([train.texts[i] for i in picked], [train.labels[i] for i in picked])

    classifier, tokenizer = load_classifier(model, spec)
    encoded = hf_tokenize(tokenizer, data.texts, config.max_length)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    epochs = max(1, math.ceil(config.epochs))
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total_steps = max(1, int(steps_per_epoch * config.epochs))

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for n, p in classifier.named_parameters() if not n.endswith(no_decay)],
         "weight_decay": config.weight_decay},
        {"params": [p for n, p in classifier.named_parameters() if n.endswith(no_decay)],
         "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(total_steps * config.warmup_ratio), total_steps
    )
    classifier.train()
    step = 0
    progress = tqdm(total=total_steps, desc=f"finetune {spec.name}", unit="step")
    for _ in range(epochs):
        for batch_ids in _length_bucketed_batches(lengths, config.batch_size, rng):
            if step >= total_steps:
                break
            features = [{k: encoded[k][i] for k in encoded} for i in batch_ids]
            batch = tokenizer.pad(features, return_tensors="pt")
            batch["labels"] = torch.tensor([data.labels[i] for i in batch_ids])
            loss = classifier(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(classifier.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}")
    progress.close()
    classifier.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    classifier.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
