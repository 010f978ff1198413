"""Driving `wrk` (the C load generator, ~0.1 ms of CPU per request) and reading its report."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from contract.encoding import TextInput


class WrkMissing(Exception):
    """wrk is not installed."""


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    errors: int  # non-2xx responses plus socket errors
    latency_ms: dict[str, float]  # "50", "75", "90", "99" -> milliseconds
    requests: int = 0  # responses of any status
    seconds: float = 0.0
    statuses: dict[str, int] | None = None  # "429", "5xx" -> count (scripts with count_statuses)


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkMissing("this benchmark needs wrk (apt-get install wrk)")
    return path


# Counts refusals and server errors per thread and prints them at the end (wrk itself only counts
# "non-2xx"); parse() reads them back into WrkResult.statuses.
_STATUS_COUNTER = """
threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args) refused = 0; failed = 0 end
response = function(status, headers, body)
  if status == 429 then refused = refused + 1 elseif status >= 500 then failed = failed + 1 end
end
done = function(summary, latency, requests)
  local r, f = 0, 0
  for _, t in ipairs(threads) do r = r + t:get("refused"); f = f + t:get("failed") end
  io.write(string.format("statuses 429=%d 5xx=%d\\n", r, f))
end
"""


def classify_script(task: str, texts: list[TextInput], pause_ms: float = 0.0,
                    count_statuses: bool = False) -> Path:
    """A Lua script that POSTs each text as its own request, cycling through them; with
    `pause_ms`, each connection waits that long between requests (a paced, steady load);
    `count_statuses` also counts 429 and 5xx answers."""
    bodies = [json.dumps({"inputs": [t if isinstance(t, str) else list(t)]}) for t in texts]
    lines = ["bodies = {", *(f"  {json.dumps(b)}," for b in bodies), "}", "i = 0",
             "wrk.method = 'POST'", "wrk.headers['Content-Type'] = 'application/json'",
             "request = function()",
             "  i = i % #bodies + 1",
             f"  return wrk.format(nil, '/v1/classify/{task}', nil, bodies[i])",
             "end"]
    if pause_ms > 0:
        lines += ["delay = function()", f"  return {pause_ms:.3f}", "end"]
    if count_statuses:
        lines += _STATUS_COUNTER.strip().splitlines()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write("\n".join(lines) + "\n")
    return Path(handle.name)


def _milliseconds(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse(report: str) -> WrkResult:
    rate = re.search(r"Requests/sec:\s+([\d.]+)", report)
    if rate is None:
        raise RuntimeError(f"cannot read wrk output:\n{report}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                        report)
    errors = (int(bad.group(1)) if bad else 0) + \
        (sum(int(n) for n in sockets.groups()) if sockets else 0)
    latency = {p: _milliseconds(v, u) for p, v, u in
               re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", report, re.M)}
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", report)
    requests, seconds = 0, 0.0
    if total is not None:
        requests = int(total.group(1))
        seconds = float(total.group(2)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[
            total.group(3)]
    counted = re.search(r"statuses 429=(\d+) 5xx=(\d+)", report)
    statuses = {"429": int(counted.group(1)), "5xx": int(counted.group(2))} if counted else None
    return WrkResult(float(rate.group(1)), errors, latency, requests, seconds, statuses)


def run(url: str, script: Path, connections: int, seconds: float) -> WrkResult:
    """Run wrk against `url` (one thread) and parse its report, percentiles included."""
    result = subprocess.run(
        [require_wrk(), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
         "-s", str(script), url],
        check=True, capture_output=True, text=True,
    )
    return parse(result.stdout)
