"""The CPU's instruction-set extensions, as a ggml build records and lib.py checks them.

Run as a script (by native/build.sh, before pollama is installed) it prints them.
"""

from __future__ import annotations

import re
from pathlib import Path

# x86 /proc/cpuinfo flags a compiler may emit code for under -march=native.
_X86_ISA_FLAG = re.compile(r"^(sse|ssse3|avx|fma|f16c|bmi|popcnt|lzcnt|abm|movbe|sha|aes|vaes|vpclmulqdq|gfni|amx)")

# What the portable build (-DGGML_NATIVE=OFF with AVX/AVX2/FMA/F16C/BMI2) assumes.
PORTABLE_X86 = frozenset({"avx", "avx2", "fma", "f16c", "bmi2"})


def isa_flags(cpuinfo: str | None = None) -> set[str]:
    """x86 'flags' limited to instruction-set extensions, or the whole Arm 'Features' line."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags":
            return {f for f in value.split() if _X86_ISA_FLAG.match(f)}
        if key == "Features":
            return set(value.split())
    return set()


if __name__ == "__main__":
    import sys

    flags = isa_flags()
    if sys.argv[1:] == ["portable"]:  # what its flags assume, whatever this CPU has beyond
        flags = set(PORTABLE_X86)
    print(" ".join(sorted(flags)))
