"""`python -m app`: check settings and artifacts, then serve on uvicorn."""

from __future__ import annotations

import logging
import logging.config
import os
import sys

# Before tokenizers loads: its thread pool would compete with the pinned workers for cores.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import uvicorn

from app.lifecycle import DrainingServer
from app.observability import logging_config
from app.server import create_app
from app.service import prepare_service
from app.settings import ConfigError, load_settings
from compress.artifact import ArtifactError


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load_settings()
        log_config = logging_config(settings.log_level, settings.log_format)
        logging.config.dictConfig(log_config)
        service = prepare_service(settings)
    except (ConfigError, ArtifactError) as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 2
    app = create_app(service)
    # One uvicorn process: the API process is light; the model runs in the pinned worker processes.
    config = uvicorn.Config(app, host=settings.host, port=settings.port,
                            log_level=settings.log_level, access_log=False, log_config=log_config,
                            timeout_graceful_shutdown=settings.shutdown_timeout_s)
    DrainingServer(config, service, settings.drain_delay_s).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
