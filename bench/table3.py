"""The FastFormers Table 3 ablation on this machine: every row measured in one run, side by side.

Rows (batch 1, one sentence at a time, tokenization included):
  1 the base-size teacher in PyTorch fp32, every input padded to the task's max length, all cores;
  2 + dynamic sequence length (a sentence is padded to nothing but itself);
  3 + distillation: the student in PyTorch fp32;
  4 + ONNX export, graph fusion and INT8 (ORT, one instance, all cores);
  5 + multi-instance: N pinned processes x M threads, the best layout of the ones that use all cores;
  6 + structured pruning, two levels, each in its best layout;
  7 the final artifact served over HTTP by the real server (sentences/s at saturation).
Every round times every row once, in order, so that a shared machine's noise falls on all rows
alike; a row's figure is its median round.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import torch

from bench import serving
from bench.instances import GraphSpec, InstancePool, Layout, layouts_for
from bench.overhead import http_rate
from compress.model_stats import inspect_config, load_config
from compress.pipeline import Built, assemble_level
from compress.report import machine_name
from compress.speed import Predictor, TorchPredictor, accuracy, interleaved
from compress.stages import stage_seconds
from contract.encoding import encode, load_tokenizer
from contract.predictor import OnnxPredictor
from loadtest import wrk
from loadtest.cost import Projection, project
from loadtest.proc import ServerCpu

Texts = list[str | tuple[str, str]]
VM = "Standard_F16s_v2"


@dataclass
class Table3Row:
    row: str
    stage: str
    runtime: str
    model: str
    accuracy: float | None
    sentences_per_s: float
    rounds: list[float]
    layout: str | None = None
    per_row_speedup: float = 1.0
    cumulative_speedup: float = 1.0
    usd_per_100m: float = 0.0
    joules_per_sentence: float | None = None  # estimate: see loadtest/prices.yaml
    kwh_per_100m: float | None = None

    @property
    def ms_per_sentence(self) -> float:
        return 1000.0 / self.sentences_per_s


# Row 7 against its in-process pool: at least this many alternated rounds, and the ratio stands
# only if the pool ran beside the server within its own round-to-round spread plus this share of
# its rate alone (a reference slowed, or sped up, while the server is up says nothing of the
# server).
PAIRED_MIN_ROUNDS = 4
REFERENCE_TOLERANCE = 0.10


@dataclass(frozen=True)
class RatioCheck:
    """HTTP / in-process, and whether its reference held still while the server was up."""

    ratio: float  # median of the per-round ratios
    low: float
    high: float
    reference_alone: float  # the pool's median sentences/s in its own rounds (row 6)
    reference_paired: float  # ... in the rounds alternated with the server
    allowed: float  # how far the reference may move: its own spread + REFERENCE_TOLERANCE

    @property
    def moved(self) -> float:
        return self.reference_paired / self.reference_alone - 1.0

    @property
    def stands(self) -> bool:
        return abs(self.moved) <= self.allowed


def check_ratio(http: list[float], paired: list[float], alone: list[float]) -> RatioCheck:
    """The side-by-side ratio of row 7, its spread, and the drift of its reference."""
    ratios = [h / p for h, p in zip(http, paired, strict=True)]
    own = statistics.median(alone)
    spread = (max(alone) - min(alone)) / own if own > 0 else 0.0
    return RatioCheck(statistics.median(ratios), min(ratios), max(ratios), own,
                      statistics.median(paired), spread + REFERENCE_TOLERANCE)


@dataclass
class Table3:
    task: str
    machine: str
    cores: int
    speed_examples: int
    dev_examples: int
    train_examples: int
    validation_examples: int  # held out of train: the pruning level and budget chosen on them
    rounds: int
    recipe: dict[str, object]
    rows: list[Table3Row]
    layouts: dict[str, dict[str, float]]  # graph -> layout -> median sentences/s
    http_client: str
    http_overhead: float | None  # row 7 / the row 6 level it serves; None: refused (see check)
    price: dict[str, object]
    fixed_length: int
    mean_tokens: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # Row 7's server CPU per sentence (medians over rounds): "api" and "workers" ms; row 7's
    # cost is priced from their sum (the API tier counted), not from its rate x cores.
    http_cpu_ms: dict[str, float] = field(default_factory=dict)
    http_check: RatioCheck | None = None


@dataclass(frozen=True)
class Table3Options:
    speed_texts: Texts
    rounds: int
    port: int
    http_seconds: float = 5.0
    http_concurrency: int = 32


@dataclass
class _Timed:
    name: str
    run: Callable[[], float]  # one timed pass; returns sentences/s
    rates: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def _batch1_rate(predictor: Predictor, texts: Texts) -> Callable[[], float]:
    def run() -> float:
        started = time.perf_counter()
        for text in texts:
            predictor.logits([text])
        return len(texts) / (time.perf_counter() - started)

    return run


def _graph_spec(built: Built, level: str) -> GraphSpec:
    candidate = next(c for c in built.candidates if c.level == level)
    record = json.loads((Path(candidate.variants) / "stage.json").read_text(encoding="utf-8"))
    checkpoint = Path(candidate.checkpoint)
    tokenizer = json.loads((checkpoint / "tokenizer_config.json").read_text(encoding="utf-8"))
    max_length = min(built.run.spec.max_length,
                     int(tokenizer.get("model_max_length") or built.run.spec.max_length))
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    return GraphSpec(Path(candidate.variants) / "int8.onnx", checkpoint / "tokenizer.json",
                     list(record["input_names"]), max_length, int(config.get("pad_token_id") or 0))


def _shape(folder: Path) -> str:
    stats = inspect_config(load_config(folder))
    a = stats.architecture
    return f"{a.layers}L/{a.hidden} {a.heads}x{a.head_size} heads, FFN {a.ffn}"


def _levels(built: Built) -> tuple[str, list[str]]:
    """The unpruned level and the pruned ones (up to two, in recipe order)."""
    unpruned = next(c.level for c in built.candidates if not c.pruned)
    pruned = [c.level for c in built.candidates if c.pruned][:2]
    return unpruned, pruned


def measure(built: Built, options: Table3Options, log: Callable[[str], None] = print) -> Table3:
    """Run the ablation: build every row's runner, time them all each round, then assemble."""
    cores = sorted(os.sched_getaffinity(0))
    threads = len(cores)
    torch.set_num_threads(threads)
    spec = built.run.spec
    texts = options.speed_texts
    unpruned, pruned = _levels(built)
    teacher_fixed = TorchPredictor(built.teacher.folder, spec.max_length, fixed_length=True)
    teacher = TorchPredictor(built.teacher.folder, spec.max_length)
    student = TorchPredictor(built.student.folder, spec.max_length)
    student_spec = _graph_spec(built, unpruned)
    student_int8 = OnnxPredictor(student_spec.graph, student_spec.tokenizer_json,
                                student_spec.input_names, student_spec.max_length,
                                student_spec.pad_token_id, threads)
    in_process = [_Timed("1", _batch1_rate(teacher_fixed, texts)),
                  _Timed("2", _batch1_rate(teacher, texts)),
                  _Timed("3", _batch1_rate(student, texts)),
                  _Timed("4", _batch1_rate(student_int8, texts))]
    pools: dict[tuple[str, str], InstancePool] = {}
    timed_pools: dict[tuple[str, str], _Timed] = {}
    # The table ends on the recipe's chosen level when it is pruned, else on the last level.
    final_level = built.chosen.level if built.chosen.pruned else (pruned or [unpruned])[-1]
    server = None
    try:
        for level in [unpruned, *pruned]:
            graph = _graph_spec(built, level)
            for layout in layouts_for(threads):
                pool = InstancePool(graph, layout, cores)
                pools[level, layout.name] = pool
                timed_pools[level, layout.name] = _Timed(f"{level} {layout.name}",
                                                          _pool_rate(pool, texts))
        runners = [*in_process, *timed_pools.values()]
        log(f"timing {len(texts)} inputs x {options.rounds} rounds: rows 1-4 and "
            f"{len(timed_pools)} multi-instance pools")
        for runner in runners:
            runner.run()  # warm-up pass, not counted
        _rounds(runners, options.rounds, log)
        # Row 7 serves the final level in the layout that was best for it in process, and is
        # timed alternately with that pool so that its overhead is a side-by-side ratio.
        served_layout = _best_layout(timed_pools, final_level)
        http = _HttpRow(built, _served_artifact(built, final_level), options, texts)
        server = http.start(served_layout)
        paired = [_Timed("7", http.rate),
                  _Timed("6 again", timed_pools[final_level, served_layout.name].run)]
        paired[0].run()  # warm-up: connections, first batches
        log(f"row 7: {http.client} against the server, alternating with its in-process pool")
        _rounds(paired, max(options.rounds, PAIRED_MIN_ROUNDS), log)
        http_accuracy = http.accuracy(built)
    finally:
        for pool in pools.values():
            pool.close()
        if server is not None:
            serving.stop(server)
    table = _assemble(built, options, in_process, timed_pools, unpruned, pruned, final_level,
                      served_layout, paired, http_accuracy, http.client, threads, teacher)
    _price_served_row(table, http.cpu_ms[1:])  # the first pass was the warm-up
    return table


def _price_served_row(table: Table3, cpu_ms: list[tuple[float, float]]) -> None:
    """Row 7's cost from the whole server's CPU per sentence (API + workers, /proc)."""
    api = statistics.median(a for a, _ in cpu_ms)
    workers = statistics.median(w for _, w in cpu_ms)
    table.http_cpu_ms = {"api": api, "workers": workers}
    served = table.rows[-1]
    _price(served, project(served.sentences_per_s, table.cores, VM, cpu_ms=(api, workers)))


def _price(row: Table3Row, projection: Projection) -> None:
    row.usd_per_100m = projection.usd_per_100m
    row.joules_per_sentence = projection.joules_per_request
    row.kwh_per_100m = projection.kwh_per_100m


def _rounds(runners: list[_Timed], rounds: int, log: Callable[[str], None]) -> None:
    done = [0]

    def report(figures: dict[str, float]) -> None:
        done[0] += 1
        log(f"round {done[0]}: " + ", ".join(f"{name} {rate:.1f}/s"
                                              for name, rate in figures.items()))

    measured = interleaved({r.name: r.run for r in runners}, rounds, report)
    for runner in runners:
        runner.rates.extend(measured[runner.name])


def _served_artifact(built: Built, level: str) -> Path:
    """The recipe's artifact when it holds `level`, else one assembled for it beside the table
    (row 7 serves the graph of the last row 6, whichever level the recipe's budget chose)."""
    if level == built.chosen.level:
        return built.run.recipe.artifact
    candidate = next(c for c in built.candidates if c.level == level)
    return assemble_level(built, candidate, built.run.out / "table3" / f"artifact-{level}")


def _pool_rate(pool: InstancePool, texts: Texts) -> Callable[[], float]:
    return lambda: pool.run(texts).sentences_per_s


def _best_layout(timed: dict[tuple[str, str], _Timed], level: str) -> Layout:
    """The layout with the highest median rate for `level`."""
    rates = {name: runner.median for (graph_level, name), runner in timed.items()
             if graph_level == level}
    best = max(rates, key=lambda name: rates[name])
    instances, threads = (int(x) for x in best.split("x"))
    return Layout(instances, threads)


class _HttpRow:
    """Row 7: the chosen artifact behind the real server, loaded to saturation."""

    def __init__(self, built: Built, artifact: Path, options: Table3Options,
                 texts: Texts) -> None:
        self.artifact = artifact
        self.task = built.run.spec.name
        self.options = options
        self.texts = texts
        self.url = f"http://127.0.0.1:{options.port}"
        self.client = "wrk" if _has_wrk() else "httpx"
        self.script = wrk.classify_script(self.task, texts) if self.client == "wrk" else None

    def start(self, layout: Layout) -> subprocess.Popen[bytes]:
        self.process = serving.serve_artifact(self.artifact, self.options.port,
                                              FFS_CPU_POOL__WORKERS=str(layout.instances),
                                              FFS_CPU_POOL__THREADS_PER_WORKER=str(layout.threads))
        self.cpu_ms: list[tuple[float, float]] = []
        return self.process

    def rate(self) -> float:
        """Sentences/s of one pass, and (kept in cpu_ms) the server's CPU per sentence."""
        cpu = ServerCpu(self.process.pid)
        if self.script is not None:
            result = wrk.run(self.url, self.script, self.options.http_concurrency,
                             self.options.http_seconds)
            if result.errors:
                raise RuntimeError(f"wrk saw {result.errors} failed requests")
            sentences, rate = result.requests, result.requests_per_s
        else:
            rate = _httpx_rate(self.url, self.task, self.texts, self.options.http_concurrency)
            sentences = len(self.texts)
        api_s, worker_s = cpu.spent()
        self.cpu_ms.append((1000 * api_s / sentences, 1000 * worker_s / sentences))
        return rate

    def accuracy(self, built: Built) -> float:
        """Accuracy of the served labels on the dev split, sent 32 inputs a request."""
        dev = built.dev
        names = built.run.spec.label_names
        correct = 0
        with httpx.Client(base_url=self.url, timeout=120.0) as client:
            for start in range(0, len(dev), 32):
                inputs = [t if isinstance(t, str) else list(t)
                          for t in dev.texts[start : start + 32]]
                response = client.post(f"/v1/classify/{self.task}", json={"inputs": inputs})
                response.raise_for_status()
                labels = [names.index(r["label"]) for r in response.json()["results"]]
                correct += sum(int(a == b) for a, b in
                               zip(labels, dev.labels[start : start + 32], strict=True))
        return correct / len(dev)


def _has_wrk() -> bool:
    try:
        wrk.require_wrk()
    except wrk.WrkMissing:
        return False
    return True


def _httpx_rate(url: str, task: str, texts: Texts, concurrency: int) -> float:
    return asyncio.run(http_rate(url, task, list(texts), concurrency))


def _assemble(built: Built, options: Table3Options, in_process: list[_Timed],
              timed_pools: dict[tuple[str, str], _Timed], unpruned: str, pruned: list[str],
              final_level: str, served_layout: Layout, paired: list[_Timed],
              http_accuracy: float, http_client: str, cores: int,
              teacher: TorchPredictor) -> Table3:
    spec = built.run.spec
    dev = built.dev
    # The recipe's budget measured the teacher on the validation split; the table reports dev.
    teacher_accuracy = accuracy(teacher, dev)
    student_accuracy = accuracy(TorchPredictor(built.student.folder, spec.max_length), dev)
    # The sweep scored the levels on validation (to choose); the table scores them on dev.
    int8_accuracy = {c.level: accuracy(built.int8_predictor(c), dev) for c in built.candidates
                     if c.level in (unpruned, final_level, *pruned)}
    by_level = {c.level: c for c in built.candidates}
    teacher_shape = _shape(built.teacher.folder)
    student_shape = _shape(built.student.folder)
    t = in_process
    rows = [
        Table3Row("1", "PyTorch, base-size teacher", f"PyTorch fp32, padded to {spec.max_length}, "
                  f"{_threads(cores)}", teacher_shape, teacher_accuracy, t[0].median, t[0].rates),
        Table3Row("2", "+ dynamic sequence length", f"PyTorch fp32, {_threads(cores)}",
                  teacher_shape, teacher_accuracy, t[1].median, t[1].rates),
        Table3Row("3", "+ distillation (student)", f"PyTorch fp32, {_threads(cores)}", student_shape,
                  student_accuracy, t[2].median, t[2].rates),
        Table3Row("4", "+ ONNX, fusion, INT8", f"ORT int8, 1 instance x {_threads(cores)}",
                  student_shape, int8_accuracy[unpruned], t[3].median, t[3].rates),
    ]
    layouts: dict[str, dict[str, float]] = {}
    for (level, name), runner in timed_pools.items():
        layouts.setdefault(level, {})[name] = runner.median
    best5 = _best_layout(timed_pools, unpruned)
    runner5 = timed_pools[unpruned, best5.name]
    rows.append(Table3Row("5", "+ multi-instance", f"ORT int8, {best5.instances} instances x "
                          f"{_threads(best5.threads)}, pinned", student_shape,
                          int8_accuracy[unpruned], runner5.median, runner5.rates, best5.name))
    served_row = "5"
    for suffix, level in zip("ab", pruned, strict=False):
        best = _best_layout(timed_pools, level)
        runner = timed_pools[level, best.name]
        rows.append(Table3Row(f"6{suffix}", f"+ structured pruning ({level})",
                              f"ORT int8, {best.instances} x {best.threads}, pinned",
                              _shape(Path(by_level[level].checkpoint)), int8_accuracy[level],
                              runner.median, runner.rates, best.name))
        if level == final_level:
            served_row = f"6{suffix}"
    rows.append(Table3Row("7", f"served over HTTP ({final_level})",
                          f"app/, {served_layout.instances} workers x "
                          f"{_threads(served_layout.threads)}, {http_client}, "
                          f"{options.http_concurrency} connections",
                          _shape(Path(by_level[final_level].checkpoint)), http_accuracy,
                          paired[0].median, paired[0].rates, served_layout.name))
    projection = _fill_speedups(rows, cores, served_row)
    check = check_ratio(paired[0].rates, paired[1].rates,
                        timed_pools[final_level, served_layout.name].rates)
    rows[-1].per_row_speedup = check.ratio  # the side-by-side ratio, not one across two phases
    return Table3(task=spec.name, machine=_machine(), cores=cores,
                  speed_examples=len(options.speed_texts), dev_examples=len(dev),
                  train_examples=len(built.train),
                  validation_examples=len(built.run.validation), rounds=options.rounds,
                  recipe=built.run.recipe.model_dump(mode="json"), rows=rows, layouts=layouts,
                  http_client=http_client,
                  http_overhead=check.ratio if check.stands else None, http_check=check,
                  price={"vm": VM, "usd_per_hour": projection.usd_per_hour,
                         "vcpus": projection.vm_vcpus, "date": projection.price_date,
                         "watts_per_vcpu": None if projection.watts is None
                         else projection.watts / projection.vm_vcpus},
                  fixed_length=spec.max_length, mean_tokens=_mean_tokens(built, options),
                  stage_seconds=stage_seconds(built.run.out))


def _threads(count: int) -> str:
    return f"{count} thread" if count == 1 else f"{count} threads"


def _fill_speedups(rows: list[Table3Row], cores: int, served_row: str) -> Projection:
    """Cumulative speed-up over row 1; per-row over the row before (rows 6a and 6b both over
    row 5, row 7 over the row whose graph it serves); the cost projection of every row."""
    rate = {row.row: row.sentences_per_s for row in rows}
    order = [row.row for row in rows]
    projection = project(rate["1"], cores, VM)
    for index, row in enumerate(rows):
        row.cumulative_speedup = row.sentences_per_s / rate["1"]
        if row.row.startswith("6"):
            reference = rate["5"]
        elif row.row == "7":
            reference = rate[served_row]
        else:
            reference = rate[order[max(0, index - 1)]]
        row.per_row_speedup = row.sentences_per_s / reference
        projection = project(row.sentences_per_s, cores, VM)
        _price(row, projection)
    return projection


def _mean_tokens(built: Built, options: Table3Options) -> float:
    spec = _graph_spec(built, built.candidates[0].level)
    tokenizer = load_tokenizer(spec.tokenizer_json, spec.max_length)
    rows = encode(tokenizer, list(options.speed_texts))
    return sum(r.length for r in rows) / max(1, len(rows))


def _machine() -> str:
    """CPU model and usable cores, plus lscpu's topology where lscpu exists."""
    name = machine_name()
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return name
    facts = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    keep = ("CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)", "Model")
    topology = ", ".join(f"{key} {facts[key].strip()}" for key in keep if key in facts)
    flags = facts.get("Flags", "").split()
    extras = [flag for flag in ("avx512_vnni", "amx_int8") if flag in flags]
    return f"{name}; lscpu: {topology}" + (f"; {', '.join(extras)}" if extras else "")


def write(table: Table3, out: Path) -> None:
    """table3.json, table3.md and pareto.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "table3.json").write_text(json.dumps(asdict(table), indent=2, default=str),
                                     encoding="utf-8")
    (out / "table3.md").write_text(markdown(table), encoding="utf-8")
    plot(table, out / "pareto.png")


def _seed_note(table: Table3) -> str:
    """The recipe's seed spread, where it was measured (evaluate.seed_accuracies)."""
    evaluate = table.recipe.get("evaluate")
    seeds = evaluate.get("seed_accuracies") if isinstance(evaluate, dict) else None
    if not seeds:
        return ""
    values = [100 * float(v) for v in seeds]
    return (f" The accuracy column is one training seed: the recipe's served level measured "
            f"{' / '.join(f'{v:.2f}' for v in values)}% over {len(values)} seeds (a spread of "
            f"{max(values) - min(values):.2f} points).")


def markdown(table: Table3) -> str:
    """The table and what it was measured on."""
    lines = [
        f"### Table 3 on {table.task}: {table.machine}",
        "",
        f"Batch 1, tokenization included; {table.speed_examples} {table.task} dev inputs timed "
        f"(mean {table.mean_tokens:.1f} student tokens), every row in each of {table.rounds} "
        f"interleaved rounds, median round. Accuracy on {table.dev_examples} dev examples, read "
        f"only for this table: the pruning level and budget were chosen on "
        f"{table.validation_examples} validation examples held out of train "
        f"({table.train_examples} used for training).{_seed_note(table)} Cost: measured "
        "sentences/s per core x "
        f"{table.price['vcpus']} vCPUs of an Azure {table.price['vm']} at "
        f"${table.price['usd_per_hour']}/h ({table.price['date']}): a projection, not a "
        f"measurement. Energy: the same vCPUs busy at {table.price.get('watts_per_vcpu')} W each "
        "(TDP / hardware threads, codecarbon's TDP method; CPU only): an estimate.",
        "",
        "| row | stage | runtime | model | ms/sentence | sentences/s | speed-up (row) | "
        "speed-up (cumulative) | dev acc | USD / 100M (projected) | J / sentence (est.) | "
        "kWh / 100M (est.) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table.rows:
        acc = "" if r.accuracy is None else f"{100 * r.accuracy:.2f}"
        lines.append(f"| {r.row} | {r.stage} | {r.runtime} | {r.model} | "
                     f"{r.ms_per_sentence:.2f} | {r.sentences_per_s:.1f} | "
                     f"{r.per_row_speedup:.2f}x | {r.cumulative_speedup:.1f}x | {acc} | "
                     f"${r.usd_per_100m:,.2f} | {_energy(r.joules_per_sentence, '.3f')} | "
                     f"{_energy(r.kwh_per_100m, ',.1f')} |")
    lines += ["", "Multi-instance layouts (median sentences/s): " + "; ".join(
        f"{level}: " + ", ".join(f"{name} {rate:.1f}" for name, rate in sorted(rates.items()))
        for level, rates in table.layouts.items()),
        ratio_line(table),
        *([f"Row 7's server CPU per sentence (/proc): API {table.http_cpu_ms['api']:.3f} ms + "
           f"workers {table.http_cpu_ms['workers']:.3f} ms; its cost is {table.price['vcpus']} "
           "vCPUs x 1000 / their sum (the API tier counted), not its rate x cores."]
          if table.http_cpu_ms else []),
        "Rows 1 and 2 are one model (padding is masked), as are rows 4 and 5; rows 6a and 6b each "
        "compare with row 5."]
    return "\n".join(lines) + "\n"


def ratio_line(table: Table3) -> str:
    """What the table says of row 7 against its in-process pool (or why it says no ratio)."""
    check = table.http_check
    if check is None:
        return ""
    reference = (f"its reference ran {check.reference_paired:.1f}/s beside the server against "
                 f"{check.reference_alone:.1f}/s in its own rounds ({100 * check.moved:+.0f}%, "
                 f"allowed {100 * check.allowed:.0f}%)")
    if not check.stands:
        return (f"HTTP (row 7) / the in-process pool it serves: **refused**: {reference}; the "
                f"per-round ratios ({check.low:.2f}-{check.high:.2f}) would compare with a "
                "reference that moved. Row 7's own rate stands.")
    return (f"HTTP (row 7) / the in-process pool it serves, timed alternately in the same rounds: "
            f"{check.ratio:.2f} (median of per-round ratios, {check.low:.2f}-{check.high:.2f}); "
            f"{reference}.")


def _energy(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def plot(table: Table3, path: Path) -> None:
    """Dev accuracy against sentences/s (log scale), one point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for row in table.rows:
        if row.accuracy is None:
            continue
        axes.scatter(row.sentences_per_s, 100 * row.accuracy)
        axes.annotate(row.row, (row.sentences_per_s, 100 * row.accuracy),
                      textcoords="offset points", xytext=(4, 4))
    axes.set_xscale("log")
    axes.set_xlabel("sentences/s, batch 1 (log)")
    axes.set_ylabel("dev accuracy (%)")
    axes.set_title(f"Table 3 rows, {table.task}, {table.cores} cores")
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
