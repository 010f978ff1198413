"""What every training stage shares: length-bucketed batches, AdamW with warm-up, progress."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from compress.tasks import Examples

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight")


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings every training stage has."""

    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_examples: int | None = None
    max_length: int = 128
    seed: int = 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def length_bucketed_batches(
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


def adamw_with_warmup(
    parameters: list[tuple[str, torch.nn.Parameter]],
    learning_rate: float,
    weight_decay: float,
    total_steps: int,
    warmup_ratio: float,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW without decay on biases and LayerNorm weights, linear warm-up then decay."""
    groups = [
        {"params": [p for n, p in parameters if not n.endswith(NO_DECAY)],
         "weight_decay": weight_decay},
        {"params": [p for n, p in parameters if n.endswith(NO_DECAY)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=learning_rate)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(total_steps * warmup_ratio), total_steps)
    return optimizer, scheduler


def sample_indices(count: int, max_examples: int | None, rng: random.Random) -> list[int]:
    """At most `max_examples` of `range(count)` drawn without replacement (all if None)."""
    if max_examples is None or max_examples >= count:
        return list(range(count))
    return rng.sample(range(count), max_examples)


def subsample(data: Examples, max_examples: int | None, rng: random.Random) -> Examples:
    """At most `max_examples` examples drawn without replacement (all of them if None)."""
    if max_examples is None or max_examples >= len(data):
        return data
    return data.pick(sample_indices(len(data), max_examples, rng))


def run_steps(
    step_loss: Callable[[list[int]], torch.Tensor],
    parameters: list[torch.nn.Parameter],
    lengths: list[int],
    batch_size: int,
    total_steps: int,
    schedule: tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler],
    rng: random.Random,
    desc: str,
) -> None:
    """`total_steps` optimizer steps over length-bucketed batches, epoch after epoch."""
    optimizer, scheduler = schedule
    step = 0
    with tqdm(total=total_steps, desc=desc, unit="step") as progress:
        while step < total_steps:
            for batch_ids in length_bucketed_batches(lengths, batch_size, rng):
                if step >= total_steps:
                    break
                loss = step_loss(batch_ids)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(parameters, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.3f}")
