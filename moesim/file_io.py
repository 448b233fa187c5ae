"""Files in and out, safely: what an input path is, and outputs that are never half-written.

Every command that writes a file (a trace, a sweep CSV, an HTML report, a schema, an imported
model) goes through :func:`write_atomic`: on a full disk or any failed write the user gets a
named error and finds the old file as it was, with no partial file and no ``.tmp`` left behind.
A regular file (or a new one) is written to a temporary file in the same folder, fsynced, then
renamed over it; a symlink is followed so the link stays a link and its target gets the
content; a device (``/dev/null``, ``/dev/stdout``) or a pipe is written through, never renamed
over. :func:`input_problem` says what an input path is when it is not a readable file (a
folder, a FIFO, a symlink loop) instead of "no such file", without ever opening a FIFO.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path


class OutputError(Exception):
    """An output that could not be written; the message names the path, the cause and the fix."""


class InputPathError(ValueError):
    """An input path that is not a readable regular file; the message says what it is."""


def _fix_for(e: OSError, parent: Path) -> str:
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        return "free some space or write somewhere else"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "choose a path you may write"
    if e.errno == errno.ENAMETOOLONG:
        return "choose a shorter name"
    if not parent.is_dir():
        return "create its folder first"
    return "choose another path"


def input_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as an input file, or None when it is a regular file (or a
    symlink to one). Uses stat only: a FIFO is named, never opened (opening one blocks)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"{p}: a symlink loop (the link points back to itself): give a file"
        if p.is_symlink():
            return f"{p}: a broken symlink (its target {os.readlink(p)} does not exist)"
        if e.errno == errno.ENOENT:
            return f"{p}: no such file"
        if e.errno == errno.ENOTDIR:
            return f"{p}: no such file (a part of the path is not a folder)"
        return f"{p}: cannot read it: {e.strerror}"
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return None
    what = (
        "a folder"
        if stat.S_ISDIR(mode)
        else "a FIFO (named pipe)"
        if stat.S_ISFIFO(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "not a regular file"
    )
    return f"{p}: this is {what}, not a file: give the path of a file"


def check_input_file(path: str | Path) -> Path:
    """``path`` when it is a readable regular file, else an InputPathError saying what it is."""
    problem = input_problem(path)
    if problem is not None:
        raise InputPathError(problem)
    return Path(path)


def _target_of(path: Path) -> Path:
    """The file a write to ``path`` lands in: symlinks followed (a dangling link's target is
    created), a loop an OutputError."""
    try:
        return Path(os.path.realpath(path, strict=False))
    except OSError as e:  # pragma: no cover - realpath(strict=False) raises only on loops
        raise OutputError(f"{path}: cannot resolve it ({e.strerror})") from None


def write_atomic(path: str | Path, data: str | bytes, *, make_parents: bool = False) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` all or nothing, as the module says; returns
    ``path``. Errors are an OutputError naming the path, the cause and the fix."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if path.is_symlink():
        try:
            path.stat()
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise OutputError(
                    f"{path}: a symlink loop (the link points back to itself): choose another path"
                ) from None
    target = _target_of(path)
    try:
        st = target.stat()
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputError(f"{path}: cannot write it ({e.strerror}): choose another path") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{path}: this is a folder: give a file path inside it")
    if st is not None and not stat.S_ISREG(st.st_mode):
        _write_through(path, target, raw)
        return path
    parent = target.parent
    if make_parents:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(
                f"{path}: cannot create its folder {parent} ({e.strerror}): choose another path"
            ) from None
    if not parent.is_dir():
        raise OutputError(
            f"{path}: cannot write it (its folder {parent} does not exist): create its folder first"
        )
    _replace_regular(path, target, raw, st)
    return path


def _write_through(path: Path, target: Path, raw: bytes) -> None:
    """A device or a pipe: write into it as it is (rename would replace the device)."""
    try:
        with open(target, "wb") as f:
            f.write(raw)
            f.flush()
    except OSError as e:
        raise OutputError(
            f"{path}: cannot write it ({e.strerror}): {_fix_for(e, target.parent)}"
        ) from None


def _replace_regular(path: Path, target: Path, raw: bytes, st: os.stat_result | None) -> None:
    """Temporary file beside the target, fsync, rename over it; the temporary never outlives a
    failure. A replaced file keeps its permission bits; a new one gets the umask's."""
    parent = target.parent
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{target.name[:200]}.", suffix=".tmp")
    except OSError as e:
        fix = _fix_for(e, parent)
        raise OutputError(f"{path}: cannot write it ({e.strerror}): {fix}") from None
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            if st is not None:
                os.chmod(tmp, stat.S_IMODE(st.st_mode))
            else:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, target)
        except OSError as e:
            raise OutputError(
                f"{path}: cannot write it ({e.strerror}): {_fix_for(e, parent)}; "
                + ("the earlier file is unchanged" if st is not None else "nothing was written")
            ) from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def output_problem(path: str | Path) -> str | None:
    """Why ``path`` can certainly not take an output (a folder, a symlink loop), checked before
    a command does its work; None when it may (the write itself still reports a full disk)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"{p}: a symlink loop (the link points back to itself): choose another path"
        return None
    if stat.S_ISDIR(st.st_mode):
        return f"{p}: this is a folder: give a file path inside it"
    return None
