"""What every training stage shares: length-bucketed batches, AdamW with warm-up, progress, and
mid-stage checkpoints to resume from."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from compress.device import TrainRuntime
from compress.tasks import Examples
from contract.artifact import CompressError

log = logging.getLogger(__name__)
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight")
STATE_FILE = "training-state.pt"


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


@dataclass(frozen=True)
class Resume:
    """Where a training stage keeps its mid-stage checkpoint, and how often it writes it.

    The checkpoint holds everything the next step depends on: the modules' weights, optimizer and
    scheduler state, the epoch's batch order and position, and the Python and torch RNG states,
    so a stopped stage resumes with the weights an uninterrupted run would have had."""

    folder: Path
    every_s: float = 300.0

    @property
    def file(self) -> Path:
        return self.folder / STATE_FILE


@dataclass
class _Progress:
    step: int = 0
    batches: list[list[int]] = field(default_factory=list)
    position: int = 0


def checkpoint_seconds() -> float:
    """FFS_CHECKPOINT_SECONDS (default 300): how often a training stage writes its checkpoint."""
    raw = os.environ.get("FFS_CHECKPOINT_SECONDS", "300")
    try:
        return max(0.0, float(raw))
    except ValueError as exc:
        raise CompressError(f"FFS_CHECKPOINT_SECONDS={raw!r} is not a number of seconds") from exc


def _save(resume: Resume, modules: dict[str, torch.nn.Module], progress: _Progress,
          optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
          rng: random.Random, averages: dict[str, AveragedModel]) -> None:
    state = {"modules": {name: m.state_dict() for name, m in modules.items()},
             "averages": {name: a.state_dict() for name, a in averages.items()},
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "step": progress.step, "batches": progress.batches, "position": progress.position,
             "rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    resume.folder.mkdir(parents=True, exist_ok=True)
    partial = resume.file.with_name(STATE_FILE + ".partial")
    torch.save(state, partial)
    partial.replace(resume.file)


def _restore(resume: Resume, modules: dict[str, torch.nn.Module],
             optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
             rng: random.Random, averages: dict[str, AveragedModel], desc: str) -> _Progress:
    if not resume.file.is_file():
        return _Progress()
    # weights_only=False: the file is this stage's own (RNG states are not plain tensors).
    state = torch.load(resume.file, map_location="cpu", weights_only=False)
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    for name, average in averages.items():
        average.load_state_dict(state["averages"][name])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng.setstate(state["rng"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    log.info("%s: resumed at step %d from %s", desc, state["step"], resume.file)
    return _Progress(int(state["step"]), state["batches"], int(state["position"]))


def run_steps(
    step_loss: Callable[[list[int]], torch.Tensor],
    modules: dict[str, torch.nn.Module],
    lengths: list[int],
    batch_size: int,
    total_steps: int,
    schedule: tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler],
    rng: random.Random,
    desc: str,
    runtime: TrainRuntime,
    resume: Resume | None = None,
    ema_decay: float = 0.0,
) -> None:
    """`total_steps` optimizer steps over length-bucketed batches, epoch after epoch, the forward
    pass under the runtime's autocast; with `resume`, a checkpoint every `resume.every_s` seconds,
    and a start from the last one. With `ema_decay` > 0 the modules end with the exponential moving
    average of their weights over the steps instead of the last step's weights."""
    optimizer, scheduler = schedule
    parameters = [p for m in modules.values() for p in m.parameters()]
    averages = moving_averages(modules, ema_decay)
    progress = _restore(resume, modules, optimizer, scheduler, rng, averages, desc) if resume \
        else _Progress()
    saved_at = time.monotonic()
    with tqdm(total=total_steps, initial=progress.step, desc=desc, unit="step") as bar:
        while progress.step < total_steps:
            if progress.position >= len(progress.batches):
                progress.batches = length_bucketed_batches(lengths, batch_size, rng)
                progress.position = 0
            with runtime.autocast():
                loss = step_loss(progress.batches[progress.position])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            for name, average in averages.items():
                average.update_parameters(modules[name])
            progress.step += 1
            progress.position += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if resume is not None and time.monotonic() - saved_at >= resume.every_s \
                    and progress.step < total_steps:
                _save(resume, modules, progress, optimizer, scheduler, rng, averages)
                saved_at = time.monotonic()
    for name, average in averages.items():
        take_average(modules[name], average)


def moving_averages(modules: dict[str, torch.nn.Module],
                    decay: float) -> dict[str, AveragedModel]:
    """An exponential moving average of each module's parameters (none when `decay` is 0; the
    config that names it checks it is below 1)."""
    if decay == 0.0:
        return {}
    return {name: AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay))
            for name, module in modules.items()}


def take_average(module: torch.nn.Module, average: AveragedModel) -> None:
    """Give `module` the averaged parameters (buffers stay the module's own)."""
    with torch.no_grad():
        for mine, averaged in zip(module.parameters(), average.module.parameters(), strict=True):
            mine.copy_(averaged)
