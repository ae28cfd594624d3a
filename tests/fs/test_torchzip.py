"""PyTorch checkpoints read without PyTorch: values equal torch.load's, hostile pickles refused."""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest

from pollama.fs.torchzip import CheckpointError, TorchCheckpoint

import torch  # noqa: E402


def test_values_shapes_and_dtypes_equal_torch_load(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 4, generator=g)
    state = {
        "model.embed.weight": torch.randn(10, 8, generator=g),
        "model.layers.0.w.weight": torch.randn(4, 6, generator=g).to(torch.float16),
        "model.layers.0.b": torch.randn(5, generator=g).to(torch.bfloat16),
        "transposed": base.t(),  # a strided view
        "slice": base[2:5],  # an offset into shared storage
        "ids": torch.arange(7, dtype=torch.int64),
    }
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path)
    with TorchCheckpoint(path) as ckpt:
        assert set(ckpt.tensors) == set(state)
        for name, want in state.items():
            info = ckpt.tensors[name]
            assert info.shape == tuple(want.shape)
            got = ckpt.array(name)
            if want.dtype == torch.bfloat16:
                assert info.dtype == "BF16"
                np.testing.assert_array_equal(got, want.view(torch.int16).numpy().view(np.uint16))
            else:
                np.testing.assert_array_equal(got, want.numpy())


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": _Evil()}))
    with pytest.raises(CheckpointError, match="never needs"):
        TorchCheckpoint(path)


@pytest.mark.parametrize("content", [b"not a zip", b"PK\x03\x04garbage"])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "x.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        TorchCheckpoint(path)


def test_tensor_past_its_storage_is_refused(tmp_path):
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buf)
    # Rewrite the pickle so the tensor claims 40 elements of a 4-element storage.
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        files = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in files if n.endswith("data.pkl"))
    files[pkl] = files[pkl].replace(b"K\x04\x85", b"K(\x85", 1)
    path = tmp_path / "bad.bin"
    with zipfile.ZipFile(path, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)
    with pytest.raises(CheckpointError, match="past its storage"):
        TorchCheckpoint(path)


def rezip(src, dst, compression=zipfile.ZIP_STORED, edit=None):
    """Copy a checkpoint zip entry by entry, optionally compressed or with an entry changed."""
    with zipfile.ZipFile(src) as z:
        files = {n: z.read(n) for n in z.namelist()}
    if edit is not None:
        edit(files)
    with zipfile.ZipFile(dst, "w", compression=compression) as z:
        for n, data in files.items():
            z.writestr(n, data)


def test_views_are_zero_copy_and_compressed_storages_still_read(tmp_path):
    g = torch.Generator().manual_seed(1)
    state = {"a": torch.randn(64, 32, generator=g), "b": torch.randn(8, generator=g).to(torch.float16)}
    torch.save(state, tmp_path / "stored.bin")
    rezip(tmp_path / "stored.bin", tmp_path / "deflated.bin", zipfile.ZIP_DEFLATED)
    for name in ("stored.bin", "deflated.bin"):
        with TorchCheckpoint(tmp_path / name) as ckpt:
            view = ckpt.view("a")
            assert not view.flags.writeable
            np.testing.assert_array_equal(view, state["a"].numpy())
            np.testing.assert_array_equal(ckpt.view("b"), state["b"].numpy())
            ckpt.release("a")  # pages dropped; the view reads them again
            np.testing.assert_array_equal(view, state["a"].numpy())
    with TorchCheckpoint(tmp_path / "stored.bin") as ckpt:
        assert ckpt._data_start[ckpt.tensors["a"].storage_key] is not None  # mapped, not copied


def test_missing_or_short_storage_is_refused(tmp_path):
    torch.save({"w": torch.zeros(16)}, tmp_path / "ok.bin")

    def drop(files):
        del files[next(n for n in files if "/data/" in n)]

    def shorten(files):
        key = next(n for n in files if "/data/" in n)
        files[key] = files[key][:8]

    rezip(tmp_path / "ok.bin", tmp_path / "dropped.bin", edit=drop)
    with pytest.raises(CheckpointError, match="missing from the zip"):
        TorchCheckpoint(tmp_path / "dropped.bin")
    rezip(tmp_path / "ok.bin", tmp_path / "short.bin", edit=shorten)
    with pytest.raises(CheckpointError, match="truncated"):
        TorchCheckpoint(tmp_path / "short.bin")


def test_shards_open_as_one_folder_checked_against_their_index(tmp_path):
    import json

    from pollama.fs.torchzip import open_checkpoints

    torch.save({"a": torch.ones(2)}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({"b": torch.ones(3, dtype=torch.bfloat16)}, tmp_path / "pytorch_model-00002-of-00002.bin")
    shards = sorted(tmp_path.glob("pytorch_model-*.bin"))
    index = tmp_path / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": {"a": shards[0].name, "b": shards[1].name}}))
    with open_checkpoints(shards, index) as folder:
        assert sorted(folder) == ["a", "b"] and folder.dtype("b") == "BF16"
        np.testing.assert_array_equal(folder["b"].numpy(), np.ones(3, np.float32))
    index.write_text(json.dumps({"weight_map": {"a": shards[1].name, "b": shards[1].name}}))
    with pytest.raises(CheckpointError, match="'a' is not in pytorch_model-00002-of-00002.bin"):
        open_checkpoints(shards, index)
    index.write_text(json.dumps({"weight_map": {"a": shards[0].name, "c": shards[1].name}}))
    with pytest.raises(CheckpointError, match="'c' is not in"):
        open_checkpoints(shards, index)
    torch.save({"a": torch.ones(2), "c": torch.ones(1)}, shards[0])
    index.write_text(json.dumps({"weight_map": {"a": shards[0].name, "b": shards[1].name}}))
    with pytest.raises(CheckpointError, match="does not list tensor 'c'"):
        open_checkpoints(shards, index)
    torch.save({"a": torch.ones(2)}, tmp_path / "again.bin")
    with pytest.raises(CheckpointError, match="duplicate tensor name 'a'"):
        open_checkpoints([shards[0], tmp_path / "again.bin"])
