"""Our side: one forward pass of a GGUF model with every `ctx.record` point kept."""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pollama.fs.gguf import GGUFFile
from pollama.ml.base import Recorder, describe
from pollama.models.multimodal import token_ids
from pollama.runner.engine import make_backend
from pollama.debug.steps import StepEngine


@dataclass
class Recording:
    """Named intermediates of one forward pass, in the order the model recorded them.

    With an image, the vision tower's come first (`v.*`, `mm.*`), and `images` holds the image
    as the model prepared it (for the reference to get the very same pixels)."""

    arch: str
    tokens: list[int]
    values: dict[str, np.ndarray] = field(default_factory=dict)
    images: list = field(default_factory=list)

    def stats(self) -> list[tuple[str, str]]:
        """(name, shape and statistics) of every tensor, as OLLAMA_DEBUG logs them."""
        return [(name, describe(array)) for name, array in self.values.items()]

    def save(self, path: str | Path) -> Path:
        """Write the tensors to .npz or .safetensors (by the file's suffix)."""
        path = Path(path)
        arrays = {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in self.values.items()}
        if path.suffix == ".npz":
            np.savez(path, **arrays)
        elif path.suffix == ".safetensors":
            write_safetensors(path, arrays, {"tokens": json.dumps(self.tokens), "arch": self.arch})
        else:
            raise ValueError(f"{path}: the dump file must end in .npz or .safetensors")
        return path


def write_safetensors(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """float32 arrays as a safetensors file (readable by the `safetensors` package and ours)."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, array in arrays.items():
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for array in arrays.values():
            f.write(array.astype("<f4").tobytes())


def check_tokens(tokens: Sequence[int], vocab_size: int) -> None:
    """ValueError naming the first token id outside the vocabulary."""
    bad = [t for t in tokens if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})")


def prompt_tokens(path: str | Path, prompt: str) -> list[int]:
    """The model's own tokenization of a prompt (its BOS and specials included), from the GGUF."""
    from pollama.tokenizer import load_tokenizer

    with GGUFFile(path) as gguf:
        return load_tokenizer(gguf.metadata).encode(prompt, add_special=True, parse_special=True)


def model_arch(path: str | Path) -> str:
    """general.architecture of a GGUF file."""
    with GGUFFile(path) as gguf:
        return str(gguf.metadata.get("general.architecture", ""))


IMAGE_CONTEXT = 8192  # positions a comparison with an image may take (its length is known only once encoded)


def record_forward(path: str | Path, tokens: Sequence[int], backend: str = "ggml", all_rows: bool = True,
                   num_thread: int | None = None, image: bytes | None = None, prompt: str | None = None) -> Recording:
    """Run `tokens` through the GGUF model from an empty cache, keeping every recorded tensor.

    With an `image`, the prompt is `prompt` (text whose `[img-0]` tag stands for the image)
    and `tokens` is not used: the image's vision tower is recorded, then the prompt with the
    image in place. K/V are cached in F32 so the recording shows the model's arithmetic, not
    the cache's F16 rounding (1e-3 on logits by itself, see tests/models/tinyhf.py).
    """
    tokens = [int(t) for t in tokens]
    if not tokens and image is None:
        raise ValueError("no tokens to run: give a prompt or token ids")
    recorder = Recorder(all_rows=all_rows)
    arch = model_arch(path)
    if arch == "bert":
        return _record_encoder(path, tokens, backend, recorder, num_thread)
    backend_obj = make_backend(backend, num_thread)
    backend_obj.recorder = recorder  # before the StepEngine builds (and keeps) any graph
    n_ctx = IMAGE_CONTEXT if image is not None else len(tokens) + 1
    try:
        engine = StepEngine(path, backend=backend_obj, num_ctx=n_ctx, num_batch=n_ctx, kv_cache_type="f32")
    except BaseException:
        backend_obj.close()  # the StepEngine closes it from here on, not before it exists
        raise
    with engine:
        if image is None:
            check_tokens(tokens, engine.model.vocab_size)
            engine.logits(tokens)
            return Recording(arch, tokens, dict(recorder.values))
        if "[img-0]" not in (prompt or ""):
            raise ValueError("a prompt with an image needs an [img-0] tag where the image goes")
        prepared = engine.model.preprocess(image)
        items = engine.prompt_items(prompt, [image])  # runs (and records) the vision tower
        vision = dict(recorder.values)
        if len(items) >= n_ctx:
            raise ValueError(f"the prompt with its image takes {len(items)} positions, more than {n_ctx}")
        engine.logits(items)
        return Recording(arch, token_ids(items), {**vision, **recorder.values}, [prepared])


def _record_encoder(path, tokens: list[int], backend: str, recorder: Recorder, num_thread: int | None) -> Recording:
    from pollama.runner.embed import Embedder

    embedder = Embedder(path, backend=backend, n_threads=num_thread)
    try:
        check_tokens(tokens, embedder.model.vocab_size)
        if len(tokens) > embedder.model.n_ctx_train:
            raise ValueError(f"{len(tokens)} tokens do not fit the model's {embedder.model.n_ctx_train} positions")
        embedder.backend.recorder = recorder
        with embedder.backend.context() as ctx:
            ctx.compute(embedder.model.forward(ctx, [tokens], v_rows=embedder.backend.flash_attention))
    finally:
        embedder.close()
    return Recording("bert", tokens, dict(recorder.values))
