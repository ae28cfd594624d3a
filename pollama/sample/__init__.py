"""Logits -> token: penalties, temperature, top_k/top_p/min_p/typical_p, seeded draws."""

from pollama.sample.logprobs import logprobs
from pollama.sample.options import SamplerOptions
from pollama.sample.penalties import apply_penalties
from pollama.sample.sampler import Sampler, greedy, make_rng

__all__ = ["Sampler", "SamplerOptions", "apply_penalties", "greedy", "logprobs", "make_rng"]
