"""Atomic file writes: every file the project writes appears whole or not at all.

A write goes to a temporary file in the target's directory (same file system), is flushed to
disk (``fsync``) and then renamed over the target (``os.replace``, atomic on POSIX and Windows).
If anything fails or is interrupted before the rename -- an encoder error, a full disk,
Ctrl-C -- the temporary file is removed and a previous file at the target is left untouched.

* :func:`atomic_write_bytes` / :func:`atomic_write_text` - write data you already have;
* :func:`atomic_path` - a context manager yielding a temporary path to hand to a library that
  writes files itself (``PIL.Image.save(tmp, format="PNG")``, ``fig.savefig(tmp)``,
  ``safetensors.torch.save_file(state, tmp)``). The temporary name keeps the target's
  extension, so libraries that pick a format from it still do.

Standard library only: every layer of the package may use it.
"""
from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "TEMP_MARKER"]

TEMP_MARKER = ".tmp-"  # in every temporary name: ".<stem>.tmp-<random><suffix>"


def _create_temp(target: Path) -> Path:
    """Create an empty temporary file next to ``target`` (mode from the umask, or the target's)."""
    for _ in range(100):
        tmp = target.with_name(f".{target.stem}{TEMP_MARKER}{secrets.token_hex(6)}{target.suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as err:  # name the file the caller asked for, not the temporary one
            raise OSError(err.errno, f"cannot write {target}: {err.strerror}") from err
        os.close(fd)
        try:
            os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))  # keep an existing file's mode
        except OSError:
            pass
        return tmp
    raise FileExistsError(f"cannot create a temporary file next to {target}")  # pragma: no cover


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on a normal exit move it over ``path`` atomically.

    Write the whole file to the yielded path inside the ``with`` block (open it, or let a library
    write it). On leaving the block normally the file is fsynced and renamed to ``path``; if the
    block raises (any exception, KeyboardInterrupt included) the temporary file is removed, the
    exception propagates and an existing file at ``path`` is unchanged.

    Args:
        path: the file to (re)write. Its directory must exist.

    Raises:
        OSError (``FileNotFoundError``, ``PermissionError``, ``IsADirectoryError``, ...): the
            temporary file cannot be created, written (an ``OSError`` of the block about the
            temporary file or without a file name, e.g. a full disk) or renamed (e.g. ``path`` is
            a directory); the message is "cannot write <path>: <reason>" and the subclass follows
            the errno.
        Whatever else the ``with`` block raises, unchanged.
    """
    target = Path(path)
    tmp = _create_temp(target)
    try:
        try:
            yield tmp
            _fsync_file(tmp)
            os.replace(tmp, target)
        except OSError as err:
            if err.filename not in (None, str(tmp), tmp) or not err.strerror:
                raise
            # say which file could not be written (not the temporary name); errno keeps the subclass
            raise OSError(err.errno, f"cannot write {target}: {err.strerror}") from err
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`).

    Raises:
        OSError: the directory is missing or not writable, the disk is full, ...; a previous
            file at ``path`` is then unchanged and no temporary file is left behind.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`), encoded with ``encoding``.

    Raises:
        OSError: as :func:`atomic_write_bytes`.
        UnicodeEncodeError: ``text`` cannot be encoded (nothing is written).
    """
    atomic_write_bytes(path, text.encode(encoding))
