"""Teacher-labelled data augmentation for distillation (Tang et al. 2019, "Distilling Task-Specific
Knowledge from BERT into Simple Neural Networks", section 3.3; TinyBERT's data augmentation).

Each chosen training text yields up to `copies` augmented texts. Word by word, a word is masked with
probability `mask_prob`, or with probability `replace_prob` replaced by a word the training data
itself uses in the same place (seen between the same left and right neighbours, else after the
same left neighbour: a cheap stand-in for Tang et al.'s same-part-of-speech replacement, with no
tagger to download); then, with probability `ngram_prob`, an n-gram (n from 1 to `max_ngram`) is
sampled from the result. Pairs keep their structure: each side is varied on its own, and n-gram
sampling (which could cut a premise or question in half) is not applied to them.

Augmented texts are deduplicated (against each other and against every training text) and seeded per
source row, so the set does not depend on the order or the count of the rows chosen. The labels an
augmented text is trained on are the teacher's (its logits, cached per row like the training split's).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from compress.tasks import Examples

# The mask an augmented text carries; each tokenizer sees its own mask token in its place
# (`compress.finetune.hf_tokenize`): MPNet's is <mask>, BERT's [MASK].
MASK = "[MASK]"
Text = str | tuple[str, str]
_START, _END = "\x02", "\x03"  # sentence boundaries as neighbours in the context index


@dataclass(frozen=True)
class AugmentConfig:
    """How many augmented texts of which sources, and how each is made."""

    copies: int = 10  # augmented texts made of each chosen source text
    # Only texts of at least this many words are varied (SST-2: the full sentences rather than
    # every short sub-phrase, where the teacher's time pays most).
    min_words: int = 0
    max_sources: int | None = None
    mask_prob: float = 0.1
    replace_prob: float = 0.1
    ngram_prob: float = 0.25
    max_ngram: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("mask_prob", "replace_prob", "ngram_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment {name} must be in [0, 1]")
        if self.mask_prob + self.replace_prob > 1.0:
            raise ValueError("augment mask_prob + replace_prob must be at most 1")
        if self.copies < 1 or self.max_ngram < 1:
            raise ValueError("augment copies and max_ngram must be at least 1")


class ContextIndex:
    """Words of the training data by the neighbours they occur between."""

    def __init__(self, sentences: Iterable[list[str]]) -> None:
        between: dict[tuple[str, str], dict[str, None]] = defaultdict(dict)
        after: dict[str, dict[str, None]] = defaultdict(dict)
        for words in sentences:
            padded = [_START, *words, _END]
            for i in range(1, len(padded) - 1):
                between[(padded[i - 1], padded[i + 1])][padded[i]] = None
                after[padded[i - 1]][padded[i]] = None
        # Lists in first-seen order: a seeded choice among them is reproducible.
        self._between = {key: list(words) for key, words in between.items()}
        self._after = {key: list(words) for key, words in after.items()}

    def substitutes(self, left: str, word: str, right: str) -> list[str]:
        """Words seen between `left` and `right`, else after `left`; never `word` itself."""
        for found in (self._between.get((left, right)), self._after.get(left)):
            others = [w for w in found or () if w != word]
            if others:
                return others
        return []


def _words(text: Text) -> list[list[str]]:
    return [side.split() for side in (text if isinstance(text, tuple) else (text,))]


def _vary_side(words: list[str], index: ContextIndex, config: AugmentConfig,
               rng: random.Random) -> list[str]:
    out = []
    padded = [_START, *words, _END]
    for i, word in enumerate(words, start=1):
        draw = rng.random()
        if draw < config.mask_prob:
            out.append(MASK)
        elif draw < config.mask_prob + config.replace_prob:
            choices = index.substitutes(padded[i - 1], word, padded[i + 1])
            out.append(rng.choice(choices) if choices else word)
        else:
            out.append(word)
    return out


def _ngram(words: list[str], config: AugmentConfig, rng: random.Random) -> list[str]:
    if rng.random() >= config.ngram_prob or len(words) < 2:
        return words
    n = rng.randint(1, min(config.max_ngram, len(words)))
    start = rng.randint(0, len(words) - n)
    return words[start : start + n]


def vary(text: Text, index: ContextIndex, config: AugmentConfig, rng: random.Random) -> Text:
    """One augmented copy of `text` (a pair stays a pair)."""
    sides = [_vary_side(words, index, config, rng) for words in _words(text)]
    if len(sides) == 1:
        return " ".join(_ngram(sides[0], config, rng))
    return " ".join(sides[0]), " ".join(sides[1])


def sources(train: Examples, config: AugmentConfig) -> list[int]:
    """The rows to vary: at least `min_words` words, at most `max_sources` of them (seeded)."""
    chosen = [i for i, text in enumerate(train.texts)
              if sum(len(side) for side in _words(text)) >= config.min_words]
    if config.max_sources is not None and config.max_sources < len(chosen):
        chosen = sorted(random.Random(config.seed).sample(chosen, config.max_sources))
    return chosen


def augment(train: Examples, config: AugmentConfig) -> Examples:
    """The augmented texts of `train`'s chosen rows, deduplicated; each carries its source row's label
    until the teacher labels it."""
    index = ContextIndex(side for text in train.texts for side in _words(text))
    seen: set[Text] = set(train.texts)
    texts: list[Text] = []
    labels = []
    for row in sources(train, config):
        source = train.texts[row]
        rng = random.Random(f"{config.seed}:{row}")
        made = 0
        # A few more draws than copies: duplicates and unchanged copies are dropped.
        for _ in range(config.copies * 3):
            copy = vary(source, index, config, rng)
            if copy in seen or not _has_words(copy):
                continue
            seen.add(copy)
            texts.append(copy)
            labels.append(train.labels[row])
            made += 1
            if made == config.copies:
                break
    return Examples(texts, labels)


def _has_words(text: Text) -> bool:
    return all(side.strip() for side in (text if isinstance(text, tuple) else (text,)))
