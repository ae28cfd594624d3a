"""PyTorch checkpoints read without PyTorch: values equal torch.load's, hostile pickles refused."""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest

from pollama.fs.torchzip import CheckpointError, TorchCheckpoint

torch = pytest.importorskip("torch")


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
