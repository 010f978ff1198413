"""A training stage survives a stop: a process killed mid-stage resumes from its last checkpoint
and ends with the weights an uninterrupted run of the same seed reaches."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from compress.device import TrainRuntime
from compress.distill import DistilConfig, distil, init_student
from compress.stages import RESUME_FOLDER, run_stage
from compress.tasks import get_task, load_split
from compress.training import STATE_FILE, Resume
from tests.conftest import ROOT, TinyRepo

SST2 = get_task("sst2")
# Hidden-state transfer from a live teacher (a second module, the projection, is checkpointed
# too) with dropout on (the torch RNG state matters), over several epochs (the batch order too),
# ending with the moving average of the weights (its state is checkpointed as well).
CONFIG = DistilConfig(epochs=3, batch_size=16, learning_rate=2e-3, max_length=64,
                      hidden_weight=1.0, attention_weight=1.0, max_examples=160, ema_decay=0.9)
SAVED_UP_TO, KILLED_AT = 4, 7

CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from compress import training
    from compress.device import TrainRuntime
    from compress.distill import DistilConfig, distil, init_student
    from compress.tasks import get_task, load_split

    teacher, data_dir, out, saved_up_to, killed_at = sys.argv[1:6]
    original = training._save

    def save_then_die(resume, modules, progress, *rest):
        # Checkpoints up to one step, then steps that are never saved, then kill -9.
        if progress.step >= int(killed_at):
            os.kill(os.getpid(), signal.SIGKILL)
        if progress.step <= int(saved_up_to):
            original(resume, modules, progress, *rest)

    training._save = save_then_die
    spec = get_task("sst2")
    train = load_split(spec, "train", Path(data_dir))
    student, tokenizer = init_student(teacher, spec, 1)
    config = DistilConfig(**{CONFIG})
    distil(student, tokenizer, Path(teacher), train, config, Path(out), None,
           TrainRuntime("cpu", "fp32", 1), training.Resume(Path(out) / "resume", 0.0))
""")


def _train(tiny_repo: TinyRepo, out: Path, resume: Resume | None) -> dict[str, torch.Tensor]:
    train = load_split(SST2, "train", tiny_repo.data_dir)
    student, tokenizer = init_student(str(tiny_repo.sst2_teacher), SST2, 1)
    distil(student, tokenizer, tiny_repo.sst2_teacher, train, CONFIG, out, None,
           TrainRuntime("cpu", "fp32", 1), resume)
    return load_file(str(out / "model.safetensors"))


def _kill_mid_stage(tiny_repo: TinyRepo, out: Path) -> None:
    fields = {k: v for k, v in CONFIG.__dict__.items()}
    script = CHILD.replace("{CONFIG}", repr(fields))
    done = subprocess.run(
        [sys.executable, "-c", script, str(tiny_repo.sst2_teacher), str(tiny_repo.data_dir),
         str(out), str(SAVED_UP_TO), str(KILLED_AT)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]


def test_a_killed_training_resumes_and_ends_with_the_uninterrupted_weights(
        tiny_repo: TinyRepo, tmp_path: Path) -> None:
    reference = _train(tiny_repo, tmp_path / "uninterrupted", None)
    out = tmp_path / "stage"
    _kill_mid_stage(tiny_repo, out)
    state = torch.load(out / RESUME_FOLDER / STATE_FILE, weights_only=False)
    assert state["step"] == SAVED_UP_TO
    assert not (out / "model.safetensors").exists()
    resumed = _train(tiny_repo, out, Resume(out / RESUME_FOLDER, 0.0))
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)
    assert not (out / RESUME_FOLDER).exists()  # the finished stage drops its checkpoint


def test_resuming_continues_the_step_count_instead_of_starting_over(
        tiny_repo: TinyRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "stage"
    _kill_mid_stage(tiny_repo, out)
    steps: list[int] = []
    real_step = torch.optim.AdamW.step

    def counted(self: torch.optim.AdamW, *args: object, **kwargs: object) -> object:
        steps.append(1)
        return real_step(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.optim.AdamW, "step", counted)
    _train(tiny_repo, out, Resume(out / RESUME_FOLDER, 3600.0))
    assert len(steps) == CONFIG.steps_for(CONFIG.max_examples or 0) - SAVED_UP_TO


def test_a_stage_with_a_changed_key_does_not_resume_from_another_settings_checkpoint(
        tmp_path: Path) -> None:
    folder = tmp_path / "student"
    seen: list[bool] = []

    def interrupted(partial: Path) -> dict[str, object]:
        (partial / RESUME_FOLDER).mkdir()
        (partial / RESUME_FOLDER / STATE_FILE).write_bytes(b"state")
        raise KeyboardInterrupt

    def record(partial: Path) -> dict[str, object]:
        seen.append((partial / RESUME_FOLDER / STATE_FILE).is_file())
        return {}

    with pytest.raises(KeyboardInterrupt):
        run_stage(folder, {"lr": 1}, interrupted)
    run_stage(folder, {"lr": 2}, record)
    assert seen == [False]
    with pytest.raises(KeyboardInterrupt):
        run_stage(tmp_path / "other", {"lr": 1}, interrupted)
    run_stage(tmp_path / "other", {"lr": 1}, record)
    assert seen == [False, True]


def test_a_bf16_runtime_trains_under_autocast_and_saves_fp32_weights(
        tiny_repo: TinyRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.dtype] = []
    real = torch.nn.functional.linear

    def recording(*args: object, **kwargs: object) -> torch.Tensor:
        out = real(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.functional, "linear", recording)
    train = load_split(SST2, "train", tiny_repo.data_dir).head(64)
    student, tokenizer = init_student(str(tiny_repo.sst2_teacher), SST2, 1)
    config = DistilConfig(epochs=1, batch_size=16, max_length=64)
    out = distil(student, tokenizer, tiny_repo.sst2_teacher, train, config, tmp_path / "s", None,
                 TrainRuntime("cpu", "bf16", 1))
    assert torch.bfloat16 in seen  # the forward passes ran in bf16
    assert all(t.dtype == torch.float32 for t in load_file(str(out / "model.safetensors")).values()
               if t.is_floating_point())
