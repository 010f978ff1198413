"""HTTP request/response models of /v1 (they document the API; the hot route encodes its answer
directly) and the error body of each protocol."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[Any] = Field(
        description="texts (single-text tasks) or [text, text] pairs (pair tasks)",
        examples=[["a gripping, beautifully shot film"]],
    )
    return_all_scores: bool = Field(default=False, description="include every label's score")
    top_k: int | None = Field(default=None, ge=1, description="also list the k best labels "
                              "(multi_label: caps the labels over threshold)")
    threshold: float | dict[str, float] | None = Field(
        default=None, description="multi_label tasks: score a label needs, for every label or "
                                  "per label name (default: the thresholds stored at build time)")


class LabelScore(BaseModel):
    label: str
    score: float


class Prediction(BaseModel):
    label: str = Field(description="the best label (multi_label: the highest-scoring one, over "
                                   "its threshold or not)")
    score: float
    labels: list[LabelScore] | None = Field(
        default=None, description="multi_label: every label over its threshold, best first; "
                                  "single_label with top_k: the k best")
    scores: dict[str, float] | None = None
    truncated: bool = Field(default=False, description="the input was cut to max_length tokens")
    chunks: int | None = Field(default=None, description="windows a long input was classified "
                                                         "in (limits.truncation: chunk)")
    variant: str | None = Field(default=None, description="the variant that answered this "
                                "input, when the response's variant is `mixed`")


class ClassifyResponse(BaseModel):
    task: str = Field(description="the model's name")
    version: str = Field(description="the version of the model that answered (also in the "
                         "X-Model-Version header)")
    variant: str = Field(description="the artifact variant that answered (cpu-int8, gpu-fp16, "
                         "...), or `mixed` when inputs ran on different pools (a hybrid task's "
                         "short and long inputs, or rows spilled from a busy or down GPU pool); "
                         "each result then has its own")
    results: list[Prediction]


class ErrorBody(BaseModel):
    status: int
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


# TEI's error_type of each status it answers (its OpenAPI document); other statuses by class.
_TEI_ERROR_TYPES = {413: "validation", 422: "tokenizer", 424: "backend", 429: "overloaded",
                    503: "unhealthy"}
# The paths of Hugging Face's doors (app/api/huggingface.py), which answer errors as TEI does.
HF_PATHS = ("/", "/predict", "/info", "/health")
HF_PREFIX = "/models/"


def tei_error(status: int, message: str) -> dict[str, str]:
    """TEI's error body (the Inference API's clients read its `error` field too)."""
    kind = _TEI_ERROR_TYPES.get(status, "backend" if status >= 500 else "validation")
    return {"error": message, "error_type": kind}


def error_payload(path: str, status: int, message: str) -> dict[str, Any]:
    """The error body of the protocol a path belongs to: v2's {"error": str}, TEI's
    {"error", "error_type"} on Hugging Face's paths, else ours."""
    if path.startswith("/v2"):
        return {"error": message}
    if path in HF_PATHS or path.startswith(HF_PREFIX):
        return tei_error(status, message)
    return {"error": {"status": status, "message": message}}
