"""The baseline a team starts from: a transformers pipeline in PyTorch behind FastAPI.

    python -m bench.baseline_server --model runs/sst2-minilm-l3/teacher --task sst2 --port 8200

Same request and response shape as `/v1/classify/<task>` of this project, one uvicorn process,
the uncompressed fine-tuned model in fp32, PyTorch's default threads: a fair picture of a first
deployment, used by bench.peers as the reference. Needs the compress extra (torch). Loopback only.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel


class Body(BaseModel):
    inputs: list[Any]


def create_app(model: str, task: str) -> FastAPI:
    from transformers import pipeline

    classifier = pipeline("text-classification", model=model, device=-1)
    app = FastAPI(title="baseline: transformers pipeline")

    @app.post("/v1/classify/{name}")
    def classify(name: str, body: Body) -> dict[str, Any]:
        # A sync endpoint: FastAPI runs it in its thread pool, as most first deployments do.
        if name != task:
            raise HTTPException(404, f"unknown task {name!r}")
        texts: Any = [x if isinstance(x, str) else {"text": x[0], "text_pair": x[1]}
                      for x in body.inputs]
        outputs = classifier(texts, truncation=True)
        return {"task": task, "variant": "pytorch-fp32",
                "results": [{"label": o["label"], "score": o["score"]} for o in outputs]}

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_server", description=__doc__)
    parser.add_argument("--model", required=True, help="fine-tuned HF classifier folder")
    parser.add_argument("--task", required=True)
    parser.add_argument("--port", type=int, default=8200)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(args.model, args.task), host="127.0.0.1", port=args.port,
                access_log=False, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
