"""A truncated or damaged archive is always refused, at every cut point: nothing extracted, nothing marked finished.

tarfile's stream reader takes an end of data inside a member header for the end of the archive and never checks
the gzip trailer, so a .tar.gz cut at the right place used to extract a part and be marked done."""

from __future__ import annotations

import io
import os
import random
import tarfile
import zipfile

import pytest

from mseg_semantic.prepare.extract import ArchiveError, extract_archive

CUTS = 32


def _members() -> list[tuple[str, bytes]]:
    rng = random.Random(0)
    # sizes around block and record boundaries; random bytes so compression leaves most of the length
    return [(f"data/file{i}.bin", rng.randbytes(size)) for i, size in enumerate([700, 512, 1, 3000, 10240, 90])]


def _tar_bytes(mode: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tf:
        for name, data in _members():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in _members():
            zf.writestr(name, data)
    return buffer.getvalue()


def _cut_points(end: int) -> list[int]:
    """``CUTS`` cut points spread over 1 .. end-1, the last byte included."""
    return sorted({1 + (end - 2) * i // (CUTS - 1) for i in range(CUTS)})


def _assert_refused(tmp_path, name: str, data: bytes) -> None:
    archive = tmp_path / name
    archive.write_bytes(data)
    dest, marker = tmp_path / "dest", tmp_path / "done.json"
    with pytest.raises(ArchiveError, match="truncated or damaged|not a zip or tar archive"):
        extract_archive(archive, dest, marker, progress=False)
    assert not marker.exists()
    assert not dest.exists() or not any(dest.iterdir())


def test_whole_archives_extract(tmp_path):
    for name, data in [("a.tar.gz", _tar_bytes("w:gz")), ("a.tar", _tar_bytes("w")), ("a.tar.bz2", _tar_bytes("w:bz2")),
                       ("a.tar.xz", _tar_bytes("w:xz")), ("a.zip", _zip_bytes())]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / name).write_bytes(data)
        assert extract_archive(folder / name, folder / "dest", folder / "done.json", progress=False)
        for member, content in _members():
            assert (folder / "dest" / member).read_bytes() == content


@pytest.mark.parametrize("name,mode", [("a.tar.gz", "w:gz"), ("a.tar.bz2", "w:bz2"), ("a.tar.xz", "w:xz")])
def test_a_compressed_tar_cut_anywhere_is_refused(tmp_path, name, mode):
    data = _tar_bytes(mode)
    for cut in _cut_points(len(data)):
        _assert_refused(tmp_path, name, data[:cut])


def test_a_plain_tar_cut_anywhere_before_its_end_blocks_is_refused(tmp_path):
    data = _tar_bytes("w")
    # what follows the two zero blocks is padding to a 10 KiB record: a cut there loses nothing
    content = -(-len(data.rstrip(b"\0")) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    end = content + 2 * tarfile.BLOCKSIZE
    for cut in _cut_points(end):
        _assert_refused(tmp_path, "a.tar", data[:cut])
    # the cuts that hit a member boundary exactly: tarfile takes them for the end of the archive
    boundaries = [cut for cut in range(tarfile.BLOCKSIZE, content, tarfile.BLOCKSIZE)]
    for cut in boundaries[:: max(1, len(boundaries) // 8)]:
        _assert_refused(tmp_path, "a.tar", data[:cut])


def test_a_zip_cut_anywhere_is_refused(tmp_path):
    data = _zip_bytes()
    for cut in _cut_points(len(data)):
        _assert_refused(tmp_path, "a.zip", data[:cut])


def test_a_tar_gz_with_a_damaged_byte_is_refused(tmp_path):
    data = _tar_bytes("w:gz")
    # from the end of the 10-byte gzip header (its mtime and flags carry nothing the archive needs) to the trailer
    for position in _cut_points(len(data) - 10):
        damaged = bytearray(data)
        damaged[10 + position] ^= 0x55
        _assert_refused(tmp_path, "a.tar.gz", bytes(damaged))


def test_a_truncated_tgz_is_one_line_exit_2_from_the_tool_and_nothing_is_marked_done(tmp_path, capsys):
    from mseg_semantic.prepare import pipeline
    from mseg_semantic.tool.prepare import main

    top = tmp_path / "SUNRGBD"
    top.mkdir()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for i in range(3):
            info = tarfile.TarInfo(f"SUNRGBD/image/{i}.jpg")
            payload = os.urandom(1500)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    data = buffer.getvalue()
    (top / "sun_rgbd.tgz").write_bytes(data[:-4])  # only the gzip trailer's size field is missing
    assert main(["extract", "sunrgbd", "--root", str(tmp_path), "--no-progress", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mseg-prepare: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "sun_rgbd.tgz: truncated or damaged archive" in err
    assert not list(top.glob("SUNRGBD")) and not pipeline.is_done(tmp_path, "sunrgbd", "extract")
