"""Routed experts (sparse mixture of experts, Shazeer et al. 2017; Mixtral, Qwen3-MoE, gpt-oss).

A router scores every expert for each token; the token goes through its k best experts only,
and their outputs are summed with the router's weights. The experts' matrices are stored
stacked, one [n_experts, out, in] tensor per projection (`blk.N.ffn_up_exps.weight`), and
`linear_experts` (ggml_mul_mat_id) reads only the chosen experts' matrices.

Models differ in how the router's scores become weights and in the gated activation; both
are parameters here (`route`, `activation`), not copies of the module.
"""

from __future__ import annotations

from typing import Callable, Optional

from pollama.errors import ModelError
from pollama.ml.base import Tensor
from pollama.nn.loader import Module
from pollama.nn.modules import ExpertLinear, Linear, Weights

# route(logits [t, n_experts], k) -> (experts int32 [t, k], weights [t, k, 1])
Route = Callable[[Tensor, int], tuple[Tensor, Tensor]]
# activation(gate [t, k, ff], up [t, k, ff]) -> [t, k, ff]
Activation = Callable[[Tensor, Tensor], Tensor]


def softmax_then_top_k(logits: Tensor, k: int, normalize: bool = False) -> tuple[Tensor, Tensor]:
    """Probabilities over all experts, keep the k largest; `normalize` rescales those to sum to 1
    (Qwen3-MoE's norm_topk_prob, Mixtral)."""
    t, n = logits.shape
    probs = logits.softmax()
    experts = probs.top_k(k)  # [t, k]
    weights = probs.reshape(t, n, 1).rows(experts)  # [t, k, 1]
    if normalize:
        flat = weights.reshape(t, k)
        weights = (flat / flat.sum_rows()).reshape(t, k, 1)
    return experts, weights


def top_k_then_softmax(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest scores, then a softmax over those k only (gpt-oss)."""
    t, n = logits.shape
    experts = logits.top_k(k)
    weights = logits.reshape(t, n, 1).rows(experts).reshape(t, k).softmax().reshape(t, k, 1)
    return experts, weights


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    return gate.swiglu(up)


class RoutedExperts(Module):
    """The feed-forward of a sparse layer: route each token to k experts, sum their SwiGLU MLPs."""

    ffn_gate_inp: Linear  # the router: [n_experts, dim]
    ffn_gate_exps: Optional[ExpertLinear]  # [n_experts, ff, dim]
    ffn_up_exps: Optional[ExpertLinear]  # [n_experts, ff, dim]
    # Or gate and up in one, their rows alternating (Ollama's gpt-oss files): [n_experts, 2 ff, dim]
    ffn_gate_up_exps: Optional[ExpertLinear]
    ffn_down_exps: ExpertLinear  # [n_experts, dim, ff]

    n_used: int
    route: Route
    activation: Activation

    @classmethod
    def load(cls, weights: Weights, prefix: str = "", *, n_used: int, route: Route = softmax_then_top_k,
             activation: Activation = swiglu, **hp) -> RoutedExperts:
        """The experts under `prefix`, each token using `n_used` of them."""
        experts = super().load(weights, prefix, **hp)
        if experts.ffn_gate_up_exps is None:
            for name in ("ffn_gate_exps", "ffn_up_exps"):
                if getattr(experts, name) is None:
                    raise ModelError(f"{weights.source}: missing tensor '{prefix}.{name}.weight'")
        n = (experts.ffn_gate_up_exps or experts.ffn_gate_exps).n_experts
        if not 0 < n_used <= n or experts.ffn_gate_inp.out_features != n:
            raise ModelError(f"{prefix}: {n_used} experts used of {n}, router scores {experts.ffn_gate_inp.out_features}")
        experts.n_used, experts.route, experts.activation = n_used, route, activation
        return experts

    def choose(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Each token's experts int32 [t, k] and their weights [t, k, 1], for x [t, dim]."""
        return self.route(self.ffn_gate_inp(x), self.n_used)

    def __call__(self, x: Tensor) -> Tensor:
        t, dim = x.shape
        experts, weights = self.choose(x)
        xs = x.reshape(t, 1, dim)  # one input row, shared by the token's k experts
        if self.ffn_gate_up_exps is not None:
            k, ff = experts.shape[1], self.ffn_gate_up_exps.weight.shape[1] // 2
            pairs = self.ffn_gate_up_exps(xs, experts).reshape(t, k, ff, 2)  # (gate, up) of each unit
            gate, up = pairs.slice(3, 0, 1).reshape(t, k, ff), pairs.slice(3, 1, 2).reshape(t, k, ff)
        else:
            gate, up = self.ffn_gate_exps(xs, experts), self.ffn_up_exps(xs, experts)
        h = self.activation(gate, up)  # [t, k, ff]
        out = self.ffn_down_exps(h, experts) * weights  # [t, k, dim]
        return out.permute(0, 2, 1).sum_rows().reshape(t, dim)  # summed over the k experts

