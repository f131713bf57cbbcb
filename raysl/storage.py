"""One storage layer for every path a user gives: a local folder or any ``pyarrow.fs`` URI.

``prepare --out``, ``train --out``, ``tune --storage``, ``analyze`` and ``export --out``
all read and write through here:

- :func:`resolve` turns what the user typed into a :class:`Location` (filesystem, path
  inside it, and the string Ray gets: an absolute local path or the URI itself);
- :func:`write_atomic` / :func:`open_atomic` / :func:`copy_dir_atomic` write under a
  temporary name in the same folder and rename it into place, so a reader sees the old
  file or the complete new one, never a torn one; the temporary is removed on failure;
- :func:`guard` turns an ``OSError`` (permission denied, read-only filesystem, no space
  left, a missing parent, ...) into a one-line :class:`~raysl.errors.StorageError` that
  names the path, what happened and what to do. Every function here is guarded.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import pyarrow.fs as pafs

from raysl.errors import ConfigError, StorageError

TMP_SUFFIX = ".tmp"


def is_uri(path: str) -> bool:
    return "://" in str(path)


@dataclass(frozen=True)
class Location:
    """A file or folder: ``fs`` and ``path`` (inside it) for I/O, ``uri`` for users and Ray."""

    fs: pafs.FileSystem
    path: str
    uri: str

    def join(self, *parts: str) -> Location:
        return join(self, *parts)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        return Location(self.fs, _parent(self.path), _parent(self.uri))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def __str__(self) -> str:
        return self.uri


def _parent(path: str) -> str:
    head = path.rstrip("/").rsplit("/", 1)[0]
    return head or "/"


def resolve(path: str | os.PathLike | Location) -> Location:
    """A local path (made absolute, ``~`` expanded) or a URI (``s3://``, ``gs://``, ``file://``, ...)."""
    if isinstance(path, Location):
        return path
    text = os.fspath(path)
    if not is_uri(text):
        root = os.path.abspath(os.path.expanduser(text))
        return Location(pafs.LocalFileSystem(), root, root)
    try:
        fs, root = pafs.FileSystem.from_uri(text)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad or unsupported URI
        detail = " ".join(str(exc).split())[:200]
        raise ConfigError(f"cannot open {text} ({detail}); use a local path or an s3:// / gs:// / file:// URI") from None
    root = root.rstrip("/") or "/"
    return Location(fs, root, text.rstrip("/") if not text.endswith(":///") else text)


def join(location: str | Location, *parts: str) -> Location:
    loc = resolve(location)
    parts = tuple(p.strip("/") for p in parts if p)
    if not parts:
        return loc
    return Location(loc.fs, "/".join([loc.path.rstrip("/"), *parts]), "/".join([loc.uri.rstrip("/"), *parts]))


def join_uri(root: str, *parts: str) -> str:
    """``root/part/...`` as a string, for a path or URI handed on unchanged (e.g. to Ray)."""
    return "/".join([str(root).rstrip("/"), *parts])


# --------------------------------------------------------------------------- errors


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_DENIED = (errno.EACCES, errno.EPERM)
_ERRNO_IN_TEXT = re.compile(r"\[errno (\d+)\]", re.IGNORECASE)


def _errno_of(exc: BaseException) -> int | None:
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code:
        return code
    found = _ERRNO_IN_TEXT.search(str(exc))
    if found:
        return int(found.group(1))
    text = str(exc).lower()
    for needle, code in (("no space left", errno.ENOSPC), ("read-only file system", errno.EROFS),
                         ("permission denied", errno.EACCES), ("access denied", errno.EACCES),
                         ("quota exceeded", errno.EDQUOT)):
        if needle in text:
            return code
    return None


def mount_point(path: str) -> str:
    """The mount a local path lives on (its nearest existing ancestor that is a mount point)."""
    current = os.path.abspath(path)
    while not os.path.exists(current) and current != os.path.dirname(current):
        current = os.path.dirname(current)
    while not os.path.ismount(current):
        current = os.path.dirname(current)
    return current


def _where(path: str) -> str:
    return mount_point(path) if not is_uri(path) else path.split("://", 1)[0] + "://" + path.split("://", 1)[1].split("/", 1)[0]


def storage_error(exc: BaseException, path: str, action: str, option: str = "--out") -> StorageError:
    """The one-line error for an OSError that happened while ``action`` on ``path``."""
    code = _errno_of(exc)
    if code == errno.EROFS:
        message = (f"{path}: the filesystem ({_where(path)}) is read-only, so {action} failed; "
                   f"choose a writable {option} or remount it read-write")
    elif code in _NO_SPACE:
        mount = _where(path)
        quota = " (disk quota exceeded)" if code == errno.EDQUOT else ""
        message = (f"{path}: no space left on {mount}{quota} while {action}; "
                   f"free space on {mount} or choose another {option}")
    elif code in _DENIED:
        message = (f"{path}: permission denied while {action}; "
                   f"choose a writable {option} or fix its permissions")
    elif code == errno.ENOENT:
        message = f"{path}: no such file or folder while {action}; check the path (and that its parent exists)"
    elif code in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        message = f"{path}: a file stands where a folder is needed (or the reverse) while {action}; choose another {option}"
    else:
        detail = " ".join(str(getattr(exc, "strerror", None) or exc).split())[:200] or type(exc).__name__
        message = f"{path}: {action} failed ({detail}); check the storage and choose another {option} if it persists"
    error = StorageError(message)
    error.errno = code  # type: ignore[attr-defined]
    error.path = path  # type: ignore[attr-defined]
    return error


@contextlib.contextmanager
def guard(path: str | Location, action: str, option: str = "--out") -> Iterator[None]:
    """Turn any ``OSError`` raised inside into a one-line :class:`StorageError` about ``path``."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        raise storage_error(exc, str(path), action, option) from None


def guarded(action: str) -> Callable:
    """Decorator form of :func:`guard` for functions whose first argument is the location."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(location, *args, **kwargs):
            with guard(location, action):
                return fn(location, *args, **kwargs)

        return inner

    return wrap


# --------------------------------------------------------------------------- reading


def _type(location: str | Location) -> pafs.FileType:
    loc = resolve(location)
    with guard(loc, "reading its status"):
        return loc.fs.get_file_info(loc.path).type


def exists(location: str | Location) -> bool:
    return _type(location) != pafs.FileType.NotFound


def is_dir(location: str | Location) -> bool:
    return _type(location) == pafs.FileType.Directory


def is_file(location: str | Location) -> bool:
    return _type(location) == pafs.FileType.File


def size(location: str | Location) -> int | None:
    loc = resolve(location)
    with guard(loc, "reading its size"):
        info = loc.fs.get_file_info(loc.path)
    return info.size if info.type == pafs.FileType.File else None


def list_dir(location: str | Location) -> list[tuple[str, bool]]:
    """(name, is a folder) of each entry directly in a folder, sorted; [] when it is not a folder."""
    loc = resolve(location)
    with guard(loc, "listing it"):
        if loc.fs.get_file_info(loc.path).type != pafs.FileType.Directory:
            return []
        infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=False, allow_not_found=True))
    return sorted((i.base_name, i.type == pafs.FileType.Directory) for i in infos)


def list_files(location: str | Location) -> list[str]:
    """Every file under a folder, at any depth, as a path relative to it ("a/b.pkl"), sorted; [] when
    it is not a folder."""
    loc = resolve(location)
    with guard(loc, "listing it"):
        if loc.fs.get_file_info(loc.path).type != pafs.FileType.Directory:
            return []
        infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True, allow_not_found=True))
    # object stores answer without the leading "/" a local root has: compare without it
    root = loc.path.strip("/") + "/"
    return sorted(i.path.lstrip("/")[len(root):] for i in infos
                  if i.type == pafs.FileType.File and i.path.lstrip("/").startswith(root))


def read_bytes(location: str | Location, *, missing_ok: bool = False) -> bytes | None:
    """A file's bytes; ``None`` when it does not exist and ``missing_ok``."""
    loc = resolve(location)
    with guard(loc, "reading it"):
        if missing_ok and loc.fs.get_file_info(loc.path).type != pafs.FileType.File:
            return None
        with loc.fs.open_input_stream(loc.path) as stream:
            return stream.read()


def read_text(location: str | Location, *, missing_ok: bool = False) -> str | None:
    data = read_bytes(location, missing_ok=missing_ok)
    return None if data is None else data.decode("utf-8", errors="replace")


def open_input(location: str | Location) -> Any:
    """A seekable input file (e.g. for ``pyarrow.parquet``)."""
    loc = resolve(location)
    with guard(loc, "opening it"):
        return loc.fs.open_input_file(loc.path)


# --------------------------------------------------------------------------- writing


def make_dirs(location: str | Location, option: str = "--out") -> Location:
    loc = resolve(location)
    with guard(loc, "creating the folder", option):
        if loc.fs.get_file_info(loc.path).type == pafs.FileType.File:
            raise StorageError(f"{loc}: is a file, not a folder; choose another {option}")
        loc.fs.create_dir(loc.path, recursive=True)
    return loc


def remove(location: str | Location, *, missing_ok: bool = True) -> None:
    """Delete a file or a folder with everything in it."""
    loc = resolve(location)
    with guard(loc, "removing it"):
        kind = loc.fs.get_file_info(loc.path).type
        if kind == pafs.FileType.Directory:
            loc.fs.delete_dir(loc.path)
        elif kind == pafs.FileType.File:
            loc.fs.delete_file(loc.path)
        elif not missing_ok:
            raise FileNotFoundError(errno.ENOENT, "not found", loc.path)


def temporary_sibling(location: str | Location) -> Location:
    """A unique temporary name in the same folder (so the final rename stays on one filesystem)."""
    loc = resolve(location)
    return loc.parent.join(f".{loc.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def _quiet_remove(loc: Location) -> None:
    with contextlib.suppress(Exception):
        remove(loc)


@contextlib.contextmanager
def open_atomic(location: str | Location, option: str = "--out") -> Iterator[IO[bytes]]:
    """A stream to write a file through: it appears at ``location`` only when the block ends without an error."""
    loc = resolve(location)
    tmp = temporary_sibling(loc)
    try:
        with guard(loc, "writing it", option):
            loc.fs.create_dir(loc.parent.path, recursive=True)
            with loc.fs.open_output_stream(tmp.path) as stream:
                yield stream
            loc.fs.move(tmp.path, loc.path)
    except BaseException:
        _quiet_remove(tmp)
        raise


def write_atomic(location: str | Location, data: bytes | str, option: str = "--out") -> Location:
    """Write a whole file: the old content or the new one, never a torn file or a leftover temporary."""
    payload = data.encode() if isinstance(data, str) else data
    with open_atomic(location, option) as stream:
        stream.write(payload)
    return resolve(location)


def copy_dir_atomic(source: str, location: str | Location, option: str = "--out",
                    action: str = "writing the folder") -> Location:
    """Copy a local folder to ``location``: into a temporary sibling, then renamed into place.

    Object stores have no folder rename; there the files are copied straight to
    ``location`` and it is removed again on failure.
    """
    loc = resolve(location)
    target = temporary_sibling(loc) if loc.is_local else loc
    try:
        with guard(loc, action, option):
            loc.fs.create_dir(target.path, recursive=True)
            pafs.copy_files(source, target.path, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=loc.fs)
            if target is not loc:
                loc.fs.move(target.path, loc.path)
    except BaseException:
        _quiet_remove(target)
        raise
    return loc


def remove_temporaries(location: str | Location) -> list[str]:
    """Delete what an interrupted :func:`open_atomic` / :func:`copy_dir_atomic` left in a folder."""
    removed = []
    for name, _ in list_dir(location):
        if name.startswith(".") and name.endswith(TMP_SUFFIX):
            remove(join(location, name))
            removed.append(name)
    return removed


_STORAGE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM, *_NO_SPACE)


def error_in(exc: BaseException, path: str, action: str = "writing the run", option: str = "--out") -> StorageError | None:
    """The storage failure (read-only, denied, no space) inside an exception Ray wrapped, as a StorageError."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, StorageError):
            return e
        if isinstance(e, OSError) and _errno_of(e) in _STORAGE_ERRNOS:
            return storage_error(e, path, action, option)
        stack.extend([getattr(e, "cause", None), e.__cause__, e.__context__])
        for attr in ("worker_failures", "_worker_failures"):
            failures = getattr(e, attr, None)
            if isinstance(failures, dict):
                stack.extend(failures.values())
    return None
