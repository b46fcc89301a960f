"""HPS v2.1 prompt tokens against hpsv2's own tokenizer (open_clip's ``SimpleTokenizer``, transcribed
below) on hard prompts, through the transformers tokenizer of whatever version is installed.

Run under transformers 5.25.0 (the project's venv) and 4.57.6 (a throwaway venv with
``transformers<5``): all pass under both. Before the fix, 4.x ran ftfy twice (entities next to a
literal ``<``: full-width letters folded, accents composed) and 5.x composed NFC; both read
``<|endoftext|>`` in a prompt as the end token. On the real CLIP vocab (open_clip_torch's
``bpe_simple_vocab_16e6.txt.gz``) the ids also equal hpsv2 1.2.0's ``tokenize`` itself, on both versions.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("ftfy")  # hpsv2's tokenizer runs ftfy; without it the cleaning is knowingly partial

import ftfy  # noqa: E402
import regex  # noqa: E402

from treegrpo.rewards.text_clean import OpenClipTokenizer, clip_bpe_merges, open_clip_clean  # noqa: E402

CONTEXT = 77

HARD_PROMPTS = [
    # HTML entities next to a literal "<" or "&" (ftfy leaves entities alone when it sees "<")
    "a &lt;b&gt; tag", "x &amp;lt; y", "&amp;amp;amp; triple", "a < b &amp; c", "<b>bold</b> &amp; co",
    "1 &lt; 2 &amp;&amp; 3 &gt; 2", "&lt;3 &amp;amp; &lt;", "AT&amp;T <3", "fish &amp;amp; chips <",
    "&amp;lt;i&amp;gt; &amp;amp;amp;", "&lt;&amp;&gt;", "a &amp;lt;b> c", "<p>&amp;amp;</p>", "&amp;#60; nested",
    "< &#101;&#769; <", "<&#65313;&#65314;>", "&amp;eacute; <x", "&#x3C;hex&#x3E; &lt", "l&#39;art",
    "&quot;quoted&quot;", "&nbsp;&nbsp;spaces", "&amp;#101;&amp;#769;", "&#101;&#769; entity",
    # mojibake (also spelled as entities)
    "cafÃ© au lait", "Ã©tÃ© &lt; hiver", "&Atilde;&copy;t&Atilde;&copy;", "&Atilde;&copy; <", "cafÃ© <b>",
    "&amp;Atilde;&amp;copy;", "< cafÃ© &amp;amp;",
    # full-width letters, ligatures, compatibility forms
    "ＳＤ３ ＣＡＴ", "ﬁne ﬂower ﬀ ﬃ", "½ ² ①", "Straße ǅ",
    # odd whitespace and control characters
    "ideo\u3000graphic", "tab\tnew\nline\r\nend", "\u00a0nbsp\u00a0", "zero\u200bwidth", "line\u2028sep\x85nel",
    "ctrl\x1cchar\x07", "  lead and trail  ",
    # case, accents, scripts
    "UPPER Case MiXeD", "İstanbul", "ΣΟΦΙΑ ΟΔΟΣ", "e\u0301 decomposed", "n\u0303 vs ñ", "emoji 🐱\u200d👤",
    "猫咪 テスト", "don't it's", "“curly” ‘single’",
    # special-token spellings: transformers' are plain text to open_clip, open_clip's are its tokens
    "<|endoftext|> in prompt", "<end_of_text> in <START_OF_TEXT>",
    # truncated to the context: the last slot holds the end token
    " ".join(["word"] * 100), "",
]


# ----------------------------------------------------------------------------- hpsv2's tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """open_clip's ``bytes_to_unicode`` verbatim (byte -> printable stand-in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


class HpsV2SimpleTokenizer:
    """hpsv2 1.2.0's ``src/open_clip/tokenizer.py`` (``SimpleTokenizer`` + ``tokenize``), given merges directly."""

    def __init__(self, merges: list[tuple[str, str]]) -> None:
        self.byte_encoder = _bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        special_tokens = ["<start_of_text>", "<end_of_text>"]
        vocab.extend(special_tokens)
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {t: t for t in special_tokens}
        special = "|".join(special_tokens)
        self.pat = regex.compile(
            special + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
        )

    def bpe(self, token: str) -> str:
        """open_clip's ``bpe``: merge the lowest-ranked pair until none is known."""
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = set(zip(word, word[1:]))
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                    new_word.extend(word[i:j])
                    i = j
                except ValueError:
                    new_word.extend(word[i:])
                    break
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = set(zip(word, word[1:]))
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """``whitespace_clean(basic_clean(text)).lower()``, open_clip's split, byte-level BPE."""
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids: list[int] = []
        for token in regex.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids

    def tokenize(self, texts: list[str], context_length: int = CONTEXT) -> torch.Tensor:
        """hpsv2's ``tokenize``: start + BPE + end, cut with the end token last, zero-padded."""
        sot, eot = self.encoder["<start_of_text>"], self.encoder["<end_of_text>"]
        result = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            tokens = [sot] + self.encode(text) + [eot]
            if len(tokens) > context_length:
                tokens = tokens[:context_length]
                tokens[-1] = eot
            result[i, : len(tokens)] = torch.tensor(tokens)
        return result


# ----------------------------------------------------------------------------- a small real BPE


# Ranks matter: "wo" before "or", so "word" is one token and "or" stays two; "Ã©" is the bytes of "é".
MERGES = [
    ("w", "o"), ("o", "r"), ("wo", "r"), ("wor", "d</w>"), ("c", "a"), ("ca", "t</w>"), ("t", "h"), ("th", "e</w>"),
    ("&", "a"), ("&a", "m"), ("&am", "p"), ("<", "b"), ("f", "i"), ("fi", "n"), ("fin", "e</w>"), ("Ã", "©"),
    ("Ã", "©</w>"), ("e", "n"), ("en", "d</w>"), ("<", "|"), ("i", "n</w>"), ("a", "t</w>"),
]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vocab.json + merges.txt in CLIP's layout (bytes, bytes</w>, merges, start, end), loadable by 4.x and 5.x."""
    folder = tmp_path_factory.mktemp("clip_bpe")
    symbols = list(_bytes_to_unicode().values())
    pieces = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in MERGES] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(pieces)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    return HpsV2SimpleTokenizer(MERGES).tokenize(HARD_PROMPTS)


@pytest.mark.parametrize("fast", [False, True], ids=["CLIPTokenizer", "CLIPTokenizerFast"])
def test_ids_equal_hpsv2_tokenizer_on_hard_prompts(clip_folder: Path, reference: torch.Tensor, fast: bool) -> None:
    """Every hard prompt, start/end/padding/truncation included, has hpsv2's ids exactly."""
    import transformers

    # 4.x: the python BPE and the tokenizers one; 5.x: CLIPTokenizerFast is an alias of CLIPTokenizer
    tok = getattr(transformers, "CLIPTokenizerFast" if fast else "CLIPTokenizer").from_pretrained(clip_folder)
    assert clip_bpe_merges(tok) == MERGES
    ours = OpenClipTokenizer.from_transformers(tok)(HARD_PROMPTS, CONTEXT)
    wrong = [p for p, a, b in zip(HARD_PROMPTS, ours, reference) if not torch.equal(a, b)]
    assert wrong == []
    assert reference[HARD_PROMPTS.index(" ".join(["word"] * 100)), -1] == tok.eos_token_id  # truncated: end last
    assert reference[HARD_PROMPTS.index("<end_of_text> in <START_OF_TEXT>"), 1] == tok.eos_token_id


def test_calling_the_transformers_tokenizer_on_cleaned_text_differs(clip_folder: Path, reference: torch.Tensor) -> None:
    """Why the BPE is not left to ``CLIPTokenizer``: on cleaned text it normalises again (4.x: ftfy, 5.x: NFC)."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(clip_folder)
    differ = set()
    for prompt, ref in zip(HARD_PROMPTS, reference):
        ids = tok(open_clip_clean(prompt), truncation=True, max_length=CONTEXT)["input_ids"]
        if ids != [t for t in ref.tolist() if t]:
            differ.add(prompt)
    assert {"< &#101;&#769; <", "<|endoftext|> in prompt", "<end_of_text> in <START_OF_TEXT>"} <= differ


def test_word_bpe_follows_merge_ranks(clip_folder: Path) -> None:
    """"word" merges to one symbol (rank order), "or" stays two, "é" uses its byte pair, unknown pairs stay apart."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(clip_folder)
    vocab = tok.get_vocab()
    ours = OpenClipTokenizer.from_transformers(tok)
    assert ours.encode("Word") == [vocab["word</w>"]]
    assert ours.encode("or") == [vocab["o"], vocab["r</w>"]]
    assert ours.encode("é") == [vocab["Ã©</w>"]]
    assert ours.encode("xy") == [vocab["x"], vocab["y</w>"]]
