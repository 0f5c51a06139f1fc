"""The archives of artifacts and caches: writing one from a job's workspace, unpacking one safely.

Format: an uncompressed POSIX tar (pax). Uncompressed because the stream must go at close to
``tar``'s own speed (compression would be the bottleneck, and build outputs are often compressed
already); tar because the web app serves one file out of a stored archive by a ranged read, so
the writer records where each file's bytes start (``Entry.offset``) in a manifest that goes
along with the stream. Any tar reader can list and unpack the archives (``tar -xf``).
Checksums are the transport's business, not this module's.

Trust model: both ends handle hostile data. The workspace being archived was written by the job
(``selection`` explains how files are chosen and re-checked here: opened with ``O_NOFOLLOW``
below directories opened one component at a time, never through a symlink). An archive being
unpacked was produced by another job, possibly crafted, and is read as a stream (an HTTP body),
so ``safe_extract`` parses the tar itself instead of using ``tarfile`` (whose reader holds pax
headers and GNU long names in memory unbounded, and whose ``extract``/``filter=`` had
path-escape bugs fixed only after Python 3.11.7) and writes every file itself:

- names that are absolute, hold a ``..`` component or NUL, or are too long are refused;
- nothing is ever written through a symlink: each parent directory is opened with
  ``O_NOFOLLOW`` from ``dest`` (a parent that is a symlink, whether it was in ``dest`` before or
  came from the archive, is refused), and an existing file or symlink at a member's path is
  unlinked and the file created with ``O_EXCL`` (so a hard link planted in ``dest`` is not
  written through either);
- a symlink member whose target is absolute or leaves ``dest`` (lexically, or resolved through
  the links in ``dest``, at most 40 of them as the kernel, checked again after the last member
  for chains built in several steps) is refused;
- hard links are refused, all of them (the writer never makes any: a file with several links
  is stored as a regular file each time); devices, fifos, sparse files and other types too;
- permission bits are kept (``& 0o777``: no setuid, setgid or sticky bit), owners are not,
  mtimes are; member data is copied in chunks of at most 1 MiB and one member's extended headers
  (pax, GNU long names) may hold 1 MiB; a truncated or corrupt stream is refused, and so is one
  that ends without tar's end-of-archive blocks.

``UnsafeArchive`` names the member and the reason. What was unpacked before it stays in
``dest``: the caller fails the job and discards the workspace, it does not use a half-unpacked
tree.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_string
from pathlib import Path
from typing import Any, BinaryIO
from zlib import adler32

from ci_queue.artifacts.selection import (
    MAX_SYMLINK_HOPS,
    Selection,
    SelectionTooLarge,
    UntrackedError,
    display,
    human_bytes,
    inside,
    link_target,
    resolve,
    select,
    split_relative,
    untracked,
)

__all__ = [
    "Entry",
    "Selection",
    "SelectionTooLarge",
    "TarWriter",
    "UnsafeArchive",
    "UntrackedError",
    "human_bytes",
    "safe_extract",
    "select",
    "untracked",
    "write_tar",
]

FILE, DIR, SYMLINK = "file", "dir", "symlink"
TYPES = (FILE, DIR, SYMLINK)
BLOCK = 512
RECORD = 20 * BLOCK  # tar's default blocking: archives end on a record boundary
CHUNK = 1 << 20
MAX_META_BYTES = 1 << 20  # a pax header's or a GNU long name's data, held in memory
MAX_NAME_BYTES = 4095  # PATH_MAX - 1
MAX_COMPONENT_BYTES = 255  # NAME_MAX
_ZERO_BLOCK = bytes(BLOCK)
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_OPEN_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_OCTAL = 8**11  # what fits a 12-byte ustar number field
_MAX_NS = 2**62


@dataclass(frozen=True)
class Entry:
    """One member of an archive, as the manifest lists it. ``offset``: where a file's data
    starts in the tar stream; ``target``: a symlink's text."""

    path: str
    type: str
    size: int
    mode: int
    mtime: float
    offset: int | None = None
    target: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "type": self.type, "size": self.size, "mode": self.mode, "mtime": self.mtime,
                "offset": self.offset, "target": self.target}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Entry:
        """An entry from a manifest (e.g. a job's upload): KeyError, TypeError or ValueError if it
        is not one this module could have written."""
        if not isinstance(d, dict):
            raise TypeError("an entry is an object")
        path, kind = d["path"], d["type"]
        if not isinstance(path, str) or not path or "\0" in path:
            raise ValueError("`path` must be a non-empty string")
        if split_relative(path)[0] != path.split("/"):
            raise ValueError(f"`path` {path!r} is not a normalized relative path")
        if kind not in TYPES:
            raise ValueError(f"`type` must be one of {', '.join(TYPES)}")
        size, mode, mtime = d.get("size", 0), d.get("mode", 0), d.get("mtime", 0)
        offset, target = d.get("offset"), d.get("target")
        for name, value in (("size", size), ("mode", mode)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise TypeError(f"`{name}` must be a non-negative integer")
        if mode > 0o7777:
            raise ValueError("`mode` holds permission bits only")
        if not isinstance(mtime, int | float) or isinstance(mtime, bool) or mtime != mtime:
            raise TypeError("`mtime` must be a number")
        if offset is not None and (not isinstance(offset, int) or isinstance(offset, bool) or offset < 0):
            raise TypeError("`offset` must be a non-negative integer or null")
        if target is not None and not isinstance(target, str):
            raise TypeError("`target` must be a string or null")
        if kind == SYMLINK and not target:
            raise ValueError("a symlink needs its `target`")
        return cls(path=path, type=kind, size=size, mode=mode, mtime=float(mtime), offset=offset, target=target)


class UnsafeArchive(Exception):
    """A hostile or broken archive; ``entry`` names the member (or where in the stream)."""

    def __init__(self, entry: str, reason: str) -> None:
        self.entry, self.reason = entry, reason
        super().__init__(f"unsafe archive, member {display(entry)}: {reason}")


# -- directories by file descriptor ------------------------------------------------------------------


class _Blocked(Exception):
    """A path's parent component is not a real directory (``what``: why)."""

    def __init__(self, prefix: str, what: str) -> None:
        super().__init__(f"{prefix} {what}")
        self.prefix, self.what = prefix, what


class _DirFds:
    """Directories below a root opened one component at a time with ``O_NOFOLLOW``, so no symlink
    is ever crossed; the descriptors of the last path stay open (entries come sorted or in tar
    order, so neighbours share their parents)."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.names: list[str] = []
        self.fds: list[int] = []

    def open(self, parts: Sequence[str], create: bool = False) -> int:
        keep, n = 0, min(len(parts), len(self.names))
        while keep < n and self.names[keep] == parts[keep]:
            keep += 1
        self._truncate(keep)
        fd = self.fds[-1] if self.fds else self.root_fd
        for part in parts[keep:]:
            try:
                child = os.open(part, _OPEN_DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):  # made by someone else meanwhile: checked below
                    os.mkdir(part, 0o777, dir_fd=fd)
                child = self._open_existing(part, fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                child = self._open_existing(part, fd)
            self.names.append(part)
            self.fds.append(child)
            fd = child
        return fd

    def _open_existing(self, part: str, fd: int) -> int:
        try:
            return os.open(part, _OPEN_DIR, dir_fd=fd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            prefix = "/".join([*self.names, part])
            try:
                is_link = stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode)
            except OSError:
                is_link = False
            raise _Blocked(prefix, "is a symlink" if is_link else "is not a directory") from None

    def _truncate(self, keep: int) -> None:
        while len(self.fds) > keep:
            os.close(self.fds.pop())
            self.names.pop()

    def close(self) -> None:
        self._truncate(0)


# -- writing ---------------------------------------------------------------------------------------

_USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s6s2s32s32s8s8s155s12s")
_TYPEFLAG = {FILE: tarfile.REGTYPE, DIR: tarfile.DIRTYPE, SYMLINK: tarfile.SYMTYPE}
_ID = b"0000000\0"  # uid, gid, devmajor, devminor
# the checksum of the fields every header shares: uid, gid, magic, version, devmajor, devminor
_CONSTANT_SUM = 4 * sum(_ID) + sum(b"ustar\0") + sum(b"00")
# A regular file's ustar header in two parts: what differs from file to file (name, mode, uid and
# gid, size, mtime: 148 bytes), then the checksum and what every file's header shares.
_FILE_HEAD = struct.Struct("100s8s16s12s12s")
_FILE_TAIL = b"\0 " + _USTAR.pack(b"", b"", b"", b"", b"", b"", b"", tarfile.REGTYPE, b"", b"ustar\0", b"00", b"",
                                 b"", _ID, _ID, b"", b"")[156:]
_FILE_TAIL_SUM = 8 * 32 + sum(_FILE_TAIL[2:])  # the checksum counts its own field as 8 spaces
_PADDING = [bytes(n) for n in range(BLOCK)]


def _header(path: str, kind: str, mode: int, mtime: int, size: int, target: str = "") -> bytes:
    """The tar header (blocks) of one entry: a plain ustar block when everything fits, built here;
    tarfile's pax header sequence otherwise. (A regular file with a short ASCII name, the common
    case, has its header built in ``TarWriter._stream`` itself: this is its per-file cost.)"""
    name = path + "/" if kind == DIR else path
    if name.isascii() and len(name) <= 100 and target.isascii() and len(target) <= 100 and size < _MAX_OCTAL \
            and 0 <= mtime < _MAX_OCTAL:
        fields = (name.encode(), b"%07o\0" % mode, b"%011o\0" % size, b"%011o\0" % mtime, _TYPEFLAG[kind],
                  target.encode())
        checksum = _CONSTANT_SUM + 8 * 32 + sum(map(sum, fields))
        return _USTAR.pack(fields[0], fields[1], _ID, _ID, fields[2], fields[3], b"%06o\0 " % checksum, fields[4],
                           fields[5], b"ustar\0", b"00", b"", b"", _ID, _ID, b"", b"")
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.size, info.linkname = _TYPEFLAG[kind], mode, mtime, size, target
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


_Row = tuple[str, str, int, int, int, "int | None", "str | None"]  # an Entry's fields, mtime in whole seconds


class TarWriter:
    """A tar stream of ``entries`` (relative paths under ``root``, as ``select`` gives them),
    produced in chunks of about ``chunk_size`` bytes. After ``chunks()`` is exhausted,
    ``manifest`` lists what the stream holds (``manifest_json()``: as the web app stores it),
    ``files`` counts its regular files, ``size`` is its length and ``warnings`` say what was
    left out or changed while being read (for the job log).

    Each entry is looked at afresh: one that vanished, became a special file, sits below a
    symlink or is a symlink leaving ``root`` is skipped with a warning. A file that changes size
    while it is read is stored with the size its header gives (cut, or padded with zeros) and a
    warning, so the stream stays a valid tar. Owners are not stored (uid/gid 0, no names);
    mtimes are whole seconds."""

    def __init__(self, root: Path, entries: list[str], chunk_size: int = CHUNK) -> None:
        self.root = os.path.abspath(root)
        self.root_real = os.path.realpath(self.root)
        self.entries = list(entries)
        self.chunk_size = max(int(chunk_size), BLOCK)
        self.size = 0
        self.files = 0
        self.warnings: list[str] = []
        self._rows: list[_Row] = []  # tuples, not Entry objects: a tuple costs a tenth per file
        self._manifest: list[Entry] | None = None
        self._started = False

    @property
    def manifest(self) -> list[Entry]:
        if self._manifest is None or len(self._manifest) != len(self._rows):
            self._manifest = [Entry(path, kind, size, mode, float(mtime), offset, target)
                              for path, kind, size, mode, mtime, offset, target in self._rows]
        return self._manifest

    def manifest_json(self) -> bytes:
        """The manifest as the JSON list of ``Entry.to_dict()`` objects, byte for byte what
        ``json.dumps(..., separators=(",", ":"))`` makes of it, at a fraction of its cost."""
        return _manifest_json(self._rows)

    def chunks(self) -> Iterator[bytes]:
        if self._started:
            raise RuntimeError("TarWriter.chunks() makes its stream once")
        self._started = True
        root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        dirs = _DirFds(root_fd)
        try:
            yield from self._stream(dirs)
        finally:
            dirs.close()
            os.close(root_fd)

    def _stream(self, dirs: _DirFds) -> Iterator[bytes]:
        # One pass per entry with as few calls as can be: this loop is the cost of many small files
        # (about 6 us a file, of which 4 in the five system calls, on the benchmark's machine).
        pending = bytearray()
        position = 0  # bytes of the stream so far, pending included
        chunk_size = self.chunk_size
        warn, add = self.warnings.append, self._rows.append
        lstat, open_, fstat, read, close = os.lstat, os.open, os.fstat, os.read, os.close
        is_reg = stat.S_ISREG
        pack_head, tail, tail_sum, padding, ids = _FILE_HEAD.pack, _FILE_TAIL, _FILE_TAIL_SUM, _PADDING, _ID + _ID
        files = 0
        for rel in self.entries:
            parts = rel.split("/")
            if not rel or rel[0] == "/" or "\0" in rel or "" in parts or "." in parts or ".." in parts:
                warn(f"{display(rel)} not archived: not a normalized relative path under the project directory")
                continue
            leaf = parts.pop()
            try:
                parent = dirs.fds[-1] if parts == dirs.names and parts else dirs.open(parts)
                info = lstat(leaf, dir_fd=parent)
            except _Blocked as exc:
                warn(f"{display(rel)} not archived: {display(exc.prefix)} {exc.what}")
                continue
            except OSError as exc:
                warn(f"{display(rel)} not archived: {exc.strerror or exc}")
                continue
            mode = info.st_mode
            if not is_reg(mode):
                header, row = self._not_a_file(rel, leaf, parent, info)
                if header:
                    pending += header
                    position += len(header)
                    add(row)
            else:
                try:
                    fd = open_(leaf, _OPEN_READ, dir_fd=parent)
                except OSError as exc:
                    warn(f"{display(rel)} not archived: {exc.strerror or exc}")
                    continue
                try:
                    # What was opened is checked before a byte is read: a name swapped since the
                    # lstat for a device would otherwise be read (a block device: the host's disk).
                    info = fstat(fd)
                    if not is_reg(info.st_mode):
                        warn(f"{display(rel)} not archived: it is no longer a regular file")
                        continue
                    size, perms, mtime = info.st_size, info.st_mode & 0o777, int(info.st_mtime)
                    data = b""
                    if size <= chunk_size:
                        try:
                            data = read(fd, size + 1)
                            if len(data) != size:
                                data = self._read_small(fd, rel, size, data)
                        except OSError as exc:  # nothing of it is in the stream yet
                            warn(f"{display(rel)} not archived: {exc.strerror or exc}")
                            continue
                    if len(rel) <= 100 and rel.isascii() and size < _MAX_OCTAL and 0 <= mtime < _MAX_OCTAL:
                        head = pack_head(rel.encode(), b"%07o\0" % perms, ids, b"%011o\0" % size, b"%011o\0" % mtime)
                        pending += head
                        # the checksum: the sum of the header's bytes. adler32's low half is 1 + that
                        # sum modulo 65521, which 148 bytes (at most 37740) never reach: exact, and
                        # a tenth of sum()'s cost
                        pending += b"%06o" % ((adler32(head) & 0xFFFF) - 1 + tail_sum)
                        pending += tail
                        position += BLOCK
                    else:
                        header = _header(rel, FILE, perms, mtime, size)
                        pending += header
                        position += len(header)
                    add((rel, FILE, size, perms, mtime, position, None))
                    files += 1
                    if size <= chunk_size:
                        pending += data
                    else:
                        if pending:
                            yield bytes(pending)
                            pending.clear()
                        yield from self._read_large(fd, rel, size)
                    pending += padding[-size % BLOCK]
                    position += size + (-size % BLOCK)
                finally:
                    close(fd)
            if len(pending) >= chunk_size:
                yield bytes(pending)
                pending.clear()
        end = 2 * BLOCK
        end += -(position + end) % RECORD
        pending += bytes(end)
        position += end
        yield bytes(pending)
        self.size = position
        self.files = files

    def _not_a_file(self, rel: str, leaf: str, parent: int, info: os.stat_result) -> tuple[bytes, _Row | None]:
        """The header and manifest row of a directory or a symlink (lstat'ed as ``info``); no
        header (and a warning) for anything else, or for a symlink that leaves ``root``."""
        mode, mtime = info.st_mode, int(info.st_mtime)
        if stat.S_ISDIR(mode):
            return _header(rel, DIR, mode & 0o777, mtime, 0), (rel, DIR, 0, mode & 0o777, mtime, None, None)
        if not stat.S_ISLNK(mode):
            self.warnings.append(f"{display(rel)} not archived: it is not a regular file, directory or symlink")
            return b"", None
        try:
            text = os.readlink(leaf, dir_fd=parent)
        except OSError as exc:
            self.warnings.append(f"{display(rel)} not archived: {exc.strerror or exc}")
            return b"", None
        target, reason = link_target(self.root, self.root_real, rel, text)
        if target is None:
            self.warnings.append(f"symlink {display(rel)} -> {display(text)} not archived: {reason}")
            return b"", None
        return _header(rel, SYMLINK, 0o777, mtime, 0, target), (rel, SYMLINK, 0, 0o777, mtime, None, target)

    def _read_small(self, fd: int, rel: str, size: int, data: bytes = b"") -> bytes:
        """Exactly ``size`` bytes of the file (``data``: what a first read gave)."""
        while len(data) < size:
            more = os.read(fd, size + 1 - len(data))
            if not more:
                self._changed(rel, size, len(data))
                return data + bytes(size - len(data))
            data += more
        if len(data) > size:
            self._changed(rel, size, None)
            return data[:size]
        return data

    def _read_large(self, fd: int, rel: str, size: int) -> Iterator[bytes]:
        remaining, step = size, self.chunk_size
        while remaining:
            data = os.read(fd, min(step, remaining))
            if not data:
                self._changed(rel, size, size - remaining)
                while remaining:
                    filler = min(step, remaining)
                    remaining -= filler
                    yield bytes(filler)
                return
            remaining -= len(data)
            yield data
        if os.read(fd, 1):
            self._changed(rel, size, None)

    def _changed(self, rel: str, size: int, found: int | None) -> None:
        if found is None:
            self.warnings.append(f"{display(rel)} grew while it was archived: the archive holds its first "
                                 f"{size} bytes")
        else:
            self.warnings.append(f"{display(rel)} shrank while it was archived ({found} of {size} bytes read): "
                                 "the archive holds it padded with zero bytes")


_FILE_JSON = '{"path":%s,"type":"file","size":%d,"mode":%d,"mtime":%r,"offset":%d,"target":null}'
_OTHER_JSON = '{"path":%s,"type":"%s","size":%d,"mode":%d,"mtime":%r,"offset":null,"target":%s}'


def _manifest_json(rows: list[_Row]) -> bytes:
    """``json.dumps([Entry(...).to_dict() ...], separators=(",", ":"))`` of the rows, with its
    string encoder (ASCII, surrogates escaped): one format string per entry instead of a dict."""
    items = [_FILE_JSON % (_json_string(path), size, mode, float(mtime), offset) if offset is not None else
             _OTHER_JSON % (_json_string(path), kind, size, mode, float(mtime),
                            "null" if target is None else _json_string(target))
             for path, kind, size, mode, mtime, offset, target in rows]
    return ("[" + ",".join(items) + "]").encode()


def write_tar(root: Path, entries: list[str], out: BinaryIO) -> list[Entry]:
    """Write the tar of ``entries`` to ``out``; the manifest."""
    writer = TarWriter(root, entries)
    for chunk in writer.chunks():
        out.write(chunk)
    return writer.manifest


# -- reading ---------------------------------------------------------------------------------------


@dataclass
class _Member:
    name: str
    kind: str  # file, dir, symlink, or what it is when refused ("a hard link", ...)
    size: int
    mode: int
    mtime_ns: int
    target: str
    offset: int  # of its data in the stream


_KINDS = {
    b"0": FILE, b"\0": FILE, b"7": FILE, b"5": DIR, b"2": SYMLINK,
    b"1": "a hard link", b"3": "a character device", b"4": "a block device", b"6": "a fifo",
    b"S": "a sparse file", b"D": "a GNU dump directory", b"M": "a multi-volume continuation",
    b"V": "a volume label", b"N": "an old GNU long name",
}
_DIGITS = frozenset(b"01234567")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _field(raw: bytes) -> bytes:
    end = raw.find(b"\0")
    return raw if end == -1 else raw[:end]


class _TarReader:
    """Members of a tar read as a stream, each header checked; data is left for the caller to
    copy (``copy_to``) or is skipped by the next ``next()``."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.buf = b""
        self.start = 0
        self.position = 0  # stream offset of buf[start]
        self.unread = 0  # data and padding of the last member not consumed yet
        self.last = ""  # the last member's name, for errors about what follows it

    # -- bytes -------------------------------------------------------------------------------------
    def _fill(self, n: int) -> bool:
        while len(self.buf) - self.start < n:
            data = self.stream.read(max(CHUNK, n))
            if not data:
                return False
            self.buf = self.buf[self.start:] + data if self.start < len(self.buf) else bytes(data)
            self.start = 0
        return True

    def _take(self, n: int) -> bytes:
        if not self._fill(n):
            raise UnsafeArchive(self.last or "(start of archive)",
                                f"the archive is truncated at byte {self.position + len(self.buf) - self.start}")
        data = self.buf[self.start:self.start + n]
        self.start += n
        self.position += n
        return data

    def _some(self, n: int, name: str, missing: int) -> memoryview:
        """Up to ``n`` (> 0) bytes, without copying them."""
        if self.start >= len(self.buf):
            data = self.stream.read(CHUNK)
            if not data:
                raise UnsafeArchive(name, f"the archive is truncated: {missing} bytes of the member are missing "
                                          "(its header declares more than the stream holds)")
            self.buf, self.start = bytes(data), 0
        end = min(len(self.buf), self.start + n)
        view = memoryview(self.buf)[self.start:end]
        self.position += end - self.start
        self.start = end
        return view

    def _skip(self, n: int, name: str) -> None:
        while n:
            n -= len(self._some(n, name, n))

    def copy_to(self, fd: int, member: _Member) -> None:
        remaining = member.size
        while remaining:
            view = self._some(remaining, member.name, remaining)
            remaining -= len(view)
            while view:
                view = view[os.write(fd, view):]
        self.unread = -member.size % BLOCK

    def drain(self) -> None:
        while self.stream.read(CHUNK):
            pass

    # -- headers -----------------------------------------------------------------------------------
    def next(self) -> _Member | None:
        self._skip(self.unread, self.last)
        self.unread = 0
        pax: dict[bytes, bytes] = {}
        long_name = long_link = None
        meta = 0  # bytes of extended headers for this member: all held in memory, so bounded together
        while True:
            at = self.position
            where = f"(header at byte {at})"
            if not self._fill(BLOCK):
                raise UnsafeArchive(self.last or "(start of archive)", f"the archive is truncated at byte "
                                    f"{self.position + len(self.buf) - self.start}: it ends before its "
                                    "end-of-archive blocks")
            block = self._take(BLOCK)
            if block == _ZERO_BLOCK:
                if pax or long_name is not None or long_link is not None:
                    raise UnsafeArchive(where, "an extended header is not followed by a member")
                if self._fill(BLOCK) and self._take(BLOCK) != _ZERO_BLOCK:
                    raise UnsafeArchive(where, "corrupt archive: data follows an end-of-archive block")
                return None
            _check_sum(block, where)
            typeflag = block[156:157]
            size = _number(block[124:136], where)
            if typeflag in (b"x", b"g", b"L", b"K"):
                meta += size
                if meta > MAX_META_BYTES:
                    raise UnsafeArchive(where, f"extended headers of {meta} bytes for one member (at most "
                                               f"{MAX_META_BYTES})")
                data = self._take(size)
                self._take(-size % BLOCK)
                if typeflag == b"x":
                    pax.update(_pax_records(data, where))
                elif typeflag == b"L":
                    long_name = _field(data)
                elif typeflag == b"K":
                    long_link = _field(data)
                continue  # b"g": global pax records are ignored (only path-less defaults in practice)
            break
        name = long_name if long_name is not None else _field(block[0:100])
        if block[257:263] == b"ustar\0" and block[345] and long_name is None:
            name = _field(block[345:500]) + b"/" + name
        target = long_link if long_link is not None else _field(block[157:257])
        mtime_ns = _number(block[136:148], where, signed=True) * 1_000_000_000
        for key in pax:
            if key.startswith(b"GNU.sparse."):
                typeflag = b"S"
        if b"path" in pax:
            name = pax[b"path"]
        if b"linkpath" in pax:
            target = pax[b"linkpath"]
        if b"size" in pax:
            size = _pax_int(pax[b"size"], where)
        if b"mtime" in pax:
            mtime_ns = _pax_ns(pax[b"mtime"], where)
        text = _text(name)
        kind = _KINDS.get(typeflag, f"of unsupported type {typeflag!r}")
        if kind == FILE and typeflag == b"\0" and text.endswith("/"):
            kind = DIR  # old tars marked directories by their trailing slash only
        if not -_MAX_NS < mtime_ns < _MAX_NS:
            raise UnsafeArchive(text, "its mtime is out of range")
        member = _Member(text, kind, size, _number(block[100:108], where) & 0o7777, mtime_ns, _text(target),
                         self.position)
        self.last = text
        self.unread = size + (-size % BLOCK)
        return member


def _check_sum(block: bytes, where: str) -> None:
    stored = _number(block[148:156], where)
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if stored != unsigned:
        signed = sum(struct.unpack("148b8x356b", block)) + 8 * 32
        if stored != signed:
            raise UnsafeArchive(where, "corrupt archive: a header's checksum does not match")


def _number(raw: bytes, where: str, signed: bool = False) -> int:
    if raw[0] & 0x80:  # GNU base-256
        value = int.from_bytes(raw[1:], "big")
        if raw[0] == 0xFF:
            if not signed:
                raise UnsafeArchive(where, "corrupt archive: a negative number in a header")
            value -= 1 << (8 * (len(raw) - 1))
        elif raw[0] != 0x80:
            raise UnsafeArchive(where, "corrupt archive: a malformed number in a header")
        return value
    digits = _field(raw).strip(b" ")
    if not _DIGITS.issuperset(digits):
        raise UnsafeArchive(where, f"corrupt archive: {digits!r} is not an octal number")
    return int(digits, 8) if digits else 0


def _pax_records(data: bytes, where: str) -> dict[bytes, bytes]:
    records: dict[bytes, bytes] = {}
    at = 0
    while at < len(data) and data[at]:
        space = data.find(b" ", at, at + 21)
        length = data[at:space]
        if space == -1 or not length.isdigit():
            raise UnsafeArchive(where, "corrupt archive: a malformed pax record")
        end = at + int(length)
        if end <= space + 1 or end > len(data) or data[end - 1] != 0x0A:
            raise UnsafeArchive(where, "corrupt archive: a malformed pax record")
        key, equals, value = data[space + 1:end - 1].partition(b"=")
        if not equals:
            raise UnsafeArchive(where, "corrupt archive: a malformed pax record")
        if value:
            records[key] = value
        else:
            records.pop(key, None)  # an empty value removes the keyword
        at = end
    return records


def _pax_int(value: bytes, where: str) -> int:
    if not value.isdigit() or len(value) > 20:
        raise UnsafeArchive(where, f"corrupt archive: pax size {value[:40]!r}")
    return int(value)


def _pax_ns(value: bytes, where: str) -> int:
    sign = -1 if value.startswith(b"-") else 1
    seconds, _, fraction = value.lstrip(b"-").partition(b".")
    if not seconds.isdigit() or (fraction and not fraction.isdigit()) or len(seconds) > 12:
        raise UnsafeArchive(where, f"corrupt archive: pax mtime {value[:40]!r}")
    return sign * (int(seconds) * 1_000_000_000 + int((fraction[:9] or b"0").ljust(9, b"0")))


# -- unpacking -------------------------------------------------------------------------------------


def _member_parts(member: _Member) -> list[str]:
    name = member.name
    if "\0" in name:
        raise UnsafeArchive(name, "its name contains a NUL character")
    if name.startswith("/"):
        raise UnsafeArchive(name, "its name is absolute")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(name, "its name has a `..` component, which would leave the destination")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES or any(
            len(part.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES for part in parts):
        raise UnsafeArchive(name, "its name is too long")
    return parts


def _check_target(member: _Member, parts: list[str], dest: str, dest_real: str) -> None:
    target = member.target
    if not target or "\0" in target:
        raise UnsafeArchive(member.name, "a symlink with an empty target or a NUL in it")
    if target.startswith("/"):
        raise UnsafeArchive(member.name, f"a symlink to the absolute path {display(target)}")
    depth = len(parts) - 1
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise UnsafeArchive(member.name, f"a symlink to {display(target)}, which leaves the destination")
        elif part not in ("", "."):
            depth += 1
    _check_resolved(member.name, os.path.join(dest, *parts[:-1], target), dest_real)


def _check_resolved(name: str, path: str, dest_real: str) -> None:
    real = resolve(path)
    if real is None:
        raise UnsafeArchive(name, f"a symlink that goes through more than {MAX_SYMLINK_HOPS} symlinks")
    if not inside(real, dest_real):
        raise UnsafeArchive(name, f"a symlink that resolves to {display(real)}, outside the destination")


def _make_room(name: str, parent: int, leaf: str) -> None:
    """Remove what is at ``leaf`` (a file, a symlink, an empty directory): it is replaced, never
    written through."""
    try:
        info = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        try:
            os.rmdir(leaf, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise UnsafeArchive(name, "a directory that is not empty is in the way") from None
            raise
    else:
        os.unlink(leaf, dir_fd=parent)


def safe_extract(stream: BinaryIO, dest: Path) -> list[Entry]:
    """Unpack the tar read from ``stream`` (read sequentially, never seeked) into ``dest``,
    created if missing, over what it already holds; the members unpacked. UnsafeArchive for a
    hostile or broken archive (see the module's docstring: what came before it stays)."""
    os.makedirs(dest, exist_ok=True)
    dest_abs = os.path.abspath(dest)
    dest_real = os.path.realpath(dest_abs)
    reader = _TarReader(stream)
    root_fd = os.open(dest_abs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    dirs = _DirFds(root_fd)
    unpacked: list[Entry] = []
    directories: dict[str, tuple[list[str], int, int]] = {}
    links: dict[str, None] = {}
    try:
        while (member := reader.next()) is not None:
            parts = _member_parts(member)
            if member.kind not in TYPES:
                detail = f" (to {display(member.target)})" if member.kind == "a hard link" else ""
                raise UnsafeArchive(member.name, f"it is {member.kind}{detail}; only files, directories and "
                                                 "symlinks are unpacked")
            if not parts:
                if member.kind == DIR:
                    continue  # `./`: the destination itself
                raise UnsafeArchive(member.name, "an empty name")
            rel = "/".join(parts)
            try:
                parent = dirs.open(parts[:-1], create=True)
            except _Blocked as exc:
                raise UnsafeArchive(member.name, f"its parent {display(exc.prefix)} {exc.what} in the destination; "
                                                 "nothing is written through it") from None
            leaf, mode = parts[-1], member.mode & 0o777
            mtime = member.mtime_ns / 1_000_000_000
            if member.kind == FILE:
                _unpack_file(reader, member, parent, leaf, mode)
                unpacked.append(Entry(rel, FILE, member.size, mode, mtime, offset=member.offset))
            elif member.kind == DIR:
                try:
                    os.mkdir(leaf, 0o777, dir_fd=parent)
                except FileExistsError:
                    if not stat.S_ISDIR(os.stat(leaf, dir_fd=parent, follow_symlinks=False).st_mode):
                        _make_room(member.name, parent, leaf)
                        os.mkdir(leaf, 0o777, dir_fd=parent)
                directories[rel] = (parts, mode, member.mtime_ns)
                unpacked.append(Entry(rel, DIR, 0, mode, mtime))
            else:
                _check_target(member, parts, dest_abs, dest_real)
                _make_room(member.name, parent, leaf)
                os.symlink(member.target, leaf, dir_fd=parent)
                os.utime(leaf, ns=(member.mtime_ns, member.mtime_ns), dir_fd=parent, follow_symlinks=False)
                links[rel] = None
                unpacked.append(Entry(rel, SYMLINK, 0, 0o777, mtime, target=member.target))
        reader.drain()
        _recheck_links(links, dest_abs, dest_real)
        _finish_directories(dirs, directories)
    finally:
        dirs.close()
        os.close(root_fd)
    return unpacked


def _unpack_file(reader: _TarReader, member: _Member, parent: int, leaf: str, mode: int) -> None:
    try:
        fd = os.open(leaf, _OPEN_CREATE, 0o600, dir_fd=parent)
    except FileExistsError:
        _make_room(member.name, parent, leaf)
        try:
            fd = os.open(leaf, _OPEN_CREATE, 0o600, dir_fd=parent)
        except FileExistsError:
            raise UnsafeArchive(member.name, "it was re-created by someone else while being unpacked") from None
    try:
        reader.copy_to(fd, member)
        os.fchmod(fd, mode)
        os.utime(fd, ns=(member.mtime_ns, member.mtime_ns))
    finally:
        os.close(fd)


def _recheck_links(links: dict[str, None], dest: str, dest_real: str) -> None:
    """A link that was inside when made may leave once later members changed what its target
    passes through (``a/up -> ..`` after ``b -> a/up/..``): check them all again."""
    for rel in links:
        path = os.path.join(dest, rel)
        try:
            if not stat.S_ISLNK(os.lstat(path).st_mode):
                continue
        except OSError:
            continue
        try:
            _check_resolved(rel, path, dest_real)
        except UnsafeArchive:
            os.unlink(path)
            raise


def _finish_directories(dirs: _DirFds, directories: dict[str, tuple[list[str], int, int]]) -> None:
    """Modes and mtimes of the directory members, deepest first, after their contents."""
    for parts, mode, mtime_ns in sorted(directories.values(), key=lambda item: -len(item[0])):
        try:
            fd = dirs.open(parts)
        except (_Blocked, OSError):
            continue  # replaced by a later member
        os.chmod(fd, mode)
        os.utime(fd, ns=(mtime_ns, mtime_ns))
