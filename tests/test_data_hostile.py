"""Prompt and image files as they arrive from the internet: byte-order marks, CRLF, Unicode line
separators inside a prompt, invalid UTF-8 on a later line, NUL bytes, over-long lines, and source
images that are truncated, empty, not images, or decompression bombs (one-line DataErrors naming
the file and line; nothing else raised)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.test_reliability_inputs import png_claiming, write_image_files
from treegrpo.data import load_jsonl, load_prompts, load_txt
from treegrpo.prompts import DataError, EditPrompt, source_image, unreadable_image_reason


def test_bom_crlf_and_unicode_separators_are_text_not_errors(tmp_path: Path) -> None:
    file = tmp_path / "p.txt"
    file.write_bytes("\ufeffa red square\r\ntwo blue\u2028circles\r\n\r\n\x0cthree\tgreen triangles\r\n".encode("utf-8"))
    assert load_txt(file) == ["a red square", "two blue\u2028circles", "three\tgreen triangles"]
    records = tmp_path / "p.jsonl"
    records.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "caf\u00e9\u2028au lait"}, ensure_ascii=False).encode() + b"\r\n")
    assert load_jsonl(records) == ["caf\u00e9\u2028au lait"]  # one record, not split at U+2028


def test_text_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nalso fine\ncaf\xe9\n")
    with pytest.raises(DataError, match=r"bad.txt:3 is not UTF-8 text \(byte 18\)"):
        load_txt(bad)
    nul = tmp_path / "nul.jsonl"
    nul.write_bytes(b'{"prompt": "a"}\n{"prompt": "b\x00"}\n')
    with pytest.raises(DataError, match=r"nul.jsonl:2 holds a NUL byte"):
        load_prompts(str(nul))
    long = tmp_path / "long.txt"
    long.write_text("ok\n" + "y" * 20_001)
    with pytest.raises(DataError, match=r"long.txt:2 is 20001 characters long"):
        load_txt(long)
    long.write_text("ok\n" + "y" * 20_000)
    assert len(load_txt(long)[1]) == 20_000


@pytest.mark.parametrize("name, reason", [("truncated", "OSError"), ("empty_image", "UnidentifiedImageError"),
                                          ("text_image", "UnidentifiedImageError"),
                                          ("bomb", "more pixels than Pillow.s decompression-bomb limit of")])
def test_unreadable_source_images_are_refused_when_the_prompts_load(tmp_path: Path, name: str, reason: str) -> None:
    write_image_files(tmp_path)
    assert unreadable_image_reason(tmp_path / "good.png") is None
    with pytest.raises(DataError, match=rf"{name}.jsonl:1 names source image .*{name}.png, which cannot be read \({reason}"):
        load_prompts(str(tmp_path / f"{name}.jsonl"))
    with pytest.raises(DataError, match="cannot read source image"):  # and at use, e.g. a file damaged after loading
        source_image(EditPrompt("make it blue", tmp_path / f"{name}.png"))


def test_pillows_bomb_limit_is_an_error_from_the_limit_not_twice_it(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)
    Image.new("RGB", (150, 100)).save(tmp_path / "wide.png")  # 1.5x the limit: Pillow alone only warns
    assert "decompression-bomb limit of 10000" in str(unreadable_image_reason(tmp_path / "wide.png"))
    Image.new("RGB", (100, 100)).save(tmp_path / "ok.png")
    assert unreadable_image_reason(tmp_path / "ok.png") is None
    (tmp_path / "header.png").write_bytes(png_claiming(101, 100))
    assert "decompression-bomb limit" in str(unreadable_image_reason(tmp_path / "header.png"))
