"""The directory backend: each object is a file under a root directory, the key its relative path.

Why it is built this way:

- **Atomic puts with a temp file and a rename.** ``put`` streams into a temp file in the
  object's own directory (same file system, so the rename cannot turn into a copy), fsyncs it,
  then ``os.replace``\\ s it over the key and fsyncs the directory. A reader sees the previous
  object or the new one whole, never a partial one, and a crash leaves at worst a temp file
  (named ``.ciq-tmp.*``, which no key can be), never a torn object. On any error the temp
  file is removed.
- **Readers keep what they opened.** ``open`` returns a reader over an open file descriptor, so
  an object replaced or deleted while it is being read is still read whole, as it was (POSIX
  keeps the unlinked inode alive). A range read is a seek.
- **The tree stays tidy.** ``delete`` and ``delete_prefix`` remove directories left empty up to
  the root, so retention does not leave millions of empty directories behind; a ``put``
  racing with that removal creates its directory again (a few attempts). A ``delete_prefix``
  that removes the temp file of a ``put`` still in flight under it makes that ``put`` fail
  (``ObjectStoreError``): deleting what is still being written is the caller's race.
- **Writeback starts while the bytes arrive.** After each chunk the put asks the kernel to start
  writing that range to disk (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which does not wait),
  so the closing ``fsync`` waits for the last chunks only instead of the whole object: measured
  on 40 MB, the answer after the last byte came 10-20 ms sooner. Best effort: where the call is
  missing or refused, the ``fsync`` alone makes the object durable, as before.
- **Files are private** (mode 0600 as ``mkstemp`` makes them): the store may hold caches with
  secrets in them, and only the service's own user reads it.
- **Every OSError of the store itself** (disk full, permission denied, I/O error) is an
  ``ObjectStoreError``: an infrastructure failure for the caller, not a bad request.

Usable on one host, or on several sharing a mount (NFS) whose ``rename`` is atomic.
``presigned_url`` is None: the web app serves the bytes itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .base import (
    CHUNK_SIZE,
    TEMP_PREFIX,
    HashingSource,
    ObjectMissing,
    ObjectReader,
    ObjectStoreError,
    StoredObject,
    StoredObjectInfo,
    clamp_range,
    validate_key,
    validate_prefix,
    validate_range,
)

_MKDIR_ATTEMPTS = 5  # a concurrent delete may remove the directory a put has just created
_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback of the range, do not wait for it


def _writeback_starter() -> Callable[[int, int, int], object] | None:
    """libc's ``sync_file_range(fd, offset, nbytes, flags)`` (Linux), None where there is none.
    A ctypes call releases the GIL while it runs."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return lambda fd, offset, size: function(fd, offset, size, _SYNC_FILE_RANGE_WRITE)


_start_writeback = _writeback_starter()


class _FileReader(ObjectReader):
    def _read_raw(self, n: int) -> bytes:
        try:
            return self._raw.read(n)
        except OSError as exc:
            raise ObjectStoreError(f"reading {self.key!r} failed: {exc}") from exc


class DirectoryStore:
    """Objects as files under ``root`` (created when missing)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        root = Path(root)
        if not root.is_absolute():
            raise ValueError(f"the object store directory must be an absolute path, not {str(root)!r}")
        self.root = root
        self.description = f"directory {root}"
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ObjectStoreError(f"cannot create the object store directory {root}: {exc}") from exc

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    # -- writing ------------------------------------------------------------------------------
    def _temp_file(self, parent: Path, name: str) -> tuple[int, str]:
        for attempt in range(_MKDIR_ATTEMPTS):
            try:
                parent.mkdir(parents=True, exist_ok=True)
                return tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{name[:64]}.", dir=parent)
            except (FileNotFoundError, FileExistsError):
                # removed by a concurrent delete between our mkdir and mkstemp (or during the
                # mkdir: EEXIST, then gone); a file where a directory should be stays an error
                if attempt == _MKDIR_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def put(self, key: str, source: BinaryIO, *, max_bytes: int | None = None) -> StoredObject:
        path = self._path(key)
        reader = HashingSource(source, max_bytes)
        try:
            fd, temp = self._temp_file(path.parent, path.name)
        except OSError as exc:
            raise ObjectStoreError(f"cannot write {key!r} under {self.root}: {exc}") from exc
        try:
            with os.fdopen(fd, "wb", buffering=0) as out:
                written = 0
                for chunk in reader.chunks():  # the source's own exceptions pass through as they are
                    _write_all(out, chunk)
                    if _start_writeback is not None:
                        _start_writeback(fd, written, len(chunk))  # an error here is the fsync's to report
                    written += len(chunk)
                os.fsync(out.fileno())
            os.replace(temp, path)
        except BaseException as exc:
            _unlink_quietly(temp)
            if isinstance(exc, OSError) and reader.failure() is None:
                raise ObjectStoreError(f"cannot write {key!r} under {self.root}: {exc}") from exc
            raise
        _fsync_directory(path.parent)
        return StoredObject(key=key, size=reader.size, sha256=reader.sha256)

    # -- reading ------------------------------------------------------------------------------
    def open(self, key: str, start: int = 0, length: int | None = None) -> ObjectReader:
        path = self._path(key)
        validate_range(start, length)
        try:
            handle = open(path, "rb", buffering=0)  # noqa: SIM115 -- the reader owns and closes it
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectMissing(key) from None
        except OSError as exc:
            raise ObjectStoreError(f"cannot open {key!r} under {self.root}: {exc}") from exc
        try:
            size = os.fstat(handle.fileno()).st_size
            start, length = clamp_range(size, start, length)
            if start:
                handle.seek(start)
        except OSError as exc:
            handle.close()
            raise ObjectStoreError(f"cannot open {key!r} under {self.root}: {exc}") from exc
        return _FileReader(handle, key=key, size=size, start=start, length=length)

    def stat(self, key: str) -> StoredObjectInfo | None:
        path = self._path(key)
        try:
            info = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise ObjectStoreError(f"cannot stat {key!r} under {self.root}: {exc}") from exc
        if not path.is_file():
            return None
        return StoredObjectInfo(key=key, size=info.st_size, mtime=info.st_mtime)

    # -- deleting -----------------------------------------------------------------------------
    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        except PermissionError as exc:
            if path.is_dir():
                return  # a "directory" (some systems answer EPERM, not EISDIR): no object there
            raise ObjectStoreError(f"cannot delete {key!r} under {self.root}: {exc}") from exc
        except OSError as exc:
            raise ObjectStoreError(f"cannot delete {key!r} under {self.root}: {exc}") from exc
        self._prune(path.parent)

    def delete_prefix(self, prefix: str) -> int:
        top = self.root.joinpath(*validate_prefix(prefix)[:-1].split("/"))
        removed = 0
        try:
            for directory, subdirs, files in os.walk(top, topdown=False, onerror=_raise_unless_missing):
                for name in files:
                    try:
                        os.unlink(os.path.join(directory, name))
                    except FileNotFoundError:
                        continue  # removed meanwhile, or a temp file renamed into place
                    if not name.startswith(TEMP_PREFIX):
                        removed += 1
                for name in subdirs:
                    _rmdir_quietly(os.path.join(directory, name))
            _rmdir_quietly(top)
        except OSError as exc:
            raise ObjectStoreError(f"cannot delete {prefix!r} under {self.root}: {exc}") from exc
        self._prune(top.parent)
        return removed

    def _prune(self, directory: Path) -> None:
        """Remove ``directory`` and its parents while they are empty, up to the root (kept)."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return  # not empty (or gone, or not ours to remove): stop there
            directory = directory.parent

    def presigned_url(self, key: str, expires: int) -> str | None:
        validate_key(key)
        return None


def _write_all(out: BinaryIO, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        written = out.write(view[:CHUNK_SIZE])
        view = view[written:]


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _rmdir_quietly(path: str | Path) -> None:
    with contextlib.suppress(OSError):  # a put created something in it meanwhile: it stays
        os.rmdir(path)


def _raise_unless_missing(exc: OSError) -> None:
    if not isinstance(exc, FileNotFoundError | NotADirectoryError):
        raise exc  # a directory removed meanwhile is simply skipped


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable. Best effort: some file systems refuse fsync on a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
