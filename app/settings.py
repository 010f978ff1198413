"""One typed settings object: defaults < YAML file (FFS_CONFIG) < environment (FFS_*)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

PoolName = Literal["cpu", "gpu"]
# How a task is served: on one pool, or split by length (short rows on cpu, long rows on gpu).
RouteKind = Literal["cpu", "gpu", "hybrid"]
CONFIG_ENV = "FFS_CONFIG"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


class ConfigError(Exception):
    """Settings a person has to fix before the server can start."""


class CpuPoolSettings(BaseModel):
    workers: int | None = Field(
        default=None, ge=1, description="worker processes (default: usable cores / threads; "
                                         "usable = affinity capped by the cgroup CPU quota)"
    )
    threads_per_worker: int = Field(default=1, ge=1, description="ORT intra-op threads each")
    cores: list[int] | None = Field(
        default=None, description="cores to pin workers to (default: all this process may use)"
    )
    spin_ms: float = Field(
        default=0.0, ge=0, le=50,
        description="after a batch, a worker polls for the next one this long before it sleeps "
                    "(costs that much CPU per idle gap; see docs/benchmarks-log.md)",
    )
    # Off: measured on 2 cores, 1 worker x 2 threads, spinning cost 12% more worker CPU per request
    # at the same throughput and a higher p99 at 1 and 32 clients (docs/benchmarks-log.md).
    ort_spinning: bool = Field(
        default=False, description="with threads_per_worker > 1: whether ORT's intra-op threads "
        "spin after a run (ORT's own default; here off)")


class BatchPolicySettings(BaseModel):
    """How one pool forms batches (the CPU pool's defaults; GpuBatchingSettings has the GPU's)."""

    max_batch_size: int = Field(default=32, ge=1, description="rows per batch at most")
    max_batch_tokens: int = Field(
        default=8192, ge=1, description="rows x padded length per batch at most"
    )
    # 0 on CPU: waiting to fill a batch never paid here, queue build-up under load batches anyway
    # (docs/benchmarks-log.md); accelerators, where a batch costs about what one row does, want more.
    max_wait_ms: float = Field(
        default=0.0, ge=0, description="how long the oldest row may wait for a batch to fill"
    )
    max_queue_rows: int = Field(
        default=2048, ge=1, description="rows waiting per pool before requests get 429"
    )
    min_fill: float = Field(
        default=0.9, ge=0, le=1,
        description="real tokens / padded tokens a batch must keep (0 disables the check)",
    )


class BatchingSettings(BatchPolicySettings):
    # Clients that retry a 429 at once (ignoring Retry-After) turn overload into a busy loop whose
    # requests and refusals take the CPU the workers need: at 4x overload on 2 cores, answering
    # refusals at once halved the answered rate (docs/benchmarks-log.md). A held refusal costs a timer.
    refusal_delay_ms: float = Field(
        default=100.0, ge=0, le=5000,
        description="a request refused for a full queue gets its 429 after this long (0: at once)",
    )


class PrioritySettings(BaseModel):
    """Priority levels (1 is the highest, `levels` the lowest: the bulk lane's), as Triton's
    priority_levels: batches are filled from the highest level waiting."""

    levels: int = Field(default=2, ge=1, le=16, description="priority levels; a request asks "
                        "for one with v2's `parameters.priority` or /v1's X-Priority header")
    default: int = Field(default=1, ge=1, description="the level of a request that names none "
                         "(Triton's 0 means this one too)")
    max_queue_rows: list[int] | None = Field(
        default=None, description="rows each level may have waiting per pool, highest level "
        "first (default: only the pool's max_queue_rows)")
    max_wait_ms: float = Field(
        default=2000.0, gt=0, description="a row of a lower level that has waited this long is "
        "taken as if it were of the highest: the bound on how long the lowest may wait")
    lowest_max_batch_size: int = Field(
        default=2, ge=1, description="rows per batch at most for the lowest level (with "
        "levels > 1): a bulk batch holds a worker this long before an interactive row can "
        "have it")
    lowest_max_workers: int | None = Field(
        default=None, ge=1, description="workers of a pool the lowest level may hold at once "
        "(default: all but one, at least one): the others stay free for higher levels")
    bulk_window_rows: int = Field(
        default=16, ge=1, description="rows a bulk request keeps queued or running at once; it "
        "reads more input only as they are answered")


class GpuBatchingSettings(BatchPolicySettings):
    """The GPU pool's batches: on a GPU a batch costs about what one row does (kernel launches
    dominate) and padding is cheap next to them, so bigger batches, a short wait, low fill."""

    max_batch_size: int = Field(default=128, ge=1, description="rows per batch at most")
    max_batch_tokens: int = Field(default=65536, ge=1,
                                  description="rows x padded length per batch at most")
    max_wait_ms: float = Field(default=2.0, ge=0, description="how long the oldest row may "
                                                              "wait for a batch to fill")
    max_queue_rows: int = Field(default=4096, ge=1,
                                description="rows waiting before requests get 429 (or spill)")
    min_fill: float = Field(default=0.3, ge=0, le=1,
                            description="real tokens / padded tokens a batch must keep")


class GpuPoolSettings(BaseModel):
    """The FP16 GPU pool: one worker process per device (x instances_per_device)."""

    providers: list[str] = Field(
        default_factory=lambda: ["CUDAExecutionProvider"],
        description="ONNX Runtime execution providers of the GPU workers, in order; "
                    "[CPUExecutionProvider] runs the GPU pool's code on the CPU (tests, the "
                    "gpu-check dry run)",
    )
    variant: Literal["gpu-fp16", "fp32"] = Field(
        default="gpu-fp16", description="the artifact variant the GPU pool runs")
    device_ids: list[int] = Field(default_factory=lambda: [0], min_length=1,
                                  description="GPUs to use, one worker process each")
    instances_per_device: int = Field(
        default=1, ge=1, le=8, description="worker processes per GPU, each with its own CUDA "
                                           "context and stream (concurrent batches on one GPU)")
    cores: list[int] | None = Field(
        default=None, description="cores the GPU workers are pinned to (they tokenize and launch "
                                  "kernels); default: the last usable cores, one per worker, "
                                  "taken away from the CPU pool's default")
    gpu_mem_limit_mb: int | None = Field(
        default=None, ge=64, description="CUDA memory arena limit per worker (default: no limit)")
    arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = Field(
        default="kSameAsRequested", description="how the CUDA arena grows: kSameAsRequested "
                                                "keeps memory close to what batches need")
    copy_in_default_stream: bool = Field(
        default=True, description="host-device copies on the compute stream (ORT's default); "
                                  "false: a separate copy stream")
    io_binding: bool = Field(
        default=True, description="bind inputs and the logits output with ORT's IO binding "
                                  "instead of session.run")
    batching: GpuBatchingSettings = Field(default_factory=GpuBatchingSettings)
    min_length: int = Field(
        default=128, ge=1, description="hybrid-routed tasks: an input of at least this many "
                                       "tokens goes to the GPU pool, shorter ones to the CPU pool")
    spill: Literal["cpu", "off"] = Field(
        default="cpu", description="rows for the GPU pool when it is down or saturated: run them "
                                   "on the CPU pool (cpu-int8) or keep them queued (off)")
    spill_queue_rows: int = Field(
        default=1024, ge=0, description="rows waiting for the GPU above which new rows spill to "
                                        "the CPU pool (saturation)")


class LimitSettings(BaseModel):
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024,
                                description="request body size; larger bodies get 413")
    max_inputs_per_request: int = Field(default=64, ge=1)
    max_text_chars: int = Field(default=20_000, ge=1, description="per text, before tokenizing")
    request_timeout_s: float = Field(
        default=30.0, gt=0, description="deadline per request; X-Request-Timeout-Ms may shorten it"
    )
    truncation: Literal["truncate", "reject", "chunk"] = Field(
        default="truncate", description="inputs over the model's max_length: cut, answer 413, "
                                        "or classify overlapping windows and fold their scores"
    )
    chunk_stride: int = Field(
        default=32, ge=0, description="tokens two consecutive windows share (truncation: chunk)"
    )
    max_chunks_per_input: int = Field(
        default=16, ge=1, description="windows one text may make (truncation: chunk); more: 413"
    )
    chunk_aggregation: Literal["auto", "mean", "max"] = Field(
        default="auto", description="folding windows' scores: auto = mean for single_label, max "
                                    "for multi_label tasks"
    )


class AuthSettings(BaseModel):
    api_keys: list[SecretStr] = Field(
        default_factory=list, description="Bearer keys; none configured: no authentication"
    )
    api_keys_file: Path | None = Field(
        default=None, description="file with one key per line (e.g. a mounted secret)"
    )
    protect_health: bool = Field(default=False, description="require a key for health probes")
    protect_metrics: bool = Field(default=False, description="require a key for /metrics")
    admin_api_keys: list[SecretStr] = Field(
        default_factory=list, description="Bearer keys for the model repository calls "
        "(/v2/repository/...); set: only these keys may load or unload models")

    def admin_keys(self) -> list[bytes]:
        return [k.get_secret_value().strip().encode() for k in self.admin_api_keys
                if k.get_secret_value().strip()]

    @field_validator("api_keys_file")
    @classmethod
    def _keys_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file")
        return value

    def keys(self) -> list[bytes]:
        found = [key.get_secret_value() for key in self.api_keys]
        if self.api_keys_file is not None:
            found += self.api_keys_file.read_text(encoding="utf-8").splitlines()
        return [key.strip().encode() for key in found if key.strip()]


class RepositorySettings(BaseModel):
    """The model repository at run time (load and unload calls)."""

    memory_budget_mb: int | None = Field(
        default=None, ge=1, description="refuse a load whose estimate (this server's resident "
        "memory now + the new version's model files x the workers that load it) exceeds this, "
        "instead of being killed by the kernel; unset: no check")
    poll_s: float | None = Field(
        default=None, gt=0, description="every this many seconds, load what changed in the "
        "repository (new, changed or removed versions, config.yaml) as a load call would; "
        "unset: only load calls change what is served")


class TracingSettings(BaseModel):
    enabled: bool = Field(default=False, description="export OpenTelemetry traces of classify "
                                                     "requests (off: no tracing code runs)")
    otlp_endpoint: str = Field(default="http://127.0.0.1:4318/v1/traces",
                               description="OTLP/HTTP traces endpoint (a collector, Jaeger, ...)")
    service_name: str = Field(default="fastformers-serve", description="service.name resource")
    sample_ratio: float = Field(
        default=1.0, ge=0, le=1, description="share of requests traced (a client's sampled "
                                             "traceparent is always followed)")


class Settings(BaseSettings):
    """Server settings. Env vars use the FFS_ prefix and `__` for nesting (FFS_CPU_POOL__WORKERS)."""

    model_config = SettingsConfigDict(
        env_prefix="FFS_", env_nested_delimiter="__", extra="forbid"
    )

    model_repository: Path = Field(
        default=Path("models"), description="artifact folders and versioned models; or one "
        "artifact folder (KServe's /mnt/models), served as one model")
    model_name: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.-]+$", description="the name of the one model when "
        "model_repository is an artifact folder (default: its manifest's name)")
    default_model: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.-]+$", description="the model the routes without a "
        "model in their path answer with (TEI's /predict, / and /info); default: the only model "
        "served")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    grpc_port: int | None = Field(
        default=None, ge=1, le=65535, description="serve the v2 protocol's gRPC form on this "
        "port too (needs the `grpc` extra); none: no gRPC")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["json", "text"] = Field(default="json", description="one JSON object "
                                                "per line, or plain text")
    log_payloads: bool = Field(default=False, description="log input texts at debug level; off: "
                                                          "logs never contain input text")
    auth: AuthSettings = Field(default_factory=AuthSettings)
    repository: RepositorySettings = Field(default_factory=RepositorySettings)
    cors_allow_origins: list[str] = Field(
        default_factory=list, description="browser origins allowed by CORS (none: CORS off)"
    )
    default_pool: RouteKind = Field(default="cpu",
                                    description="route of tasks not listed in routing")
    routing: dict[str, RouteKind] = Field(
        default_factory=dict, description="task -> cpu, gpu, or hybrid (by length, "
                                          "gpu_pool.min_length); tasks not listed use default_pool"
    )
    gpu_fallback: Literal["cpu", "fail"] = Field(
        default="cpu", description="gpu or hybrid tasks when no GPU pool can run (no CUDA "
                                   "provider, or its workers fail to start): serve on cpu or "
                                   "refuse to start"
    )
    artifact_errors: Literal["fail", "skip"] = Field(
        default="fail", description="an artifact that fails its checks: refuse to start, or start "
                                    "without that task (listed as unavailable)"
    )
    golden_mismatch: Literal["serve", "fp32", "refuse"] = Field(
        default="serve", description="a CPU variant that answers its golden texts differently "
        "on this CPU than where its accuracy was measured (another integer-kernel family): serve "
        "it with a warning, serve the model's fp32 graph on the CPU pool instead (exact, slower), "
        "or refuse the model version (as an artifact error)"
    )
    tokenize: Literal["api", "workers"] = Field(
        default="workers",
        description="where texts are tokenized: in the API process, or in the workers (texts "
                    "cross, the batcher groups by an estimated length; measured cheaper for the "
                    "API tier, docs/benchmarks-log.md). truncation: chunk always tokenizes in the API",
    )
    api_processes: int | None = Field(
        default=None, ge=1,
        description="API (HTTP) processes sharing the port, each owning a shard of the workers "
                    "(default: one per 8 usable cores, at least 1)",
    )
    cpu_pool: CpuPoolSettings = Field(default_factory=CpuPoolSettings)
    gpu_pool: GpuPoolSettings = Field(default_factory=GpuPoolSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    priorities: PrioritySettings = Field(default_factory=PrioritySettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    worker_start_timeout_s: float = Field(default=120.0, gt=0)
    drain_delay_s: float = Field(
        default=2.0, ge=0, description="on SIGTERM, how long to keep serving with readiness "
                                       "failing before the listening socket closes"
    )
    shutdown_timeout_s: int = Field(
        default=30, gt=0, description="on SIGTERM, how long in-flight requests may still run"
    )

    @field_validator("priorities")
    @classmethod
    def _levels_fit(cls, value: PrioritySettings) -> PrioritySettings:
        if value.default > value.levels:
            raise ValueError(f"priorities.default is {value.default} but there are only "
                             f"{value.levels} levels")
        if value.max_queue_rows is not None and len(value.max_queue_rows) != value.levels:
            raise ValueError(f"priorities.max_queue_rows has {len(value.max_queue_rows)} "
                             f"entries for {value.levels} levels: give one per level")
        return value

    @field_validator("grpc_port")
    @classmethod
    def _grpc_installed(cls, value: int | None) -> int | None:
        if value is not None and not all(_installed(m) for m in ("grpc", "tritonclient.grpc")):
            raise ValueError("gRPC needs the `grpc` extra: pip install '.[grpc]' (grpcio and "
                             "tritonclient[grpc]), or leave grpc_port unset")
        return value

    @field_validator("model_repository")
    @classmethod
    def _repository_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(
                f"{value} is not a folder; build a model first (`make demo`) or point "
                "FFS_MODEL_REPOSITORY at a model repository"
            )
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_ENV)
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


def load_settings(**overrides: object) -> Settings:
    """Build Settings, turning validation errors into one message a person can act on."""
    config_file = os.environ.get(CONFIG_ENV)
    if config_file and not Path(config_file).is_file():
        raise ConfigError(f"{CONFIG_ENV}={config_file}: no such file")
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            problems.append(f"  {where}: {error['msg']} (got {error.get('input')!r})")
        raise ConfigError(
            "invalid configuration (env FFS_*, or the YAML file in FFS_CONFIG):\n"
            + "\n".join(problems)
        ) from None
