"""Tiny random-init classifiers of every supported architecture, each with a tokenizer of its own
family trained on the caller's sentences: what offline tests and benchmarks package and serve.

Families: WordPiece (BERT, DistilBERT, ELECTRA, MPNet), byte-level BPE (RoBERTa) and
SentencePiece-style Unigram (XLM-RoBERTa, ALBERT, DeBERTa-v2). Special tokens, their ids and the
pair templates follow each family's real checkpoints, so the exported graphs get the same inputs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from contract.artifact import CompressError, ProblemType

Family = Literal["wordpiece", "bpe", "unigram"]


@dataclass(frozen=True)
class TokenizerStyle:
    family: Family
    specials: tuple[str, ...]  # in id order: the pad id must match the model config's
    roles: dict[str, str]  # role (cls_token, sep_token, pad_token, ...) -> token
    pair_template: Literal["bert", "roberta"]  # [CLS] A [SEP] B [SEP] or <s> A </s></s> B </s>
    tokenizer_class: str  # what the family's checkpoints name in tokenizer_config.json


_BERT = TokenizerStyle("wordpiece", ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
                       {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                        "sep_token": "[SEP]", "mask_token": "[MASK]"}, "bert", "BertTokenizer")
_ROBERTA_ROLES = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>",
                  "unk_token": "<unk>", "mask_token": "<mask>", "cls_token": "<s>",
                  "sep_token": "</s>"}
STYLES: dict[str, TokenizerStyle] = {
    "bert": _BERT,
    "distilbert": replace(_BERT, tokenizer_class="DistilBertTokenizer"),
    "electra": replace(_BERT, tokenizer_class="ElectraTokenizer"),
    "mpnet": TokenizerStyle("wordpiece", ("<s>", "<pad>", "</s>", "[UNK]", "<mask>"),
                            {**_ROBERTA_ROLES, "unk_token": "[UNK]"}, "roberta",
                            "MPNetTokenizer"),
    "roberta": TokenizerStyle("bpe", ("<s>", "<pad>", "</s>", "<unk>", "<mask>"),
                              _ROBERTA_ROLES, "roberta", "RobertaTokenizer"),
    "xlm-roberta": TokenizerStyle("unigram", ("<s>", "<pad>", "</s>", "<unk>", "<mask>"),
                                  _ROBERTA_ROLES, "roberta", "XLMRobertaTokenizer"),
    "albert": TokenizerStyle("unigram", ("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"),
                             {"pad_token": "<pad>", "unk_token": "<unk>", "cls_token": "[CLS]",
                              "sep_token": "[SEP]", "mask_token": "[MASK]"}, "bert",
                             "AlbertTokenizer"),
    "deberta-v2": TokenizerStyle("unigram", ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"),
                                 {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                                  "sep_token": "[SEP]", "mask_token": "[MASK]"}, "bert",
                                 "DebertaV2Tokenizer"),
}
ARCHITECTURES = tuple(STYLES)


def train_tokenizer(style: TokenizerStyle, corpus: Sequence[str], vocab_size: int = 400) -> Any:
    """A `tokenizers.Tokenizer` of the style's family, trained on `corpus`, with its specials and
    post-processor (the single and pair templates of the family)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = list(style.specials)
    unk = style.roles["unk_token"]
    tokenizer: Any
    if style.family == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token=unk))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer: Any = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
    elif style.family == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=None))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials,
                                          unk_token=unk)
    tokenizer.train_from_iterator(list(corpus), trainer)
    cls, sep = style.roles["cls_token"], style.roles["sep_token"]
    ids = {token: tokenizer.token_to_id(token) for token in (cls, sep)}
    pair = f"{cls} $A {sep} $B:1 {sep}:1" if style.pair_template == "bert" \
        else f"{cls} $A {sep} {sep} $B {sep}"
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=pair, special_tokens=list(ids.items()))
    return tokenizer


def _config(model_type: str, vocab: int, pad_id: int, labels: Sequence[str],
            problem_type: ProblemType, layers: int, hidden: int, heads: int, ffn: int,
            positions: int) -> Any:
    from transformers import AutoConfig

    names = {"id2label": dict(enumerate(labels)),
             "label2id": {name: i for i, name in enumerate(labels)},
             "problem_type": "multi_label_classification" if problem_type == "multi_label"
             else "single_label_classification"}
    common = {"vocab_size": vocab, "pad_token_id": pad_id, **names}
    if model_type == "distilbert":
        return AutoConfig.for_model("distilbert", dim=hidden, n_layers=layers, n_heads=heads,
                                    hidden_dim=ffn, max_position_embeddings=positions, **common)
    # RoBERTa-style position ids start after the pad id: two more positions than tokens.
    offset = pad_id + 1 if model_type in ("roberta", "xlm-roberta", "mpnet") else 0
    extra: dict[str, Any] = {}
    if model_type == "albert":
        extra = {"embedding_size": hidden // 2}
    if model_type == "electra":
        extra = {"embedding_size": hidden}
    if model_type in ("roberta", "xlm-roberta", "mpnet"):
        extra = {"bos_token_id": 0, "eos_token_id": 2}
    return AutoConfig.for_model(model_type, hidden_size=hidden, num_hidden_layers=layers,
                                num_attention_heads=heads, intermediate_size=ffn,
                                max_position_embeddings=positions + offset, **extra, **common)


def build_tiny_classifier(model_type: str, folder: Path, corpus: Sequence[str],
                          labels: Sequence[str] = ("negative", "positive"),
                          problem_type: ProblemType = "single_label", layers: int = 2,
                          hidden: int = 32, heads: int = 2, ffn: int = 64, positions: int = 128,
                          seed: int = 0, model_input_names: Sequence[str] | None = None,
                          vocab_size: int = 400) -> Path:
    """Save a random-init `model_type` classifier and its trained tokenizer as an HF folder.

    `model_input_names` overrides what the tokenizer emits (e.g. token_type_ids for a model that
    has none, as some saved tokenizers do)."""
    import torch
    from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast

    if model_type not in STYLES:
        raise CompressError(f"no tiny model for {model_type!r}; known: {', '.join(ARCHITECTURES)}")
    style = STYLES[model_type]
    tokenizer = train_tokenizer(style, corpus, vocab_size)
    folder.mkdir(parents=True, exist_ok=True)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=positions,
                                      **style.roles)
    wrapped.save_pretrained(folder)
    settings = folder / "tokenizer_config.json"
    saved = json.loads(settings.read_text(encoding="utf-8"))
    saved["tokenizer_class"] = style.tokenizer_class
    if model_input_names is not None:
        saved["model_input_names"] = list(model_input_names)
    settings.write_text(json.dumps(saved, indent=2), encoding="utf-8")
    config = _config(model_type, tokenizer.get_vocab_size(), tokenizer.token_to_id(
        style.roles["pad_token"]), labels, problem_type, layers, hidden, heads, ffn, positions)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(folder)
    return folder
