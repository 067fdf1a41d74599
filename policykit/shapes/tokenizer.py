"""A standard ``CLIPTokenizer`` whose vocabulary is the shapes world's words.

Real CLIP uses byte-level BPE learned on the web; here BPE merges are learned
on the world's own word list, so every world word is one token, a word the
world does not know falls back to letters, and a character outside a-z
becomes ``<|unk|>``. BOS, EOS and padding are CLIP's own.
"""

from __future__ import annotations

import string
from collections import Counter

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"  # also the padding token, as in Stable Diffusion 1.x
UNK = "<|unk|>"
END_OF_WORD = "</w>"
#: Tokens per prompt, BOS and EOS included: the world's captions are short.
MAX_LENGTH = 16


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges, most frequent pair first, until every word is one symbol.

    Encoding a learnt word replays these merges in order, so it comes out as
    a single token. Ties break alphabetically, so the result is deterministic.
    """
    return learn_merges_from_pieces([[*w[:-1], w[-1] + END_OF_WORD] for w in sorted(set(words))])


def learn_merges_from_pieces(units: list[list[str]]) -> list[tuple[str, str]]:
    """BPE merges over symbol sequences, most frequent pair first, until each sequence is one symbol.

    :func:`learn_merges` passes whole words (last letter marked end-of-word);
    other worlds may pass word pieces too (a syllable without the end mark
    is a piece that can begin or continue a word).
    """
    pieces = {i: list(u) for i, u in enumerate(units)}
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter()
        for symbols in pieces.values():
            pairs.update(zip(symbols, symbols[1:]))
        if not pairs:
            return merges
        top = max(pairs.values())
        pair = min(p for p, n in pairs.items() if n == top)
        merges.append(pair)
        for word, symbols in pieces.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            pieces[word] = merged


def vocab_from_merges(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Special tokens, single letters (inside and at the end of a word), then every merge's result."""
    tokens = [BOS, EOS, UNK]
    tokens += list(string.ascii_lowercase) + [c + END_OF_WORD for c in string.ascii_lowercase]
    for left, right in merges:
        if left + right not in tokens:
            tokens.append(left + right)
    return {t: i for i, t in enumerate(tokens)}


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary dict and merges list of the world's tokenizer."""
    merges = learn_merges(words)
    return vocab_from_merges(merges), merges


def clip_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], max_length: int, words: list[str]):
    """A ``transformers.CLIPTokenizer`` with SD 1.x's special tokens; checks each of ``words`` is one token.

    Built from ``vocab=dict, merges=list`` (transformers 5 reads no files here).
    """
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, unk_token=UNK, bos_token=BOS, eos_token=EOS, pad_token=EOS)
    tokenizer.model_max_length = max_length
    unsplit = [w for w in words if len(tokenizer.tokenize(w)) != 1]
    if unsplit:
        raise ValueError(f"words that do not tokenize to one token: {unsplit}")
    return tokenizer


def build_tokenizer(words: list[str]):
    """A ``transformers.CLIPTokenizer`` for ``words`` (save it with ``save_pretrained``)."""
    vocab, merges = build_vocab(words)
    return clip_tokenizer(vocab, merges, MAX_LENGTH, words)
