"""Quantization: ggml's quantizer against gguf-py's reference, K-quant errors, Ollama's per-tensor
policy on small fake llama files, refusals, and atomic output."""

from __future__ import annotations

import os

import gguf
import gguf.quants
import numpy as np
import pytest

from pollama.create.quantize import (
    SUPPORTED_TARGETS,
    QuantizeError,
    parse_target,
    plan_tensor_types,
    quantize_gguf,
)
from pollama.fs.ggml_types import FileType, GGMLType
from pollama.fs.gguf import GGUFFile
from pollama.fs.gguf import GGUFValueType as V
from pollama.fs.writer import write_gguf
from pollama.ml.ggml.quantize import (
    NEEDS_IMATRIX,
    convert_rows,
    dequantize_rows,
    quantize_rows,
)

T = GGMLType


def gaussian(shape, seed=0, scale=1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def rel_rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2)))


# -- (1) the legacy block formats are bit-identical to gguf-py's numpy reference -------------

SHAPES = [(1, 32), (7, 64), (33, 256), (64, 4096)]


def awkward_rows(shape, seed) -> np.ndarray:
    x = gaussian(shape, seed, scale=0.05)
    x[0, :] = 0.0  # an all-zero block (scale 0)
    if shape[0] > 2:
        x[1, :] = 0.37  # a constant row (min == max)
        x[2, ::7] *= 1000.0  # outliers dominate the block scale
    return x


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.F16, T.BF16])
@pytest.mark.parametrize("shape", SHAPES)
def test_blocks_bit_identical_to_gguf_py(qtype, shape):
    for seed in range(3):
        x = awkward_rows(shape, seed) if seed == 0 else gaussian(shape, seed, scale=3.0 ** seed)
        ours = quantize_rows(x, qtype)
        ref = np.asarray(gguf.quants.quantize(x, gguf.GGMLQuantizationType(int(qtype))))
        ref = np.ascontiguousarray(ref).view(np.uint8).reshape(shape[0], -1)
        assert ours.dtype == np.uint8 and ours.shape == ref.shape
        assert np.array_equal(ours, ref), f"{qtype.name} {shape} seed {seed}"


def test_thread_count_does_not_change_the_bytes():
    x = gaussian((97, 512), seed=5)  # 97 rows: chunks of unequal size
    for qtype in (T.Q4_K, T.Q6_K, T.Q5_0):
        one = quantize_rows(x, qtype, threads=1)
        assert np.array_equal(one, quantize_rows(x, qtype, threads=3))
        assert np.array_equal(one, quantize_rows(x, qtype, threads=8))


# -- (2) K-quants and IQ4: error against the float weights, and both dequantizers agree ------

# Relative RMS error on N(0, 1) weights [256, 1024], measured (seeds 0..2, ggml 0.15.3):
#   Q2_K 0.297  Q3_K 0.151  Q4_K 0.0715  Q5_K 0.0362  Q6_K 0.0178  IQ4_NL 0.0762  IQ4_XS 0.0768
#   (for comparison Q4_0 0.0861, Q4_1 0.0783, Q5_0 0.0428, Q5_1 0.0379, Q8_0 0.0054)
# The bounds sit a little above the measurements.
K_QUANT_ERROR = {
    T.Q2_K: 0.31,
    T.Q3_K: 0.16,
    T.Q4_K: 0.075,
    T.Q5_K: 0.038,
    T.Q6_K: 0.019,
    T.IQ4_NL: 0.08,
    T.IQ4_XS: 0.08,
}


@pytest.mark.parametrize("qtype", list(K_QUANT_ERROR), ids=lambda t: t.name)
def test_k_quant_error_and_dequantizers_agree(qtype):
    from pollama.ml.torch import quants as torch_quants
    x = gaussian((256, 1024), seed=11)
    q = quantize_rows(x, qtype)
    ours = dequantize_rows(q, qtype, x.shape)
    err = rel_rms(ours, x)
    assert err < K_QUANT_ERROR[qtype], f"{qtype.name}: relative RMS error {err:.4f}"
    # More bits, less error: the bound is not trivially loose.
    assert err > K_QUANT_ERROR[qtype] * 0.8
    ref = torch_quants.dequantize(q, qtype, x.shape).numpy()
    assert np.array_equal(ours, ref)


def test_convert_rows_from_f16_and_bf16_sources():
    x = gaussian((16, 256), seed=3)
    for src_type in (T.F16, T.BF16):
        raw = quantize_rows(x, src_type)
        floats = dequantize_rows(raw, src_type, x.shape)
        # Decoding then quantizing equals quantizing the decoded floats.
        converted = convert_rows(raw, src_type, T.Q4_K, x.shape)
        assert np.array_equal(converted, quantize_rows(floats, T.Q4_K))
        assert np.array_equal(convert_rows(raw, src_type, T.F32, x.shape).view(np.float32), floats)
    f16 = dequantize_rows(quantize_rows(x, T.F16), T.F16, x.shape)
    assert np.array_equal(f16, x.astype(np.float16))


# -- (3) the per-tensor policy on fake llama files --------------------------------------------


def fake_llama(
    path,
    *,
    hidden=256,
    ffn=256,
    kv=64,
    vocab=64,
    n_layers=8,
    tied=False,
    experts=0,
    file_type: int | None = 1,
):
    """A llama-shaped GGUF with random F16 weights (one BF16), F32 norms and output."""
    rng = np.random.default_rng(0)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    meta = {
        "general.architecture": "llama",
        "general.name": "fake",
        "llama.block_count": n_layers,
        "llama.embedding_length": hidden,
        "llama.rope.freq_base": 10000.0,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": [f"t{i}" for i in range(vocab)],
        "tokenizer.ggml.token_type": [1] * vocab,
        "tokenizer.ggml.bos_token_id": 1,
    }
    vtypes = {"llama.block_count": V.UINT32, "llama.embedding_length": V.UINT32,
              "tokenizer.ggml.bos_token_id": V.UINT32}
    if file_type is not None:
        meta["general.file_type"] = file_type
        vtypes["general.file_type"] = V.UINT32
    if experts:
        meta["llama.expert_count"] = experts
        vtypes["llama.expert_count"] = V.UINT32
    tensors = [("token_embd.weight", w(vocab, hidden), T.F16, (vocab, hidden)),
               ("rope_freqs.weight", np.ones(8, np.float32), T.F32, (8,))]
    for i in range(n_layers):
        b = f"blk.{i}."
        tensors += [
            (b + "attn_norm.weight", np.ones(hidden, np.float32), T.F32, (hidden,)),
            (b + "attn_q.weight", w(hidden, hidden), T.F16, (hidden, hidden)),
            (b + "attn_k.weight", w(kv, hidden), T.F16, (kv, hidden)),
            (b + "attn_v.weight", w(kv, hidden), T.F16, (kv, hidden)),
            (b + "attn_output.weight", w(hidden, hidden), T.BF16 if i == 0 else T.F16,
             (hidden, hidden)),
            (b + "ffn_norm.weight", np.ones(hidden, np.float32), T.F32, (hidden,)),
            (b + "ffn_gate.weight", w(ffn, hidden), T.F16, (ffn, hidden)),
            (b + "ffn_up.weight", w(ffn, hidden), T.F16, (ffn, hidden)),
            (b + "ffn_down.weight", w(hidden, ffn), T.F16, (hidden, ffn)),
        ]
    tensors.append(("output_norm.weight", np.ones(hidden, np.float32), T.F32, (hidden,)))
    if not tied:
        tensors.append(("output.weight", w(vocab, hidden), T.F32, (vocab, hidden)))
    write_gguf(path, meta, tensors, vtypes)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {
        "main": fake_llama(d / "main.gguf"),
        # ffn_down rows of 96: a whole number of 32-blocks but not of 256-blocks; tied output.
        "fallback": fake_llama(d / "fallback.gguf", ffn=96, tied=True),
        # hidden 64 (output falls back), ffn_down rows of 40 (no block type fits: F16).
        "narrow": fake_llama(d / "narrow.gguf", hidden=64, ffn=40, kv=32, n_layers=2),
        "moe8": fake_llama(d / "moe8.gguf", experts=8),
    }


K4, K5, K6, Q8, F16 = T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_0, T.F16
# With 8 layers, use_more_bits(i, 8) picks layers 0, 3, 6, 7 (i < 1, i >= 7, (i - 1) % 3 == 2).
MORE_BITS = {0, 3, 6, 7}


def more_bits(hi, lo):
    return [hi if i in MORE_BITS else lo for i in range(8)]


def first(n, hi, lo):
    return [hi if i < n else lo for i in range(8)]


# The main model (8 layers, all rows 256 wide, untied output), from ollama-facts §4.1 and
# llama.cpp's rules for the targets Ollama does not offer:
#   target: (other 2-D weights, output.weight, attn_v by layer, ffn_down by layer)
MAIN_TABLE = {
    "q4_K_M": (K4, K6, more_bits(K6, K4), more_bits(K6, K4)),
    "Q4_K": (K4, K6, more_bits(K6, K4), more_bits(K6, K4)),  # Ollama's alias of Q4_K_M
    "q4_k_s": (K4, K6, first(4, K5, K4), first(1, K5, K4)),
    "Q5_K_M": (K5, K6, more_bits(K6, K5), more_bits(K6, K5)),
    "q5_K_S": (K5, K6, [K5] * 8, [K5] * 8),
    "q6_K": (K6, K6, [K6] * 8, [K6] * 8),
    "q8_0": (Q8, Q8, [Q8] * 8, [Q8] * 8),
    "q4_0": (T.Q4_0, K6, [T.Q4_0] * 8, [T.Q4_0] * 8),
    "q4_1": (T.Q4_1, K6, [T.Q4_1] * 8, [T.Q4_1] * 8),
    "q5_0": (T.Q5_0, K6, [T.Q5_0] * 8, [T.Q5_0] * 8),
    "q5_1": (T.Q5_1, K6, [T.Q5_1] * 8, [T.Q5_1] * 8),
    # Float targets convert every quantizable weight and never bump output.weight to Q6_K.
    "f16": (F16, F16, [F16] * 8, [F16] * 8),
    "F32": (T.F32, T.F32, [T.F32] * 8, [T.F32] * 8),
    "bf16": (T.BF16, T.BF16, [T.BF16] * 8, [T.BF16] * 8),
}


def expected_main(target) -> dict[str, GGMLType]:
    weights, output, attn_v, ffn_down = MAIN_TABLE[target]
    exp = {"token_embd.weight": weights, "rope_freqs.weight": T.F32,
           "output_norm.weight": T.F32, "output.weight": output}
    for i in range(8):
        b = f"blk.{i}."
        exp.update({b + "attn_norm.weight": T.F32, b + "ffn_norm.weight": T.F32,
                    b + "attn_v.weight": attn_v[i], b + "ffn_down.weight": ffn_down[i]})
        for n in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
            exp[b + n + ".weight"] = weights
    return exp


# ffn_down rows of 96 (fallback Q4_K->Q5_0, Q5_K->Q5_1, Q6_K->Q8_0) and tied embeddings
# (token_embd is the output projection, so it gets output.weight's type):
#   target: (token_embd, ffn_down by layer)
FALLBACK_TABLE = {
    "q4_K_M": (K6, more_bits(Q8, T.Q5_0)),
    "q4_K_S": (K6, first(1, T.Q5_1, T.Q5_0)),
    "q5_K_M": (K6, more_bits(Q8, T.Q5_1)),
    "q5_K_S": (K6, [T.Q5_1] * 8),
    "q6_K": (K6, [Q8] * 8),
    "q8_0": (Q8, [Q8] * 8),
    "q4_0": (K6, [T.Q4_0] * 8),
    "f16": (F16, [F16] * 8),
}

# Two layers, rows of 64 except ffn_down (40: no block size divides it, so F16):
#   target: (output.weight, attn_v by layer, other 2-D weights)
# use_more_bits(i, 2) picks layer 1 only; Q4_K->Q5_0 and Q6_K->Q8_0 on 64-wide rows.
NARROW_TABLE = {
    "q4_K_M": (Q8, [T.Q5_0, Q8], T.Q5_0),
    "q4_K_S": (Q8, [T.Q5_1, T.Q5_1], T.Q5_0),
    "q4_0": (Q8, [T.Q4_0] * 2, T.Q4_0),
    "q8_0": (Q8, [Q8] * 2, Q8),
}

# expert_count 8 (Mixtral-like): attn_v and attn_k go to Q8_0, attn_output to Q5_K on Q4_K_*:
#   target: (attn_v, attn_k, attn_output, ffn_down by layer)
MOE8_TABLE = {
    "q4_K_M": (Q8, Q8, K5, more_bits(K6, K4)),
    "q4_K_S": (Q8, Q8, K5, first(1, K5, K4)),
    "q5_K_M": (Q8, Q8, K5, more_bits(K6, K5)),
    "q8_0": (Q8, Q8, Q8, [Q8] * 8),
}


def quantized_types(src, dst, target) -> dict[str, GGMLType]:
    quantize_gguf(src, dst, target, threads=2)
    with GGUFFile(dst) as f:
        return {n: t.type for n, t in f.tensors.items()}


@pytest.mark.parametrize("target", list(MAIN_TABLE))
def test_policy_main(models, tmp_path, target):
    got = quantized_types(models["main"], tmp_path / "out.gguf", target)
    assert got == expected_main(target)


@pytest.mark.parametrize("target", list(FALLBACK_TABLE))
def test_policy_fallbacks_and_tied_embeddings(models, tmp_path, target):
    got = quantized_types(models["fallback"], tmp_path / "out.gguf", target)
    token_embd, ffn_down = FALLBACK_TABLE[target]
    assert "output.weight" not in got
    assert got["token_embd.weight"] == token_embd
    assert [got[f"blk.{i}.ffn_down.weight"] for i in range(8)] == ffn_down
    weights = {k.upper(): v for k, v in MAIN_TABLE.items()}[target.upper()][0]
    assert got["blk.5.attn_q.weight"] == weights and got["blk.5.ffn_up.weight"] == weights


@pytest.mark.parametrize("target", list(NARROW_TABLE))
def test_policy_narrow_rows(models, tmp_path, target):
    got = quantized_types(models["narrow"], tmp_path / "out.gguf", target)
    output, attn_v, weights = NARROW_TABLE[target]
    assert got["output.weight"] == output
    assert [got[f"blk.{i}.attn_v.weight"] for i in range(2)] == attn_v
    for i in range(2):
        assert got[f"blk.{i}.ffn_down.weight"] == F16
        for n in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
            assert got[f"blk.{i}.{n}.weight"] == weights, (n, i)


@pytest.mark.parametrize("target", list(MOE8_TABLE))
def test_policy_eight_experts(models, target):
    attn_v, attn_k, attn_output, ffn_down = MOE8_TABLE[target]
    with GGUFFile(models["moe8"]) as f:  # the plan alone: no need to write the file
        got = plan_tensor_types(f, parse_target(target))
    for i in range(8):
        assert got[f"blk.{i}.attn_v.weight"] == attn_v
        assert got[f"blk.{i}.attn_k.weight"] == attn_k
        assert got[f"blk.{i}.attn_output.weight"] == attn_output
        assert got[f"blk.{i}.ffn_down.weight"] == ffn_down[i]


def plan_for(tmp_path, arch, names, target, meta=()):
    tensors = [(n, np.zeros((32, 256), np.float32), T.F16, (32, 256)) for n in names]
    path = tmp_path / f"{arch}.gguf"
    write_gguf(path, {"general.architecture": arch, "general.file_type": 1, **dict(meta)}, tensors)
    with GGUFFile(path) as f:
        return plan_tensor_types(f, parse_target(target))


def test_policy_tensors_that_keep_their_type(tmp_path):
    keep = ["v.blk.0.attn_v.weight", "a.blk.0.attn_q.weight", "mm.0.weight",
            "mm.input_projection.weight",
            "blk.0.ffn_gate_inp.weight", "blk.0.ffn_gate_inp_shexp.weight", "position_embd.weight",
            "token_types.weight", "blk.0.ssm_conv1d.weight", "blk.0.shortconv.conv.weight",
            "blk.0.time_mix_first.weight", "blk.0.attn_rel_b.weight", "per_layer_token_embd.weight",
            "blk.0.attn_q_norm.weight", "blk.0.attn_q.bias"]
    got = plan_for(tmp_path, "llama", keep + ["blk.0.attn_q.weight", "output.weight"], "q4_K_M")
    assert {n: got[n] for n in keep} == {n: T.F16 for n in keep}
    assert got["blk.0.attn_q.weight"] == K4 and got["output.weight"] == K6
    # MLA matrices always go to Q8_0.
    mla = ["blk.0.attn_k_b.weight", "blk.0.attn_v_b.weight", "blk.0.attn_kv_a_mqa.weight",
           "blk.0.attn_q_a.weight", "blk.0.attn_q_b.weight"]
    assert set(plan_for(tmp_path, "deepseek2", mla, "q4_K_S").values()) == {Q8}


def test_policy_qwen3_linear_attention_and_laguna_tables(tmp_path):
    names = ["blk.0.attn_v.weight", "blk.1.attn_v.weight", "blk.0.ssm_out.weight",
             "blk.0.ffn_down_exps.weight", "blk.0.ffn_up_shexp.weight", "blk.0.ffn_gate.weight",
             "token_embd.weight", "output.weight"]
    got = plan_for(tmp_path, "qwen35moe", names, "q4_K_S")
    assert got == {"blk.0.attn_v.weight": K6, "blk.1.attn_v.weight": K6, "blk.0.ssm_out.weight": K4,
                   "blk.0.ffn_down_exps.weight": K6, "blk.0.ffn_up_shexp.weight": K4,
                   "blk.0.ffn_gate.weight": K4, "token_embd.weight": K4, "output.weight": K6}
    # Laguna: only routed experts are quantized; ffn_down_exps by block index over block_count.
    names = [f"blk.{i}.{n}.weight"
             for i in range(8) for n in ("attn_q", "ffn_down_exps", "ffn_up_exps")]
    got = plan_for(tmp_path, "laguna", names, "q4_K_M", {"laguna.block_count": 8})
    for i in range(8):
        assert got[f"blk.{i}.attn_q.weight"] == F16
        assert got[f"blk.{i}.ffn_up_exps.weight"] == K4
        assert got[f"blk.{i}.ffn_down_exps.weight"] == (K6 if i in MORE_BITS else K4)


def test_output_file_metadata_and_values(models, tmp_path):
    dst = tmp_path / "out.gguf"
    calls = []
    summary = quantize_gguf(models["main"], dst, "Q4_K_M", lambda d, n: calls.append((d, n)))
    with GGUFFile(models["main"]) as a, GGUFFile(dst) as b:
        n = len(a.tensors)
        assert calls == [(i, n) for i in range(n + 1)]
        # Metadata copied with its exact types, in order; only general.file_type changes.
        assert list(b.metadata) == list(a.metadata)
        assert b.metadata["general.file_type"] == FileType.Q4_K_M == 15
        assert b.value_types["general.file_type"] == V.UINT32
        for key in a.metadata:
            if key != "general.file_type":
                assert b.metadata[key] == a.metadata[key], key
                assert b.value_types[key] == a.value_types[key], key
        assert a.array_types == b.array_types
        assert [(t.name, t.shape) for t in a.tensors.values()] == \
            [(t.name, t.shape) for t in b.tensors.values()]
        assert summary.tensor_types == {name: t.type for name, t in b.tensors.items()}
        assert summary.source_file_type == FileType.MOSTLY_F16
        assert summary.output_bytes < summary.source_bytes / 3
        for name, src in a.tensors.items():
            out = b.tensors[name]
            before = dequantize_rows(a.tensor_bytes(name), src.type, src.shape)
            after = dequantize_rows(b.tensor_bytes(name), out.type, out.shape)
            if out.type == src.type:
                assert np.array_equal(a.tensor_bytes(name), b.tensor_bytes(name)), name
            else:
                # Q4_K is the coarsest type used here (0.0715 measured on Gaussian weights).
                assert rel_rms(after, before) < 0.08, name
        assert summary.converted == sum(a.tensors[n].type != b.tensors[n].type for n in a.tensors)


def test_source_without_file_type_is_accepted_when_all_floats(tmp_path):
    src = fake_llama(tmp_path / "src.gguf", n_layers=1, file_type=None)
    summary = quantize_gguf(src, tmp_path / "out.gguf", "q8_0")
    assert summary.source_file_type is None and summary.file_type == FileType.Q8_0
    with GGUFFile(tmp_path / "out.gguf") as f:
        assert f.metadata["general.file_type"] == 7


# -- (4) refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["q3_k_xl", "Q2_K", "iq4_xs", "int4", ""])
def test_unknown_target(target):
    with pytest.raises(QuantizeError) as e:
        parse_target(target)
    assert str(e.value) == (
        f"unsupported quantization type {target.upper()} - supported types are "
        + ", ".join(SUPPORTED_TARGETS)
    )


@pytest.mark.parametrize("target", ["iq2_xxs", "IQ1_S", "iq3_m", "iq2_m"])
def test_imatrix_target_refused(target):
    with pytest.raises(QuantizeError, match=f"{target.upper()} needs an importance matrix"):
        parse_target(target)


@pytest.mark.parametrize("qtype", sorted(NEEDS_IMATRIX), ids=lambda t: GGMLType(t).name)
def test_imatrix_types_refused_before_ggml(qtype):
    # ggml would abort the process on IQ2_XXS/IQ2_XS/IQ1_S without an importance matrix.
    with pytest.raises(ValueError, match="needs an importance matrix"):
        quantize_rows(gaussian((2, 256)), qtype)


def test_bad_rows_refused_before_ggml():
    with pytest.raises(ValueError, match="not a multiple of the Q4_K block size 256"):
        quantize_rows(gaussian((2, 96)), T.Q4_K)
    with pytest.raises(ValueError, match="not a multiple of the Q8_0 block size 32"):
        quantize_rows(gaussian((2, 40)), T.Q8_0)
    with pytest.raises(ValueError, match="ggml cannot quantize to Q8_K"):
        quantize_rows(gaussian((2, 256)), T.Q8_K)
    with pytest.raises(ValueError, match="float32"):
        quantize_rows(gaussian((2, 256)).astype(np.float64), T.Q8_0)
    with pytest.raises(ValueError, match="unknown ggml type"):
        quantize_rows(gaussian((2, 256)), 4)
    with pytest.raises(ValueError, match="ggml cannot convert Q8_K to float"):
        dequantize_rows(np.zeros(292, np.uint8), T.Q8_K, (256,))
    with pytest.raises(ValueError, match="needs 34 bytes, got 33"):
        dequantize_rows(np.zeros(33, np.uint8), T.Q8_0, (32,))
    x = gaussian((4, 256))
    x[2, 17] = np.nan
    with pytest.raises(ValueError, match="row 2 holds NaN"):
        convert_rows(x.view(np.uint8), T.F32, T.Q4_K, x.shape)


def test_quantized_source_refused(tmp_path):
    src = tmp_path / "q.gguf"
    write_gguf(src, {"general.architecture": "llama", "general.file_type": 2},
               [("blk.0.attn_q.weight", gaussian((4, 64)), T.Q4_0, (4, 64))],
               {"general.file_type": V.UINT32})
    message = "^quantization is only supported for F16, BF16 and F32 models$"
    with pytest.raises(QuantizeError, match=message):
        quantize_gguf(src, tmp_path / "out.gguf", "q4_K_M")
    assert not (tmp_path / "out.gguf").exists()


def test_nan_weight_names_the_tensor(tmp_path):
    w = gaussian((4, 256))
    w[1, 3] = np.inf
    src = tmp_path / "src.gguf"
    write_gguf(src, {"general.architecture": "llama", "general.file_type": 0},
               [("blk.0.attn_q.weight", w, T.F32, w.shape)])
    with pytest.raises(QuantizeError, match="tensor 'blk.0.attn_q.weight': .*NaN or infinite"):
        quantize_gguf(src, tmp_path / "out.gguf", "q8_0")
    assert sorted(os.listdir(tmp_path)) == ["src.gguf"]


# -- (5) a failure half-way leaves no output ------------------------------------------------


def test_crash_midway_leaves_no_file(models, tmp_path):
    def progress(done, total):
        if done == total // 2:
            raise RuntimeError("client went away")

    dst = tmp_path / "out.gguf"
    with pytest.raises(RuntimeError, match="client went away"):
        quantize_gguf(models["main"], dst, "q4_K_M", progress)
    assert os.listdir(tmp_path) == []

    dst.write_bytes(b"previous model")  # and an existing file is left as it was
    with pytest.raises(RuntimeError):
        quantize_gguf(models["main"], dst, "q4_K_M", progress)
    assert dst.read_bytes() == b"previous model"
    assert os.listdir(tmp_path) == ["out.gguf"]
