"""Writes that a full disk (or a kill) cannot leave half done: temporary name, ``fsync``, rename.

Every output a later step trusts -- a checkpoint folder, an exported model folder, a result or metrics
file, the feature cache's files -- is written under a temporary name beside its final place, flushed to the
disk and renamed into place only when complete, so the final name holds either the previous complete
version or the new complete one, never a part. A write that fails (``ENOSPC``, a quota, any I/O error)
removes its temporary file or folder and raises an :class:`OSError` that names the final path and says
that the previous version is kept; :func:`is_disk_full` also recognises the disk-full errors of
libraries that do not raise ``OSError`` (safetensors' ``SafetensorError``, ``torch.save``'s
``RuntimeError``).
"""

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# how libraries that wrap the OS error word it (safetensors' Rust io::Error, torch's C++ writer)
_DISK_FULL_WORDS = ("no space left on device", "storagefull", "disk quota exceeded")


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a full disk or an exceeded quota."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
            return True
        if any(word in str(error).lower() for word in _DISK_FULL_WORDS):
            return True
        error = error.__cause__ or error.__context__
    return False


def write_failure(error: BaseException, path: str | Path, kept: str) -> OSError:
    """An :class:`OSError` naming ``path`` for a failed write (``ENOSPC`` when the disk is full).

    Args:
        error: What the write raised.
        path: The final path that was being written.
        kept: What stays valid, for the message (e.g. "the previous checkpoints are kept").
    """
    if is_disk_full(error):
        code, reason = errno.ENOSPC, "no space left on device"
    else:
        code = error.errno if isinstance(error, OSError) and error.errno else errno.EIO
        reason = f"write failed ({error})"
    return OSError(code, f"{reason} while writing {path}; {kept}; free space and rerun", str(path))


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def _replacing(path: Path, kept: str) -> Iterator[Path]:
    """Yields a temporary name beside ``path``; renames it onto ``path`` once the block has written it.

    A failed write removes the temporary file and raises :func:`write_failure` naming ``path``.
    """
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise write_failure(error, path, kept) from error
    _fsync_folder(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes, kept: str = "the previous version is kept") -> Path:
    """Writes ``data`` to ``path`` through a temporary file, ``fsync`` and a rename.

    Raises:
        OSError: Naming ``path`` if the write fails (the temporary file is removed, ``path`` untouched).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _replacing(path, kept) as temporary, open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def atomic_write_text(
    path: str | Path, text: str, kept: str = "the previous version is kept", encoding: str = "utf-8"
) -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding``."""
    return atomic_write_bytes(path, text.encode(encoding), kept)


def atomic_copy(
    source: str | Path, destination: str | Path, kept: str = "the previous version is kept"
) -> Path:
    """Copies ``source`` to ``destination`` through a temporary file, ``fsync`` and a rename."""
    destination = Path(destination)
    with _replacing(destination, kept) as temporary:
        shutil.copyfile(source, temporary)
        _fsync_file(temporary)
    return destination


def staging_folder(final: Path) -> Path:
    """Where :func:`staged_folder` writes ``final`` before the rename."""
    return final.with_name(final.name + ".tmp")


@contextmanager
def staged_folder(final: str | Path, kept: str = "the previous version is kept") -> Iterator[Path]:
    """Yields an empty folder to write ``final``'s files into; it replaces ``final`` once all are written.

    On success the files are flushed to the disk and the folder is renamed to ``final`` (an existing
    ``final`` is moved aside first and removed after). If the body raises, the staging folder is removed,
    ``final`` is left as it was, and a write error (a full disk among them) becomes an :class:`OSError`
    naming ``final``. One writer per folder (the run's lock, :mod:`anomaly_ov.run_lock`): leftovers of an
    earlier killed write are removed, and a ``final`` moved aside by a write killed between its two
    renames is put back.

    Raises:
        OSError: Naming ``final`` if writing failed.
    """
    final = Path(final)
    staging, aside = staging_folder(final), final.with_name(final.name + ".old")
    if aside.exists() and not final.exists():
        aside.rename(final)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(aside, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        for file in sorted(p for p in staging.rglob("*") if p.is_file()):
            _fsync_file(file)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError) or is_disk_full(error):
            raise write_failure(error, final, kept) from error
        raise
    if final.exists():
        final.rename(aside)
    staging.rename(final)
    _fsync_folder(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def preallocate(path: str | Path, size: int) -> None:
    """Reserves ``size`` bytes for ``path`` now, so a full disk is an ``OSError`` here, not a ``SIGBUS``.

    A memory-mapped file (:func:`numpy.lib.format.open_memmap`) is sparse: its pages get disk blocks only
    when written through the map, and on a full disk that write kills the process with ``SIGBUS`` -- no
    message, no file named. Allocating the blocks first turns it into an error naming the file.

    Raises:
        OSError: Naming ``path`` if the space is not available.
    """
    if not hasattr(os, "posix_fallocate"):  # not on macOS: the map stays sparse there
        return
    try:
        descriptor = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(descriptor, 0, size)
        finally:
            os.close(descriptor)
    except OSError as error:
        raise write_failure(error, path, "nothing of it is used") from error
