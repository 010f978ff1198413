"""Load-test output: results.json, results.md and a latency-vs-throughput plot."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.capacity import Capacity
from loadtest.cost import Projection
from loadtest.openloop import StepResult


def steps_table(steps: list[StepResult]) -> str:
    lines = ["| offered req/s | achieved req/s | p50 ms | p90 ms | p99 ms | max ms | ok | 429 | "
             "errors | client overload |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in sorted(steps, key=lambda step: step.offered_rps):
        lines.append(f"| {s.offered_rps:.0f} | {s.achieved_rps:.0f} | {s.p50_ms:.1f} | "
                     f"{s.p90_ms:.1f} | {s.p99_ms:.1f} | {s.max_ms:.1f} | {s.ok} | "
                     f"{s.rejected_429} | {s.errors} | {s.client_overload} |")
    return "\n".join(lines)


def capacity_lines(capacity: Capacity, projection: Projection | None) -> list[str]:
    if capacity.rps is None:
        return [f"Capacity at p99 <= {capacity.slo_ms:.0f} ms: not reached even at the first rate."]
    bound = "" if capacity.bounded else " (the highest rate tried still met it: at least)"
    lines = [f"Capacity at p99 <= {capacity.slo_ms:.0f} ms, no errors, no 429: "
             f"**{capacity.rps:.0f} req/s** measured{bound}."]
    if projection is not None and projection.api_ms_per_request is not None:
        api, workers = projection.api_ms_per_request, projection.worker_ms_per_request or 0.0
        lines.append(
            f"Server CPU per request at that rate (/proc): API {api:.3f} ms + workers "
            f"{workers:.3f} ms. Projection (not a measurement): {projection.vm_vcpus} vCPUs x "
            f"1000 / {api + workers:.3f} ms = {projection.projected_rps:.0f} req/s on "
            f"{projection.vm} at ${projection.usd_per_hour:.3f}/h -> "
            f"**${projection.usd_per_100m:.2f} per 100M requests** (prices: "
            f"{projection.price_date}).")
    elif projection is not None:
        lines.append(
            f"Projection (not a measurement): x {projection.vm_vcpus} vCPUs / "
            f"{projection.measured_cores} cores measured = {projection.projected_rps:.0f} req/s on "
            f"{projection.vm} at "
            f"${projection.usd_per_hour:.3f}/h -> **${projection.usd_per_100m:.2f} per 100M "
            f"requests** (prices: {projection.price_date}; pass --server-pid to count the "
            "server's own CPU instead).")
    if projection is not None and projection.joules_per_request is not None:
        lines.append(
            f"Energy (an estimate, {projection.power_model}): {projection.watts:.0f} W for "
            f"{projection.vm} busy -> **{projection.joules_per_request:.3f} J per request, "
            f"{projection.kwh_per_100m:,.1f} kWh per 100M requests**.")
    return lines


def write(out: Path, steps: list[StepResult], meta: dict[str, object],
          capacity: Capacity | None = None, projection: Projection | None = None) -> None:
    """results.json, results.md and latency.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {**meta, "steps": [s.as_dict() for s in steps],
               "capacity": None if capacity is None else
               {"slo_ms": capacity.slo_ms, "rps": capacity.rps, "bounded": capacity.bounded},
               "projection": None if projection is None else projection.as_dict()}
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    text = [f"# Load test: {meta.get('target')}", "", f"`{meta.get('command')}`", "",
            steps_table(steps), ""]
    if capacity is not None:
        text += [*capacity_lines(capacity, projection), ""]
    (out / "results.md").write_text("\n".join(text), encoding="utf-8")
    plot(steps, out / "latency.png", None if capacity is None else capacity.slo_ms)


def plot(steps: list[StepResult], path: Path, slo_ms: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(steps, key=lambda s: s.offered_rps)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for attribute, label in (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99")):
        ax.plot([s.achieved_rps for s in ordered], [getattr(s, attribute) for s in ordered],
                "o-", label=label)
    if slo_ms is not None:
        ax.axhline(slo_ms, color="grey", linestyle="--", label=f"SLO {slo_ms:.0f} ms")
    ax.set_xlabel("achieved requests/s")
    ax.set_ylabel("latency from scheduled send (ms, log)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
