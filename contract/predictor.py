"""The one predictor: an ONNX graph fed by the serving tokenizer.

A worker process answers requests with it and the build measures the manifest's accuracy with it,
so the figure in `/v1/models` comes from the code that serves. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from contract.encoding import EncodedText, TextInput, encode, load_tokenizer, pad_batch
from contract.session import open_session


class OnnxPredictor:
    """One graph on one ORT session, with the task's tokenizer when given."""

    def __init__(self, graph: str | Path, tokenizer_json: Path | None,
                 input_names: Sequence[str],
                 max_length: int, pad_token_id: int = 0, threads: int | None = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        self.session = open_session(graph, threads, providers)
        self.tokenizer = None if tokenizer_json is None else \
            load_tokenizer(Path(tokenizer_json), max_length)
        self.input_names = list(input_names)
        self.pad_token_id = pad_token_id

    def encode(self, texts: Sequence[TextInput]) -> list[EncodedText]:
        """Token ids of every text, unpadded (truncated at the artifact's max length)."""
        if self.tokenizer is None:
            raise ValueError("this predictor was given no tokenizer")
        return encode(self.tokenizer, texts)

    def run_feeds(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Logits of model inputs already padded into a batch."""
        result: np.ndarray = self.session.run(None, feeds)[0]
        return result

    def run_rows(self, rows: Sequence[EncodedText]) -> np.ndarray:
        """Logits of encoded rows run as one batch, padded to its longest row."""
        return self.run_feeds(pad_batch(rows, self.input_names, self.pad_token_id))

    def logits(self, texts: Sequence[TextInput]) -> np.ndarray:
        """Logits of texts run as one batch."""
        return self.run_rows(self.encode(texts))

    def logits_in_batches(self, texts: Sequence[TextInput], batch_size: int = 32) -> np.ndarray:
        """Logits of every text in input order, batching texts of similar length together (as
        the server's batcher does)."""
        rows = self.encode(texts)
        order = sorted(range(len(rows)), key=lambda i: rows[i].length)
        logits: np.ndarray | None = None
        for start in range(0, len(order), batch_size):
            picked = order[start : start + batch_size]
            values = self.run_rows([rows[i] for i in picked])
            if logits is None:
                logits = np.zeros((len(rows), values.shape[1]), dtype=np.float32)
            logits[picked] = values
        return logits if logits is not None else np.zeros((0, 0), dtype=np.float32)
