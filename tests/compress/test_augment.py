"""Teacher-labelled augmentation: deterministic augmented texts, pairs kept whole, any task file."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from compress.augment import MASK, AugmentConfig, ContextIndex, augment, sources, vary
from compress.finetune import with_mask_token
from compress.tasks import Examples, load_split, load_task_file
from tests.conftest import TinyRepo

SENTENCES = Examples(
    ["the film is a charming and funny ride", "the film is a dull and tedious ride",
     "a charming , funny story", "the plot is dull", "it is a wonderful film",
     "the cast is wonderful and the story is charming"],
    [1, 0, 1, 0, 1, 1])
PAIRS = Examples(
    [("the cat sat on the mat", "a cat sat"), ("dogs bark at night", "cats sleep all day"),
     ("the sun rises in the east", "the sun rises")],
    [0, 1, 0])


def test_the_same_seed_gives_the_same_augmented_texts() -> None:
    config = AugmentConfig(copies=5, seed=3)
    assert augment(SENTENCES, config).texts == augment(SENTENCES, config).texts


def test_another_seed_gives_other_augmented_texts() -> None:
    first = augment(SENTENCES, AugmentConfig(copies=5, seed=1)).texts
    assert first != augment(SENTENCES, AugmentConfig(copies=5, seed=2)).texts


def test_a_rows_augmented_texts_do_not_depend_on_the_other_rows() -> None:
    config = AugmentConfig(copies=4, mask_prob=0.3, replace_prob=0.0, ngram_prob=0.0)
    alone = augment(Examples(SENTENCES.texts[:1], SENTENCES.labels[:1]), config).texts
    assert augment(SENTENCES, config).texts[: len(alone)] == alone


def test_augmented_texts_are_distinct_and_never_a_training_text() -> None:
    made = augment(SENTENCES, AugmentConfig(copies=20, seed=0))
    assert len(set(made.texts)) == len(made.texts)
    assert not set(made.texts) & set(SENTENCES.texts)
    assert len(made) > len(SENTENCES)


def test_each_text_gets_at_most_the_configured_number_of_copies() -> None:
    config = AugmentConfig(copies=3)
    assert len(augment(SENTENCES, config)) <= 3 * len(SENTENCES)


def test_an_augmented_text_carries_its_source_rows_label_until_the_teacher_labels_it() -> None:
    rows = {"good fun film here": 1, "bad dull movie there": 0}
    config = AugmentConfig(copies=3, mask_prob=0.5, replace_prob=0.0, ngram_prob=0.0)
    made = augment(Examples(list(rows), list(rows.values())), config)
    assert len(made) >= 4
    for text, label in zip(made.texts, made.labels, strict=True):
        kept = set(str(text).split()) - {MASK}
        source = next((s for s in rows if kept <= set(s.split())), None) if kept else None
        assert source is None or rows[source] == label


def test_masking_everything_gives_only_masks() -> None:
    config = AugmentConfig(copies=1, mask_prob=1.0, replace_prob=0.0, ngram_prob=0.0)
    made = augment(Examples(["good film"], [1]), config)
    assert made.texts == [f"{MASK} {MASK}"]


def test_replacement_takes_a_word_the_data_uses_between_the_same_neighbours() -> None:
    index = ContextIndex(text.split() for text in SENTENCES.texts if isinstance(text, str))
    config = AugmentConfig(copies=1, mask_prob=0.0, replace_prob=1.0, ngram_prob=0.0)
    copy = vary("the plot is dull", index, config, random.Random(0))
    assert isinstance(copy, str)
    # "plot" sits between "the" and "is"; the data also has "film", "cast" and "story" there.
    assert copy.split()[1] in {"film", "cast", "story"}
    assert "plot" not in index.substitutes("the", "plot", "is")


def test_ngram_sampling_keeps_a_contiguous_piece_of_the_text() -> None:
    config = AugmentConfig(copies=10, mask_prob=0.0, replace_prob=0.0, ngram_prob=1.0)
    source = SENTENCES.texts[0]
    assert isinstance(source, str)
    for text in augment(Examples([source], [1]), config).texts:
        assert isinstance(text, str) and text in source and len(text.split()) <= 5


def test_pairs_stay_pairs_with_both_sides_non_empty_and_are_never_cut() -> None:
    config = AugmentConfig(copies=6, mask_prob=0.2, replace_prob=0.2, ngram_prob=1.0)
    made = augment(PAIRS, config)
    assert made.texts
    for text, source in zip(made.texts, _sources_of(made, PAIRS), strict=True):
        assert isinstance(text, tuple) and len(text) == 2 and all(side for side in text)
        assert [len(side.split()) for side in text] == [len(side.split()) for side in source]


def _sources_of(made: Examples, data: Examples) -> list[tuple[str, str]]:
    """The source pair of each variant: the one with the same word counts per side."""
    found = []
    for text in made.texts:
        shape = [len(side.split()) for side in text]
        found.append(next(s for s in data.texts if isinstance(s, tuple)
                          and [len(side.split()) for side in s] == shape))
    return found


def test_min_words_and_max_sources_choose_the_rows_to_vary() -> None:
    assert sources(SENTENCES, AugmentConfig(min_words=6)) == [0, 1, 5]
    chosen = sources(SENTENCES, AugmentConfig(max_sources=2, seed=4))
    assert len(chosen) == 2 and chosen == sources(SENTENCES, AugmentConfig(max_sources=2, seed=4))


@pytest.mark.parametrize("field,value", [("mask_prob", 1.5), ("copies", 0), ("max_ngram", 0)])
def test_invalid_settings_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        AugmentConfig(**{field: value})


def test_each_tokenizer_sees_its_own_mask_token(tiny_repo: TinyRepo) -> None:
    bert = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(
        str(tiny_repo.base_model / "tokenizer.json")), mask_token="[MASK]")
    mpnet_like = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(
        str(tiny_repo.base_model / "tokenizer.json")), mask_token="<mask>")
    texts: list[str | tuple[str, str]] = [f"a {MASK} film", ("x", f"{MASK} y")]
    assert with_mask_token(texts, bert) == texts
    assert with_mask_token(texts, mpnet_like) == ["a <mask> film", ("x", "<mask> y")]


def test_a_task_file_of_pairs_is_augmented(tiny_repo: TinyRepo, tmp_path: Path) -> None:
    task = tmp_path / "pairs.yaml"
    task.write_text(
        "name: tiny-pairs\ninput: pair\ntext_columns: [premise, hypothesis]\n"
        "label_column: label\nlabels: [entailment, not_entailment]\n"
        "data: {train: pairs.jsonl, dev: pairs.jsonl}\n", encoding="utf-8")
    (tmp_path / "pairs.jsonl").write_text(
        (tiny_repo.data_dir / "rte" / "train.jsonl").read_text(encoding="utf-8"),
        encoding="utf-8")
    spec = load_task_file(task)
    train = load_split(spec, "train", tmp_path)
    made = augment(train, AugmentConfig(copies=2))
    assert len(made) > len(train) // 2
    assert all(isinstance(text, tuple) for text in made.texts)
