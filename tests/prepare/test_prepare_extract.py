"""Extraction refuses malicious archives, leaves the destination untouched when it does, and is idempotent."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile

import pytest

from mseg_semantic.prepare.extract import ArchiveError, MemberFilter, UnsafeArchiveError, extract_archive, extract_dataset
from mseg_semantic.prepare.specs import get_spec


def make_tar(path, members):
    """members: list of (name, kind, payload/linkname)."""
    with tarfile.open(path, "w:gz") as tf:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(value)
                tf.addfile(info, io.BytesIO(value))
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, value
                tf.addfile(info)
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, value
                tf.addfile(info)
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
                tf.addfile(info)
    return path


def make_zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, kind, value in members:
            if kind == "file":
                zf.writestr(name, value)
            elif kind == "sym":
                info = zipfile.ZipInfo(name)
                info.create_system = 3
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, value)
    return path


MALICIOUS_TARS = {
    "dotdot": [("ok.txt", "file", b"ok"), ("../evil.txt", "file", b"x")],
    "absolute": [("/tmp/evil-abs.txt", "file", b"x")],
    "nested dotdot": [("a/b/../../../evil.txt", "file", b"x")],
    "symlink out": [("link", "sym", "../../outside"), ("link/evil.txt", "file", b"x")],
    # each link stays inside on its own; l2 goes through l1, which points at the extraction root
    "chained symlinks": [("a/b/l1", "sym", "../.."), ("l2", "sym", "a/b/l1/../.."), ("l2/evil.txt", "file", b"x")],
    "symlink escaping through a later link": [("l2", "sym", "a/b/l1/../.."), ("a/b/l1", "sym", "../..")],
    "absolute symlink": [("link", "sym", "/etc/passwd")],
    "hardlink out": [("hl", "hard", "../outside.txt")],
    "device": [("dev", "chr", None)],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS_TARS))
def test_malicious_tar_is_refused_and_nothing_is_written(tmp_path, case):
    archive = make_tar(tmp_path / "bad.tar.gz", MALICIOUS_TARS[case])
    dest = tmp_path / "root" / "dest"
    dest.mkdir(parents=True)
    (dest / "keep.txt").write_text("existing")
    with pytest.raises(UnsafeArchiveError, match="refusing"):
        extract_archive(archive, dest, tmp_path / "marker.json", progress=False)
    assert sorted(os.listdir(dest)) == ["keep.txt"]  # temp dir cleaned, nothing moved in
    assert not (tmp_path / "root" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "marker.json").exists()


@pytest.mark.parametrize("members", [
    [("../evil.txt", "file", b"x")],
    [("/abs.txt", "file", b"x")],
    [("good.txt", "file", b"g"), ("link", "sym", "../../etc/passwd")],
])
def test_malicious_zip_is_refused(tmp_path, members):
    archive = make_zip(tmp_path / "bad.zip", members)
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError, match="refusing"):
        extract_archive(archive, dest, tmp_path / "m.json", progress=False)
    assert not dest.exists() or os.listdir(dest) == []
    assert not (tmp_path / "evil.txt").exists()


def test_internal_links_are_kept_and_extraction_is_idempotent(tmp_path):
    archive = make_tar(tmp_path / "good.tgz", [
        ("top/", "dir", None), ("top/a.txt", "file", b"A"), ("top/rel", "sym", "a.txt"), ("top/hard", "hard", "top/a.txt")])
    dest, marker = tmp_path / "dest", tmp_path / "m.json"
    assert extract_archive(archive, dest, marker, progress=False) is True
    assert (dest / "top" / "a.txt").read_bytes() == b"A"
    assert os.readlink(dest / "top" / "rel") == "a.txt" and (dest / "top" / "hard").read_bytes() == b"A"
    (dest / "top" / "a.txt").write_bytes(b"changed by the user")
    assert extract_archive(archive, dest, marker, progress=False) is False  # marker: nothing redone
    assert (dest / "top" / "a.txt").read_bytes() == b"changed by the user"
    assert extract_archive(archive, dest, marker, progress=False, force=True) is True
    assert (dest / "top" / "a.txt").read_bytes() == b"A"


def test_member_filter_strips_includes_and_excludes(tmp_path):
    archive = make_zip(tmp_path / "voc.zip", [
        ("VOCdevkit/VOC2012/JPEGImages/1.jpg", "file", b"1"), ("VOCdevkit/VOC2012/Annotations/1.xml", "file", b"x"),
        ("VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt", "file", b"1\n"), ("__MACOSX/junk", "file", b"j")])
    dest = tmp_path / "dest"
    extract_archive(archive, dest, tmp_path / "m.json", MemberFilter("VOCdevkit/VOC2012/", ("JPEGImages/", "ImageSets/Segmentation/")),
                    progress=False)
    found = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert found == ["ImageSets/Segmentation/val.txt", "JPEGImages/1.jpg"]


def test_dataset_extraction_merges_archives_and_unpacks_nested_ones(tmp_path):
    top = tmp_path / "COCOPanoptic"
    top.mkdir()
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("panoptic_val2017/000000000139.png", b"png")
    make_zip(top / "panoptic_annotations_trainval2017.zip", [
        ("annotations/panoptic_val2017.json", "file", b"{}"), ("annotations/panoptic_val2017.zip", "file", inner.getvalue()),
        ("annotations/panoptic_train2017.json", "file", b"{}"), ("annotations/panoptic_train2017.zip", "file", inner.getvalue())])
    make_zip(top / "train2017.zip", [("train2017/1.jpg", "file", b"t")])
    make_zip(top / "val2017.zip", [("val2017/2.jpg", "file", b"v")])
    done = extract_dataset(get_spec("coco"), tmp_path, progress=False, delete_archives=True)
    assert len(done) == 5
    assert (top / "images" / "train2017" / "1.jpg").read_bytes() == b"t"
    assert (top / "images" / "val2017" / "2.jpg").read_bytes() == b"v"
    assert (top / "annotations" / "panoptic_val2017" / "000000000139.png").read_bytes() == b"png"
    assert not (top / "train2017.zip").exists()  # --delete-archives
    assert extract_dataset(get_spec("coco"), tmp_path, progress=False) == []  # markers make it a no-op


def test_missing_required_archive_names_the_fix(tmp_path):
    with pytest.raises(ArchiveError, match="mseg-prepare download camvid"):
        extract_dataset(get_spec("camvid"), tmp_path, progress=False)


# ---------------------------------------------------------------------------------------------- issue 11 items 3, 5, 7
def test_hard_link_to_an_absolute_path_is_called_a_hard_link(tmp_path):
    archive = make_tar(tmp_path / "bad.tar.gz", [("hl", "hard", "/etc/passwd")])
    with pytest.raises(UnsafeArchiveError) as info:
        extract_archive(archive, tmp_path / "dest", tmp_path / "m.json", progress=False)
    assert "hard link 'hl' -> '/etc/passwd' points outside the destination" in str(info.value)
    assert "absolute path" not in str(info.value)  # it is not a member with an absolute path


def _zeros_zip(path, megabytes):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("zeros.bin", "w") as member:
        for _ in range(megabytes):
            member.write(bytes(1 << 20))
    return path


def test_zip_bomb_is_refused_before_anything_is_written_and_the_limit_can_be_raised(tmp_path, capsys):
    from mseg_semantic.tool.prepare import main

    top = tmp_path / "WildDash"
    top.mkdir()
    bomb = _zeros_zip(top / "wd_val_01.zip", 100)  # ~100 KB that unpacks to 100 MiB: a ratio of ~1000
    assert bomb.stat().st_size < 200_000
    assert main(["extract", "wilddash", "--root", str(tmp_path), "--no-progress", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bomb) in err and "--max-ratio" in err and "zip bomb" in err
    assert not (top / "zeros.bin").exists() and not list(top.glob(".mseg_extract_tmp*"))
    assert main(["extract", "wilddash", "--root", str(tmp_path), "--no-progress", "-q", "--max-ratio", "2000"]) == 0
    assert (top / "zeros.bin").stat().st_size == 100 << 20


def test_total_size_limit_applies_to_streamed_tar_members(tmp_path):
    from mseg_semantic.prepare.extract import ArchiveTooLarge, ExtractionLimits

    archive = make_tar(tmp_path / "big.tar.gz", [("a.bin", "file", bytes(3000)), ("b.bin", "file", bytes(3000))])
    limits = ExtractionLimits(max_bytes=5000, max_ratio=1e9, floor_bytes=0)
    with pytest.raises(ArchiveTooLarge, match="--max-unpacked-gb"):
        extract_archive(archive, tmp_path / "dest", tmp_path / "m.json", progress=False, limits=limits)
    assert not (tmp_path / "dest" / "a.bin").exists()


@pytest.mark.parametrize("name,cut", [("sun_rgbd.tgz", 60), ("sun_rgbd.tgz", 2000)])
def test_truncated_tgz_is_bad_input_with_one_line(tmp_path, capsys, name, cut):
    from mseg_semantic.tool.prepare import main

    top = tmp_path / "SUNRGBD"
    top.mkdir()
    full = make_tar(tmp_path / "full.tgz", [("SUNRGBD/image/a.jpg", "file", os.urandom(6000))]).read_bytes()
    (top / name).write_bytes(full[:-cut])
    assert main(["extract", "sunrgbd", "--root", str(tmp_path), "--no-progress", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mseg-prepare: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "truncated or damaged" in err and "--force" in err and name in err
    assert not list(top.glob("SUNRGBD")) and not list(top.glob(".mseg_extract_tmp*"))


def test_truncated_plain_tar_is_bad_input_too(tmp_path):
    from mseg_semantic.prepare.extract import ArchiveError

    with tarfile.open(tmp_path / "full.tar", "w") as tf:
        data = os.urandom(5000)
        info = tarfile.TarInfo("a.bin")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    cut = tmp_path / "cut.tar"
    cut.write_bytes((tmp_path / "full.tar").read_bytes()[:3000])
    with pytest.raises(ArchiveError, match="truncated or damaged"):
        extract_archive(cut, tmp_path / "dest", tmp_path / "m.json", progress=False)
