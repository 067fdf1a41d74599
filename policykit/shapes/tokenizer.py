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
    pieces = {w: [*w[:-1], w[-1] + END_OF_WORD] for w in sorted(set(words))}
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


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary dict and merges list of the world's tokenizer."""
    merges = learn_merges(words)
    tokens = [BOS, EOS, UNK]
    tokens += list(string.ascii_lowercase) + [c + END_OF_WORD for c in string.ascii_lowercase]
    for left, right in merges:
        if left + right not in tokens:
            tokens.append(left + right)
    return {t: i for i, t in enumerate(tokens)}, merges


def build_tokenizer(words: list[str]):
    """A ``transformers.CLIPTokenizer`` for ``words`` (save it with ``save_pretrained``)."""
    from transformers import CLIPTokenizer

    vocab, merges = build_vocab(words)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, unk_token=UNK, bos_token=BOS, eos_token=EOS, pad_token=EOS)
    tokenizer.model_max_length = MAX_LENGTH
    unsplit = [w for w in words if len(tokenizer.tokenize(w)) != 1]
    if unsplit:
        raise ValueError(f"words that do not tokenize to one token: {unsplit}")
    return tokenizer
