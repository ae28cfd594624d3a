"""Image paths in what a user types to a vision model (Ollama's REPL and `run` prompt).

As Ollama: a path that starts with `/`, `./`, `\\` or a drive letter and ends in .jpg,
.jpeg, .png or .webp (spaces escaped with a backslash are part of the path) is read, checked
to really be such an image by its first bytes, taken out of the text and sent as an image.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

PATH = re.compile(r"(?:[a-zA-Z]:)?(?:\./|/|\\)(?:\\ |[^\s\\]|\\(?! ))+?\.(?i:jpg|jpeg|png|webp)\b")
MAX_IMAGE_FILE = 64 * 1024 * 1024

# The first bytes of each accepted format (what Go's http.DetectContentType looks at).
_SIGNATURES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"))


def _kind(head: bytes) -> str | None:
    for magic, kind in _SIGNATURES:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def extract_images(text: str) -> tuple[str, list[str], list[str]]:
    """(text without the image paths, the images as base64, a line per image or problem).

    A path that does not exist is left in the text (it may be just text); one that exists
    but is not a JPEG, PNG or WebP image, or is too large, is reported and left out.
    """
    images, notes = [], []
    for match in list(PATH.finditer(text)):
        raw = match.group(0)
        path = Path(raw.replace("\\ ", " "))
        try:
            if not path.is_file():
                continue
            if path.stat().st_size > MAX_IMAGE_FILE:
                notes.append(f"couldn't process image '{path}': larger than {MAX_IMAGE_FILE} bytes")
                text = text.replace(raw, "", 1)
                continue
            data = path.read_bytes()
        except OSError as e:
            notes.append(f"couldn't process image '{path}': {e.strerror or e}")
            continue
        if _kind(data[:16]) is None:
            notes.append(f"couldn't process image '{path}': not a JPEG, PNG or WebP image")
            text = text.replace(raw, "", 1)
            continue
        images.append(base64.b64encode(data).decode())
        notes.append(f"Added image '{path}'")
        text = text.replace(raw, "", 1)
    return text.strip(), images, notes
