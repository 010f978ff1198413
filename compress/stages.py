"""The stage cache of recipe runs: every stage builds into its own folder, aside, and is renamed in
when done, with a `stage.json` record holding a key of its settings and of its inputs.

A rerun reuses every stage whose key still matches, so an interrupted run resumes at the stage it
was in (a training stage from its last mid-stage checkpoint, `resume_of`), and a changed setting
(or changed data: keys hash the examples, not their count) rebuilds that stage and everything
downstream. `read_record` is the one reader of `stage.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.checkpoint import write_json_atomic
from compress.tasks import Examples
from compress.training import Resume, checkpoint_seconds

log = logging.getLogger(__name__)
STAGE_FILE = "stage.json"
# In a stage's `.partial` folder: the key it was started with, and the training checkpoint. A
# rerun with the same key keeps the folder, so an interrupted training stage resumes mid-way.
PARTIAL_KEY_FILE = "stage.key"
RESUME_FOLDER = "resume"


@dataclass(frozen=True)
class StageRecord:
    """What a finished stage wrote: its key, how long it took, and what it reports."""

    key: str
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    # CPU time of the building process (all its threads): what the stage costs on a shared box.
    cpu_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "seconds": self.seconds, "cpu_seconds": self.cpu_seconds,
                **self.details}


@dataclass(frozen=True)
class Stage:
    folder: Path
    key: str
    record: dict[str, Any]  # the stage's details (what its build returned)


def read_record(folder: Path) -> StageRecord | None:
    """The record of the stage built in `folder`, or None when there is none (or unreadable)."""
    marker = folder / STAGE_FILE
    try:
        raw = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    key, seconds = raw.pop("key", None), raw.pop("seconds", 0.0)
    cpu_seconds = raw.pop("cpu_seconds", 0.0)
    if not isinstance(key, str):
        return None
    return StageRecord(key, float(seconds), raw, float(cpu_seconds))


def cache_root() -> Path:
    """Where recipe runs keep their stages: $FFS_CACHE_DIR, else ~/.cache/fastformers-serve.

    Outside the work tree, so a fresh checkout (or a second one) resumes a long run where it
    stopped instead of starting it again."""
    env = os.environ.get("FFS_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fastformers-serve"


def read_key(partial: Path) -> str | None:
    """The key a stage under construction was started with (its build may resume there)."""
    try:
        return (partial / PARTIAL_KEY_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None


def resume_of(folder: Path) -> Resume:
    """Where a training stage building into `folder` keeps its mid-stage checkpoint."""
    return Resume(folder / RESUME_FOLDER, checkpoint_seconds())


def stage_key(payload: object) -> str:
    """16 hex digits of sha256 over the payload's canonical JSON."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def examples_digest(examples: Examples) -> str:
    """A key part for a data split: its texts and labels, hashed (two splits of one size with
    different rows must not share a cache entry)."""
    digest = hashlib.sha256()
    for text, label in zip(examples.texts, examples.labels, strict=True):
        digest.update(json.dumps([text, label], default=list).encode("utf-8"))
        digest.update(b"\n")
    return f"{len(examples.texts)}:{digest.hexdigest()[:16]}"


def run_stage(folder: Path, payload: dict[str, Any],
              build: Callable[[Path], dict[str, Any]]) -> Stage:
    """Reuse `folder` if its key matches `payload`, else build it aside and rename it in."""
    key = stage_key(payload)
    found = read_record(folder)
    if found is not None and found.key == key:
        log.info("stage %s: reused (key %s)", folder.name, key)
        return Stage(folder, key, found.details)
    if found is not None:
        log.info("stage %s: settings or inputs changed, rebuilding", folder.name)
    partial = folder.with_name(folder.name + ".partial")
    resumable = read_key(partial) == key
    if not resumable:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        (partial / PARTIAL_KEY_FILE).write_text(key, encoding="utf-8")
    started, cpu_started = time.perf_counter(), time.process_time()
    log.info("stage %s: %s", folder.name, "resuming" if resumable else "building")
    details = build(partial)
    record = StageRecord(key, round(time.perf_counter() - started, 1), details,
                         round(time.process_time() - cpu_started, 1))
    (partial / PARTIAL_KEY_FILE).unlink(missing_ok=True)
    shutil.rmtree(partial / RESUME_FOLDER, ignore_errors=True)
    write_json_atomic(partial / STAGE_FILE, record.to_json())
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    log.info("stage %s: done in %.0f s", folder.name, record.seconds)
    return Stage(folder, key, details)


def stage_seconds(out: Path) -> dict[str, float]:
    """How long each stage took when it was built (reused stages keep their first time)."""
    seconds = {}
    for marker in sorted(out.rglob(STAGE_FILE)):
        record = read_record(marker.parent)
        if record is not None:
            seconds[str(marker.parent.relative_to(out))] = record.seconds
    return seconds


def stage_summary(out: Path) -> list[str]:
    """Names of finished stages under a run folder (for the Ctrl-C message)."""
    return sorted(str(p.parent.relative_to(out)) for p in out.rglob(STAGE_FILE))
