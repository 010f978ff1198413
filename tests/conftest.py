"""Shared fixtures: a tiny BERT built here, compressed by the real pipeline, served for real."""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench import serving

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _own_stage_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Recipe runs without an out_dir write under $FFS_CACHE_DIR: the suite's own folder, never
    the user's stage cache. Assembled packaged models stay where they are (minutes to rebuild)."""
    from compress.pretrained import model_cache_dir

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FFS_MODEL_CACHE", str(model_cache_dir()))
        patch.setenv("FFS_CACHE_DIR", str(tmp_path_factory.mktemp("stage-cache")))
        yield

POSITIVE = ["good", "great", "wonderful", "superb", "lovely", "brilliant", "moving", "fun"]
NEGATIVE = ["bad", "awful", "boring", "dull", "terrible", "weak", "clumsy", "tedious"]
FILLER = ["the", "movie", "film", "plot", "acting", "was", "very", "quite", "story", "a", "and",
          "cast", "ending", "music", "is", "really", "script", "direction", "of", "this"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _sentence(rng: random.Random, words: list[str]) -> str:
    body = rng.choices(FILLER, k=rng.randint(2, 14))
    body.insert(rng.randrange(len(body) + 1), rng.choice(words))
    return " ".join(body)


def write_sentiment_tsv(path: Path, rows: int, seed: int) -> None:
    """SST-2 format: header, sentence + trailing space, tab, 0/1 label."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["sentence\tlabel"]
    for _ in range(rows):
        label = rng.randint(0, 1)
        lines.append(f"{_sentence(rng, POSITIVE if label else NEGATIVE)} \t{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_pair_jsonl(path: Path, rows: int, seed: int) -> None:
    """SuperGLUE RTE format: premise, hypothesis, label, idx."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for idx in range(rows):
            premise = _sentence(rng, POSITIVE + NEGATIVE)
            entailed = rng.random() < 0.5
            word = next(w for w in premise.split() if w in POSITIVE + NEGATIVE) if entailed \
                else rng.choice(POSITIVE + NEGATIVE)
            hypothesis = f"it was {word}"
            label = "entailment" if word in premise.split() else "not_entailment"
            handle.write(json.dumps({"premise": premise, "hypothesis": hypothesis,
                                     "label": label, "idx": idx}) + "\n")


def build_tiny_bert(folder: Path, heads: int = 2, ffn: int = 64, layers: int = 2,
                    char_level: bool = False) -> Path:
    """A random-init BERT (hidden 32) with a word-level vocabulary, saved as an HF folder.

    char_level leaves the words out of the vocabulary: a tokenizer that splits every word into
    letters, as a teacher with another tokenizer would.
    """
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words = [] if char_level else sorted(set(POSITIVE + NEGATIVE + FILLER + ["it"]))
    vocab = SPECIALS + words + letters + [f"##{c}" for c in letters]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # Built with `tokenizers` and wrapped: transformers 5 ignores vocab_file= for fast tokenizers.
    BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=True).save(
        str(folder / "tokenizer.json"))
    tokenizer = BertTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                  model_max_length=64)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=ffn,
                        max_position_embeddings=64,
                        id2label={0: "negative", 1: "positive"},
                        label2id={"negative": 0, "positive": 1})
    import torch

    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@dataclass(frozen=True)
class TinyRepo:
    root: Path  # the model repository (one folder per task)
    data_dir: Path
    base_model: Path
    sst2_teacher: Path  # the fine-tuned sst2 checkpoint the artifact was made from


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> TinyRepo:
    """sst2 (single) and rte (pair) artifacts built from a tiny BERT by the real compress chain."""
    from compress.build import BuildPlan, build_artifact
    from compress.finetune import FinetuneConfig
    from compress.tasks import get_task

    work = tmp_path_factory.mktemp("tiny")
    data = work / "data"
    write_sentiment_tsv(data / "sst2" / "train.tsv", 600, seed=1)
    write_sentiment_tsv(data / "sst2" / "dev.tsv", 120, seed=2)
    write_pair_jsonl(data / "rte" / "train.jsonl", 300, seed=3)
    write_pair_jsonl(data / "rte" / "val.jsonl", 60, seed=4)
    base = build_tiny_bert(work / "tiny-bert")
    repo = work / "models"
    for task, epochs in (("sst2", 4.0), ("rte", 1.0)):
        config = FinetuneConfig(epochs=epochs, batch_size=16, learning_rate=2e-3, threads=1)
        build_artifact(BuildPlan(spec=get_task(task), base_model=str(base), out_dir=repo / task,
                                 work_dir=work / "runs" / task, data_dir=data, finetune=config))
    return TinyRepo(root=repo, data_dir=data, base_model=base,
                    sst2_teacher=work / "runs" / "sst2" / "finetuned")


@pytest.fixture(scope="session")
def fast_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An sst2 artifact packaged from an untrained tiny BERT (seconds, no training): enough for
    tests that run the app against a fake worker pool."""
    from compress.build import BuildPlan, package_artifact
    from compress.packaging import spec_for_checkpoint

    work = tmp_path_factory.mktemp("fast")
    checkpoint = build_tiny_bert(work / "tiny-bert", layers=1)
    spec = spec_for_checkpoint(checkpoint, None, "sst2", "single", 64)
    plan = BuildPlan(spec=spec, base_model=str(checkpoint), out_dir=work / "models" / "sst2",
                     work_dir=work / "runs")
    package_artifact(spec, checkpoint, None, plan)
    return work / "models"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need the tiny trained models (to compress them, load them or serve them in real
    processes) are `slow`; `make test-fast` (`pytest -m "not slow"`) runs the others: logic, and
    the app in-process against fake pools (tests/app/inprocess)."""
    for item in items:
        if "tiny_repo" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


free_port = serving.free_port


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    grpc: str | None = None  # host:port of its gRPC door, when it serves one

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(repo: Path, log_path: Path, timeout: float = 90.0, **env: str) -> RunningServer:
    """`python -m app` on a free loopback port; returns once /readyz says ready."""
    port = free_port()
    process = serving.start(repo, port, log_path, env, timeout)
    grpc = env.get("FFS_GRPC_PORT")
    return RunningServer(f"http://127.0.0.1:{port}", process, log_path,
                         None if grpc is None else f"127.0.0.1:{grpc}")


def stop_server(server: RunningServer) -> None:
    serving.stop(server.process, timeout=15)


@pytest.fixture(scope="session")
def server(tiny_repo: TinyRepo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The real server with 2 pinned workers over the tiny repository.

    max_wait_ms is generous so that concurrent test requests reliably share batches.
    """
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    running = start_server(
        tiny_repo.root, log_path,
        FFS_CPU_POOL__WORKERS="2", FFS_BATCHING__MAX_WAIT_MS="25",
        FFS_LIMITS__MAX_INPUTS_PER_REQUEST="16", FFS_LIMITS__MAX_TEXT_CHARS="2000",
        FFS_DEFAULT_MODEL="sst2",  # TEI's routes (/predict, /info) answer with it
        FFS_GRPC_PORT=str(free_port()),
    )
    yield running
    stop_server(running)


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30.0) as http:
        yield http
