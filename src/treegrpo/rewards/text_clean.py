"""open_clip's tokenizer (hpsv2's) on the vocab and merges of a transformers CLIP tokenizer (HPS v2.1).

open_clip's tokenizer runs ``ftfy.fix_text``, ``html.unescape`` twice, strips, collapses whitespace
and lowercases before BPE; transformers' ``CLIPTokenizer`` does not unescape HTML and (without ftfy)
keeps full-width letters and ligatures, so such prompts embed differently. Nor can the cleaned text
be handed to ``CLIPTokenizer``: it normalises once more (see :class:`OpenClipTokenizer`), so the
text is cleaned once and split and BPE-encoded here, as open_clip does. ``ftfy`` comes with the
``hps`` extra (``pip install treegrpo[hps]``). Without it the ftfy step is skipped with a one-time
warning (HTML, whitespace and case are still handled; mojibake, full-width letters and ligatures are
not), so HPS scores of such prompts then differ from hpsv2's.
"""

from __future__ import annotations

import html
import json
import logging
import re
from typing import Any, Callable, Mapping, Sequence

import regex
import torch

logger = logging.getLogger(__name__)

_WHITESPACE = re.compile(r"\s+")
# open_clip's split; its own "<start_of_text>" / "<end_of_text>" in a prompt are the start/end tokens.
_OPEN_CLIP_SPLIT = regex.compile(
    r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
)
_BPE_CACHE_SIZE = 100_000
_warned = False


def _fix_text() -> Callable[[str], str] | None:
    """``ftfy.fix_text`` if ftfy is installed, else ``None`` (warned once)."""
    global _warned
    try:
        import ftfy
    except ImportError:
        if not _warned:
            logger.warning(
                "ftfy is not installed: HPS prompts are cleaned without it (full-width letters, ligatures and "
                "mojibake stay as they are, unlike hpsv2); pip install treegrpo[hps]"
            )
            _warned = True
        return None
    return ftfy.fix_text


def open_clip_clean(text: str) -> str:
    """``whitespace_clean(basic_clean(text)).lower()`` as open_clip's ``SimpleTokenizer.encode`` does."""
    fix = _fix_text()
    if fix is not None:
        text = fix(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


def pad_token_ids(ids: Sequence[Sequence[int]], length: int, pad_id: int = 0) -> torch.Tensor:
    """``[B, length]`` long tensor of (already truncated) id lists, right-padded with ``pad_id``."""
    out = torch.full((len(ids), length), int(pad_id), dtype=torch.long)
    for row, seq in enumerate(ids):
        if len(seq) > length:
            raise ValueError(f"token sequence of {len(seq)} ids is longer than the context of {length}: truncate first")
        out[row, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
    return out


def bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable stand-in character of byte-level BPE (CLIP's and GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    for extra, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + extra)
    return dict(sorted(table.items()))


def clip_bpe_merges(tokenizer: Any) -> list[tuple[str, str]]:
    """The BPE merges, by rank, of a transformers CLIP tokenizer (slow ``bpe_ranks`` or fast backend)."""
    ranks = getattr(tokenizer, "bpe_ranks", None)  # transformers 4.x CLIPTokenizer (python BPE)
    if ranks is not None:
        return [pair for pair, _ in sorted(ranks.items(), key=lambda item: item[1])]
    backend = getattr(tokenizer, "backend_tokenizer", None)  # 5.x CLIPTokenizer, 4.x CLIPTokenizerFast
    if backend is None:
        raise TypeError(f"{type(tokenizer).__name__} is not a CLIP BPE tokenizer (no bpe_ranks, no backend_tokenizer)")
    model = json.loads(backend.to_str())["model"]
    if model.get("type") != "BPE":
        raise TypeError(f"{type(tokenizer).__name__} is not a BPE tokenizer (its model is {model.get('type')})")
    pairs = [m.split(" ", 1) if isinstance(m, str) else m for m in model["merges"]]  # "a b" or ["a", "b"]
    return [(str(a), str(b)) for a, b in pairs]


class OpenClipTokenizer:
    """open_clip's ``tokenize`` (hpsv2's ``SimpleTokenizer``) on a CLIP vocab: the prompt is cleaned exactly once.

    ``CLIPTokenizer`` cannot be given the cleaned text because it normalises again: transformers 4.x
    runs ``ftfy.fix_text`` a second time when ftfy is installed (after ``html.unescape``, so entities
    next to a literal ``<`` become full-width-folded or NFC-composed), 5.x's backend composes NFC, and
    both read ``<|endoftext|>`` in a prompt as the end token. open_clip splits with its own pattern,
    in which ``<start_of_text>`` / ``<end_of_text>`` are the special tokens; so does this class.
    """

    def __init__(self, vocab: Mapping[str, int], merges: Sequence[tuple[str, str]], start_id: int, end_id: int) -> None:
        self.vocab = dict(vocab)
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.start_id, self.end_id = int(start_id), int(end_id)
        self.byte_encoder = bytes_to_unicode()
        self.cache: dict[str, list[int]] = {}

    @classmethod
    def from_transformers(cls, tokenizer: Any) -> OpenClipTokenizer:
        """Vocab, merges and start/end ids of a transformers CLIP tokenizer (the same BPE as open_clip's)."""
        return cls(tokenizer.get_vocab(), clip_bpe_merges(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)

    def bpe(self, word: str) -> list[int]:
        """Ids of one byte-encoded word: open_clip's ``bpe`` (lowest-rank pair merged first, ``</w>`` at the end)."""
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = list(zip(parts, parts[1:]))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, len(self.ranks)))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        missing = [p for p in parts if p not in self.vocab]
        if missing:
            raise ValueError(f"BPE symbols {missing[:3]} are not in the tokenizer's vocab: not a CLIP byte-level BPE?")
        return [self.vocab[p] for p in parts]

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``open_clip_clean(text)`` without start/end: ``SimpleTokenizer.encode``."""
        ids: list[int] = []
        for word in _OPEN_CLIP_SPLIT.findall(open_clip_clean(text)):
            if word in ("<start_of_text>", "<end_of_text>"):
                ids.append(self.start_id if word == "<start_of_text>" else self.end_id)
                continue
            if word not in self.cache:
                if len(self.cache) >= _BPE_CACHE_SIZE:
                    self.cache.clear()
                self.cache[word] = self.bpe("".join(self.byte_encoder[b] for b in word.encode("utf-8")))
            ids.extend(self.cache[word])
        return ids

    def __call__(self, prompts: Sequence[str], context_length: int) -> torch.Tensor:
        """``[B, context_length]`` ids as open_clip's ``tokenize``: start + BPE + end (last when cut), 0-padded."""
        rows = []
        for prompt in prompts:
            ids = [self.start_id, *self.encode(prompt), self.end_id]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.end_id
            rows.append(ids)
        return pad_token_ids(rows, context_length, pad_id=0)
