import gguf
import pytest

from pollama.fs.ggml_types import (
    FileType,
    GGMLType,
    block_size,
    file_type_name,
    tensor_nbytes,
    type_size,
)


def test_table_matches_ggml_itself():
    """ggml's own type traits are the truth (gguf-py still says 40 bytes for a Q8_1 block)."""
    from pollama.ml.ggml.lib import ggml

    for t in GGMLType:
        assert (block_size(t), type_size(t)) == (ggml.ggml_blck_size(int(t)), ggml.ggml_type_size(int(t))), t.name


def test_table_matches_gguf_package():
    for t in GGMLType:
        if t == GGMLType.Q8_1:  # gguf 0.17.1 has the old 40-byte layout; ggml's block is 36 bytes
            assert (block_size(t), type_size(t)) == (32, 36)
            continue
        newer = {GGMLType.MXFP4: (32, 17), GGMLType.NVFP4: (64, 36), GGMLType.Q1_0: (128, 18), GGMLType.Q2_0: (64, 18)}
        if t in newer:  # newer than gguf 0.17.1 (test_table_matches_ggml_itself checks them)
            assert (block_size(t), type_size(t)) == newer[t]
            continue
        assert (block_size(t), type_size(t)) == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(int(t))]
    # and nothing gguf knows is missing here
    for q in gguf.GGMLQuantizationType:
        assert GGMLType(int(q)).name == q.name


def test_tensor_nbytes():
    assert tensor_nbytes(GGMLType.F32, (3, 5)) == 60
    assert tensor_nbytes(GGMLType.Q4_0, (2, 64)) == 2 * 2 * 18
    assert tensor_nbytes(GGMLType.Q4_K, (4, 512)) == 4 * 2 * 144
    assert tensor_nbytes(GGMLType.BF16, (7,)) == 14
    assert tensor_nbytes(2, [1, 32]) == 18  # plain ints work too


@pytest.mark.parametrize("shape", [(64, 33), (31,), (256, 100)])
def test_tensor_nbytes_rejects_partial_blocks(shape):
    with pytest.raises(ValueError, match="not a multiple of the block size 32 of Q8_0"):
        tensor_nbytes(GGMLType.Q8_0, shape)


def test_unknown_type():
    for fn in (block_size, type_size):
        with pytest.raises(ValueError, match="unknown ggml type 4"):
            fn(4)
    with pytest.raises(ValueError):
        tensor_nbytes(99, (32,))
    with pytest.raises(ValueError):
        tensor_nbytes(GGMLType.F32, ())


def test_file_type_names():
    assert FileType.Q4_K_M.name() == "Q4_K_M"
    assert FileType(1).name() == "F16"
    assert FileType.ALL_F32.name() == "F32"
    assert FileType.BF16.name() == "BF16"
    # As Ollama v0.32.15 names them (fs/ggml/type.go): the IQ and newer types by name, its
    # old gpt-oss slot 4 and llama.cpp's Q2_0 not.
    assert FileType.IQ2_XS.name() == "IQ2_XS"
    assert FileType.MXFP4_MOE.name() == "MXFP4_MOE"
    assert [FileType(v).name() for v in (39, 40, 41)] == ["NVFP4", "Q1_0", "unknown"]
    assert FileType.MXFP4.name() == "unknown"
    assert FileType.Q4_K_M._name_ == "Q4_K_M"
    assert file_type_name(15) == "Q4_K_M"
    assert file_type_name(999) == "unknown"
    # llama.cpp's numbering, as written by gguf-py
    for ft in gguf.LlamaFileType:
        if ft.name.startswith("MOSTLY_") and ft.name != "MOSTLY_F16":
            assert FileType(int(ft))._name_ == ft.name.removeprefix("MOSTLY_")
