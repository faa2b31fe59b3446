"""A disk that fills up: writes under a folder fail with ``ENOSPC`` once a byte budget is spent.

:func:`full_disk` patches the ways the project's code writes files -- Python's ``open`` (and so
``Path.write_text``, ``json.dump``, PIL and matplotlib), ``shutil.copyfile``, ``os.posix_fallocate``,
safetensors' ``save_file`` (its Rust writer is replaced by the same bytes written through ``open``, and its
disk-full error is raised as safetensors words it) and ``torch.save`` -- so that, under ``root``, the write
that crosses ``budget`` bytes writes what still fits and raises as the operating system would. With
``budget=None`` nothing fails and :attr:`FullDisk.written` counts the bytes a write needs, which is how a
test picks its failure points.
"""

import builtins
import errno
import io
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError

_REAL_OPEN = builtins.open
_REAL_SAVE_FILE = safetensors.torch.save_file
_REAL_TORCH_SAVE = torch.save
_REAL_FALLOCATE = getattr(os, "posix_fallocate", None)
_WRITE_MODES = frozenset("wax+")


class FullDisk:
    """The state of the simulated disk: bytes written under ``root`` and the budget.

    Attributes:
        root: Writes below this folder are counted (others pass untouched).
        budget: Bytes that fit (None: unlimited).
        written: Bytes written so far.
        failures: Writes that failed.
    """

    def __init__(self, root: Path, budget: int | None) -> None:
        self.root = Path(root).resolve()
        self.budget = budget
        self.written = 0
        self.failures = 0

    def covers(self, path: object) -> bool:
        """Whether ``path`` lies under :attr:`root`."""
        if isinstance(path, int) or path is None:
            return False
        try:
            resolved = Path(os.fsdecode(path)).resolve()
        except (TypeError, ValueError):
            return False
        return resolved == self.root or self.root in resolved.parents

    def take(self, size: int) -> int:
        """Spends up to ``size`` bytes; returns how many fit (less than ``size``: the disk is now full)."""
        room = size if self.budget is None else max(0, min(size, self.budget - self.written))
        self.written += room
        return room

    def refuse(self) -> OSError:
        self.failures += 1
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FillingFile:
    """A file object whose writes spend the :class:`FullDisk` budget."""

    def __init__(self, handle: io.IOBase, disk: FullDisk) -> None:
        self._handle = handle
        self._disk = disk

    def write(self, data: object) -> int:
        size = len(data.encode() if isinstance(data, str) else memoryview(data).cast("B"))
        room = self._disk.take(size)
        if room < size:
            if room:
                part = (
                    data.encode()[:room]
                    if isinstance(data, str)
                    else bytes(memoryview(data).cast("B")[:room])
                )
                self._handle.flush()
                self._handle.buffer.write(part) if isinstance(data, str) else self._handle.write(part)
                self._handle.flush()
            raise self._disk.refuse()
        return self._handle.write(data)

    def writelines(self, lines: object) -> None:
        for line in lines:
            self.write(line)

    def __enter__(self) -> "_FillingFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()

    def __iter__(self) -> Iterator:
        return iter(self._handle)

    def __getattr__(self, name: str) -> object:
        return getattr(self._handle, name)


@contextmanager
def full_disk(root: Path, budget: int | None) -> Iterator[FullDisk]:
    """Simulates a disk under ``root`` on which ``budget`` more bytes fit (see the module docstring)."""
    disk = FullDisk(root, budget)

    def filling_open(file, mode="r", *args, **kwargs):
        handle = _REAL_OPEN(file, mode, *args, **kwargs)
        if _WRITE_MODES & set(mode) and disk.covers(file):
            return _FillingFile(handle, disk)
        return handle

    def save_file(tensors, filename, metadata=None):
        data = safetensors.torch.save(tensors, metadata=metadata)
        try:
            with filling_open(filename, "wb") as handle:
                handle.write(data)
        except OSError as error:
            words = f"IoError(Os {{ code: {error.errno}, kind: StorageFull, "
            words += 'message: "No space left on device" })'
            raise SafetensorError(f"Error while serializing: {words}") from None

    def torch_save(obj, f, *args, **kwargs):
        if not isinstance(f, (str, os.PathLike)):
            return _REAL_TORCH_SAVE(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        _REAL_TORCH_SAVE(obj, buffer, *args, **kwargs)
        with filling_open(f, "wb") as handle:
            handle.write(buffer.getvalue())
        return None

    def posix_fallocate(fd, offset, length):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if disk.covers(path) and disk.take(length) < length:
            raise disk.refuse()
        return _REAL_FALLOCATE(fd, offset, length)

    patched: list[tuple[object, str, object]] = []

    def patch(owner: object, name: str, value: object) -> None:
        patched.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    patch(builtins, "open", filling_open)
    patch(io, "open", filling_open)
    patch(shutil, "_USE_CP_SENDFILE", False)  # copyfile then writes through open's file object
    if _REAL_FALLOCATE is not None:
        patch(os, "posix_fallocate", posix_fallocate)
    replacements = {id(_REAL_SAVE_FILE): save_file, id(_REAL_TORCH_SAVE): torch_save}
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict) or namespace is globals():  # this module keeps the real ones
            continue
        for name, value in list(namespace.items()):
            if id(value) in replacements:
                patch(module, name, replacements[id(value)])
    try:
        yield disk
    finally:
        for owner, name, value in reversed(patched):
            setattr(owner, name, value)


def needed_bytes(root: Path, write: object) -> int:
    """The bytes ``write()`` writes under ``root`` (run once on an unlimited disk)."""
    with full_disk(root, None) as disk:
        write()
    return disk.written


def failure_points(needed: int) -> list[int]:
    """Budgets that fail a write of ``needed`` bytes at its start, early, midway and on its last byte."""
    return sorted({0, 1, needed // 7, needed // 2, needed - 1})
