"""The ggml binding loads only a build made for this ggml version and this CPU, and says why not.

Each case imports the binding in a child process, pointed at a copy of the real build whose
BUILD record was changed, as a build copied from another machine or left from an older
setup would be.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from pollama.ml.ggml import cpu
from pollama.ml.ggml.lib import VERSION, ggml

IMPORT = "from pollama.ml.ggml.lib import ggml; print(ggml.variant, ggml.ggml_version().decode())"


def load_in_child(lib_dir) -> subprocess.CompletedProcess:
    env = dict(os.environ, POLLAMA_GGML_LIB_DIR=str(lib_dir))
    return subprocess.run([sys.executable, "-c", IMPORT], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def build_copy(tmp_path):
    """A copy of the build in use, whose BUILD file a test may rewrite."""
    dest = tmp_path / "ggml"
    shutil.copytree(ggml.lib_dir, dest, symlinks=True)
    return dest


def rewrite(build_dir, **fields) -> None:
    record = dict(line.split(": ", 1) for line in (build_dir / "BUILD").read_text().splitlines())
    record.update(fields)
    (build_dir / "BUILD").write_text("".join(f"{k}: {v}\n" for k, v in record.items()))


def test_the_build_in_use_is_current_and_fits_this_cpu(build_copy):
    proc = load_in_child(build_copy)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [ggml.variant, VERSION]


def test_a_build_for_a_cpu_with_more_features_is_refused(build_copy):
    rewrite(build_copy, features="avx2 some_future_isa")
    proc = load_in_child(build_copy)
    assert proc.returncode != 0
    assert "ImportError: the ggml build in" in proc.stderr
    assert "was made for a CPU with some_future_isa" in proc.stderr and "run ./setup.sh" in proc.stderr


def test_a_build_of_another_ggml_version_is_refused(build_copy):
    rewrite(build_copy, version="0.15.3")
    proc = load_in_child(build_copy)
    assert "ImportError" in proc.stderr and "is version 0.15.3, pollama needs 0.25.3" in proc.stderr


def test_no_build_says_what_to_run(tmp_path):
    proc = load_in_child(tmp_path)
    assert f"ImportError: no ggml build in {tmp_path} (run ./setup.sh" in proc.stderr


def test_cpu_features_are_read_from_cpuinfo():
    x86 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma hypervisor avx512f avx512_vnni\n"
    assert cpu.isa_flags(x86) == {"sse", "sse2", "avx", "avx2", "fma", "avx512f", "avx512_vnni"}
    arm = "processor\t: 0\nFeatures\t: fp asimd aes sve\n"
    assert cpu.isa_flags(arm) == {"fp", "asimd", "aes", "sve"}
    assert cpu.isa_flags("") == set()
