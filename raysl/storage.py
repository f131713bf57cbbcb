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
  names the path, what happened and what to do. Every function here is guarded;
  :func:`error_in` finds such a failure inside what Ray, SQLAlchemy or Optuna raised;
- a long job (``raysl tune``) holds a :class:`Reserve` and notes its first storage failure
  (:func:`note_failure`): the reserve is given back and the job stops, so its last state
  is written whole.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow.fs as pafs

from raysl.errors import ConfigError, StorageError

TMP_SUFFIX = ".tmp"


def cache_root() -> Path:
    """raysl's local cache (``RAYSL_CACHE``, default ``~/.cache/raysl``): bundled data sets, study databases."""
    return Path(os.environ.get("RAYSL_CACHE", Path.home() / ".cache" / "raysl"))


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
                         ("quota exceeded", errno.EDQUOT),
                         # SQLite's words (an Optuna study in the experiment's optuna.db), no errno with them
                         ("database or disk is full", errno.ENOSPC), ("readonly database", errno.EROFS)):
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
        if (isinstance(e, OSError) or _is_database_error(e)) and _errno_of(e) in _STORAGE_ERRNOS:
            return storage_error(e, path, action, option)
        # Ray's RayTaskError keeps the trial's exception in .cause; SQLAlchemy the driver's in .orig; Ray Train's
        # ControllerError the controller's own (its record of checkpoints written on a full disk) in
        # .controller_failure
        stack.extend([getattr(e, "cause", None), getattr(e, "orig", None), getattr(e, "controller_failure", None),
                      e.__cause__, e.__context__])
        for attr in ("worker_failures", "_worker_failures"):
            failures = getattr(e, attr, None)
            if isinstance(failures, dict):
                stack.extend(failures.values())
    return None


def is_capacity_failure(error: StorageError) -> bool:
    """Whether a StorageError is storage refusing writes: no space left (or quota), read-only, denied."""
    return getattr(error, "errno", None) in _STORAGE_ERRNOS


def _is_database_error(exc: BaseException) -> bool:
    """sqlite3's own errors (what SQLAlchemy and Optuna wrap): SQLite says "database or disk is full"."""
    return type(exc).__module__ in ("sqlite3", "_sqlite3")


# --------------------------------------------------------------------------- a long job's storage failing


RESERVE_FILE = ".raysl_reserve"


class Reserve:
    """Room kept free in a local folder for the last writes of a job whose storage may fill up.

    A search writes its state (Ray Tune's experiment state, the Optuna study, raysl's signatures)
    all along. When the disk fills, the write that fails can be any of them, and Ray rewrites its
    state files in place: a state file cut short breaks the resume. So a search holds
    ``nbytes`` in ``RESERVE_FILE`` while it runs and gives them back (:meth:`release`) the moment
    a storage failure is noticed (:func:`note_failure`), before it saves its state the last time.
    Object stores do not fill up: there it holds nothing.
    """

    def __init__(self, folder: str | Location, nbytes: int, option: str = "--storage"):
        self.location = join(folder, RESERVE_FILE)
        self.held = False
        if not self.location.is_local:
            return
        path = self.location.path
        with guard(self.location, "setting aside room for the search's last state", option):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, nbytes)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise
                    chunk = b"\0" * min(nbytes, 1 << 20)
                    for start in range(0, nbytes, len(chunk)):
                        os.write(fd, chunk[: nbytes - start])
                    os.fsync(fd)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(path)
                raise
            os.close(fd)
        self.held = True
        atexit.register(self.release)  # should the job fail before it gives it back

    def release(self) -> None:
        if self.held:
            self.held = False
            with contextlib.suppress(OSError):
                os.unlink(self.location.path)


# The first storage failure (no space, read-only, denied) a job met while it runs in this process, and
# what to do at that moment: give back a Reserve, stop the job. Whoever meets one notes it.
_FAILURE: dict[str, Any] = {"error": None, "reserve": None, "stop": None}


def watch_failures(reserve: Reserve | None = None, stop: Callable[[], None] | None = None) -> None:
    """Start noting failures for a job (forgetting any earlier one): at the first, ``reserve`` is given back
    and ``stop()`` is called (once)."""
    _FAILURE.update(error=None, reserve=reserve, stop=stop)


def note_failure(error: StorageError) -> None:
    """Record a storage failure (the first one is kept), give back the job's reserve and stop the job."""
    first = _FAILURE["error"] is None
    if first:
        _FAILURE["error"] = error
    reserve = _FAILURE["reserve"]
    if reserve is not None:
        reserve.release()
    stop = _FAILURE["stop"]
    if first and stop is not None:
        stop()


def noted_failure() -> StorageError | None:
    return _FAILURE["error"]
