"""Train a word-piece vocabulary with Hugging Face `tokenizers`, and say which tokens are words.

Both kinds split on whitespace and punctuation first, lower-case, and mark a piece that continues
a word with "##" (BERT's convention, also used for BPE here). A token without "##" therefore
starts a word, so the server can restrict Nearest and Analogy to whole words, and the word "king"
is the token "king" (a byte-level BPE would call it "Ġking" and lookups by word would miss it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

PAD, UNK, BOS = "[PAD]", "[UNK]", "[BOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS)  # ids 0, 1, 2
CONTINUATION = "##"
KINDS = ("wordpiece", "bpe")


def train_tokenizer(
    lines: Sequence[str], kind: str = "wordpiece", vocab_size: int = 8000
) -> Tokenizer:
    """A tokenizer trained on lines; encoding with special tokens prepends [BOS], as in training.

    Deterministic: the Hugging Face trainer numbers the "##" continuation tokens in hash-map
    order, and ties between equally frequent merges are broken by those numbers, so the same
    corpus can give different vocabularies (huggingface/tokenizers#1794). Declaring every "##c"
    up front, as special tokens the trainer numbers in the order given, removes that order; they
    become ordinary vocabulary entries again afterwards.
    """
    if kind not in KINDS:
        raise ValueError(f"tokenizer must be one of {KINDS}, got {kind!r}")
    model_cls = models.WordPiece if kind == "wordpiece" else models.BPE
    tok = Tokenizer(model_cls(unk_token=UNK, continuing_subword_prefix=CONTINUATION))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()]
    )
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix=CONTINUATION)
    normalizer = tok.normalizer
    chars = sorted(
        {n for c in set().union(*map(set, lines)) for n in normalizer.normalize_str(c)}
        - set(" \t\n\r\x0b\x0c")
    )
    seeds = [CONTINUATION + c for c in chars]
    trainer_cls = trainers.WordPieceTrainer if kind == "wordpiece" else trainers.BpeTrainer
    trainer = trainer_cls(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL_TOKENS, *seeds],
        continuing_subword_prefix=CONTINUATION,
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] in SPECIAL_TOKENS]
    tok = Tokenizer.from_str(json.dumps(spec))
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1", special_tokens=[(BOS, bos)]
    )
    return tok


def vocabulary(tok: Tokenizer) -> list[str]:
    """Token texts in id order (the rows of E)."""
    by_id = sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    vocab = [t for t, _ in by_id]
    if [i for _, i in by_id] != list(range(len(vocab))):
        raise ValueError("tokenizer ids are not 0..n-1")
    return vocab


def special_ids(tok: Tokenizer) -> set[int]:
    """Ids of the tokenizer's special tokens ([PAD], [UNK], [BOS])."""
    return {int(i) for i, t in tok.get_added_tokens_decoder().items() if t.special}


def whole_word_mask(tok: Tokenizer, vocab: list[str]) -> np.ndarray:
    """True for tokens that begin a word, by the tokenizer's own convention.

    "##" continuation pieces (WordPiece, and BPE with a continuing-subword prefix) are not words;
    for a byte-level BPE only "Ġ"-prefixed tokens begin a word; BPE with an end-of-word suffix
    ("</w>") marks the tokens that end one, which are words when they have no prefix either.
    """
    model = tok.model
    prefix = getattr(model, "continuing_subword_prefix", None)
    suffix = getattr(model, "end_of_word_suffix", None)
    if isinstance(tok.pre_tokenizer, pre_tokenizers.ByteLevel):
        keep = [t.startswith("Ġ") for t in vocab]
    elif prefix:
        keep = [not t.startswith(prefix) for t in vocab]
    elif suffix:
        keep = [t.endswith(suffix) for t in vocab]
    else:
        keep = [True] * len(vocab)
    return np.array(keep, dtype=bool)
