"""The accelerators a ggml build offers (Vulkan today), and how many layers to put on one.

A build made with `build.sh --vulkan` (`./setup.sh --vulkan`) has ggml's Vulkan backend,
which drives GPUs of every vendor. ggml hides Vulkan devices of CPU type (Mesa's lavapipe,
a software rasterizer) unless GGML_VK_VISIBLE_DEVICES names them: a software device is far
slower than the CPU backend, so pollama keeps ggml's choice and adds no switch of its own.
`GGML_VK_VISIBLE_DEVICES=0` (ggml's variable, which Ollama passes through the same way) is
how the tests run on lavapipe on a machine without a GPU.
"""

from __future__ import annotations

import ctypes
import functools
import re
from dataclasses import dataclass

from pollama.ml.ggml.lib import ggml

_KINDS = {
    ggml.GGML_BACKEND_DEVICE_TYPE_CPU: "cpu",
    ggml.GGML_BACKEND_DEVICE_TYPE_GPU: "gpu",
    ggml.GGML_BACKEND_DEVICE_TYPE_IGPU: "igpu",
}


@dataclass(frozen=True)
class Device:
    """One ggml device of a GPU backend."""

    backend: str  # "vulkan"
    name: str  # ggml's name: "Vulkan0"
    description: str  # the driver's: "llvmpipe (LLVM 15.0.6, 256 bits)"
    kind: str  # "gpu", "igpu" (shares the host's memory), "cpu" (a software device), "accel"
    handle: int  # ggml_backend_dev_t

    def memory(self) -> tuple[int, int]:
        """(free, total) bytes of device memory, as the driver reports them now."""
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        ggml.ggml_backend_dev_memory(self.handle, ctypes.byref(free), ctypes.byref(total))
        return free.value, total.value


@functools.cache
def gpu_devices() -> tuple[Device, ...]:
    """The devices of the build's GPU backends, in ggml's order (none for a CPU-only build)."""
    found = []
    for backend, register in ggml.gpu_regs.items():
        # NULL when the backend cannot start (no Vulkan driver): no devices, not an error.
        reg = register()
        if not reg:
            continue
        for i in range(ggml.ggml_backend_reg_dev_count(reg)):
            dev = ggml.ggml_backend_reg_dev_get(reg, i)
            kind = _KINDS.get(ggml.ggml_backend_dev_type(dev), "accel")
            found.append(Device(backend, ggml.ggml_backend_dev_name(dev).decode(),
                                ggml.ggml_backend_dev_description(dev).decode(errors="replace"), kind, dev))
    return tuple(found)


_BLOCK = re.compile(r"^blk\.(\d+)\.")


def block_of(name: str) -> int | None:
    """The repeating layer a GGUF tensor belongs to (`blk.N.`), None for the others."""
    m = _BLOCK.match(name)
    return int(m.group(1)) if m else None


def layers_that_fit(block_bytes: list[int], output_bytes: int, free: int) -> int:
    """How many layers fit in `free` bytes of device memory, counted from the last one, as
    llama.cpp and Ollama offload them: each block's weights plus its KV cache, then the output
    layer (norm and projection) as one more. `free` is what remains after the compute graph."""
    used, count = 0, 0
    for size in reversed(block_bytes):
        if used + size > free:
            return count
        used += size
        count += 1
    return count + (used + output_bytes <= free)
