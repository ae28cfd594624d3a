"""Several sequences of one model, decoded together: one forward pass per step for all of them.

This is the one generation loop: the server, the CLI, bench/ and the tests all generate
through submit(), with one slot or many (as Ollama's runner serves 1..N sequences).

Each request (a Job) gets a slot: a sequence id in the shared KV cache, with room for
num_ctx tokens. Every step gathers, for each busy slot, either its next token (decoding) or
a chunk of its prompt (prefill), into one Batch; the model runs it once; each slot that
produced logits samples from its own row. Decoding slots go first, so a long prompt arriving
never stalls the others for more than one chunk.

A slot keeps its sequence's K/V after its job ends. The next job goes to the slot whose
cached tokens share the longest prefix with its prompt, so the next turn of a chat evaluates
only what is new; a slot whose tokens all lead the prompt (or an empty one) comes before one
that would lose the rest of another conversation (_slot_choice).

A greedy slot decoding alone may put draft tokens after its next token (speculative decoding
by prompt lookup, speculative.py, or from a draft model, draft.py): the step then computes its
rows as one-token steps would, and the slot samples them in order while the model agrees.

All model work happens on one background thread; submit(), iteration and cancel() are safe
to call from any thread.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from pollama import envconfig
from pollama.ml.base import Backend
from pollama.models import multimodal
from pollama.models.multimodal import Item
from pollama.nn import Batch
from pollama.runner.engine import DEFAULT_NUM_BATCH, DEFAULT_NUM_CTX, Engine, Part, common_prefix, make_batch
from pollama.runner import window
from pollama.runner.generation import Done, GenerateOptions, Generation, Piece
from pollama.runner.draft import DraftModel, make_drafter
from pollama.runner.job import _END, EngineClosed, Job
from pollama.runner.speculative import Drafter, StepCosts, draft_budget, sample_drafts

log = logging.getLogger(__name__)

@dataclass
class _Slot:
    """A sequence of the shared cache and the job using it, if any."""

    seq: int
    cached: list[Item] = field(default_factory=list)  # prompt items whose K/V the cache holds
    job: Job | None = None
    generation: Generation | None = None
    pending: list[Item] = field(default_factory=list)  # prompt items not evaluated yet
    rope: np.ndarray | None = None  # the job's prompt's M-RoPE positions (models that use them)
    rope_delta: int = 0  # then: the next token's rope position minus its cache position
    cached_prompt: int = 0  # prompt tokens whose K/V the cache held when the job started
    started: int = 0  # ns: the job entered the slot
    prompt_done: int = 0  # ns: its prompt was evaluated
    last_used: float = 0.0
    drafter: Drafter | None = None  # this job's draft tokens, when it speculates
    draft_count: int = 0  # draft tokens evaluated for this job
    draft_accepted: int = 0  # of which the model agreed with
    shifts: int = 0  # context shifts of this job's sequence


class _Member(NamedTuple):
    """A slot's share of a step: how many items it put in, its first row of logits (None for
    a prompt chunk that is not the prompt's end), and the draft tokens after its next token."""

    slot: _Slot
    items: int
    row: int | None
    drafts: list[int]


def _slot_choice(slot: _Slot, prompt: list[Item]) -> tuple:
    """How good a free slot is for a prompt (the greatest is taken). First the slots that lose
    nothing, whose every cached token leads the prompt (the same conversation's, or an empty
    slot), the one keeping most first: a new conversation that shares only a system prompt
    with a finished one must not wipe that one's K/V while a slot stands empty. When every
    free slot would lose something, the one keeping most, the least recently used on ties."""
    kept = common_prefix(slot.cached, prompt)
    return kept == len(slot.cached), kept, -slot.last_used


class ParallelEngine:
    """A model serving up to num_parallel generations at once, batched together."""

    def __init__(
        self,
        path: str | Path,
        *,
        num_parallel: int = 1,
        num_ctx: int = DEFAULT_NUM_CTX,
        num_batch: int = DEFAULT_NUM_BATCH,
        num_thread: int | None = None,
        kv_cache_type: str | None = None,
        backend: str | Backend = "ggml",
        draft: str | Path | None = None,
    ):
        """`draft`: a draft model's GGUF (same tokenizer) for speculative decoding (draft.py)."""
        self.engine = Engine(
            path, backend=backend, num_ctx=num_ctx, num_batch=num_batch, num_thread=num_thread,
            kv_cache_type=kv_cache_type, num_parallel=num_parallel,
        )
        try:
            self.draft = DraftModel(draft, self.engine, num_parallel=num_parallel, num_ctx=num_ctx,
                                    num_batch=num_batch, num_thread=num_thread, kv_cache_type=kv_cache_type,
                                    backend=backend) if draft else None
        except BaseException:
            self.engine.close()
            raise
        self.tokenizer = self.engine.tokenizer
        self.model = self.engine.model
        if self.model.one_image and num_parallel > 1:
            # Its encoder cache holds one image's cross-attention states (as Ollama does).
            log.info("%s models decode one sequence at a time: num_parallel %d -> 1", self.model.arch, num_parallel)
            num_parallel = 1
        self.num_ctx = num_ctx  # per sequence
        self.num_parallel = num_parallel
        self.load_duration = self.engine.load_duration + (self.draft.engine.load_duration if self.draft else 0)
        self._slots = [_Slot(seq) for seq in range(num_parallel)]
        self.step_costs = StepCosts(envconfig.draft_ignore_cost())  # what drafts cost on this model and machine
        # The backend computes one graph at a time: steps and image encodings take turns.
        self._compute = threading.Lock()
        self._waiting: list[Job] = []
        self._forgets: list[threading.Event] = []  # forget() calls waiting for the slots to be free
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="pollama-engine", daemon=True)
        self._thread.start()

    # -- the caller's side ----------------------------------------------------------------
    def submit(self, prompt: Sequence[Item], options: GenerateOptions | None = None,
               deliver: Callable[[Piece | Done], bool] | None = None) -> Job:
        """Queue a generation; it starts as soon as a slot is free (see Job for `deliver`)."""
        prompt = list(prompt)
        if not prompt:
            raise ValueError("empty prompt: at least one token is needed")
        if len(prompt) >= self.num_ctx:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit the context of {self.num_ctx}")
        self.engine.check_items(prompt)
        list(self.engine.chunks(prompt, 0))  # an image that cannot fit in one batch fails here, not later
        job = Job(prompt, options or GenerateOptions(), deliver)
        with self._wake:
            if self._closing:
                raise EngineClosed("the engine is closed")
            self._waiting.append(job)
            self._wake.notify()
        return job

    def prompt_items(self, text: str, images: Sequence[bytes] = ()) -> list[Item]:
        """A rendered prompt's items, its `[img-N]` tags replaced by the encoded images."""
        if not images:
            return self.engine.prompt_items(text)
        with self._compute:
            return self.engine.prompt_items(text, images)

    def forget(self) -> None:
        """Drop what every slot's cache holds, once no job runs, so the next prompts are
        evaluated whole: for tests and tools that compare with a run from an empty cache."""
        done = threading.Event()
        with self._wake:
            if self._closing:
                raise EngineClosed("the engine is closed")
            self._forgets.append(done)
            self._wake.notify()
        done.wait()

    def busy(self) -> int:
        """Jobs running or waiting."""
        with self._wake:
            return len(self._waiting) + sum(slot.job is not None for slot in self._slots)

    def close(self) -> None:
        """Stop the loop (jobs still running end without a Done) and free the model."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()
        self.engine.close()
        if self.draft:
            self.draft.close()

    def __enter__(self) -> ParallelEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the engine thread ----------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while self._next_step():
                pass
        except BaseException as e:  # a bug here must not leave callers waiting forever
            log.exception("engine loop failed")
            self._end_all(e)
            return
        self._end_all(EngineClosed("the engine was closed"))

    def _end_all(self, error: BaseException) -> None:
        with self._wake:
            self._closing = True
            jobs = self._waiting + [slot.job for slot in self._slots if slot.job is not None]
            self._waiting.clear()
            forgets, self._forgets = self._forgets, []
        for done in forgets:
            done.set()
        for slot in self._slots:
            slot.job = slot.generation = None
        for job in jobs:
            job._put(error)

    def _next_step(self) -> bool:
        """Admit waiting jobs, run one batch; False once closing."""
        with self._wake:
            while not self._closing and not self._waiting and not self._forgets and not any(s.job for s in self._slots):
                self._wake.wait()
            if self._closing:
                return False
            if self._forgets and not any(s.job for s in self._slots):
                self._forget_all()
            self._admit()
        self._drop_cancelled()
        batch, members = self._gather()
        if members:
            self._step(batch, members)
        return True

    def _forget_all(self) -> None:
        for slot in self._slots:
            self.engine.cache.remove(slot.seq)
            slot.cached = []
            if self.draft:
                self.draft.forget(slot.seq)
        for done in self._forgets:
            done.set()
        self._forgets.clear()

    def _admit(self) -> None:
        """Give waiting jobs free slots, each the one caching most of its prompt."""
        self._waiting = [job for job in self._waiting if not self._discard_if_cancelled(job)]
        while self._waiting:
            free = [slot for slot in self._slots if slot.job is None]
            if not free:
                return
            job = self._waiting.pop(0)
            best = max(free, key=lambda slot: _slot_choice(slot, job.prompt))
            self._start(best, job)

    def _discard_if_cancelled(self, job: Job) -> bool:
        if job.cancelled:
            job._put(_END)
        return job.cancelled

    def _start(self, slot: _Slot, job: Job) -> None:
        keep = self.engine.keep_prefix(slot.seq, slot.cached, job.prompt)
        slot.cached = job.prompt[:keep]
        slot.pending = job.prompt[keep:]
        slot.rope = self.engine.rope_positions(job.prompt)
        slot.rope_delta = multimodal.rope_end(job.prompt) - len(job.prompt) if slot.rope is not None else 0
        slot.cached_prompt = keep
        slot.job = job
        slot.generation = Generation(self.tokenizer, self.model.vocab_size, job.prompt, job.options)
        slot.drafter = make_drafter(job.options, job.prompt, slot.seq, self.model, self.draft, self.step_costs)
        slot.draft_count = slot.draft_accepted = slot.shifts = 0
        slot.started = time.perf_counter_ns()
        slot.last_used = time.monotonic()

    def _drop_cancelled(self) -> None:
        for slot in self._slots:
            if slot.job is not None and slot.job.cancelled:
                slot.job._put(_END)
                self._release(slot)

    def _release(self, slot: _Slot) -> None:
        # The cache keeps what was evaluated: the slot's next job may start with it.
        slot.job = slot.generation = slot.drafter = None
        slot.pending = []
        slot.last_used = time.monotonic()

    def _gather(self) -> tuple[Batch, list[_Member]]:
        """One step's batch: a token of every decoding slot (with its drafts), then prompt chunks."""
        parts: list[Part] = []
        members: list[_Member] = []
        rows = 0

        def add(slot: _Slot, chunk: list[Item], logits: str, rope: np.ndarray | None, drafts: list[int]) -> None:
            nonlocal rows
            parts.append(Part(slot.seq, len(slot.cached), chunk, logits, rope))
            members.append(_Member(slot, len(chunk), rows if logits != "none" else None, drafts))
            rows += {"all": len(chunk), "last": 1, "none": 0}[logits]

        for slot in self._slots:
            if slot.job is not None and not slot.pending and len(slot.cached) + 1 >= self.num_ctx:
                self._shift(slot)  # full (the generation would have ended without shift)
        busy = [slot for slot in self._slots if slot.job is not None]
        # Drafts make a step compute its rows one by one (Batch.rows_apart): only for a slot
        # decoding alone. Beside a prompt chunk, which would then crawl, or other decoding
        # slots, which already share the step, they would cost more than they gain.
        alone = len(busy) == 1 and not busy[0].pending
        for slot in busy:
            if not slot.pending:
                rope = self.engine.decode_rope(len(slot.cached), slot.rope_delta)
                drafts = self._drafts(slot) if alone else []
                if drafts:
                    slot.draft_count += len(drafts)
                    add(slot, [slot.generation.last_token, *drafts], "all", None, drafts)
                else:
                    add(slot, [slot.generation.last_token], "last", rope, [])
        # Prompts go in the chunks a solo run would use (num_batch from where the cache ends),
        # as many as fit num_batch prompt tokens, at least one: the same chunks give the same
        # numbers (see Context.attention's groups).
        prompt_tokens = 0
        for slot in busy:
            if not slot.pending:
                continue
            done = len(slot.cached)
            whole = slot.cached + slot.pending
            end = multimodal.split_points(whole, done, self.engine.num_batch, self.model.one_image)
            chunk = whole[done:end]
            if prompt_tokens == 0 or prompt_tokens + len(chunk) <= self.engine.num_batch:
                rope = slot.rope[done:end] if slot.rope is not None else None
                add(slot, chunk, "last" if len(chunk) == len(slot.pending) else "none", rope, [])
                prompt_tokens += len(chunk)
        if not parts:
            return Batch(*(np.zeros(0, dtype=np.int32) for _ in range(4))), members
        return make_batch(self.model, parts, rows_apart=any(m.drafts for m in members)), members

    def _drafts(self, slot: _Slot) -> list[int]:
        """Draft tokens to evaluate after the slot's next one (no more than can be used)."""
        if slot.drafter is None:
            return []
        generation = slot.generation
        most = draft_budget(self.num_ctx, len(slot.cached), generation.options.num_predict, generation.generated)
        return slot.drafter.propose(generation.history, most, self.step_costs.relative, slot.cached)

    def _step(self, batch: Batch, members: list[_Member]) -> None:
        cache = self.engine.cache
        try:
            plans = cache.plan(batch)
            try:
                with self._compute:
                    started = time.perf_counter()
                    logits = self.engine.run(batch, plans)
                    seconds = time.perf_counter() - started
            except BaseException:
                for member in members:  # give back the cells just claimed
                    cache.remove(member.slot.seq, len(member.slot.cached))
                raise
        except Exception as e:  # the step failed: so do the jobs in it, the others go on
            log.warning("step of %d tokens failed: %s", len(batch), e)
            for member in members:
                member.slot.job._put(e)
                self._release(member.slot)
            return

        if len(members) == 1 and not members[0].slot.pending and self.engine.reran_graph:
            # A slot decoding alone on a kept graph: steps that compare (building one is slow).
            self.step_costs.record(len(members[0].drafts), seconds)
        now = time.perf_counter_ns()
        for slot, n, row, drafts in members:
            if drafts:
                self._verify(slot, logits[row:row + n], drafts)
                continue
            if slot.pending:
                slot.cached.extend(slot.pending[:n])
                slot.pending = slot.pending[n:]
            else:
                slot.cached.append(slot.generation.last_token)
            if row is None:
                continue
            if slot.generation.generated == 0:
                slot.prompt_done = now
            if self._sample(slot, logits[row]) and slot.generation.finished:
                self._complete(slot)

    def _verify(self, slot: _Slot, rows: np.ndarray, drafts: list[int]) -> None:
        """Sample a speculating slot's rows in order while the model agrees with the drafts.

        Row i holds the logits after the slot's next token and drafts[:i]: it is what plain
        decoding would sample from next as long as drafts[:i] are the tokens it sampled. The
        K/V of the drafts after the first disagreement are dropped from the cache.
        """
        generation = slot.generation
        tokens = [generation.last_token, *drafts]

        def sample(i: int) -> bool:
            slot.cached.append(tokens[i])  # its K/V, computed in this step, stays
            return self._sample(slot, rows[i])

        agreed = sample_drafts(generation, drafts, sample, lambda: slot.job.cancelled)
        self.engine.cache.remove(slot.seq, len(slot.cached))
        slot.draft_accepted += agreed
        if slot.drafter is not None:
            slot.drafter.update(len(drafts), agreed)
        if slot.job is not None and generation.finished:
            self._complete(slot)

    def _sample(self, slot: _Slot, logits: np.ndarray) -> bool:
        """Sample the slot's next token and send its text; False if that failed (the job then
        got the error and the slot is free)."""
        generation, job = slot.generation, slot.job
        try:
            if job.options.num_predict == 0:
                pieces = generation.finish()
            else:
                pieces = generation.step(logits)
                if not generation.finished and len(slot.cached) + 1 >= self.num_ctx and not self._shifts(slot):
                    pieces += generation.finish("length")  # the context is full, and stays so
        except Exception as e:  # e.g. NaN logits: this job fails, the others go on
            job._put(e)
            self._release(slot)
            return False
        for piece in pieces:
            job._put(piece)
        return True

    def _shifts(self, slot: _Slot) -> bool:
        """Whether a full context of this slot's will be shifted (else its generation ends)."""
        keep = self._keep(slot)
        return (slot.job.options.shift and self.model.can_shift
                and window.shift_discard(slot.cached, keep, self.num_ctx) > 0)

    def _keep(self, slot: _Slot) -> int:
        return window.keep_count(slot.job.options.num_keep, len(slot.job.prompt), self.num_ctx,
                                 self.tokenizer.add_bos)

    def _shift(self, slot: _Slot) -> None:
        """Make room in the slot's full context, as Ollama's runner does: keep its first
        tokens, drop about half of the rest (window.py), move the others down."""
        keep = self._keep(slot)
        discard = window.shift_discard(slot.cached, keep, self.num_ctx)
        log.debug("context of sequence %d full (%d tokens): keeping %d, dropping %d", slot.seq,
                  len(slot.cached), keep, discard)
        try:
            with self._compute:
                self.engine.shift(slot.seq, keep, keep + discard)
        except Exception as e:  # this job fails, the others go on
            log.warning("context shift failed: %s", e)
            self.engine.cache.remove(slot.seq)
            slot.cached = []
            slot.job._put(e)
            self._release(slot)
            return
        slot.cached = slot.cached[:keep] + slot.cached[keep + discard:]
        slot.shifts += 1

    def _complete(self, slot: _Slot) -> None:
        """Send a finished job its Done and free the slot."""
        generation = slot.generation
        slot.job._put(Done(
            done_reason=generation.done_reason,
            prompt_eval_count=len(slot.job.prompt),
            prompt_eval_duration=slot.prompt_done - slot.started,
            eval_count=generation.generated,
            eval_duration=time.perf_counter_ns() - slot.prompt_done,
            tokens=generation.history,
            draft_count=slot.draft_count,
            draft_accepted_count=slot.draft_accepted,
            prompt_cached=slot.cached_prompt,
        ))
        self._release(slot)

