"""Image paths typed to a vision model are read and taken out of the text, as Ollama's REPL does."""

from __future__ import annotations

import base64
import io

from PIL import Image

from pollama.cli.images import extract_images


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (3, 2), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def test_paths_are_read_and_removed(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    spaced = tmp_path / "my cat.PNG"
    spaced.write_bytes(png_bytes())
    text = f"what is in {tmp_path}/a.png and {str(spaced).replace(' ', chr(92) + ' ')} ?"
    rest, images, notes = extract_images(text)
    assert rest == "what is in  and  ?"
    assert [base64.b64decode(i) for i in images] == [png_bytes(), png_bytes()]
    assert notes == [f"Added image '{tmp_path}/a.png'", f"Added image '{spaced}'"]


def test_missing_files_stay_text_and_fakes_are_refused(tmp_path):
    (tmp_path / "fake.jpg").write_bytes(b"not a jpeg at all")
    rest, images, notes = extract_images(f"see /nonexistent/x.png and {tmp_path}/fake.jpg")
    assert images == []
    assert rest == "see /nonexistent/x.png and"
    assert notes == [f"couldn't process image '{tmp_path}/fake.jpg': not a JPEG, PNG or WebP image"]


def test_text_without_paths_is_unchanged():
    assert extract_images("a/b.png is relative, c.png has no slash") == ("a/b.png is relative, c.png has no slash", [], [])
