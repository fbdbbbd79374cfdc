"""Write a directory atomically: everything goes into a temporary sibling, swapped in as one step.

Used by every exporter (HF encoders, Llama-family decoders, sentence-transformers directories,
PEFT adapters, task exports with their tokenizer)::

    with atomic_directory("out/export") as tmp:   # tmp: an empty sibling, 0755 under umask 022
        save_file(..., tmp / "model.safetensors")
        tokenizer.save_pretrained(tmp)
    # here out/export is the complete new directory; on an exception the old one is untouched

The swap (:func:`swap_into_place`): on Linux ``renameat2(RENAME_EXCHANGE)`` exchanges the new
directory with an existing ``path`` in one system call, so ``path`` is at every moment the
complete old directory or the complete new one. Where the exchange is not available (another OS,
a filesystem without it) the old directory is renamed to ``.<name>.old`` and the new one renamed
into place: a crash between those two renames leaves no ``path`` but a complete ``.<name>.old``,
which :func:`recover` puts back. The next swap into the same path and the loaders
(:func:`jaxbert.convert.hf.read_hf_config`) call it first; the next write also removes the
temporary directories of writers of this host that died mid-export.

Permissions are those ``transformers``' ``save_pretrained`` gives its directories and JSON files
(``os.makedirs`` / ``open``): directories ``0o777`` and files ``0o666`` minus the process umask
(0755 / 0644 under the usual 022), never the ``0700`` of :func:`tempfile.mkdtemp`; weight files
too (safetensors writes them ``0o600``, in transformers' exports as well). Files are flushed to
disk (``fsync``) before the swap, and the parent directory after it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import secrets
import shutil
import socket
import stat
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def old_path(path: str | os.PathLike) -> Path:
    """Where :func:`swap_into_place` parks the previous directory when it cannot exchange atomically."""
    path = Path(path)
    return path.with_name(f".{path.name}.old")


def recover(path: str | os.PathLike) -> bool:
    """Put back ``.<name>.old`` when ``path`` is missing (a swap interrupted between its two renames).

    Returns True when something was restored. A present ``path`` is never touched.
    """
    path, old = Path(path), old_path(path)
    if os.path.lexists(path) or not old.is_dir():
        return False
    try:
        os.rename(old, path)
    except FileNotFoundError:  # another process recovered it first
        return False
    return True


def _owner_tag() -> str:
    """``<host>-<pid>`` of this process, part of every temporary name (to find a dead writer's leftovers)."""
    host = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


def remove_stale_temp_dirs(path: str | os.PathLike) -> list[Path]:
    """Delete temporary siblings of ``path`` left by writers of this host that are no longer running
    (killed mid-export: each holds a whole model; writers on other hosts are never touched), and a
    ``.<name>.old`` next to a present ``path`` (a finished swap killed before it deleted the old copy)."""
    path = Path(path)
    prefix = f".{path.name}.tmp-{_owner_tag().rsplit('-', 1)[0]}-"
    removed = []
    if not path.parent.is_dir():
        return removed
    if os.path.lexists(path) and old_path(path).is_dir():
        shutil.rmtree(old_path(path), ignore_errors=True)
        removed.append(old_path(path))
    for p in path.parent.iterdir():
        if not p.name.startswith(prefix):
            continue
        pid = p.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def make_temp_dir(path: str | os.PathLike, tag: str = "tmp") -> Path:
    """A new empty sibling of ``path`` (``.<name>.<tag>-<host>-<pid>-<random>``), created ``0o777``
    minus the umask (as ``os.makedirs`` does; :func:`tempfile.mkdtemp` would make it ``0o700``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{tag}-{_owner_tag()}-{secrets.token_hex(4)}")
        try:
            os.mkdir(tmp, 0o777)  # the mode is masked by the umask, as os.makedirs is
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"could not create a temporary directory next to {path}")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``path``; on normal exit it replaces ``path`` in one swap.

    On an exception (a failed write, a full disk, KeyboardInterrupt) the temporary directory is
    removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    recover(path)
    remove_stale_temp_dirs(path)
    tmp = make_temp_dir(path)
    try:
        yield tmp
        _normalise_modes(tmp)
        _fsync_tree(tmp)
        swap_into_place(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_disk_full(e):
            state = "is unchanged" if os.path.lexists(path) else "did not exist and was not created"
            raise OSError(errno.ENOSPC, f"no space left on device while writing {path}: {path} {state}, the "
                                        f"partial copy was removed ({type(e).__name__}: {e})") from e
        raise


def _is_disk_full(e: BaseException) -> bool:
    """ENOSPC, also as wrapped by libraries that do not raise OSError (safetensors: ``StorageFull``)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return True
    text = str(e)
    return "No space left on device" in text or "StorageFull" in text


def write_weights_dir(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], config: Mapping[str, Any],
                      weights_name: str = "model.safetensors", config_name: str = "config.json",
                      fmt: str = "pt", extra_files: Callable[[Path], Any] | None = None) -> Path:
    """Atomically (re)create ``path`` holding ``weights_name`` (safetensors) and ``config_name`` (JSON).

    ``extra_files(tmp_dir)``, when given, writes further files (a tokenizer, ...) into the
    temporary directory before the swap, so they appear together with the weights or not at all.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    with atomic_directory(path) as tmp:
        save_file(dict(tensors), str(tmp / weights_name), metadata={"format": fmt})
        (tmp / config_name).write_text(json.dumps(config, indent=2, sort_keys=True))
        if extra_files is not None:
            extra_files(tmp)
    return path


def swap_into_place(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move the finished directory ``tmp`` to ``path``, replacing an existing ``path``.

    With an existing ``path``: one atomic exchange where the OS has it (then the old content, now
    at ``tmp``, is deleted); else rename ``path`` to ``.<name>.old``, ``tmp`` to ``path``, delete
    the old one; if the second rename fails the old directory is put back before the error
    propagates (and :func:`recover` does it on the next start after a crash there).
    """
    tmp, path = Path(tmp), Path(path)
    recover(path)
    if not os.path.lexists(path):
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return
    if _exchange(tmp, path):
        _fsync_dir(path.parent)
        shutil.rmtree(tmp, ignore_errors=True)  # the old directory, now under the temporary name
        return
    old = old_path(path)
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        recover(path)
        raise
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def _renameat2() -> Any:
    """libc's ``renameat2`` (glibc >= 2.28), or None where there is none."""
    global _RENAMEAT2
    if _RENAMEAT2 is False:
        _RENAMEAT2 = None
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
        except (OSError, AttributeError, TypeError):
            return None
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
        _RENAMEAT2 = fn
    return _RENAMEAT2


_RENAMEAT2: Any = False  # not looked up yet


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange directories ``a`` and ``b`` (Linux ``RENAME_EXCHANGE``); False where unsupported."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):  # kernel or filesystem lacks it
        return False
    raise OSError(err, f"exchanging {a} with {b}: {os.strerror(err)}")


def _normalise_modes(root: Path) -> None:
    """Directories ``0o777`` and files ``0o666`` minus the umask, read off ``root`` (created with mode
    ``0o777``, so the umask already applied): safetensors writes its file ``0o600`` (so do
    transformers' own weight files), and a shared model should be as readable as its config."""
    dir_mode = stat.S_IMODE(root.stat().st_mode)
    file_mode = dir_mode & 0o666
    for dirpath, dirs, files in os.walk(root):
        for name in files:
            os.chmod(os.path.join(dirpath, name), file_mode)
        for name in dirs:
            os.chmod(os.path.join(dirpath, name), dir_mode)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` (and the directories) to disk before it is swapped in."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))
