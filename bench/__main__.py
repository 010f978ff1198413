"""`python -m bench NAME [options]`: the benchmarks behind the figures in docs/benchmarks.md.
`python -m bench` lists them; `python -m bench NAME --help` gives each one's options. Every
benchmark measures side by side in one run and names the CPU. (The deploy checks live with
deploy/: deploy/checks, run by deploy/*.sh.)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    module: str  # bench.<module> has main(argv) -> exit status
    summary: str
    prefix: tuple[str, ...] = ()  # arguments main() takes before the user's


BENCHMARKS: dict[str, Entry] = {
    "table3": Entry("recipe_runs", "FastFormers Table 3: teacher -> served INT8 student, every row "
                    "timed side by side (make table3)", prefix=("table3",)),
    "levers": Entry("recipe_runs", "accuracy levers of distillation side by side (make levers)",
                    prefix=("levers",)),
    "overhead": Entry("overhead", "HTTP server against the same worker layout in-process "
                      "(make bench)"),
    "serving-core": Entry("serving_core", "API CPU per request (with --baseline: an older "
                          "checkout), one client, the API tier, overload"),
    "peers": Entry("peers", "the same client, inputs and SLO against each server in turn"),
    "int8": Entry("int8", "the INT8 variants of one artifact against its fp32 graph"),
    "lifecycle": Entry("lifecycle", "version swaps, a failed load and SIGTERM under load"),
    "soak": Entry("soak", "a steady load for a bounded time: errors, latency drift, memory"),
    "fleet": Entry("fleet", "replicas behind HAProxy: kill -9, rolling restart, rollout, "
                   "queue depth against p99 (deploy/fleet-check.sh runs it)"),
}


def listing() -> str:
    lines = ["usage: python -m bench NAME [options]   (python -m bench NAME --help)", "",
             "benchmarks:"]
    lines += [f"  {name:18s} {entry.summary}" for name, entry in BENCHMARKS.items()]
    return "\n".join(lines)


def entry_point(name: str) -> Callable[[list[str]], int]:
    """main() of the named benchmark, with the arguments it takes before the user's."""
    entry = BENCHMARKS[name]
    main: Callable[[list[str] | None], int] = \
        importlib.import_module(f"bench.{entry.module}").main
    return lambda argv: main([*entry.prefix, *argv])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(listing())
        return 0 if args else 2
    if args[0] not in BENCHMARKS:
        print(f"error: no benchmark {args[0]!r}\n\n{listing()}", file=sys.stderr)
        return 2
    return entry_point(args[0])(args[1:])


if __name__ == "__main__":
    sys.exit(main())
