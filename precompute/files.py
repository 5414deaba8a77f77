"""File and process helpers every command uses: atomic writes, the umask, temp directories beside an output (and
removing those a killed run left), replacing a directory whole, and SIGTERM as an exception (entry points only).

This module imports only the standard library.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a file made by ``tempfile.mkstemp`` (0600) or a directory made by ``mkdtemp`` (0700) the mode a plain
    ``open``/``mkdir`` would have given it under the current umask (0644 / 0755 under umask 022)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """The one way xel writes a file: yield a temporary name beside ``path`` (``.{name}.XXXX.tmp``) for the block
    to write; when the block ends, the file is fsynced and ``os.replace``d onto ``path``, so a file that exists
    is complete. If the block raises, the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        follow_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, read in 4 MB blocks (bounded memory for any file size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def make_temp_dir(out: str | os.PathLike, tag: str = "") -> Path:
    """A new directory beside ``out`` named ``.{name}.{tag}{pid}.XXXXXXXX.tmp`` (the pid lets a later run tell a
    stale one from one in use, see :func:`remove_stale_temp_dirs`), with the mode the umask gives a directory."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{tag}{os.getpid()}.", suffix=".tmp"))
    follow_umask(tmp, directory=True)
    return tmp


def exit_on_sigterm() -> None:
    """Make SIGTERM raise ``SystemExit(143)`` in the main thread, as Ctrl-C raises KeyboardInterrupt, so that
    ``finally`` blocks remove a command's temp files instead of the process vanishing mid-write."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_dirs(out: str | os.PathLike) -> list[Path]:
    """Delete the temp directories that a killed run left beside ``out`` (:func:`make_temp_dir`'s names whose
    process is gone, and the pid-less names older xel versions used); returns what was removed."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(?:old\.)?(?:(\d+)\.)?[A-Za-z0-9_]{{8}}\.tmp")
    removed = []
    for path in out.parent.iterdir():
        match = pattern.fullmatch(path.name)
        if match is None or path.is_symlink() or not path.is_dir():
            continue
        if match.group(1) is not None and pid_alive(int(match.group(1))):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def resolve_out(out: str | os.PathLike, error: type[Exception] = ValueError) -> Path:
    """``out`` with a symbolic link followed (the directory is written where the link points, as xel-precompute
    does); a link to nothing is refused."""
    out = Path(out)
    if out.is_symlink():
        target = Path(os.path.realpath(out))
        if not target.exists():
            raise error(f"--out {out}: is a symbolic link to {target}, which does not exist; create that directory "
                        "or pass another --out")
        return target
    return out


def check_writable(out: str | os.PathLike, error: type[Exception] = ValueError, beside: bool = False) -> None:
    """Refuse, before any work, an ``--out`` whose nearest existing directory (with ``beside``: the directory
    that holds it, where a temp directory is made) the user cannot write to."""
    out = Path(os.path.abspath(out))
    probe = out.parent if beside or not out.exists() else out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise error(f"--out {out}: {probe} is not writable (permissions or a read-only filesystem); "
                    "pass an --out you can write to")


def replace_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move the finished directory ``tmp`` to ``out`` (a sibling), replacing whatever ``out`` held: the old one
    is set aside first and removed after the swap, so ``out`` is never half old, half new. ``out`` must not be a
    symbolic link (pass it through :func:`resolve_out`)."""
    tmp, out = Path(tmp), Path(out)
    if out.exists():
        old = make_temp_dir(out, "old.")
        os.rmdir(old)  # its name, free for the rename
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)
