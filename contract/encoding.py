"""Text to model inputs with `tokenizers` only (torch-free: the server and the evaluator share it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

TextInput = str | tuple[str, str]


@dataclass(frozen=True)
class EncodedText:
    """One tokenized input, unpadded; `truncated` says whether tokens were dropped."""

    ids: np.ndarray
    type_ids: np.ndarray
    truncated: bool

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


def load_tokenizer(path: Path, max_length: int, stride: int | None = None,
                   pairs: bool = False) -> Tokenizer:
    """Load tokenizer.json set to truncate at `max_length` and never pad (batches pad themselves).

    With `stride`, a text over `max_length` yields overlapping windows (`encode_windows`): they
    share `stride` tokens, and of a pair only the second text is cut (the question of a question +
    passage task stays whole in every window).
    """
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    if stride is None:
        # longest_first trims the longer of a pair first, which keeps BoolQ's short question intact.
        tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")
    else:
        tokenizer.enable_truncation(max_length=max_length, stride=stride,
                                    strategy="only_second" if pairs else "longest_first")
    return tokenizer


def encode(tokenizer: Tokenizer, inputs: Sequence[TextInput]) -> list[EncodedText]:
    """Tokenize single texts or (text, text) pairs, adding the model's special tokens."""
    batch: list[str | tuple[str, str]] = [
        item if isinstance(item, str) else (item[0], item[1]) for item in inputs
    ]
    encodings = tokenizer.encode_batch(batch, add_special_tokens=True)
    return [
        EncodedText(
            ids=np.asarray(enc.ids, dtype=np.int64),
            type_ids=np.asarray(enc.type_ids, dtype=np.int64),
            truncated=bool(enc.overflowing),
        )
        for enc in encodings
    ]


class WindowError(ValueError):
    """An input cannot be cut into windows (the first text of a pair alone is too long)."""


def encode_windows(tokenizer: Tokenizer, inputs: Sequence[TextInput]) -> list[list[EncodedText]]:
    """Tokenize for chunking (a tokenizer from `load_tokenizer(..., stride=...)`): every input's
    windows in text order; an input that fits is one window."""
    batch: list[str | tuple[str, str]] = [
        item if isinstance(item, str) else (item[0], item[1]) for item in inputs
    ]
    try:
        encodings = tokenizer.encode_batch(batch, add_special_tokens=True)
    except Exception as exc:  # tokenizers raises a plain Exception for a pair it cannot cut
        raise WindowError(f"an input cannot be cut into windows: {exc}") from None
    return [
        [EncodedText(ids=np.asarray(enc.ids, dtype=np.int64),
                     type_ids=np.asarray(enc.type_ids, dtype=np.int64), truncated=False)
         for enc in [encoding, *encoding.overflowing]]
        for encoding in encodings
    ]


def pad_batch(
    rows: Sequence[EncodedText], input_names: Sequence[str], pad_token_id: int
) -> dict[str, np.ndarray]:
    """Stack rows into model feeds padded to the longest row of this batch, never to max_length."""
    width = max(row.length for row in rows)
    ids = np.full((len(rows), width), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    types = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : row.length] = row.ids
        mask[i, : row.length] = 1
        types[i, : row.length] = row.type_ids
    available = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {name: available[name] for name in input_names}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 for stable scores."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = exp / exp.sum(axis=-1, keepdims=True)
    return result


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function in float64 (multi-label scores)."""
    result: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))
    return result


def probabilities(logits: np.ndarray, problem_type: str) -> np.ndarray:
    """Scores of a task type: softmax over labels (single_label) or a sigmoid per label."""
    return sigmoid(logits) if problem_type == "multi_label" else softmax(logits)
