"""An embedding model (BERT) loaded for /api/embed: texts in, one vector per text out.

What Ollama does, step by step: each text is tokenized with its specials ([CLS] ... [SEP]),
cut to the context (or refused), run through the encoder, pooled as the model says
(bert.pooling_type), and L2-normalized, as /api/embed always normalizes. Several texts share
one forward pass when they fit `num_batch` tokens together; they cannot see each other (a
block-diagonal mask), so a text's vector does not depend on its neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pollama.fs.gguf import GGUFFile
from pollama.ml.base import Backend
from pollama import envconfig
from pollama.models.base import load_model
from pollama.models.bert import Bert, Pooling
from pollama.errors import ModelError
from pollama.runner import limits
from pollama.runner.engine import make_backend
from pollama.tokenizer import load_tokenizer

DEFAULT_NUM_BATCH = envconfig.DEFAULT_NUM_BATCH


class InputTooLong(ValueError):
    """A text longer than the context while truncation is off (Ollama answers 400)."""


@dataclass
class Embeddings:
    """Vectors [n, dim] float32 and how many tokens each text used (after truncation)."""

    vectors: np.ndarray
    token_counts: list[int]

    @property
    def prompt_eval_count(self) -> int:
        """Tokens evaluated over all texts, specials included (Ollama's prompt_eval_count)."""
        return sum(self.token_counts)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Each row divided by its L2 norm (at least 1e-12), as Ollama normalizes; NaN/Inf is an error."""
    if not np.isfinite(vectors).all():
        raise ValueError("embedding contains NaN or Inf values")
    norms = np.sqrt((vectors.astype(np.float64) ** 2).sum(axis=-1, keepdims=True))
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


class Embedder:
    """A BERT GGUF on a backend ("ggml" or "torch"), with its WordPiece tokenizer.

    A Backend passed in (rather than a name) becomes the Embedder's: it is closed with it.
    """

    def __init__(
        self,
        path: str | Path,
        backend: str | Backend = "ggml",
        n_threads: int | None = None,
        num_ctx: int | None = None,
        num_batch: int = DEFAULT_NUM_BATCH,
        num_gpu: int = -1,
    ):
        if num_batch <= 0 or (num_ctx is not None and num_ctx <= 0):
            raise ValueError("num_ctx and num_batch must be positive")
        self.gguf = GGUFFile(path)
        self.backend: Backend | None = None
        try:
            self.tokenizer = load_tokenizer(self.gguf.metadata)
            self.backend = make_backend(backend, n_threads, num_gpu=num_gpu) if isinstance(backend, str) else backend
            self.model = load_model(self.gguf, self.backend)  # importing Bert registered "bert"
            if not isinstance(self.model, Bert):
                raise ModelError(f"{path}: a {self.model.arch} model is not an embedding model")
        except BaseException:
            self.close()
            raise
        # Ollama: the smaller of num_ctx and the model's context; positions end there anyway.
        self.num_ctx = min(num_ctx or self.model.n_ctx_train, self.model.n_ctx_train)
        self.num_batch = num_batch
        # A text beyond this many characters cannot fit in num_ctx tokens (runner/limits.py).
        self.token_chars = limits.max_token_chars(self.tokenizer)
        self.char_limit = limits.prompt_char_limit(self.num_ctx, self.token_chars)

    @property
    def dim(self) -> int:
        """Length of each vector."""
        return self.model.dim

    def close(self) -> None:
        """Free the model's memory."""
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        self.gguf.close()

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def tokenize(self, text: str, truncate: bool = True) -> list[int]:
        """[CLS] text [SEP] as ids, cut to the context keeping the final [SEP] (or InputTooLong).

        A text that cannot fit is not tokenized whole: refused at once without truncation, else
        only its start is (twice the characters that could fit, so that the cut, in a word that
        may tokenize differently cut, lies a whole context's worth of text past the tokens kept).
        """
        if len(text) > self.char_limit:
            if not truncate:
                raise InputTooLong(limits.too_long_message("the input length", len(text), self.num_ctx,
                                                           self.token_chars))
            text = text[: 2 * self.char_limit]
        ids = self.tokenizer.encode(text, add_special=True)
        if len(ids) <= self.num_ctx:
            return ids
        if not truncate:
            raise InputTooLong(
                f"the input length exceeds the context length ({len(ids)} tokens, the limit is {self.num_ctx})"
            )
        sep = self.tokenizer.sep_id
        return ids[: self.num_ctx - 1] + [sep] if ids[-1] == sep else ids[: self.num_ctx]

    def embed(self, texts: Sequence[str], truncate: bool = True) -> np.ndarray:
        """L2-normalized vectors [len(texts), dim] float32, as /api/embed returns them."""
        return self.run(texts, truncate).vectors

    def run(self, texts: Sequence[str], truncate: bool = True, normalize: bool = True, dimensions: int = 0) -> Embeddings:
        """Vectors with token counts; `dimensions` keeps that many leading values, re-normalized.

        normalize=False gives the model's own output, as Ollama's runner hands it to the legacy
        /api/embeddings: the pooled vector, L2-normalized only when the GGUF's
        bert.normalize_embeddings (default true) says so.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        if self.model.pooling == Pooling.NONE:
            raise ModelError("this model has no pooling (bert.pooling_type 0): it gives no vector per text")
        seqs = [self.tokenize(text, truncate) for text in texts]
        vectors = np.zeros((len(seqs), self.dim), dtype=np.float32)
        for batch in self._batches([len(s) for s in seqs]):
            vectors[batch] = self._pooled([seqs[i] for i in batch])
        if normalize or self.model.normalize:
            vectors = l2_normalize(vectors)
        if normalize and 0 < dimensions < self.dim:
            vectors = l2_normalize(vectors[:, :dimensions])
        return Embeddings(vectors, [len(s) for s in seqs])

    def _batches(self, lens: list[int]) -> list[list[int]]:
        """Indices of the texts grouped, in order, into batches of at most num_batch tokens."""
        batches: list[list[int]] = []
        used = self.num_batch
        for i, n in enumerate(lens):
            if used + n > self.num_batch:  # a text longer than num_batch still runs, alone
                batches.append([])
                used = 0
            batches[-1].append(i)
            used += n
        return batches

    def _pooled(self, seqs: list[list[int]]) -> np.ndarray:
        with self.backend.context() as ctx:
            hidden = self.model.forward(ctx, seqs, v_rows=self.backend.flash_attention)
            (pooled,) = ctx.compute(self.model.pool(ctx, hidden, [len(s) for s in seqs]))
        return pooled
