"""A standard ``CLIPTokenizer`` for the emblems world: whole words and name syllables.

Every ordinary word of the world is one token, as common words are in real
CLIP. Entity names are invented words built from syllables; BPE merges are
learned on the syllables both as word beginnings and as word endings, so a
name like ``zorbelquin`` comes out as 2-4 pieces (``zor bel quin</w>``), the
way real CLIP splits a rare brand or person's name. BOS, EOS and padding are
CLIP's own (SD 1.x pads with EOS).
"""

from __future__ import annotations

from policykit.shapes.tokenizer import END_OF_WORD, clip_tokenizer, learn_merges_from_pieces, vocab_from_merges

#: Tokens per prompt, BOS and EOS included.
MAX_LENGTH = 32


def build_vocab(words: list[str], syllables: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary dict and merges list: each word one token, each syllable one piece."""
    units = [[*w[:-1], w[-1] + END_OF_WORD] for w in sorted(set(words))]
    for s in sorted(set(syllables)):
        units.append(list(s))                           # beginning or middle of a name
        units.append([*s[:-1], s[-1] + END_OF_WORD])    # end of a name
    merges = learn_merges_from_pieces(units)
    return vocab_from_merges(merges), merges


def build_tokenizer(words: list[str], syllables: list[str]):
    """A ``transformers.CLIPTokenizer`` (save it with ``save_pretrained``); checks every word is one token."""
    vocab, merges = build_vocab(words, syllables)
    return clip_tokenizer(vocab, merges, MAX_LENGTH, words)
