"""Tasks are data: a user's task file and CSV/TSV/JSONL/Parquet files go through the one generic
reader, and every mistake in them is reported with the file, field or row to fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from compress.tasks import TaskDataError, builtin_tasks, ensure_labels, load_split, load_task_file


def _task(folder: Path, **fields: object) -> Path:
    base: dict[str, object] = {"name": "tickets", "text_columns": ["text"],
                               "label_column": "label", "data": {"train": "train.csv",
                                                                  "dev": "dev.csv"}}
    base.update(fields)
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(base), encoding="utf-8")
    return path


def _csv(path: Path, rows: list[tuple[str, str]], header: str = "text,label") -> None:
    lines = [header] + [f'"{text}",{label}' for text, label in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


ROWS = [("refund my order", "billing"), ("app crashes on start", "bug"),
        ("charged twice", "billing"), ("login button broken", "bug"), ("love it", "praise")]


def test_shipped_tasks_are_task_files() -> None:
    assert builtin_tasks() == ["boolq", "cb", "mrpc", "rte", "sst2"]


def test_csv_task_reads_labels_from_the_data_in_sorted_order(tmp_path: Path) -> None:
    _csv(tmp_path / "train.csv", ROWS)
    _csv(tmp_path / "dev.csv", ROWS[:2])
    spec = ensure_labels(load_task_file(_task(tmp_path)), None)
    assert spec.label_names == ["billing", "bug", "praise"]
    dev = load_split(spec, "dev", None)
    assert dev.texts == ["refund my order", "app crashes on start"]
    assert dev.labels == [0, 1]


def test_data_paths_are_relative_to_the_task_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    _csv(tmp_path / "data" / "train.csv", ROWS)
    path = _task(tmp_path, data={"train": "data/train.csv", "dev_fraction": 0.4})
    spec = ensure_labels(load_task_file(path), None)
    assert len(load_split(spec, "train", None)) == 3


def test_dev_fraction_holds_out_a_seeded_disjoint_part(tmp_path: Path) -> None:
    rows = [(f"text number {i}", "a" if i % 2 else "b") for i in range(50)]
    _csv(tmp_path / "train.csv", rows)
    spec = ensure_labels(load_task_file(
        _task(tmp_path, data={"train": "train.csv", "dev_fraction": 0.2, "seed": 3})), None)
    train, dev = load_split(spec, "train", None), load_split(spec, "dev", None)
    assert (len(train), len(dev)) == (40, 10)
    assert not set(train.texts) & set(dev.texts)
    assert load_split(spec, "dev", None).texts == dev.texts


def test_jsonl_pairs_with_a_template_column(tmp_path: Path) -> None:
    rows = [{"q": "is it open", "title": "Shop", "body": "open daily", "answer": True},
            {"q": "is it free", "title": "Park", "body": "tickets cost 5", "answer": False}]
    (tmp_path / "dev.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    spec = load_task_file(_task(tmp_path, input="pair", text_columns=["q", "{title} -- {body}"],
                                label_column="answer", labels=["false", "true"],
                                data={"dev": "dev.jsonl"}))
    dev = load_split(spec, "dev", None)
    assert dev.texts[0] == ("is it open", "Shop -- open daily")
    assert dev.labels == [1, 0]


def test_parquet_and_tsv_read_like_csv(tmp_path: Path) -> None:
    from datasets import Dataset

    Dataset.from_dict({"text": [t for t, _ in ROWS], "label": [lab for _, lab in ROWS]}) \
        .to_parquet(str(tmp_path / "train.parquet"))
    (tmp_path / "dev.tsv").write_text("text\tlabel\nsaid \"hi\tbug\n", encoding="utf-8")
    spec = ensure_labels(load_task_file(_task(
        tmp_path, data={"train": "train.parquet", "dev": "dev.tsv", "quoting": "none"})), None)
    assert len(load_split(spec, "train", None)) == 5
    assert load_split(spec, "dev", None).texts == ['said "hi']


def test_multi_label_rows_from_jsonl_lists_and_separated_cells(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text(
        '{"text": "rude and false", "tags": ["insult", "false_claim"]}\n'
        '{"text": "fine", "tags": []}\n', encoding="utf-8")
    _csv(tmp_path / "dev.csv", [("rude", "insult"), ("lies and insults", "false_claim|insult")],
         header="text,tags")
    spec = ensure_labels(load_task_file(_task(
        tmp_path, label_column="tags", problem_type="multi_label", label_separator="|",
        data={"train": "train.jsonl", "dev": "dev.csv"})), None)
    assert spec.label_names == ["false_claim", "insult"]
    assert load_split(spec, "train", None).labels == [(0, 1), ()]
    assert load_split(spec, "dev", None).labels == [(1,), (0, 1)]
    assert spec.metric_names == ["micro_f1", "macro_f1"]


# -- one test per message ---------------------------------------------------------------------

def test_unknown_field_is_named(tmp_path: Path) -> None:
    with pytest.raises(TaskDataError, match=r"task\.yaml: invalid task file:\n.*'text_column'"):
        load_task_file(_task(tmp_path, text_column="text"))


def test_pair_task_needs_two_text_columns(tmp_path: Path) -> None:
    with pytest.raises(TaskDataError, match="input 'pair' needs 2 text column"):
        load_task_file(_task(tmp_path, input="pair"))


def test_task_file_that_is_not_yaml_mapping(tmp_path: Path) -> None:
    path = tmp_path / "task.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(TaskDataError, match="a task file is a YAML mapping"):
        load_task_file(path)


def test_missing_task_file(tmp_path: Path) -> None:
    with pytest.raises(TaskDataError, match="cannot read task file"):
        load_task_file(tmp_path / "nope.yaml")


def test_missing_data_file_names_the_path(tmp_path: Path) -> None:
    spec = load_task_file(_task(tmp_path, labels=["a", "b"]))
    with pytest.raises(TaskDataError, match=r"dev\.csv does not exist"):
        load_split(spec, "dev", None)


def test_missing_column_names_file_and_columns(tmp_path: Path) -> None:
    _csv(tmp_path / "dev.csv", ROWS, header="body,label")
    spec = load_task_file(_task(tmp_path, labels=["billing", "bug", "praise"]))
    with pytest.raises(TaskDataError, match=r"dev\.csv: missing columns \['text'\]; it has "
                                            r"\['body', 'label'\]"):
        load_split(spec, "dev", None)


def test_unknown_label_names_the_row(tmp_path: Path) -> None:
    _csv(tmp_path / "dev.csv", [*ROWS[:2], ("what", "spam")])
    spec = load_task_file(_task(tmp_path, labels=["billing", "bug"]))
    with pytest.raises(TaskDataError, match=r"dev\.csv: row 3: label 'spam' is not one of"):
        load_split(spec, "dev", None)


def test_empty_text_names_the_row_and_column(tmp_path: Path) -> None:
    _csv(tmp_path / "dev.csv", [ROWS[0], ("", "bug")])
    spec = load_task_file(_task(tmp_path, labels=["billing", "bug"]))
    with pytest.raises(TaskDataError, match=r"row 2: text column 'text' is empty"):
        load_split(spec, "dev", None)


def test_empty_label_names_the_row(tmp_path: Path) -> None:
    _csv(tmp_path / "dev.csv", [ROWS[0], ("no label here", "")])
    spec = load_task_file(_task(tmp_path, labels=["billing", "bug"]))
    with pytest.raises(TaskDataError, match=r"row 2: the label is empty"):
        load_split(spec, "dev", None)


def test_label_map_must_map_to_listed_labels(tmp_path: Path) -> None:
    with pytest.raises(TaskDataError, match=r"label_map maps to \['spam'\]"):
        load_task_file(_task(tmp_path, labels=["a", "b"], label_map={"0": "a", "1": "spam"}))


def test_multi_label_text_cells_need_a_separator(tmp_path: Path) -> None:
    _csv(tmp_path / "dev.csv", [("x", "a|b")])
    spec = load_task_file(_task(tmp_path, labels=["a", "b"], problem_type="multi_label"))
    with pytest.raises(TaskDataError, match="need a list of labels, or a label_separator"):
        load_split(spec, "dev", None)


def test_single_label_task_refuses_label_lists(tmp_path: Path) -> None:
    (tmp_path / "dev.jsonl").write_text('{"text": "x", "label": ["a", "b"]}\n', encoding="utf-8")
    spec = load_task_file(_task(tmp_path, labels=["a", "b"], data={"dev": "dev.jsonl"}))
    with pytest.raises(TaskDataError, match="set problem_type: multi_label"):
        load_split(spec, "dev", None)


def test_one_label_in_the_data_is_not_a_classifier(tmp_path: Path) -> None:
    _csv(tmp_path / "train.csv", [("a", "bug"), ("b", "bug")])
    with pytest.raises(TaskDataError, match="only the label"):
        ensure_labels(load_task_file(_task(tmp_path)), None)


def test_metric_that_does_not_fit_the_problem_type(tmp_path: Path) -> None:
    with pytest.raises(TaskDataError, match=r"metrics \['micro_f1'\] do not apply"):
        load_task_file(_task(tmp_path, metrics=["micro_f1"]))


def test_no_dev_split_says_how_to_add_one(tmp_path: Path) -> None:
    spec = load_task_file(_task(tmp_path, labels=["a", "b"], data={"train": "train.csv"}))
    with pytest.raises(TaskDataError, match=r"no local dev split .* add data\.dev"):
        load_split(spec, "dev", None)


def test_unknown_suffix_asks_for_a_format(tmp_path: Path) -> None:
    (tmp_path / "dev.txt").write_text("x\n", encoding="utf-8")
    spec = load_task_file(_task(tmp_path, labels=["a", "b"], data={"dev": "dev.txt"}))
    with pytest.raises(TaskDataError, match=r"set data\.format"):
        load_split(spec, "dev", None)


def test_label_map_names_raw_values(tmp_path: Path) -> None:
    _csv(tmp_path / "dev.csv", [("fine", "1"), ("broken", "0")])
    spec = load_task_file(_task(tmp_path, labels=["bad", "good"],
                                label_map={"0": "bad", "1": "good"}))
    assert load_split(spec, "dev", None).labels == [1, 0]
