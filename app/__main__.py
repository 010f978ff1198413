"""`python -m app`: check settings and artifacts, then serve on uvicorn (one API process, or a
tier of them sharing the port: app/tier.py)."""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import sys

# Before tokenizers loads: its thread pool would compete with the pinned workers for cores.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from app.api.observability import logging_config
from app.core.service import Shard, api_process_count, prepare_service
from app.settings import ConfigError, load_settings
from app.tier import Tier, serve
from contract.artifact import ArtifactError


def _arguments(argv: list[str]) -> dict[str, object]:
    """Settings from the command line, with the flags KServe's model servers take (a
    ServingRuntime passes `--model_name={{.Name}}`); they win over FFS_* variables."""
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    parser.add_argument("--model_name", help="the one model's name (settings.model_name)")
    parser.add_argument("--model_dir", help="the model repository, or one artifact folder")
    parser.add_argument("--http_port", type=int, help="the port (settings.port)")
    parser.add_argument("--grpc_port", type=int, help="the gRPC port (settings.grpc_port)")
    args = parser.parse_args(argv)
    given = {"model_name": args.model_name, "model_repository": args.model_dir,
             "port": args.http_port, "grpc_port": args.grpc_port}
    return {key: value for key, value in given.items() if value is not None}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load_settings(**_arguments(sys.argv[1:] if argv is None else argv))
        log_config = logging_config(settings.log_level, settings.log_format)
        logging.config.dictConfig(log_config)
        count = api_process_count(settings)
        # Every check that can fail runs here, once, before any process starts.
        service = prepare_service(settings, Shard(0, count))
    except (ConfigError, ArtifactError) as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 2
    if count == 1:
        serve(service, settings, log_config)
        return 0
    return Tier(settings, count, log_config).run()


if __name__ == "__main__":
    raise SystemExit(main())
