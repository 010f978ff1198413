"""The one predictor: an ONNX graph fed by the serving tokenizer.

A worker process answers requests with it and the build measures the manifest's accuracy with it,
so the figure in `/v1/models` comes from the code that serves. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from contract.encoding import EncodedText, TextInput, encode, load_tokenizer, pad_batch
from contract.session import Provider, open_session, provider_name


class OnnxPredictor:
    """One graph on one ORT session, with the task's tokenizer when given."""

    def __init__(self, graph: str | Path, tokenizer_json: Path | None,
                 input_names: Sequence[str],
                 max_length: int, pad_token_id: int = 0, threads: int | None = None,
                 providers: Sequence[Provider] = ("CPUExecutionProvider",),
                 io_binding: bool = False, spinning: bool | None = None) -> None:
        self.session = open_session(graph, threads, providers, spinning)
        # IO binding: inputs bound from host memory, the logits output on the first provider's
        # device and copied back once (on CUDA: no intermediate host buffers in session.run).
        self._binding = _binding_target(providers[0]) if io_binding else None
        self._output = self.session.get_outputs()[0].name
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
        if self._binding is None:
            result: np.ndarray = self.session.run([self._output], feeds)[0]
            return result
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        binding.bind_output(self._output, *self._binding)
        self.session.run_with_iobinding(binding)
        bound: np.ndarray = binding.copy_outputs_to_cpu()[0]
        return bound

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


def _binding_target(provider: Provider) -> tuple[str, int]:
    """The device (ORT's name and id) a provider computes on, for IO binding."""
    if provider_name(provider) != "CUDAExecutionProvider":
        return "cpu", 0
    options = {} if isinstance(provider, str) else provider[1]
    return "cuda", int(options.get("device_id", 0))
