"""The artifact archive: what TarWriter makes is a tar GNU tar reads identically, with manifest
offsets pointing at each file's bytes; safe_extract unpacks it (and GNU tar's own archives) from
a non-seekable stream and refuses hostile archives, naming the member, without writing anything
outside its destination."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ci_queue.artifacts.archive import Entry, TarWriter, UnsafeArchive, _header, safe_extract, write_tar
from ci_queue.artifacts.selection import select

MTIME = 1_700_000_000

# -- helpers ---------------------------------------------------------------------------------------


class Stream:
    """A non-seekable body (no seek, no tell) whose reads return fewer bytes than asked, as a
    socket's may."""

    SIZES = (1, 700, 3, 4096, 100_000, 511, 65_536)

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._at = 0
        self._reads = 0
        self.read_all = False

    def read(self, n: int = -1) -> bytes:
        self._reads += 1
        limit = self.SIZES[self._reads % len(self.SIZES)]
        n = limit if n is None or n < 0 else min(n, limit)
        chunk = bytes(self._data[self._at:self._at + n])
        self._at += len(chunk)
        if not chunk:
            self.read_all = True
        return chunk


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything below ``root`` (symlinks not followed): kind, mode, mtime, content or target."""
    found: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                found[rel] = ("symlink", os.readlink(path), int(info.st_mtime))
            elif stat.S_ISDIR(info.st_mode):
                found[rel] = ("dir", info.st_mode & 0o7777, int(info.st_mtime))
            else:
                with open(path, "rb") as f:
                    found[rel] = ("file", info.st_mode & 0o7777, int(info.st_mtime), f.read())
    return found


def settle_mtimes(root: Path) -> None:
    """Whole-second mtimes everywhere (the archive stores whole seconds), directories last."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (MTIME, MTIME), follow_symlinks=False)
    os.utime(root, (MTIME, MTIME))


def archive_of(root: Path, patterns: list[str] | None = None, chunk_size: int = 1 << 20) -> tuple[bytes, TarWriter]:
    writer = TarWriter(root, select(root, patterns or ["."]).entries, chunk_size=chunk_size)
    data = b"".join(writer.chunks())
    return data, writer


def gnu_tar(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["tar", *map(str, args)], capture_output=True, check=True)


NON_UTF8 = os.fsdecode(b"latin-\xe9.txt")
LONG = "l" * 120 + "/" + "n" * 150


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    files = {
        "empty": b"",
        "small.txt": b"hello\n",
        "exact512": b"a" * 512,
        "big.bin": os.urandom(300_001),
        "dir/nested/deep.txt": b"deep",
        "ünïcödé/файл.txt": "ünïcödé".encode(),
        LONG: b"a long name",
        "spaces and 'quotes'.txt": b"q",
        NON_UTF8: b"latin",
    }
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    (root / "emptydir").mkdir()
    (root / "link_to_small").symlink_to("small.txt")
    (root / "dir" / "up").symlink_to("../small.txt")
    (root / "dirlink").symlink_to("dir")
    (root / "small.txt").chmod(0o600)
    (root / "big.bin").chmod(0o755)
    (root / "dir").chmod(0o750)
    settle_mtimes(root)
    return root


# -- TarWriter and GNU tar -------------------------------------------------------------------------


def test_gnu_tar_reads_what_tarwriter_writes(tree: Path, tmp_path: Path) -> None:
    data, writer = archive_of(tree, chunk_size=65_536)  # big.bin takes the large-file path
    assert writer.warnings == []
    assert len(data) == writer.size and writer.size % 10240 == 0
    archive = tmp_path / "out.tar"
    archive.write_bytes(data)

    listed = gnu_tar("--quoting-style=literal", "-tf", archive).stdout.split(b"\n")[:-1]
    expected = [e.path + "/" if e.type == "dir" else e.path for e in writer.manifest]
    assert [os.fsdecode(name) for name in listed] == expected

    out = tmp_path / "gnu"
    out.mkdir()
    gnu_tar("-xf", archive, "-C", out)
    assert snapshot(out) == snapshot(tree)


def test_manifest_offsets_point_at_each_files_bytes(tree: Path) -> None:
    data, writer = archive_of(tree, chunk_size=65_536)
    files = [e for e in writer.manifest if e.type == "file"]
    assert len(files) == 9
    for entry in files:
        assert entry.offset is not None and entry.offset % 512 == 0
        assert data[entry.offset:entry.offset + entry.size] == (tree / entry.path).read_bytes(), entry.path
        assert entry.size == (tree / entry.path).stat().st_size
    by_path = {e.path: e for e in writer.manifest}
    assert by_path["small.txt"].mode == 0o600 and by_path["big.bin"].mode == 0o755
    assert by_path["dir"] == Entry("dir", "dir", 0, 0o750, float(MTIME))
    assert by_path["dir/up"].target == "../small.txt" and by_path["dirlink"].type == "symlink"
    assert all(e.mtime == MTIME for e in writer.manifest)


def test_tarwriter_chunks_are_bounded(tree: Path) -> None:
    writer = TarWriter(tree, select(tree, ["."]).entries, chunk_size=65_536)
    sizes = [len(chunk) for chunk in writer.chunks()]
    assert max(sizes) <= 65_536 + 512 * 3 and sum(sizes) == writer.size


def test_write_tar_is_the_same_stream(tree: Path) -> None:
    entries = select(tree, ["."]).entries
    out = io.BytesIO()
    manifest = write_tar(tree, entries, out)
    data, writer = archive_of(tree)
    assert out.getvalue() == data and manifest == writer.manifest


def test_absolute_symlinks_inside_become_relative(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "file").write_bytes(b"f")
    (root / "a" / "abs").symlink_to(root / "file")
    _, writer = archive_of(root)
    assert [e.target for e in writer.manifest if e.path == "a/abs"] == ["../file"]


def test_setuid_bits_are_not_archived(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "tool").write_bytes(b"#!/bin/sh\n")
    (root / "tool").chmod(0o4755)
    data, writer = archive_of(root)
    assert writer.manifest[0].mode == 0o755
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert archive.getmember("tool").mode == 0o755


# -- the workspace changes while it is archived ------------------------------------------------------


def test_a_file_that_shrinks_while_read_is_padded(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "log").write_bytes(b"x" * 64 * 1024)
    writer = TarWriter(root, ["log"], chunk_size=4096)
    chunks = writer.chunks()
    first = next(chunks)  # the header went out; the data is read after this
    os.truncate(root / "log", 10_000)
    data = first + b"".join(chunks)
    assert any("`log` shrank" in w for w in writer.warnings)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert archive.getmember("log").size == 64 * 1024
    offset = writer.manifest[0].offset
    assert data[offset:offset + 65536] == b"x" * 10_000 + bytes(65536 - 10_000)
    (tmp_path / "t.tar").write_bytes(data)
    assert gnu_tar("-tf", tmp_path / "t.tar").stdout == b"log\n"


def test_a_file_that_grows_while_read_is_cut(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "log").write_bytes(b"x" * 64 * 1024)
    writer = TarWriter(root, ["log", "after"], chunk_size=4096)
    (root / "after").write_bytes(b"after")
    chunks = writer.chunks()
    first = next(chunks)
    with open(root / "log", "ab") as f:
        f.write(b"y" * 5000)
    data = first + b"".join(chunks)
    assert any("`log` grew" in w for w in writer.warnings)
    (tmp_path / "t.tar").write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    gnu_tar("-xf", tmp_path / "t.tar", "-C", out)
    assert (out / "log").read_bytes() == b"x" * 64 * 1024 and (out / "after").read_bytes() == b"after"


def test_a_small_file_that_changes_size_keeps_its_header_size(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"0123456789" * 2)
    writer = TarWriter(tmp_path, [])
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert writer._read_small(fd, "f", 10) == b"0123456789"
        os.lseek(fd, 0, os.SEEK_SET)
        assert writer._read_small(fd, "f", 25) == b"0123456789" * 2 + bytes(5)
    finally:
        os.close(fd)
    assert len(writer.warnings) == 2


def test_an_entry_swapped_for_a_symlink_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret").write_bytes(b"SECRET")
    (outside / "dir" / "inner").write_bytes(b"SECRET")
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "inner").write_bytes(b"fine")
    (root / "file").write_bytes(b"fine")
    entries = select(root, ["."]).entries
    assert entries == ["dir", "dir/inner", "file"]
    (root / "file").unlink()
    (root / "file").symlink_to(outside / "secret")
    (root / "dir" / "inner").unlink()
    (root / "dir").rmdir()
    (root / "dir").symlink_to(outside / "dir")
    writer = TarWriter(root, entries)
    data = b"".join(writer.chunks())
    assert b"SECRET" not in data
    assert [e.path for e in writer.manifest] == []
    assert len(writer.warnings) == 3  # dir: now a symlink out; dir/inner: below a symlink; file: a symlink out


def test_special_files_in_the_entries_are_skipped(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")  # opening it for reading would block
    (tmp_path / "file").write_bytes(b"f")
    writer = TarWriter(tmp_path, ["file", "pipe", "gone", "../escape", "a//b"])
    b"".join(writer.chunks())
    assert [e.path for e in writer.manifest] == ["file"]
    assert len(writer.warnings) == 4


# -- safe_extract: round trips ---------------------------------------------------------------------


def test_safe_extract_unpacks_tarwriter_archives_from_a_stream(tree: Path, tmp_path: Path) -> None:
    data, writer = archive_of(tree, chunk_size=65_536)
    stream = Stream(data)
    dest = tmp_path / "dest"
    unpacked = safe_extract(stream, dest)
    assert unpacked == writer.manifest  # offsets included: they are where the data was in the stream
    assert snapshot(dest) == snapshot(tree)
    assert stream.read_all  # the record padding was read too (the transport checks the whole body)


@pytest.mark.parametrize("fmt", ["gnu", "pax", "oldgnu"])
def test_safe_extract_unpacks_gnu_tar_archives(tree: Path, tmp_path: Path, fmt: str) -> None:
    archive = tmp_path / "gnu.tar"
    gnu_tar(f"--format={fmt}", "-cf", archive, "-C", tree, ".")
    dest = tmp_path / "dest"
    with open(archive, "rb") as f:
        safe_extract(Stream(f.read()), dest)
    expected = snapshot(tree)
    assert snapshot(dest) == expected


def test_a_later_archive_overwrites_earlier_files(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "keep").parent.mkdir(parents=True)
    (dest / "keep").write_bytes(b"kept")
    (dest / "a").write_bytes(b"old content, longer")
    (dest / "a").chmod(0o600)
    (dest / "empty_dir_becomes_file").mkdir()
    (dest / "file_becomes_dir").write_bytes(b"f")
    safe_extract(io.BytesIO(build(
        member("a", data=b"new", mode=0o644),
        member("empty_dir_becomes_file", data=b"file now"),
        member("file_becomes_dir", tarfile.DIRTYPE, mode=0o755),
    )), dest)
    assert (dest / "a").read_bytes() == b"new" and stat.S_IMODE((dest / "a").stat().st_mode) == 0o644
    assert (dest / "keep").read_bytes() == b"kept"
    assert (dest / "empty_dir_becomes_file").read_bytes() == b"file now"
    assert (dest / "file_becomes_dir").is_dir()


def test_modes_are_permission_bits_only_and_mtimes_kept(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    safe_extract(io.BytesIO(build(
        member("suid", data=b"x", mode=0o4755, mtime=1234567890),
        member("sticky", tarfile.DIRTYPE, mode=0o1777, mtime=1234567000),
        member("sticky/readonly", data=b"r", mode=0o444),
    )), dest)
    assert stat.S_IMODE((dest / "suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "sticky").stat().st_mode) == 0o777
    assert (dest / "suid").stat().st_mtime == 1234567890
    assert (dest / "sticky").stat().st_mtime == 1234567000  # set after its contents were written
    assert stat.S_IMODE((dest / "sticky" / "readonly").stat().st_mode) == 0o444


def test_safe_extract_accepts_a_leading_dot_slash_and_the_dot_entry(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    safe_extract(io.BytesIO(build(member("./", tarfile.DIRTYPE), member("./a//b", data=b"b"))), dest)
    assert (dest / "a" / "b").read_bytes() == b"b"


def test_pax_names_and_sizes_override_the_ustar_fields(tmp_path: Path) -> None:
    info = tarfile.TarInfo("short")
    info.pax_headers = {"path": "pax/" + "p" * 200, "mtime": "1500000000.5"}
    info.size = 3
    dest = tmp_path / "dest"
    [entry] = safe_extract(io.BytesIO(build((info, b"pax"))), dest)
    assert entry.path == "pax/" + "p" * 200 and entry.mtime == 1500000000.5
    assert (dest / entry.path).read_bytes() == b"pax"


# -- safe_extract: hostile archives ----------------------------------------------------------------


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = None, *, linkname: str = "",
           mode: int = 0o644, mtime: int = MTIME, pax: dict[str, str] | None = None) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, linkname, mode, mtime
    if pax:
        info.pax_headers = pax
    info.size = len(data or b"") if kind == tarfile.REGTYPE else 0
    return info, data or b""


def build(*members: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """``work/dest`` to unpack into and ``work/outside`` next to it; afterwards, nothing in
    ``tmp_path`` but ``dest`` may have changed."""
    work = tmp_path / "work"
    outside = work / "outside"
    (outside / "etc").mkdir(parents=True)
    (outside / "etc" / "passwd").write_bytes(b"root:x:0:0")
    dest = work / "dest"
    dest.mkdir()
    before = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("work/dest/")}
    yield dest, outside
    after = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("work/dest/")}
    after["work/dest"] = before["work/dest"]  # its own mtime changes, of course
    assert after == before, "something outside the destination was written"


def refuse(data: bytes, dest: Path, entry: str, reason: str) -> UnsafeArchive:
    with pytest.raises(UnsafeArchive) as caught:
        safe_extract(Stream(data), dest)
    assert caught.value.entry == entry
    assert reason in str(caught.value)
    assert entry in str(caught.value) or repr(entry) in str(caught.value)
    return caught.value


def test_refuses_dot_dot(site: tuple[Path, Path]) -> None:
    refuse(build(member("../evil", data=b"pwned")), site[0], "../evil", "`..`")


def test_refuses_an_absolute_name(site: tuple[Path, Path], tmp_path: Path) -> None:
    name = f"{tmp_path}/abs-evil"
    refuse(build(member(name, data=b"pwned")), site[0], name, "absolute")


def test_refuses_dot_dot_inside_a_name(site: tuple[Path, Path]) -> None:
    refuse(build(member("a/../../evil", data=b"pwned")), site[0], "a/../../evil", "`..`")


def test_refuses_an_absolute_symlink_and_what_goes_through_it(site: tuple[Path, Path]) -> None:
    dest, outside = site
    refuse(build(member("link", tarfile.SYMTYPE, linkname="/etc"), member("link/passwd", data=b"pwned")),
           dest, "link", "absolute path `/etc`")
    refuse(build(member("link", tarfile.SYMTYPE, linkname=str(outside / "etc")),
                 member("link/passwd", data=b"pwned")), dest, "link", "absolute")
    assert not (dest / "link").exists()


def test_refuses_a_symlink_leaving_the_destination(site: tuple[Path, Path]) -> None:
    refuse(build(member("link", tarfile.SYMTYPE, linkname="../../outside"), member("link/x", data=b"pwned")),
           site[0], "link", "leaves the destination")
    refuse(build(member("a/b/link", tarfile.SYMTYPE, linkname="../../../outside/etc")), site[0], "a/b/link",
           "leaves the destination")


def test_refuses_a_symlink_chain_that_escapes_in_two_steps(site: tuple[Path, Path]) -> None:
    dest, _ = site
    # each link is inside on its own; together `esc` is dest/..
    refuse(build(member("a/up", tarfile.SYMTYPE, linkname=".."), member("esc", tarfile.SYMTYPE, linkname="a/up/.."),
                 member("esc/outside/etc/passwd", data=b"pwned")), dest, "esc", "outside the destination")


def test_refuses_a_chain_whose_second_step_comes_later(site: tuple[Path, Path]) -> None:
    dest, _ = site
    # `esc -> a/up/..` is dest/a while a/up does not exist yet; a/up -> .. then makes it dest/..
    refuse(build(member("a", tarfile.DIRTYPE), member("esc", tarfile.SYMTYPE, linkname="a/up/.."),
                 member("a/up", tarfile.SYMTYPE, linkname="..")), dest, "esc", "outside the destination")
    assert not (dest / "esc").is_symlink()


def test_refuses_a_long_symlink_chain(site: tuple[Path, Path]) -> None:
    # resolving each new link walks the chain: bounded as the kernel bounds it (40 links)
    links = [member(f"l{i}", tarfile.SYMTYPE, linkname=f"l{i - 1}" if i else "f") for i in range(2000)]
    refuse(build(member("f", data=b"f"), *links), site[0], "l41", "more than 40 symlinks")


def test_refuses_writing_through_a_symlink_from_the_archive(site: tuple[Path, Path]) -> None:
    dest, _ = site
    # even a link that stays inside is never a parent: the archive must not steer writes
    refuse(build(member("real", tarfile.DIRTYPE), member("dist", tarfile.SYMTYPE, linkname="real"),
                 member("dist/app", data=b"app")), dest, "dist/app", "its parent `dist` is a symlink")
    assert not (dest / "real" / "app").exists()


def test_refuses_hard_links(site: tuple[Path, Path]) -> None:
    dest, _ = site
    refuse(build(member("passwd", tarfile.LNKTYPE, linkname="/etc/passwd")), dest, "passwd", "hard link")
    refuse(build(member("a", data=b"a"), member("b", tarfile.LNKTYPE, linkname="a")), dest, "b", "hard link")
    assert not (dest / "passwd").exists() and not (dest / "b").exists()


@pytest.mark.parametrize(("kind", "what"), [(tarfile.CHRTYPE, "character device"), (tarfile.BLKTYPE, "block device"),
                                            (tarfile.FIFOTYPE, "fifo"), (tarfile.GNUTYPE_SPARSE, "sparse")])
def test_refuses_devices_fifos_and_sparse_files(site: tuple[Path, Path], kind: bytes, what: str) -> None:
    info, data = member("node", kind)
    info.devmajor, info.devminor = 1, 3
    refuse(build((info, data), fmt=tarfile.GNU_FORMAT), site[0], "node", what)
    assert not os.path.lexists(site[0] / "node")


def test_refuses_a_name_with_nul(site: tuple[Path, Path]) -> None:
    refuse(build(member("ok", data=b"x", pax={"path": "evil\0/../../x"})), site[0], "evil\0/../../x", "NUL")


def test_refuses_a_truncated_archive(site: tuple[Path, Path]) -> None:
    dest, _ = site
    data = build(member("first", data=b"1" * 1000), member("second", data=b"2" * 5000))
    refuse(data[:2048 + 100], dest, "second", "truncated")  # in the second member's data
    refuse(data[:1536 + 100], dest, "first", "truncated")  # in the second member's header
    refuse(data[:512 + 1024 + 512 + 5120], dest, "second", "end-of-archive")  # the end blocks are missing


def test_refuses_a_member_larger_than_the_stream(site: tuple[Path, Path]) -> None:
    info, _ = member("huge")
    info.size = 1 << 30
    data = info.tobuf(tarfile.PAX_FORMAT) + b"only this"
    error = refuse(data, site[0], "huge", "more than the stream holds")
    assert "1073741815 bytes" in str(error)


def test_refuses_a_corrupt_header(site: tuple[Path, Path]) -> None:
    data = bytearray(build(member("file", data=b"x")))
    data[10] = ord("X")  # in the name: the checksum no longer matches
    refuse(bytes(data), site[0], "(header at byte 0)", "checksum")


def test_refuses_an_oversized_extended_header(site: tuple[Path, Path]) -> None:
    refuse(build(member("f", data=b"x", pax={"comment": "x" * (2 << 20)})), site[0], "(header at byte 0)",
           "extended headers of")


def test_refuses_many_extended_headers_for_one_member(site: tuple[Path, Path]) -> None:
    # each one small, together unbounded: they are all held in memory
    headers = b"".join(tarfile.TarInfo._create_pax_generic_header({f"key{i}": "v" * 600_000}, tarfile.XHDTYPE,
                                                                  "utf-8") for i in range(4))
    data = headers + build(member("f", data=b"x"))
    refuse(data, site[0], f"(header at byte {len(headers) // 4})", "extended headers of")  # the second


def test_refuses_data_after_a_lone_end_block(site: tuple[Path, Path]) -> None:
    data = build(member("a", data=b"a"))
    hidden = build(member("hidden", data=b"h"))
    refuse(data[:1024] + bytes(512) + hidden, site[0], "(header at byte 1024)", "follows an end-of-archive block")


def test_a_symlink_in_the_destination_is_not_written_through(site: tuple[Path, Path]) -> None:
    dest, outside = site
    (dest / "dist").symlink_to(outside)
    refuse(build(member("dist/app", data=b"pwned")), dest, "dist/app", "its parent `dist` is a symlink")
    (dest / "dist").unlink()
    (dest / "dist").symlink_to("../outside")
    # a directory member replaces the link (as a file member does) rather than going through it
    safe_extract(Stream(build(member("dist", tarfile.DIRTYPE), member("dist/etc/passwd", data=b"ours"))), dest)
    assert not (dest / "dist").is_symlink()
    assert (dest / "dist" / "etc" / "passwd").read_bytes() == b"ours"


def test_an_existing_symlink_at_a_files_path_is_replaced(site: tuple[Path, Path]) -> None:
    dest, outside = site
    (dest / "app").symlink_to(outside / "etc" / "passwd")
    (dest / "dangling").symlink_to(outside / "new-file")
    safe_extract(io.BytesIO(build(member("app", data=b"app"), member("dangling", data=b"d"))), dest)
    assert not (dest / "app").is_symlink() and (dest / "app").read_bytes() == b"app"
    assert (dest / "dangling").read_bytes() == b"d"


def test_an_existing_hard_link_is_not_written_through(site: tuple[Path, Path]) -> None:
    dest, outside = site
    os.link(outside / "etc" / "passwd", dest / "passwd")
    safe_extract(io.BytesIO(build(member("passwd", data=b"pwned"))), dest)
    assert (dest / "passwd").read_bytes() == b"pwned"
    assert (outside / "etc" / "passwd").read_bytes() == b"root:x:0:0"


def test_a_directory_with_contents_in_the_way_is_refused(site: tuple[Path, Path]) -> None:
    dest, _ = site
    (dest / "d").mkdir()
    (dest / "d" / "keep").write_bytes(b"k")
    refuse(build(member("d", data=b"file")), dest, "d", "not empty")
    assert (dest / "d" / "keep").read_bytes() == b"k"


# -- the manifest ----------------------------------------------------------------------------------


def test_manifest_json_is_what_json_dumps_makes_of_the_entries(tree: Path) -> None:
    _, writer = archive_of(tree)
    expected = json.dumps([e.to_dict() for e in writer.manifest], separators=(",", ":")).encode()
    assert writer.manifest_json() == expected
    assert writer.files == sum(e.type == "file" for e in writer.manifest) == 9
    assert [Entry.from_dict(item) for item in json.loads(writer.manifest_json())] == writer.manifest


def test_file_headers_are_the_ustar_blocks_of_the_general_builder(tree: Path) -> None:
    """Files with short ASCII names get their header from the writer's own fast path: the same
    bytes as ``_header`` makes (whose output GNU tar reads, above)."""
    data, writer = archive_of(tree)
    fast = [e for e in writer.manifest if e.type == "file" and e.path.isascii() and len(e.path) <= 100]
    assert len(fast) >= 5
    for e in fast:
        assert data[e.offset - 512:e.offset] == _header(e.path, "file", e.mode, int(e.mtime), e.size), e.path


def test_entries_round_trip_through_dicts(tree: Path) -> None:
    _, writer = archive_of(tree)
    assert [Entry.from_dict(e.to_dict()) for e in writer.manifest] == writer.manifest


@pytest.mark.parametrize("bad", [
    {"type": "file", "size": 1, "mode": 0o644, "mtime": 0},  # no path
    {"path": "", "type": "file", "size": 1, "mode": 0o644, "mtime": 0},
    {"path": "../x", "type": "file", "size": 1, "mode": 0o644, "mtime": 0},
    {"path": "/x", "type": "file", "size": 1, "mode": 0o644, "mtime": 0},
    {"path": "x", "type": "fifo", "size": 1, "mode": 0o644, "mtime": 0},
    {"path": "x", "type": "file", "size": -1, "mode": 0o644, "mtime": 0},
    {"path": "x", "type": "file", "size": True, "mode": 0o644, "mtime": 0},
    {"path": "x", "type": "file", "size": 1, "mode": 0o644, "mtime": "now"},
    {"path": "x", "type": "file", "size": 1, "mode": 0o644, "mtime": 0, "offset": -5},
    {"path": "x", "type": "symlink", "size": 0, "mode": 0o777, "mtime": 0},
    "not a dict",
])
def test_entry_from_dict_refuses_what_no_writer_makes(bad: Any) -> None:
    with pytest.raises((KeyError, TypeError, ValueError)):
        Entry.from_dict(bad)


# -- property: any small tree of safe names round-trips byte for byte ----------------------------------

NAMES = st.text(alphabet=st.sampled_from("abcXYZ019 ._-éß日"), min_size=1, max_size=12).filter(
    lambda name: name not in (".", ".."))
TREES = st.recursive(
    st.tuples(st.binary(max_size=3000), st.sampled_from([0o644, 0o600, 0o755, 0o400])),
    lambda children: st.dictionaries(NAMES, children, max_size=4),
    max_leaves=12,
)


def _materialize(root: Path, node: dict[str, Any], links: list[tuple[str, str]]) -> None:
    for name, child in node.items():
        path = root / name
        if isinstance(child, dict):
            path.mkdir()
            _materialize(path, child, links)
        else:
            path.write_bytes(child[0])
            path.chmod(child[1])
            links.append((str(path), name))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=st.dictionaries(NAMES, TREES, max_size=5), link_some=st.booleans())
def test_select_write_extract_round_trips(tmp_path_factory: pytest.TempPathFactory, tree: dict[str, Any],
                                          link_some: bool) -> None:
    base = tmp_path_factory.mktemp("roundtrip")
    root = base / "root"
    root.mkdir()
    files: list[tuple[str, str]] = []
    _materialize(root, tree, files)
    if link_some and files:
        path, name = files[0]
        os.symlink(name, path + ".link")  # a sibling link, relative: inside by construction
    settle_mtimes(root)
    selection = select(root, ["."])
    assert selection.warnings == []
    writer = TarWriter(root, selection.entries, chunk_size=2048)
    data = b"".join(writer.chunks())
    assert writer.warnings == []
    unpacked = safe_extract(Stream(data), base / "dest")
    assert unpacked == writer.manifest
    assert snapshot(base / "dest") == snapshot(root)
