"""open_clip's prompt cleaning, applied before the transformers CLIP tokenizer (HPS v2.1).

open_clip's tokenizer runs ``ftfy.fix_text``, ``html.unescape`` twice, strips, collapses whitespace
and lowercases before BPE; transformers' ``CLIPTokenizer`` does not unescape HTML and (without ftfy)
keeps full-width letters and ligatures, so such prompts embed differently. ``ftfy`` comes with the
``hps`` extra (``pip install treegrpo[hps]``). Without it the ftfy step is skipped with a one-time
warning (HTML, whitespace and case are still handled; mojibake, full-width letters and ligatures are
not), so HPS scores of such prompts then differ from hpsv2's.
"""

from __future__ import annotations

import html
import logging
import re
from typing import Callable, Sequence

import torch

logger = logging.getLogger(__name__)

_WHITESPACE = re.compile(r"\s+")
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
