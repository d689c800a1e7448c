"""Reading a user's files and checking the places a command will write, with one-line errors.

Every command-line path goes through here before any work starts: a directory or a binary file where a text file
is expected, a file of the wrong shape, an output folder that is a file, lies below a file, is read-only or sits in a
pseudo filesystem, are all reported as one line naming the flag and the path, never as a traceback, and never
after an hour of training.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from kdnas_deploy.util.errors import KdnasError, first_line

#: Text files this tool reads (TOML settings, JSON cards) are small; a larger one is a mistake, not a setting.
MAX_SETTINGS_BYTES = 16 * 1024 * 1024


def read_text_file(path: str | Path, what: str) -> str:
    """The UTF-8 text of a settings file; `what` names it in errors (e.g. `--space FILE`)."""
    path = Path(path).expanduser()
    try:
        if path.is_dir():
            raise KdnasError(f"{what} {path}: is a directory, not a file")
        if not path.exists():
            raise KdnasError(f"{what} {path}: no such file")
        if not path.is_file():
            raise KdnasError(f"{what} {path}: not a regular file")
        if path.stat().st_size > MAX_SETTINGS_BYTES:
            raise KdnasError(f"{what} {path}: over {MAX_SETTINGS_BYTES // 2**20} MB, not a settings file")
        data = path.read_bytes()
    except OSError as exc:
        raise KdnasError(f"{what} {path}: cannot read ({exc.strerror or first_line(exc)})") from None
    if b"\x00" in data:
        raise KdnasError(f"{what} {path}: a binary file, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise KdnasError(f"{what} {path}: not UTF-8 text (byte {exc.start})") from None


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """A TOML file as a table; one line for a missing, unreadable, binary or malformed file."""
    text = read_text_file(path, what)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KdnasError(f"{what} {Path(path).expanduser()}: not valid TOML ({first_line(exc)})") from None


def writable_dir(path: str | Path, what: str, *, keep: bool = False) -> Path:
    """`path` as a folder this process can write in, checked by writing a probe file there.

    Checked before a command starts its work: a folder that turns out unwritable at the first checkpoint has already
    cost an epoch of training. Folders the check had to create are removed again unless `keep`: a command that then
    fails on other input leaves nothing behind, and the command creates them itself when it writes."""
    path = Path(path).expanduser()
    for parent in (path, *path.parents):
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                where = "is" if parent == path else f"lies below {parent}, which is"
                raise KdnasError(f"{what} {path}: {where} a file, not a folder")
            break
    created = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".kdnas-write-check-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise KdnasError(f"{what} {path}: cannot write there ({exc.strerror or first_line(exc)})") from None
    finally:
        if not keep:
            for folder in created:  # deepest first
                try:
                    folder.rmdir()
                except OSError:  # never created, or something else wrote there meanwhile
                    pass
    return path


def writable_file(path: str | Path, what: str) -> Path:
    """`path` as a file this process may create or update: its folder writable, the file (if there) a writable file."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise KdnasError(f"{what} {path}: is a directory, not a file")
    writable_dir(path.parent, what, keep=True)  # the file is created there next
    if path.exists() and not os.access(path, os.W_OK):
        raise KdnasError(f"{what} {path}: the file is read-only")
    return path


def is_unicode(text: str) -> bool:
    """False for a str holding a lone surrogate (`"\\ud800"`: valid in a Python str and as a JSON escape, but no Unicode
    text): the tokenizer takes Rust strings and fails on it, and with it the whole batch it is in."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
