"""`pollama tensors`, and the formats of Ollama's model listings (sizes, relative times, tables)
that the server's clients in cli/remote.py print."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path


def human_bytes(n: int) -> str:
    """Sizes as Ollama prints them (decimal units): 94 MB, 1.2 GB."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 and unit in ("GB", "TB") else f"{value:.0f} {unit}"
    return f"{n} B"


def _trunc_div(a: int, b: int) -> int:
    """Go's integer division (toward zero)."""
    q = abs(a) // b
    return q if a >= 0 else -q


def human_duration(seconds: float) -> str:
    """A duration in Ollama's words (format/time.go humanDuration): "Less than a second",
    "1 second", "5 seconds", "About a minute", "4 minutes", "About an hour", "3 hours",
    "2 days", "3 weeks", "5 months", "2 years". Seconds and minutes are truncated, hours
    rounded, as there."""
    whole_seconds = int(seconds)
    if whole_seconds < 1:
        return "Less than a second"
    if whole_seconds == 1:
        return "1 second"
    if whole_seconds < 60:
        return f"{whole_seconds} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round_half_away(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def round_half_away(x: float) -> int:
    """Go's math.Round: halves away from zero (Python's round() goes to even)."""
    return int(x + 0.5) if x >= 0 else -int(-x + 0.5)


def human_time(then: datetime | None, zero: str = "Never", now: datetime | None = None) -> str:
    """A time relative to now in Ollama's words (format/time.go HumanTime): "2 minutes ago",
    "4 minutes from now", "Forever" beyond 20 years ahead, `zero` for no time at all."""
    if then is None:
        return zero
    now = now or datetime.now(UTC)
    delta = (now - then.astimezone(UTC)).total_seconds()
    if _trunc_div(_trunc_div(int(delta / 3600), 24), 365) < -20:
        return "Forever"
    if delta < 0:
        return human_duration(-delta) + " from now"
    return human_duration(delta) + " ago"


def _table(rows: list[list[str]], indent: str = "") -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(indent + "    ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _short(value) -> str:
    if isinstance(value, list):
        return f"[...{len(value)} items]" if len(value) > 8 else json.dumps(value, ensure_ascii=False)
    return str(value)


def cmd_tensors(args: argparse.Namespace) -> int:
    rows = list_tensors(Path(args.path))
    if args.json:
        print(json.dumps([{"name": n, "shape": list(s), "dtype": d} for n, s, d in rows]))
        return 0
    table = [["NAME", "SHAPE", "DTYPE"]] + [[n, "[" + ", ".join(map(str, s)) + "]", d] for n, s, d in rows]
    print(_table(table))
    return 0


def list_tensors(path: Path) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape in PyTorch order, dtype) of every tensor in a GGUF, safetensors file or
    folder, or PyTorch checkpoint."""
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin")) + sorted(path.glob("*.pth")) or sorted(path.glob("*.gguf"))
        if not files:
            raise ValueError(f"{path}: no .safetensors, .bin, .pth or .gguf files")
        return [row for f in files for row in list_tensors(f)]
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == b"GGUF":
        from pollama.fs.gguf import GGUFFile

        with GGUFFile(path) as gguf:
            return [(i.name, tuple(i.shape), i.type.name) for i in gguf.tensors.values()]
    if head[:2] == b"PK":
        from pollama.fs.torchzip import TorchCheckpoint

        with TorchCheckpoint(path) as ckpt:
            return [(t.name, t.shape, t.dtype) for t in ckpt.tensors.values()]
    from pollama.fs.safetensors import SafetensorsFile

    with SafetensorsFile(path) as st:
        # Shapes from the header: listing must work even for dtypes we do not convert.
        return [(name, tuple(st._entries[name][1]), st.dtype(name)) for name in st.keys()]
