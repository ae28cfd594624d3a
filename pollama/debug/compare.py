"""Ours against the reference, tensor by tensor, in forward order: where does it go wrong?

Each recorded tensor is compared over every token's row with three numbers: the largest
absolute difference, the relative error ||ours - ref|| / ||ref|| (Frobenius norms), and the
cosine similarity. The relative error is the one judged: it does not depend on the tensor's
scale, which grows along the residual stream. The first tensor past the tolerance is named:
since errors only ever grow downstream, the layer that owns it is where the bug sits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pollama.debug.record import Recording, record_forward
from pollama.debug.reference import (
    load_reference,
    reference_layer_count,
    reference_tensors,
)

# The relative error allowed on every tensor, set from measurement: the largest relative error
# over all tensors of the tiny random llama, smollm, mistral, qwen2 and gemma3 models of
# tests/debug against transformers in float32 (the F32 row: with the weights converted to F32).
#   F32 weights     torch 7.6e-7   ggml 9e-7 (llama family), 4.8e-4 (gemma3), 2.8e-3 (gemma3, 62 layers)
#   F16 weights     torch 1.2e-3   ggml 1.5e-3
#   Q8_0 weights    torch 3.3e-2   ggml 4.0e-2
#   Q4_0 weights    torch 4.3e-1   ggml 4.2e-1 (random weights are a worst case for 4 bits)
# Where ggml differs from torch: its CPU GELU is a table of F16 values indexed by the input
# rounded to F16 (gemma3: up to 4e-3 off per value), it multiplies F16 weights by activations
# rounded to F16, and quantized weights by activations rounded to 8 bits (Q8_0/Q8_K). Those
# errors are small and random and barely grow through the layers. A bug shows in the tensor
# where it sits: the bugs tests/debug injects give 0.09 to 0.16 (RoPE of the wrong mode in one
# layer, over a prompt of 11 tokens), 0.43 to 5.4 (a norm left out), 0.65 to 0.83 (gate and up
# swapped). So bring a model up on F32 or F16 weights: quantized ones hide the subtler bugs.
F32_TOLERANCE = {"torch": 1e-4, "ggml": 1e-2}
FLOAT_TOLERANCE = 1e-2  # F16/BF16 weights, either backend
Q8_TOLERANCE = 0.15  # 8-bit weights (the least precise type in the file)
LOW_BIT_TOLERANCE = 0.6  # fewer bits: only gross errors stand out; compare an F16 conversion first


@dataclass
class Row:
    """One tensor's comparison."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    rel_err: float
    cosine: float
    ok: bool


@dataclass
class Report:
    """The whole comparison: rows in forward order, the first failing one (or None), the tolerance."""

    rows: list[Row]
    tolerance: float
    missing: list[str]

    @property
    def first_divergent(self) -> Row | None:
        return next((row for row in self.rows if not row.ok), None)

    @property
    def diverges(self) -> bool:
        return self.first_divergent is not None

    def table(self) -> str:
        """The per-tensor table, one line each, the first divergent one marked."""
        first = self.first_divergent
        lines = [f"{'TENSOR':<20} {'SHAPE':<14} {'MAX ABS':>10} {'REL ERR':>10} {'COSINE':>10}"]
        for row in self.rows:
            mark = "  <-- first divergent" if row is first else ("" if row.ok else "  !")
            shape = "[" + ", ".join(map(str, row.shape)) + "]"
            lines.append(f"{row.name:<20} {shape:<14} {row.max_abs:>10.3g} {row.rel_err:>10.3g} {row.cosine:>10.6f}{mark}")
        return "\n".join(lines)

    def verdict(self) -> str:
        """One line: every tensor within tolerance, or the first that is not."""
        first = self.first_divergent
        if first is None:
            return f"OK: all {len(self.rows)} tensors within relative error {self.tolerance:g}"
        return (f"DIVERGES at {first.name}: relative error {first.rel_err:.3g} > {self.tolerance:g} "
                f"(max abs {first.max_abs:.3g}, cosine {first.cosine:.4f})")


def compare_arrays(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """(max abs diff, relative error, cosine similarity) of two arrays of the same shape."""
    a, b = np.asarray(ours, dtype=np.float64).ravel(), np.asarray(ref, dtype=np.float64).ravel()
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf"), float("inf"), float("nan")
    diff = a - b
    norm_a, norm_b = np.linalg.norm(a), np.linalg.norm(b)
    rel = float(np.linalg.norm(diff) / norm_b) if norm_b > 0 else float(np.linalg.norm(diff))
    cosine = float(a @ b / (norm_a * norm_b)) if norm_a > 0 and norm_b > 0 else float(norm_a == norm_b)
    return float(np.abs(diff).max(initial=0.0)), rel, cosine


def compare_recordings(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray], tolerance: float) -> Report:
    """Compare every tensor both sides have, in our recording's (forward) order."""
    rows, missing = [], []
    for name, array in ours.items():
        if name not in ref:
            missing.append(name)
            continue
        expected = ref[name]
        if array.shape != expected.shape:
            raise ValueError(f"{name}: ours is {list(array.shape)}, the reference's {list(expected.shape)}")
        max_abs, rel, cosine = compare_arrays(array, expected)
        rows.append(Row(name, tuple(array.shape), max_abs, rel, cosine, rel <= tolerance))
    if not rows:
        raise ValueError("no tensor to compare: the model recorded none the reference has")
    return Report(rows, tolerance, missing)


def default_tolerance(path: str | Path, backend: str) -> float:
    """The relative error to allow, by the least precise weight type in the file and the backend."""
    from pollama.fs.gguf import GGUFFile

    with GGUFFile(path) as gguf:
        types = {t.type.name for t in gguf.tensors.values()}
    if types <= {"F32"}:
        return F32_TOLERANCE[backend]
    if types <= {"F32", "F16", "BF16"}:
        return FLOAT_TOLERANCE
    if types <= {"F32", "F16", "BF16", "Q8_0", "Q8_1", "Q8_K"}:
        return Q8_TOLERANCE
    return LOW_BIT_TOLERANCE


def compare_model(path: str | Path, reference: str | Path, tokens: Sequence[int], backend: str = "ggml",
                  tolerance: float | None = None, num_thread: int | None = None, image: bytes | None = None,
                  prompt: str | None = None) -> tuple[Report, Recording]:
    """Run our model and the reference on the same tokens and compare every recorded tensor.

    With an `image` (and a `prompt` whose [img-0] tag places it), the vision tower and the
    projector are compared too, the reference given our prepared pixels and our prompt ids."""
    model = load_reference(reference)
    recording = record_forward(path, tokens, backend, all_rows=True, num_thread=num_thread, image=image, prompt=prompt)
    n_ref = reference_layer_count(model)
    n_ours = sum(1 for name in recording.values if name.endswith(".out") and name.startswith("blk."))
    if n_ours != n_ref:
        raise ValueError(f"the model has {n_ours} layers, the reference {n_ref}: not the same model")
    from pollama.debug.vision import is_vision_language, vision_reference_tensors

    if is_vision_language(model):
        ref = vision_reference_tensors(model, recording.tokens, recording.images[0] if image is not None else None)
    elif image is not None:
        raise ValueError(f"{type(model).__name__} takes no images: compare it without --image")
    else:
        ref = reference_tensors(model, recording.tokens)
    tol = default_tolerance(path, backend) if tolerance is None else tolerance
    return compare_recordings(recording.values, ref, tol), recording
