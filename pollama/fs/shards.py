"""What safetensors and PyTorch checkpoints share: memory-mapped files whose pages a converter
gives back tensor by tensor, split into shards that an index.json lists, read as one mapping
of tensors by name (SafetensorsFolder, TorchFolder)."""

from __future__ import annotations

import json
import mmap
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar


def release_pages(mapped: mmap.mmap | None, begin: int, end: int) -> None:
    """Drop bytes [begin, end) of a mapped file from this process's memory (they stay in the
    page cache; a later read maps them again)."""
    # Only whole pages inside the range: its neighbours may share the edge pages.
    page = mmap.PAGESIZE
    first, last = -(-begin // page) * page, end // page * page
    if mapped is not None and last > first and hasattr(mapped, "madvise"):
        mapped.madvise(mmap.MADV_DONTNEED, first, last - first)


def unmap(mapped: mmap.mmap | None) -> None:
    """Unmap a file (numpy views still in use keep it mapped until they go)."""
    if mapped is not None:
        try:
            mapped.close()
        except BufferError:  # numpy views still point into it; the GC unmaps it later
            pass


def read_index(index: Path, error: type[Exception], kind: str) -> tuple[dict[str, str], list[Path]]:
    """An index.json's weight_map (tensor name -> shard file name) and the shards it lists,
    each a plain file name present beside the index; `error` names what is wrong."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise error(f"{index}: not a valid {kind} index ({e})") from None
    except RecursionError:
        raise error(f"{index}: not a valid {kind} index (nested too deeply)") from None
    for shard in shards:
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise error(f"{index}: bad shard name {shard!r}")
        if not (index.parent / shard).is_file():
            raise error(f"{index}: lists {shard}, which is missing from the folder")
    return weight_map, [index.parent / shard for shard in shards]


Shard = TypeVar("Shard")
Tensor = TypeVar("Tensor")


class ShardedTensors(Mapping[str, Tensor], Generic[Shard, Tensor]):
    """The tensors of one or several shard files, by name; a subclass says how to open a shard,
    list its tensor names and read a tensor (and which error it raises)."""

    error: type[Exception] = ValueError

    def __init__(self, shards: list[Shard]):
        self.shards = shards
        self._where: dict[str, Shard] = {}
        for shard in shards:
            for name in self._names(shard):  # (in file order)
                other = self._where.get(name)
                if other is not None:
                    raise self.error(f"duplicate tensor name {name!r} in {self._file(other)} and {self._file(shard)}")
                self._where[name] = shard

    @staticmethod
    def _open(path: Path) -> Any:
        raise NotImplementedError

    @staticmethod
    def _names(shard: Any) -> Iterable[str]:
        raise NotImplementedError

    @staticmethod
    def _file(shard: Any) -> str:
        return Path(shard.path).name

    @classmethod
    def open(cls, paths: list[Path], index: Path | None = None, kind: str = "checkpoint"):
        """Open the shards at paths as one mapping; with an index.json, the shards it lists,
        checked to hold exactly the tensors it says they hold."""
        weight_map = None
        if index is not None:
            weight_map, paths = read_index(index, cls.error, kind)
        opened: list[Shard] = []
        try:
            for path in paths:
                opened.append(cls._open(path))
            folder = cls(opened)
            if weight_map is not None:
                folder._check_index(index, weight_map)
            return folder
        except BaseException:
            for shard in opened:
                shard.close()  # type: ignore[attr-defined]
            raise

    def _check_index(self, index: Path | None, weight_map: dict[str, str]) -> None:
        """Every tensor the index names is in the shard it names, and no shard holds more."""
        for name, shard in weight_map.items():
            found = self._where.get(name)
            if found is None:
                raise self.error(f"{index}: tensor {name!r} is not in {shard}")
            if self._file(found) != shard:
                raise self.error(f"{index}: tensor {name!r} is in {self._file(found)}, not {shard}")
        extra = sorted(set(self) - set(weight_map))
        if extra:
            raise self.error(f"{index}: does not list tensor {extra[0]!r}")

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def release(self, name: str) -> None:
        """Drop tensor `name`'s pages from this process's memory (see the shard's release)."""
        self._where[name].release(name)  # type: ignore[attr-defined]

    def close(self) -> None:
        """Close every file."""
        for shard in self.shards:
            shard.close()  # type: ignore[attr-defined]

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
