"""One run per workdir: the lock file ``WORKDIR/jaxbert.lock``, held for the life of ``Trainer.run()``.

Two launchers on one workdir would remove each other's orbax temp directories and interleave
two histories in ``metrics.jsonl``. The second one is refused before it writes anything::

    WorkdirInUseError: workdir W is in use by pid N on host H since T (lock file W/jaxbert.lock)

How the lock is taken
  The lock file holds JSON: ``pid``, ``host``, ``since`` (UTC, ISO 8601), the kernel's ``boot_id``
  and the process start time ``proc_start`` (clock ticks since boot, from ``/proc/PID/stat``).
  It is written completely into a private temp file created with ``O_CREAT|O_EXCL``, which is
  ``flock``-ed, and then published with ``os.link`` (atomic; it fails when the lock file exists),
  so nobody ever sees a lock file without its content. Where hard links are not supported the
  lock file itself is created with ``O_CREAT|O_EXCL``. The ``flock`` stays held until release;
  release removes the file (only if it is still ours) and closes it. Killed runs (SIGKILL, OOM,
  power loss) leave the file behind: that is a *stale* lock.

When an existing lock is stale (taken over, with a one-line note on stderr)
  * somebody holds its ``flock``: in use, refused, whatever the file says;
  * it names another host: refused, since nothing here can tell whether that run is alive (the
    message says to remove the file if you are sure);
  * this host, on a local filesystem (ext4, xfs, btrfs, tmpfs, overlay, zfs, ...): every process
    that can open the file runs on this kernel, and the kernel drops a ``flock`` when its holder
    dies, so getting the ``flock`` proves the run has ended: stale (this also covers a reboot and
    a pid from another container's pid namespace);
  * this host, on other filesystems (NFS, Lustre, GPFS, FUSE, CIFS, unknown), where ``flock``
    may be local to each client: another ``boot_id`` (restarted, or a second machine with the
    same name) -> refused; the pid is dead, or now belongs to a process with another start time
    (the pid was reused) -> stale; otherwise in use.
  * a lock file that cannot be parsed is refused (remove it by hand).

Multi-process runs (``jax.process_count() > 1``)
  The processes of one run share the workdir, so only process 0 takes the lock; the others do
  not touch it. Whether process 0 got it is shared with every process (one all-gather, see
  :func:`jaxbert.train.preemption.any_process`), so a refused run stops on all processes at once
  instead of leaving them waiting in a collective. A second multi-process run on the same
  workdir is refused through its own process 0.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import sys
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

LOCK_NAME = "jaxbert.lock"

# Filesystems whose files are only reachable through this kernel: flock there is authoritative.
LOCAL_FILESYSTEMS = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "overlay", "zfs", "f2fs", "jfs",
    "reiserfs", "bcachefs", "apfs", "hfs", "vfat", "exfat", "ntfs3",
})

_TAKE_ATTEMPTS = 5  # create / inspect rounds when other launchers race for the same lock


class WorkdirInUseError(RuntimeError):
    """The workdir's lock file belongs to a run that is (or may be) still alive."""


@dataclass(frozen=True)
class LockInfo:
    """What a lock file says about the run that holds it."""

    pid: int
    host: str
    since: str  # UTC, ISO 8601
    boot_id: str | None = None
    proc_start: int | None = None  # /proc/PID/stat field 22 (clock ticks after boot)
    token: str = ""  # random, tells two locks of one pid apart

    @classmethod
    def of_this_process(cls) -> LockInfo:
        pid = os.getpid()
        return cls(pid=pid, host=socket.gethostname(),
                   since=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                   boot_id=boot_id(), proc_start=process_start_ticks(pid), token=uuid.uuid4().hex)

    @classmethod
    def parse(cls, text: str) -> LockInfo:
        """The info in a lock file's text; ValueError when it is not a jaxbert lock."""
        try:
            d = json.loads(text)
            return cls(pid=int(d["pid"]), host=str(d["host"]), since=str(d["since"]),
                       boot_id=d.get("boot_id"), proc_start=d.get("proc_start"), token=str(d.get("token", "")))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"not a jaxbert lock file ({type(e).__name__}: {e}; content {text[:200]!r})") from None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"


# ---------------------------------------------------------------------------- facts about processes

def boot_id() -> str | None:
    """This kernel's boot id (changes at every boot); None where /proc does not have it."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def process_start_ticks(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks after boot; None if unknown (no /proc, no such pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; fields resume after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    try:
        return int(fields[19])  # field 22 of the man page; fields[0] is field 3 (state)
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (zombies count as alive until reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def filesystem_type(path: str | os.PathLike) -> str | None:
    """The type of the filesystem that holds ``path`` (``/proc/self/mountinfo``), or None if unknown."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, best_type = "", None
    for line in lines:
        left, _, right = line.partition(" - ")
        parts, rest = left.split(), right.split()
        if len(parts) < 5 or not rest:
            continue
        mount = parts[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, best_type = mount, rest[0]
    return best_type


def flock_is_authoritative(path: str | os.PathLike) -> bool:
    """True when holding a ``flock`` on ``path`` proves no live process elsewhere holds it."""
    fs = filesystem_type(path)
    return fs in LOCAL_FILESYSTEMS


def _try_flock(fd: int) -> bool | None:
    """Take an exclusive ``flock`` without waiting: True taken, False held by someone, None unsupported."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return None  # ENOLCK, EOPNOTSUPP, EINVAL: this filesystem has no flock


# ---------------------------------------------------------------------------- the verdict on a lock

def judge_existing(info: LockInfo, flock_taken: bool | None, authoritative: bool) -> tuple[bool, str]:
    """Whether an existing lock described by ``info`` is stale, and why (one clause).

    ``flock_taken``: the result of trying its ``flock`` (False: held by a live process).
    ``authoritative``: the filesystem is local, so a taken ``flock`` proves the holder is gone.
    """
    if flock_taken is False:
        return False, "that process holds the lock"
    if info.host != socket.gethostname():
        return False, ("it was taken on another host, and this host cannot tell whether that run is "
                       "still alive")
    if flock_taken and authoritative:
        return True, "no process holds it any more (the run ended without releasing it)"
    here = boot_id()
    if info.boot_id and here and info.boot_id != here:
        return False, (f"host {info.host} was restarted since, or another machine has the same name "
                       f"(boot id {info.boot_id} is not this machine's {here}), so this host cannot tell "
                       "whether that run is still alive")
    if not pid_alive(info.pid):
        return True, f"pid {info.pid} is no longer running"
    now_start = process_start_ticks(info.pid)
    if info.proc_start is not None and now_start is not None and now_start != info.proc_start:
        return True, f"pid {info.pid} now belongs to another process (started at tick {now_start}, " \
                     f"not {info.proc_start})"
    return False, f"pid {info.pid} is running on this host"


def _in_use_message(workdir: Path, lock_path: Path, info: LockInfo | None, why: str) -> str:
    if info is None:
        head = f"workdir {workdir} is in use (lock file {lock_path}: {why})"
    else:
        head = (f"workdir {workdir} is in use by pid {info.pid} on host {info.host} since {info.since} "
                f"(lock file {lock_path}): {why}")
    known_alive = why.startswith("that process holds") or "is running on this host" in why
    if info is not None and info.host == socket.gethostname() and known_alive:
        return f"{head}. Wait for that run to finish, stop it (kill {info.pid}), or use another --workdir"
    return (f"{head}. If you are sure no run uses this workdir, remove the lock file "
            f"(rm {lock_path}) and start again; otherwise use another --workdir")


# ---------------------------------------------------------------------------- the lock

class WorkdirLock:
    """Exclusive use of ``workdir`` by one process: ``acquire()`` or raise, ``release()`` at the end.

    Use as a context manager (``with WorkdirLock(workdir): ...``); see the module docstring for
    when an existing lock is taken over. ``say`` receives the one-line note of a takeover.
    """

    def __init__(self, workdir: str | os.PathLike, say: Callable[[str], None] | None = None):
        self.workdir = Path(os.path.abspath(os.fspath(workdir)))
        self.path = self.workdir / LOCK_NAME
        self.say = say or (lambda msg: print(f"[jaxbert] {msg}", file=sys.stderr, flush=True))
        self.info: LockInfo | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> WorkdirLock:
        if self.held:
            raise RuntimeError(f"{self.path} is already held by this WorkdirLock")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(_TAKE_ATTEMPTS):
            if self._try_create():
                return self
            self._inspect_existing()  # raises when in use; removes a stale lock; returns to retry
        raise WorkdirInUseError(f"workdir {self.workdir}: could not take the lock file {self.path} in "
                                f"{_TAKE_ATTEMPTS} attempts (other launchers keep taking it)")

    def release(self) -> None:
        """Remove the lock file if it is still ours, and drop the ``flock``."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass  # removed by hand: nothing of ours left to remove
        finally:
            os.close(fd)

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # ---- internals

    def _try_create(self) -> bool:
        """Publish a complete, flock-ed lock file; False when one exists already."""
        info = LockInfo.of_this_process()
        tmp = self.workdir / f".{LOCK_NAME}.{info.token}"
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        try:
            _try_flock(fd)  # a fresh inode nobody else knows: taken, or no flock on this filesystem
            os.write(fd, info.to_json().encode())
            os.fsync(fd)
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                os.close(fd)
                return False
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS):
                    raise
                os.close(fd)  # no hard links here: create the lock file itself exclusively
                fd = -1
                return self._create_without_link(info)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._fd, self.info = fd, info
        return True

    def _create_without_link(self, info: LockInfo) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            return False
        _try_flock(fd)
        os.write(fd, info.to_json().encode())
        os.fsync(fd)
        self._fd, self.info = fd, info
        return True

    def _inspect_existing(self) -> None:
        """Raise WorkdirInUseError for a live (or undecidable) lock; remove a stale one; return to retry."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return  # released meanwhile
        try:
            taken = _try_flock(fd)
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                return  # replaced or removed while we looked: look again
            text = os.read(fd, 1 << 16).decode(errors="replace")
            try:
                info = LockInfo.parse(text)
            except ValueError as e:
                if taken is False:
                    raise WorkdirInUseError(_in_use_message(self.workdir, self.path, None,
                                                            "held by a live process")) from None
                raise WorkdirInUseError(_in_use_message(self.workdir, self.path, None, str(e))) from None
            stale, why = judge_existing(info, taken, flock_is_authoritative(self.path))
            if not stale:
                raise WorkdirInUseError(_in_use_message(self.workdir, self.path, info, why))
            self.say(f"taking over the stale lock {self.path} of pid {info.pid} on host {info.host} "
                     f"since {info.since}: {why}")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # still holding its flock: a racer sees "in use" or a new file
        finally:
            os.close(fd)


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike, say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lock of ``workdir`` for the body; in a multi-process run, process 0 holds it for all.

    Every process learns whether process 0 got the lock (a collective), so a refused run stops
    everywhere; process 0 raises the refusal itself, the others a short error pointing to it.
    """
    import jax

    from jaxbert.train.preemption import any_process

    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = WorkdirLock(workdir, say).acquire()
        except WorkdirInUseError as e:
            error = e
    if jax.process_count() > 1 and any_process(error is not None) and error is None:
        if lock is not None:
            lock.release()
        raise WorkdirInUseError(f"workdir {workdir}: process 0 could not take the lock file "
                                f"{Path(workdir) / LOCK_NAME} (its error says why); process "
                                f"{jax.process_index()} stops too")
    if error is not None:
        raise error
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
