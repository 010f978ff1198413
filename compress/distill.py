"""Task-specific knowledge distillation (FastFormers section 2).

The student learns the teacher's temperature-softened output distribution, optionally mixed with
the hard labels, and optionally the teacher's hidden states (MSE through a learned projection when
widths differ) and attention maps (KL) on mapped layers. Teacher and student may use different
tokenizers: logits are per example, so each side encodes the text its own way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from compress.checkpoint import encoder_layers, layer_stack, load_classifier, save_classifier
from compress.device import TrainRuntime, choose_runtime, on_device
from compress.finetune import hf_tokenize, load_pretrained_classifier
from compress.tasks import Examples, Label, TaskSpec
from compress.teacher_engine import choose_engine, weights_digest
from compress.training import (
    Resume,
    TrainingConfig,
    adamw_with_warmup,
    run_steps,
    sample_indices,
)
from contract.artifact import CompressError

Texts = list[str | tuple[str, str]]


class DistilError(CompressError):
    """Distillation cannot run as configured."""


@dataclass(frozen=True)
class DistilConfig(TrainingConfig):
    learning_rate: float = 1e-4
    temperature: float = 2.0
    # Weight of the soft (teacher) loss; 1 - alpha goes to the hard-label cross-entropy.
    alpha: float = 1.0
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    # Weight of the prediction-layer loss (soft + hard): 0 in TinyBERT's first stage, which
    # trains the intermediate layers alone.
    logit_weight: float = 1.0
    # The teacher layer (1-based) each student layer learns from; None spreads them evenly.
    layer_map: tuple[int, ...] | None = None
    # A cap on optimizer steps (e.g. the same step budget with and without augmented data).
    max_steps: int | None = None
    # > 0: keep an exponential moving average of the student's weights over the steps and save
    # that (e.g. 0.999: about the last thousand steps) instead of the last step's weights.
    ema_decay: float = 0.0

    @property
    def needs_online_teacher(self) -> bool:
        return self.hidden_weight > 0 or self.attention_weight > 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay {self.ema_decay}: use 0 (off) or a decay below 1, "
                             "e.g. 0.999")

    def key_part(self) -> dict[str, Any]:
        """The settings a stage's cache key holds: all of them."""
        return asdict(self)

    def steps_for(self, examples: int) -> int:
        """Optimizer steps over `examples` rows: `epochs` passes, capped by `max_steps`."""
        steps = max(1, int(math.ceil(examples / self.batch_size) * self.epochs))
        return min(steps, self.max_steps) if self.max_steps else steps


def select_layers(total: int, keep: list[int] | int | str | None) -> list[int]:
    """Layer indices to keep: an explicit list, 'every_other', a count (evenly spaced), or all."""
    if keep is None:
        return list(range(total))
    if keep == "every_other":
        return list(range(0, total, 2))
    if isinstance(keep, int):
        if not 1 <= keep <= total:
            raise DistilError(f"cannot keep {keep} of {total} layers")
        return sorted({round(i * total / keep) for i in range(keep)})
    if isinstance(keep, str):
        raise DistilError(f"layers: expected a list, a count or 'every_other', got {keep!r}")
    if not keep or any(not 0 <= i < total for i in keep) or len(set(keep)) != len(keep):
        raise DistilError(f"layers {keep} are not distinct indices of {total} layers")
    return sorted(keep)


def cut_layers(model: PreTrainedModel, keep: list[int]) -> None:
    """Keep only the listed encoder layers (DistilBERT-style student initialisation)."""
    layers = encoder_layers(model)
    owner, name = layer_stack(model)
    setattr(owner, name, torch.nn.ModuleList([layers[i] for i in keep]))
    model.config.num_hidden_layers = len(keep)


def init_student(
    source: str, spec: TaskSpec, keep: list[int] | int | str | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A student from a fine-tuned checkpoint (e.g. the teacher) or a general encoder, layer-cut."""
    if spec.problem_type != "single_label":
        raise DistilError(f"task {spec.name}: distillation supports single_label tasks; for a "
                          "multi_label task fine-tune the model you serve (compress build)")
    if (Path(source) / "config.json").is_file() and _has_task_head(Path(source), spec):
        model, tokenizer = load_classifier(source)
    else:
        model, tokenizer = load_pretrained_classifier(source, spec)
    cut_layers(model, select_layers(len(encoder_layers(model)), keep))
    return model, tokenizer


def _has_task_head(folder: Path, spec: TaskSpec) -> bool:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    names = config.get("id2label") or {}
    return [names.get(str(i)) for i in range(len(names))] == spec.label_names


def _fingerprint(teacher_dir: Path, texts: Texts, max_length: int, bf16: bool = False) -> str:
    digest = hashlib.sha256(weights_digest(teacher_dir).encode("ascii"))
    digest.update(repr((max_length, texts)).encode("utf-8"))
    if bf16:  # bf16 logits differ from fp32's by rounding: their own cache (fp32 keys unchanged)
        digest.update(b"bf16")
    return digest.hexdigest()[:16]


def teacher_logits(
    teacher_dir: Path, texts: Texts, max_length: int, cache_dir: Path | None = None,
    engine_dir: Path | None = None, bf16: bool = False,
) -> np.ndarray:
    """The teacher's logits for every text; with `cache_dir`, computed once and cached by weights
    + texts. A large job runs on the teacher's fused ONNX graph, kept in `engine_dir`, when it is
    faithful (compress/teacher_engine.py)."""
    cache = None
    if cache_dir is not None:
        cache = cache_dir / f"teacher-logits-{_fingerprint(teacher_dir, texts, max_length, bf16)}.npy"
        if cache.is_file():
            return np.load(cache)
    logits = choose_engine(teacher_dir, texts, max_length, engine_dir or cache_dir, bf16)(texts)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(cache.name + ".partial.npy")
        np.save(partial, logits)
        partial.replace(cache)
    return logits


# Rows computed between two saves of the per-row logit cache: a stopped run loses at most one
# chunk (a couple of minutes of a base-size teacher on 2 cores; 170k SST-2 rows and variants are
# over an hour in all). Above MIN_TEXTS_FOR_ONNX, so each chunk still runs on the fused graph.
LOGIT_CHUNK_ROWS = 8192


def teacher_logits_of(teacher_dir: Path, train: Examples, picked: list[int], max_length: int,
                      cache_dir: Path | None = None, bf16: bool = False) -> np.ndarray:
    """The teacher's logits of `train.pick(picked)`.

    With a cache, rows are kept by their index in the whole split: every stage of a recipe
    (student, importance, each pruning level) draws its own subset, and each row is computed once
    (one pass of a base-size teacher over all of SST-2 train is ~25 min on 2 cores), but no more
    rows than the stages ask for."""
    if cache_dir is None:
        return teacher_logits(teacher_dir, train.pick(picked).texts, max_length, bf16=bf16)
    key = _fingerprint(teacher_dir, train.texts, max_length, bf16)
    whole = cache_dir / f"teacher-logits-{key}.npy"  # the whole split, as teacher_logits caches it
    if whole.is_file():
        cached: np.ndarray = np.load(whole)[picked]
        return cached
    rows = cache_dir / f"teacher-logits-{key}.rows.npz"
    logits, done = None, np.zeros(len(train), dtype=bool)
    if rows.is_file():
        with np.load(rows) as saved:
            logits, done = saved["logits"], saved["done"]
    missing = sorted({i for i in picked if not done[i]})
    for start in range(0, len(missing), LOGIT_CHUNK_ROWS):
        chunk = missing[start : start + LOGIT_CHUNK_ROWS]
        computed = teacher_logits(teacher_dir, train.pick(chunk).texts, max_length,
                                  engine_dir=cache_dir, bf16=bf16)
        if logits is None:
            logits = np.zeros((len(train), computed.shape[1]), dtype=np.float32)
        logits[chunk], done[chunk] = computed, True
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = rows.with_name(rows.name + ".partial.npz")
        np.savez(partial, logits=logits, done=done)
        partial.replace(rows)
    assert logits is not None
    result: np.ndarray = logits[picked]
    return result


def _distillation_rows(teacher_dir: Path, train: Examples, augmented: Examples, picked: list[int],
                       max_length: int, cache_dir: Path | None, bf16: bool = False) \
        -> tuple[Examples, np.ndarray]:
    """The picked rows of train + augmented with their teacher logits; each part keeps its own
    per-row logit cache (adding variants does not recompute the training split's logits)."""
    own = [i for i in picked if i < len(train)]
    varied = [i - len(train) for i in picked if i >= len(train)]
    logits = teacher_logits_of(teacher_dir, train, own, max_length, cache_dir, bf16)
    data = train.pick(own)
    if varied:
        extra = teacher_logits_of(teacher_dir, augmented, varied, max_length, cache_dir, bf16)
        labels: list[Label] = [int(i) for i in extra.argmax(axis=-1)]
        data = Examples(data.texts + augmented.pick(varied).texts, data.labels + labels)
        logits = np.concatenate([logits, extra])
    return data, logits


def _pad(tokenizer: PreTrainedTokenizerBase, encoded: dict[str, Any], picked: list[int]) -> \
        dict[str, torch.Tensor]:
    features = [{k: encoded[k][i] for k in encoded} for i in picked]
    return dict(tokenizer.pad(features, return_tensors="pt"))


def soft_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher_T || student_T) x T^2 (Hinton et al.): soft cross-entropy up to a constant."""
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def hidden_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over real (unpadded) tokens."""
    weights = mask.unsqueeze(-1).to(student.dtype)
    squared = ((student - teacher) ** 2 * weights).sum()
    return squared / (weights.sum() * student.shape[-1]).clamp(min=1.0)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of attention rows for real query tokens.

    Head counts may differ (pruned student, smaller model): then the head-averaged maps are compared.
    """
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(dim=1, keepdim=True), teacher.mean(dim=1, keepdim=True)
    eps = 1e-9
    kl = (teacher * ((teacher + eps).log() - (student + eps).log())).sum(dim=-1)  # [B, H, S]
    rows = mask.unsqueeze(1).to(kl.dtype).expand_as(kl)
    return (kl * rows).sum() / rows.sum().clamp(min=1.0)


def layer_map(student_layers: int, teacher_layers: int,
              chosen: tuple[int, ...] | None = None) -> list[tuple[int, int]]:
    """(student, teacher) hidden-state indices, 1-based like `hidden_states` (0 = embeddings):
    `chosen[i]` is the teacher layer of student layer i + 1; by default spread evenly."""
    if chosen is None:
        return [(s, round(s * teacher_layers / student_layers))
                for s in range(1, student_layers + 1)]
    if len(chosen) != student_layers or any(not 1 <= t <= teacher_layers for t in chosen):
        raise DistilError(f"layer_map {list(chosen)}: expected {student_layers} teacher layers "
                          f"(one per student layer), each in 1..{teacher_layers}")
    return [(s, t) for s, t in enumerate(chosen, start=1)]


@dataclass
class _Teacher:
    """The teacher side of a batch: cached logits, and for layer transfer the live model."""

    logits: np.ndarray
    model: PreTrainedModel | None = None
    encoded: dict[str, Any] | None = None
    tokenizer: PreTrainedTokenizerBase | None = None


def _online_teacher(layer_teacher: Path, texts: Texts, student_encoded: dict[str, Any],
                    max_length: int, logits: np.ndarray) -> _Teacher:
    model, tokenizer = load_classifier(layer_teacher)
    encoded = hf_tokenize(tokenizer, texts, max_length)
    misaligned = sum(len(a) != len(b) for a, b in zip(encoded["input_ids"],
                                                      student_encoded["input_ids"], strict=True))
    if misaligned:
        raise DistilError(
            f"hidden/attention transfer needs token-aligned tokenizers, but {misaligned} of "
            f"{len(texts)} examples tokenize to different lengths; use logits only "
            "(hidden_weight: 0, attention_weight: 0)")
    return _Teacher(logits=logits, model=model, encoded=encoded, tokenizer=tokenizer)


def distil(
    student: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    teacher_dir: Path,
    train: Examples,
    config: DistilConfig,
    out_dir: Path,
    cache_dir: Path | None = None,
    runtime: TrainRuntime | None = None,
    resume: Resume | None = None,
    augmented: Examples | None = None,
    layer_teacher: Path | None = None,
) -> Path:
    """Train `student` toward the teacher on `train` and the `augmented` rows (at most
    `max_examples` of them together, drawn without replacement); an augmented row's hard label
    is the teacher's. Hidden states and attention maps (when the config weighs them) come from
    `layer_teacher`, by default the teacher itself; logits always come from the teacher. Save the
    student with its tokenizer to `out_dir`."""
    runtime = runtime or choose_runtime()
    runtime.apply()
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    extra = augmented if augmented is not None else Examples([], [])
    picked = sample_indices(len(train) + len(extra), config.max_examples, rng)
    data, logits = _distillation_rows(teacher_dir, train, extra, picked, config.max_length,
                                      cache_dir, runtime.bf16_logits)
    encoded = hf_tokenize(tokenizer, data.texts, config.max_length)
    teacher = _Teacher(logits=logits)
    if config.needs_online_teacher:
        teacher = _online_teacher(layer_teacher or teacher_dir, data.texts, encoded,
                                  config.max_length, logits)
    projection = _projection(student, teacher, config)
    modules: dict[str, torch.nn.Module] = {"model": student}
    if projection is not None:
        modules["projection"] = projection
    params = [(f"{name}.{n}", p) for name, module in modules.items()
              for n, p in module.named_parameters()]
    total_steps = config.steps_for(len(data))
    schedule = adamw_with_warmup(params, config.learning_rate, config.weight_decay, total_steps,
                                 config.warmup_ratio)
    lengths = [len(ids) for ids in encoded["input_ids"]]

    def step_loss(batch_ids: list[int]) -> torch.Tensor:
        return _step_loss(student, tokenizer, encoded, batch_ids, data, teacher, projection, config,
                          runtime)

    with contextlib.ExitStack() as placed:
        for module in [*modules.values(), *([teacher.model] if teacher.model else [])]:
            placed.enter_context(on_device(module, runtime))
        student.train()
        run_steps(step_loss, modules, lengths, config.batch_size, total_steps, schedule, rng,
                  f"distil {out_dir.name}", runtime, resume, config.ema_decay)
    student.eval()
    return save_classifier(student, tokenizer, out_dir)


def _projection(student: PreTrainedModel, teacher: _Teacher, config: DistilConfig) -> \
        torch.nn.Linear | None:
    if config.hidden_weight <= 0 or teacher.model is None:
        return None
    width_s, width_t = int(student.config.hidden_size), int(teacher.model.config.hidden_size)
    if width_s == width_t:
        return None
    return torch.nn.Linear(width_s, width_t)


def _step_loss(
    student: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    encoded: dict[str, Any],
    batch_ids: list[int],
    data: Examples,
    teacher: _Teacher,
    projection: torch.nn.Linear | None,
    config: DistilConfig,
    runtime: TrainRuntime,
) -> torch.Tensor:
    batch = runtime.move(_pad(tokenizer, encoded, batch_ids))
    layered = config.needs_online_teacher
    out = student(**batch, output_hidden_states=config.hidden_weight > 0,
                  output_attentions=config.attention_weight > 0) if layered else student(**batch)
    loss = out.logits.new_zeros((), dtype=torch.float32)
    if config.logit_weight > 0:
        logits = out.logits.float()
        target = torch.from_numpy(teacher.logits[batch_ids]).to(logits.device)
        prediction = config.alpha * soft_loss(logits, target, config.temperature)
        if config.alpha < 1.0:
            labels = torch.tensor([data.labels[i] for i in batch_ids], device=logits.device)
            prediction = prediction + (1.0 - config.alpha) * F.cross_entropy(logits, labels)
        loss = loss + config.logit_weight * prediction
    if layered:
        loss = loss + _layer_loss(out, batch, batch_ids, teacher, projection, config, runtime)
    return loss


def _layer_loss(out: Any, batch: dict[str, torch.Tensor], batch_ids: list[int], teacher: _Teacher,
                projection: torch.nn.Linear | None, config: DistilConfig,
                runtime: TrainRuntime) -> torch.Tensor:
    assert teacher.model is not None and teacher.tokenizer is not None and teacher.encoded
    teacher_batch = runtime.move(_pad(teacher.tokenizer, teacher.encoded, batch_ids))
    with torch.no_grad():
        reference = teacher.model(**teacher_batch, output_hidden_states=config.hidden_weight > 0,
                                  output_attentions=config.attention_weight > 0)
    mask = batch["attention_mask"]
    student_layers = len(out.hidden_states) - 1 if out.hidden_states else len(out.attentions)
    pairs = layer_map(student_layers, int(teacher.model.config.num_hidden_layers),
                      config.layer_map)
    loss = out.logits.new_zeros((), dtype=torch.float32)
    for s, t in pairs:
        if config.hidden_weight > 0:
            hidden = out.hidden_states[s]
            if projection is not None:
                hidden = projection(hidden)
            loss = loss + config.hidden_weight * hidden_loss(
                hidden.float(), reference.hidden_states[t].float(), mask) / len(pairs)
        if config.attention_weight > 0:
            loss = loss + config.attention_weight * attention_loss(
                out.attentions[s - 1].float(), reference.attentions[t - 1].float(),
                mask) / len(pairs)
    return loss
