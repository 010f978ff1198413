"""`python -m deploy.checks.monitoring_check`: a real Prometheus scrapes the service, and every
query of the Grafana dashboard must answer with data (deploy/monitoring-check.sh finds or installs
Prometheus and calls this).

    python -m deploy.checks.monitoring_check --repository models

1. `promtool check config` on deploy/prometheus/prometheus.yml.
2. The service starts on the repository with both pools: the GPU pool on ORT's CPU provider, every
   task routed `hybrid` (so the dashboard's per-pool and spill-over series exist).
3. Prometheus starts on a copy of that config whose service job targets the loopback service (the
   GPU image's job, which has no target here, is left out).
4. Traffic for --seconds: classifications of several lengths, requests whose deadline has passed
   (504s), unknown tasks (404s).
5. Every PromQL expression of deploy/grafana/dashboards/fastformers-serve.json goes to Prometheus's
   HTTP API: each must return at least one series with a finite value, every label its legend
   uses, and a series for each pool and task the service has where the legend shows that label.
   The table of answers goes to --out/results.md.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench import serving

ROOT = Path(__file__).resolve().parents[2]  # the checkout: deploy/checks/ is two below it
CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "fastformers-serve.json"
SERVICE_JOB = "fastformers-serve"
TEXTS = ["a fine film", "dull and far too long for what it has to say about anything at all",
         " ".join(["an ambitious, sprawling, often moving and sometimes baffling epic"] * 3)]


@dataclass(frozen=True)
class Answer:
    panel: str
    expr: str
    labels: tuple[str, ...]  # what the legend shows
    series: int
    finite: int  # series with a finite value
    missing: tuple[str, ...]  # legend labels some series lack
    absent: tuple[str, ...]  # label values the service has (a pool, a task) that no series has

    @property
    def ok(self) -> bool:
        return self.finite > 0 and not self.missing and not self.absent


def check_config(promtool: str, path: Path) -> str:
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True,
                            text=True, timeout=60)
    if result.returncode != 0:
        raise SystemExit(f"promtool check config {path} failed:\n{result.stdout}{result.stderr}")
    return (result.stdout + result.stderr).strip()


def loopback_config(source: Path, target: str, out: Path) -> Path:
    """The project's config with the service job pointed at `target`, other jobs left out."""
    config = yaml.safe_load(source.read_text())
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == SERVICE_JOB]
    for group in jobs[0]["static_configs"]:
        group["targets"] = [target]
    config["scrape_configs"] = jobs
    out.write_text(yaml.safe_dump(config))
    return out


def panel_queries(path: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    """(panel title, PromQL, labels its legend names) of every target of the dashboard."""
    dashboard = json.loads(path.read_text())
    return [(panel["title"], target["expr"],
             tuple(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", ""))))
            for panel in dashboard["panels"] for target in panel.get("targets", [])]


def drive(url: str, tasks: dict[str, str], seconds: float) -> dict[int, int]:
    """Requests for `seconds` to `tasks` (name -> input kind): classifications, expired
    deadlines and unknown tasks; the statuses they got."""
    statuses: dict[int, int] = {}
    until = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=30.0) as client:
        index = 0
        while time.monotonic() < until:
            task = list(tasks)[index % len(tasks)]
            text = TEXTS[index % len(TEXTS)]
            item: str | list[str] = [text, TEXTS[0]] if tasks[task] == "pair" else text
            body = {"inputs": [item] * (1 + index % 3)}
            headers = {"X-Request-Timeout-Ms": "0.001"} if index % 10 == 9 else {}
            path = f"/v1/classify/{task if index % 25 != 24 else 'no-such-task'}"
            status = client.post(path, json=body, headers=headers).status_code
            statuses[status] = statuses.get(status, 0) + 1
            index += 1
            time.sleep(0.01)
    return statuses


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=30.0)
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def answer(prometheus: str, expected: dict[str, set[str]], panel: str, expr: str,
           labels: tuple[str, ...]) -> Answer:
    """Prometheus's answer to one panel query, against the label values the service has
    (`expected`: label -> values, e.g. every pool of /v1/pools)."""
    series = query(prometheus, expr)
    finite = [s for s in series if math.isfinite(float(s["value"][1]))]
    missing = tuple(sorted({name for s in series for name in labels if name not in s["metric"]}))
    absent = tuple(sorted(f"{name}={value}" for name in labels for value in
                          expected.get(name, set()) - {s["metric"].get(name) for s in finite}))
    return Answer(panel, expr, labels, len(series), len(finite), missing, absent)


def wait_for_scrapes(prometheus: str, count: int, timeout: float) -> None:
    """Until Prometheus has scraped the service `count` times in the last minute, all up."""
    expr = f'count_over_time(up{{job="{SERVICE_JOB}"}}[1m]) and up{{job="{SERVICE_JOB}"}} == 1'
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        with_data = query(prometheus, expr)
        if with_data and float(with_data[0]["value"][1]) >= count:
            return
        time.sleep(1)
    raise SystemExit(f"Prometheus did not scrape the service {count} times in {timeout:.0f} s")


def start_prometheus(binary: str, config: Path, data: Path, port: int, log: Path) \
        -> subprocess.Popen[bytes]:
    command = [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
               f"--web.listen-address=127.0.0.1:{port}"]
    return serving.launch(command, f"http://127.0.0.1:{port}/-/ready", log, timeout=60)


def table(answers: list[Answer]) -> list[str]:
    lines = ["| panel | query | series (finite) | legend labels | result |", "|---|---|---|---|---|"]
    for a in answers:
        verdict = "ok" if a.ok else "; ".join(
            [f"series without {', '.join(a.missing)}"] * bool(a.missing)
            + [f"no series for {', '.join(a.absent)}"] * bool(a.absent)
            + ["no data"] * (a.finite == 0))
        lines.append(f"| {a.panel} | `{a.expr}` | {a.series} ({a.finite}) | "
                     f"{', '.join(a.labels) or '-'} | {verdict} |")
    return lines


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy.checks.monitoring_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=Path("models"))
    p.add_argument("--prometheus", default=shutil.which("prometheus") or "prometheus")
    p.add_argument("--promtool", default=shutil.which("promtool") or "promtool")
    p.add_argument("--seconds", type=float, default=15.0, help="of traffic")
    p.add_argument("--out", type=Path, default=Path("runs/monitoring-check"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    lines = [f"$ promtool check config {CONFIG.relative_to(ROOT)}",
             check_config(args.promtool, CONFIG)]
    version = subprocess.run([args.prometheus, "--version"], capture_output=True, text=True)
    lines.append((version.stdout or version.stderr).splitlines()[0])
    service_port, prometheus_port = serving.free_port(), serving.free_port()
    env = {"FFS_GPU_POOL__PROVIDERS": '["CPUExecutionProvider"]', "FFS_DEFAULT_POOL": "hybrid",
           "FFS_GPU_POOL__MIN_LENGTH": "16"}
    with tempfile.TemporaryDirectory(prefix="ffs-prometheus-") as scratch:
        config = loopback_config(CONFIG, f"127.0.0.1:{service_port}", Path(scratch) / "p.yml")
        check_config(args.promtool, config)
        server = serving.start(args.repository, service_port, args.out / "server.log", env)
        try:
            prometheus = start_prometheus(args.prometheus, config, Path(scratch) / "data",
                                          prometheus_port, args.out / "prometheus.log")
            try:
                url = f"http://127.0.0.1:{service_port}"
                tasks = {m["task"]: m["input_kind"]
                         for m in httpx.get(f"{url}/v1/models").json()["models"]}
                pools = [p["name"] for p in httpx.get(f"{url}/v1/pools").json()["pools"]]
                statuses = drive(url, tasks, args.seconds)
                prom = f"http://127.0.0.1:{prometheus_port}"
                wait_for_scrapes(prom, 3, timeout=60)
                expected = {"pool": set(pools), "task": set(tasks)}
                answers = [answer(prom, expected, *q) for q in panel_queries(DASHBOARD)]
            finally:
                serving.stop(prometheus)
        finally:
            serving.stop(server)
    lines += [f"traffic: {args.seconds:g} s, statuses {dict(sorted(statuses.items()))}; "
              f"tasks {sorted(tasks)}, both pools (GPU pool on the CPU provider, routing hybrid)",
              "", *table(answers), "",
              f"{sum(a.ok for a in answers)} of {len(answers)} dashboard queries returned data "
              f"({time.monotonic() - started:.0f} s)"]
    text = "\n".join(lines) + "\n"
    (args.out / "results.md").write_text(text)
    print(text)
    return 0 if all(a.ok for a in answers) else 1


if __name__ == "__main__":
    raise SystemExit(main())
