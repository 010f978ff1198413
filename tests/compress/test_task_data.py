"""Task data in the formats of the GLUE/SuperGLUE files (read from ../shared/data when present)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress.tasks import TaskDataError, get_task, load_split
from tests.conftest import SHARED_DATA

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")


@needs_shared
def test_sst2_reads_every_row_with_trimmed_sentences() -> None:
    train = load_split(get_task("sst2"), "train", SHARED_DATA)
    dev = load_split(get_task("sst2"), "dev", SHARED_DATA)
    assert (len(train), len(dev)) == (67_349, 872)
    assert sum(dev.labels) == 444
    assert all(isinstance(t, str) and t == t.strip() for t in train.texts)
    assert "10" in train.texts  # number-only phrases stay text


@needs_shared
def test_mrpc_reads_pairs_despite_bom_and_quotes() -> None:
    dev = load_split(get_task("mrpc"), "dev", SHARED_DATA)
    assert len(dev) == 408
    assert sum(dev.labels) == 279
    assert all(isinstance(t, tuple) and len(t) == 2 for t in dev.texts)


@needs_shared
def test_rte_maps_string_labels() -> None:
    dev = load_split(get_task("rte"), "dev", SHARED_DATA)
    assert len(dev) == 277
    assert dev.labels.count(0) == 146  # entailment


@needs_shared
def test_boolq_joins_title_and_passage_like_superglue() -> None:
    dev = load_split(get_task("boolq"), "dev", SHARED_DATA)
    assert len(dev) == 3270
    assert sum(dev.labels) == 2033
    question, passage = dev.texts[0]
    assert question == 'does ethanol take more energy make that produces'
    assert passage.startswith('Ethanol fuel -- ')


@needs_shared
def test_cb_has_three_labels() -> None:
    dev = load_split(get_task("cb"), "dev", SHARED_DATA)
    assert sorted(set(dev.labels)) == [0, 1, 2]


@needs_shared
def test_boolq_train_split_is_not_available_offline() -> None:
    with pytest.raises(TaskDataError, match="no local train split"):
        load_split(get_task("boolq"), "train", SHARED_DATA)


def test_unknown_task_lists_known_ones() -> None:
    with pytest.raises(TaskDataError, match=r"known tasks: .*sst2"):
        get_task("mnli-typo")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(TaskDataError, match=r"rte/val\.jsonl does not exist"):
        load_split(get_task("rte"), "dev", tmp_path)
