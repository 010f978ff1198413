"""The compression report: report.json, report.md (a Table 3 of the run) and pareto.png."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from contract.cpu_features import cpu_model_name


def machine_name() -> str:
    """CPU model and usable cores, e.g. 'Intel(R) Xeon(R) ... (2 cores usable)'."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_model_name()} ({cores} cores usable)"


@dataclass
class Candidate:
    """One pruning level of the sweep, judged by its INT8 graph (what the CPU pool serves)."""

    level: str
    pruned: bool
    checkpoint: str
    variants: str
    parameters: int
    int8_accuracy: float
    int8_ms: float
    meets_budget: bool | None = None
    chosen: bool = False


@dataclass(frozen=True)
class Row:
    """One stage of Table 3."""

    stage: str
    runtime: str
    shape: str
    parameters: int
    size_mb: float
    accuracy: float
    ms_per_sentence: float
    rounds_ms: list[float]
    flops_per_token: int

    @property
    def sentences_per_s(self) -> float:
        return 1000.0 / self.ms_per_sentence


@dataclass
class Report:
    recipe: dict[str, object]
    task: str
    dev_examples: int
    validation_examples: int  # held out of train: the pruning level and budget chosen on them
    speed_examples: int
    rounds: int
    threads: int
    rows: list[Row]
    candidates: list[Candidate]
    budget: float | None
    budget_reference: str
    fusions: dict[str, int]
    fusions_missing: list[str]
    fp16_cpu_agreement: float
    artifact: str
    budget_reference_accuracy: float | None = None
    unfused_int8_ms: float | None = None
    unfused_int8_accuracy: float | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    machine: str = field(default_factory=lambda: machine_name())

    def as_dict(self) -> dict[str, object]:
        rows = [{**asdict(r), "sentences_per_s": round(r.sentences_per_s, 1)} for r in self.rows]
        return {**asdict(self), "rows": rows}


def table(report: Report) -> str:
    """The per-stage table in Markdown, speed-ups against the previous row and the teacher."""
    lines = [
        "| stage | runtime | shape (L/H/heads x size/FFN) | params | size MB | dev acc | "
        "sent/s | ms/sent | speed-up (stage) | speed-up (cumulative) | MFLOPs/token |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = report.rows[0].ms_per_sentence
    previous = base
    for row in report.rows:
        lines.append(
            f"| {row.stage} | {row.runtime} | {row.shape} | {row.parameters / 1e6:.1f}M | "
            f"{row.size_mb:.1f} | {100 * row.accuracy:.2f} | {row.sentences_per_s:.0f} | "
            f"{row.ms_per_sentence:.2f} | {previous / row.ms_per_sentence:.2f}x | "
            f"{base / row.ms_per_sentence:.2f}x | {row.flops_per_token / 1e6:.1f} |")
        previous = row.ms_per_sentence
    return "\n".join(lines)


def sweep_table(report: Report) -> str:
    """The pruning sweep: each level's INT8 accuracy and speed, and which one was chosen."""
    lines = ["| level | params | INT8 validation acc | INT8 ms/sent | within budget | chosen |",
             "|---|---:|---:|---:|---|---|"]
    for c in report.candidates:
        within = "-" if c.meets_budget is None else ("yes" if c.meets_budget else "no")
        lines.append(f"| {c.level}{'' if c.pruned else ' (unpruned)'} | {c.parameters / 1e6:.2f}M "
                     f"| {100 * c.int8_accuracy:.2f} | {c.int8_ms:.2f} | {within} | "
                     f"{'**yes**' if c.chosen else ''} |")
    return "\n".join(lines)


def markdown(report: Report) -> str:
    budget = "none (fastest level)" if report.budget is None else \
        f"at most {report.budget:.1f} points below the {report.budget_reference}"
    if report.budget_reference_accuracy is not None:
        budget += f" ({100 * report.budget_reference_accuracy:.2f}% in PyTorch on validation)"
    met = [c for c in report.candidates if c.chosen and c.meets_budget is False]
    return "\n".join([
        f"# Compression report: {report.recipe.get('name')} ({report.task})",
        "",
        f"Dev accuracy on {report.dev_examples} examples, read only for this report: the pruning "
        f"level and budget were chosen on {report.validation_examples} validation examples held "
        f"out of train (the sweep below). Speed: batch 1, {report.threads} thread(s), "
        f"{report.speed_examples} dev sentences, median of {report.rounds} rounds, all rows "
        f"interleaved in one run (tokenization included). Machine: {report.machine}.",
        "",
        table(report),
        "",
        f"## Pruning sweep (budget: {budget})",
        "",
        sweep_table(report),
        "",
        "Budget not met by any level: the most accurate level was kept." if met else "",
        "## Graph",
        "",
        f"Fusions applied: {report.fusions}; not applied: {report.fusions_missing or 'none'}.",
        _attention_note(report),
        f"FP16 variant (gpu-fp16) on ORT CPU: labels agree with fp32 on "
        f"{100 * report.fp16_cpu_agreement:.1f}% of dev (its speed is a GPU question).",
        _unfused_note(report),
        f"Artifact: `{report.artifact}`.",
        "",
        "## Stage build times",
        "",
        "| stage | seconds |",
        "|---|---:|",
        *[f"| {name} | {seconds:.0f} |" for name, seconds in report.stage_seconds.items()],
        f"| total | {sum(report.stage_seconds.values()):.0f} |",
        "",
    ])


def _unfused_note(report: Report) -> str:
    """The control: INT8 of the plain export, timed in the same run as the table."""
    if report.unfused_int8_ms is None or report.unfused_int8_accuracy is None:
        return ""
    fused = report.rows[-1]
    return (f"Control, same run: INT8 of the plain export without ORT's offline fusion: "
            f"{report.unfused_int8_ms:.2f} ms/sent (fused INT8 {fused.ms_per_sentence:.2f}; "
            f"ratio {fused.ms_per_sentence / report.unfused_int8_ms:.2f}), dev acc "
            f"{100 * report.unfused_int8_accuracy:.2f}%.")


def _attention_note(report: Report) -> str:
    """Whether ORT's Attention fusion survived pruning (attention width != hidden size)."""
    layers_text, hidden_text, heads_text = report.rows[-1].shape.split("/")[:3]
    layers, hidden = int(layers_text.rstrip("L")), int(hidden_text.rstrip("H"))
    heads, head_size = (int(x) for x in heads_text.split("x"))
    fused = report.fusions.get("Attention", 0)
    width = f"{heads} heads x {head_size} = {heads * head_size}"
    relation = "equals" if heads * head_size == hidden else "differs from"
    return (f"Attention fusion: {fused} of {layers} layers fused; attention width {width} "
            f"{relation} hidden {hidden}.")


def write_pareto(report: Report, path: Path) -> None:
    """Accuracy against batch-1 latency for every stage and every sweep level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [r.ms_per_sentence for r in report.rows]
    ys = [100 * r.accuracy for r in report.rows]
    ax.plot(xs, ys, "o-", label="stages (Table 3)")
    for index, (row, x, y) in enumerate(zip(report.rows, xs, ys, strict=True)):
        # Alternate above/below: neighbouring stages often share an accuracy.
        offset = (4, 6) if index % 2 == 0 else (4, -12)
        ax.annotate(row.stage, (x, y), textcoords="offset points", xytext=offset, fontsize=7)
    ax.scatter([c.int8_ms for c in report.candidates],
               [100 * c.int8_accuracy for c in report.candidates], marker="s", color="tab:orange",
               label="pruning sweep (INT8)")
    for c in report.candidates:
        ax.annotate(c.level, (c.int8_ms, 100 * c.int8_accuracy), textcoords="offset points",
                    xytext=(4, 16), fontsize=7, color="tab:orange")
    ax.set_xscale("log")
    ax.set_xlabel("ms per sentence, batch 1 (log)")
    ax.set_ylabel(f"{report.task} dev accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: Report, folder: Path) -> None:
    """report.json, report.md and pareto.png into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n",
                                        encoding="utf-8")
    (folder / "report.md").write_text(markdown(report), encoding="utf-8")
    write_pareto(report, folder / "pareto.png")
