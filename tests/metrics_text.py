"""Reading values out of the server's /metrics text in tests."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def sample(client: httpx.Client, name: str, **labels: str) -> float:
    """Value of one sample (e.g. `ffs_batch_size_count`, pool="cpu"), 0 when absent."""
    return sample_value(client.get("/metrics").text, name, labels)


def sample_value(text: str, name: str, labels: dict[str, str]) -> float:
    """Value of one sample in exposition text, 0 when absent."""
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == name and all(item.labels.get(k) == v for k, v in labels.items()):
                return float(item.value)
    return 0.0
