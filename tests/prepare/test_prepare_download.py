"""Downloads against a local HTTP server: resume, content checks, checksums, login flows, secrets kept out of logs,
manual steps, and a way out of every state a download can leave behind."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import socket

import pytest

from mseg_semantic.download import ChecksumManifest, DownloadError, InvalidContent, content_problem, fetch
from mseg_semantic.prepare import download as dl
from mseg_semantic.prepare.credentials import Secret, load_credentials, redact
from mseg_semantic.prepare.specs import SPECS, get_spec
from mseg_semantic.tool.prepare import main

from prepare_helpers import PASSWORD, USER, tar_bytes, zip_bytes

# ~1 MB, stored (not compressed), not a multiple of the read chunk
PAYLOAD = zip_bytes({"data/blob.bin": bytes(range(256)) * 4000})
SMALL = zip_bytes({"labels/a.png": b"label bytes"})
LOGIN_PAGE = b"<!DOCTYPE html><html><form><input type='password' name='password'></form></html>"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checksums(root) -> dict:
    return json.loads((root / ".mseg_prepare" / "checksums.json").read_text())


def test_fetch_resumes_a_dropped_connection_with_a_range_request(http_server, tmp_path):
    http_server.files["/big.zip"] = PAYLOAD
    http_server.truncate_once.add("/big.zip")
    dest = fetch(f"{http_server.base}/big.zip", tmp_path / "big.zip", progress=False, retries=3, retry_wait=0)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "big.zip.part").exists()
    ranges = [h.get("Range") for (_, path, h) in http_server.requests if path == "/big.zip"]
    assert ranges[0] is None and ranges[1] == f"bytes={len(PAYLOAD) // 2}-"


def test_fetch_continues_an_existing_part_file(http_server, tmp_path):
    http_server.files["/a.zip"] = PAYLOAD
    (tmp_path / "a.zip.part").write_bytes(PAYLOAD[:1000])
    fetch(f"{http_server.base}/a.zip", tmp_path / "a.zip", progress=False)
    assert (tmp_path / "a.zip").read_bytes() == PAYLOAD
    assert http_server.requests[-1][2].get("Range") == "bytes=1000-"


def test_fetch_refuses_an_html_page_and_a_404(http_server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(f"{http_server.base}/missing.zip", tmp_path / "m.zip", progress=False)
    with pytest.raises(DownloadError, match="HTML page"):
        fetch(f"{http_server.base}/accounts/login", tmp_path / "x.zip", progress=False)
    assert not (tmp_path / "x.zip").exists()


def test_content_checks_name_what_is_wrong(tmp_path):
    cases = {
        "ok.zip": (SMALL, None),
        "cut.zip": (SMALL[:-30], "truncated or damaged zip"),
        "page.zip": (LOGIN_PAGE, "HTML page"),
        "ok.tar.gz": (tar_bytes({"a.txt": b"x" * 5000}), None),
        "cut.tgz": (tar_bytes({"a.txt": bytes(range(256)) * 40})[:-40], "truncated gzip stream"),
        "ok.tar": (tar_bytes({"a.txt": b"abc"}, mode="w"), None),
        "cut.tar": (tar_bytes({"a.txt": b"abc" * 1000}, mode="w")[:2048], "truncated tar"),
        "list.txt": (b"scene0000_00\nscene0001_00\n", None),
        "empty.zip": (b"", "empty"),
    }
    for name, (data, expected) in cases.items():
        (tmp_path / name).write_bytes(data)
        problem = content_problem(tmp_path / name)
        assert (problem is None) if expected is None else (expected in problem), (name, problem)


def _local_spec(monkeypatch, key, **archive_changes):
    """SPECS[key] with some archives changed: {filename: {field: value}}."""
    spec = SPECS[key]
    archives = tuple(dataclasses.replace(a, **archive_changes.get(a.filename, {})) for a in spec.archives)
    monkeypatch.setitem(SPECS, key, dataclasses.replace(spec, archives=archives))
    return SPECS[key]


@pytest.fixture
def camvid(http_server, monkeypatch):
    http_server.files["/stills.zip"] = PAYLOAD
    http_server.files["/labels.zip"] = SMALL
    return _local_spec(monkeypatch, "camvid", **{
        "701_StillsRaw_full.zip": {"url": f"{http_server.base}/stills.zip"},
        "LabeledApproved_full.zip": {"url": f"{http_server.base}/labels.zip"}})


def test_download_records_sha256_then_detects_a_changed_file(camvid, http_server, tmp_path):
    results = dl.download_dataset(camvid, tmp_path, progress=False)
    assert [r.status for r in results] == ["downloaded", "downloaded"]
    assert checksums(tmp_path)["Camvid/701_StillsRaw_full.zip"]["sha256"] == sha256(PAYLOAD)
    # second run: nothing fetched, the files are checked
    count = len(http_server.requests)
    assert [r.status for r in dl.download_dataset(camvid, tmp_path, progress=False)] == ["present", "present"]
    assert len(http_server.requests) == count
    # a file that changed on disk no longer matches what was recorded. One policy for prepare and the weights
    # cache (issue 15): the file stays where it is (it may be a deliberate replacement) and is refused until
    # --force or --rerecord; before, prepare moved it aside
    path = tmp_path / "Camvid" / "LabeledApproved_full.zip"
    changed = zip_bytes({"labels/a.png": b"other bytes"})
    path.write_bytes(changed)
    with pytest.raises(dl.DownloadError, match="differs from the") as info:
        dl.download_dataset(camvid, tmp_path, progress=False)
    assert "--force" in str(info.value) and "--rerecord" in str(info.value)
    assert path.read_bytes() == changed


def test_pinned_digest_is_enforced_on_first_download(http_server, tmp_path, monkeypatch):
    http_server.files["/s.tgz"] = tar_bytes({"SUNRGBD/x.txt": b"x"})
    spec = _local_spec(monkeypatch, "sunrgbd", **{"sun_rgbd.tgz": {"url": f"{http_server.base}/s.tgz", "digest": "md5:" + "0" * 32}})
    with pytest.raises(dl.DownloadError, match="published"):
        dl.download_dataset(spec, tmp_path, progress=False)
    assert (tmp_path / "SUNRGBD" / "sun_rgbd.tgz.md5-mismatch").is_file()  # kept for inspection, never used
    assert not (tmp_path / "SUNRGBD" / "sun_rgbd.tgz").exists()


def test_published_digests_ship_for_the_archives_that_have_them():
    assert get_spec("voc2012").archive("VOCtrainval_11-May-2012.tar").digest == "md5:6cd6e144f989b92b3379bac3b3de84fd"
    assert get_spec("coco").archive("train2017.zip").digest.startswith("sha1:")
    for spec in SPECS.values():
        for archive in spec.archives:
            if archive.digest:
                algorithm, _, value = archive.digest.partition(":")
                assert len(value) == {"md5": 32, "sha1": 40, "sha256": 64}[algorithm], archive.filename


# ---------------------------------------------------------------------------------------------- issue 11 item 5
def test_a_login_page_served_as_octet_stream_is_never_recorded(camvid, http_server, tmp_path, capsys):
    http_server.files["/labels.zip"] = LOGIN_PAGE  # served as application/octet-stream
    assert main(["download", "camvid", "--root", str(tmp_path), "--no-progress", "-q"]) == 1  # the server's fault
    err = capsys.readouterr().err
    assert "HTML page" in err and "LabeledApproved_full.zip.invalid" in err and err.count("\n") == 1
    top = tmp_path / "Camvid"
    assert not (top / "LabeledApproved_full.zip").exists() and (top / "LabeledApproved_full.zip.invalid").is_file()
    assert "Camvid/LabeledApproved_full.zip" not in checksums(tmp_path)
    # no dead end: once the server sends the archive, the next run fetches it, and extract can use it
    http_server.files["/labels.zip"] = SMALL
    assert main(["download", "camvid", "--root", str(tmp_path), "--no-progress"]) == 0
    assert (top / "LabeledApproved_full.zip").read_bytes() == SMALL
    assert checksums(tmp_path)["Camvid/LabeledApproved_full.zip"]["sha256"] == sha256(SMALL)


def test_a_bad_file_recorded_by_an_older_version_is_checked_again(camvid, tmp_path):
    top = tmp_path / "Camvid"
    top.mkdir()
    (top / "LabeledApproved_full.zip").write_bytes(LOGIN_PAGE)
    (top / "701_StillsRaw_full.zip").write_bytes(PAYLOAD)
    # what the old manifest held: the login page's digest as the truth, no "checked" field
    (tmp_path / ".mseg_prepare").mkdir()
    (tmp_path / ".mseg_prepare" / "checksums.json").write_text(json.dumps(
        {"Camvid/LabeledApproved_full.zip": {"sha256": sha256(LOGIN_PAGE), "size": len(LOGIN_PAGE), "mtime_ns": 0}}))
    results = dl.download_dataset(camvid, tmp_path, progress=False)
    assert [r.status for r in results] == ["present", "downloaded"]  # moved aside and fetched again
    assert (top / "LabeledApproved_full.zip").read_bytes() == SMALL


def test_a_truncated_archive_placed_by_hand_is_refused_then_the_right_one_recorded(tmp_path, capsys):
    top = tmp_path / "BDD"
    top.mkdir()
    labels = zip_bytes({"bdd100k/labels/sem_seg/masks/train/a.png": b"x" * 3000})
    (top / "bdd100k_sem_seg_labels_trainval.zip").write_bytes(labels[: len(labels) // 2])
    (top / "bdd100k_images_10k.zip").write_bytes(SMALL)
    assert main(["download", "bdd", "--root", str(tmp_path), "--no-progress", "-q"]) == 2  # bad input the user placed
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated or damaged zip" in err and "bdd100k_sem_seg_labels_trainval.zip.invalid" in err
    assert "BDD/bdd100k_sem_seg_labels_trainval.zip" not in checksums(tmp_path)
    # the complete file placed afterwards is recorded, not moved aside
    (top / "bdd100k_sem_seg_labels_trainval.zip").write_bytes(labels)
    assert main(["download", "bdd", "--root", str(tmp_path), "--no-progress"]) == 0
    assert checksums(tmp_path)["BDD/bdd100k_sem_seg_labels_trainval.zip"]["sha256"] == sha256(labels)
    assert (top / "bdd100k_sem_seg_labels_trainval.zip").read_bytes() == labels


def test_force_and_rerecord_are_the_ways_out_of_a_recorded_mismatch(camvid, http_server, tmp_path, caplog):
    dl.download_dataset(camvid, tmp_path, progress=False)
    path = tmp_path / "Camvid" / "LabeledApproved_full.zip"
    replacement = zip_bytes({"labels/a.png": b"replaced on purpose"})
    path.write_bytes(replacement)
    with pytest.raises(dl.DownloadError):
        dl.download_dataset(camvid, tmp_path, progress=False)
    # --rerecord: the file on disk is the truth from now on
    dl.download_dataset(camvid, tmp_path, progress=False, rerecord=True)
    assert checksums(tmp_path)["Camvid/LabeledApproved_full.zip"]["sha256"] == sha256(replacement)
    # --force: fetched again; a stale .part and a set-aside copy go first
    (path.parent / "LabeledApproved_full.zip.part").write_bytes(b"stale bytes of another version")
    (path.parent / "LabeledApproved_full.zip.invalid").write_bytes(LOGIN_PAGE)
    caplog.set_level(logging.INFO)
    results = dl.download_dataset(camvid, tmp_path, progress=False, force=True)
    assert [r.status for r in results] == ["downloaded", "downloaded"]
    assert path.read_bytes() == SMALL and not (path.parent / "LabeledApproved_full.zip.invalid").exists()
    assert checksums(tmp_path)["Camvid/LabeledApproved_full.zip"]["sha256"] == sha256(SMALL)


def test_a_stale_part_that_yields_a_damaged_archive_is_set_aside_and_restarted(camvid, http_server, tmp_path):
    top = tmp_path / "Camvid"
    top.mkdir()
    (top / "LabeledApproved_full.zip.part").write_bytes(b"PK\x03\x04 the start of some other zip")
    with pytest.raises(InvalidContent, match="damaged zip"):
        dl.download_dataset(camvid, tmp_path, progress=False)
    assert not (top / "LabeledApproved_full.zip.part").exists() and (top / "LabeledApproved_full.zip.invalid").is_file()
    dl.download_dataset(camvid, tmp_path, progress=False)  # starts from scratch
    assert (top / "LabeledApproved_full.zip").read_bytes() == SMALL


def test_a_network_failure_exits_1_and_offers_no_part_that_does_not_exist(monkeypatch, tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _local_spec(monkeypatch, "camvid", **{name: {"url": f"http://127.0.0.1:{port}/{name}"}
                                         for name in ("701_StillsRaw_full.zip", "LabeledApproved_full.zip")})
    monkeypatch.setattr("mseg_semantic.download.time.sleep", lambda seconds: None)
    assert main(["download", "camvid", "--root", str(tmp_path), "--no-progress", "-q"]) == 1
    err = capsys.readouterr().err
    assert "download failed after 3 attempts" in err and "resume from" not in err and "rerun to try again" in err


# ---------------------------------------------------------------------------------------------- logins
@pytest.fixture
def local_logins(http_server, monkeypatch):
    """Cityscapes and WildDash pointed at the local server: the login site is the archive URL's site."""
    _local_spec(monkeypatch, "cityscapes", **{
        "gtFine_trainvaltest.zip": {"url": f"{http_server.base}/file-handling/?packageID=1"},
        "leftImg8bit_trainvaltest.zip": {"url": f"{http_server.base}/file-handling/?packageID=3"}})
    _local_spec(monkeypatch, "wilddash", **{
        "wd_val_01.zip": {"url": f"{http_server.base}/download/wd_val_01.zip"},
        "wd_both_01.zip": {"url": f"{http_server.base}/download/wd_bench_01.zip"}})
    monkeypatch.delenv("MSEG_CITYSCAPES_USERNAME", raising=False)
    return http_server


def test_cityscapes_login_then_download(local_logins, tmp_path, monkeypatch):
    gtfine, images = zip_bytes({"gtFine/x": b"gtfine" * 100}), zip_bytes({"leftImg8bit/x": b"images" * 100})
    local_logins.files["/1"] = gtfine
    local_logins.files["/3"] = images
    monkeypatch.setenv("MSEG_CITYSCAPES_USERNAME", USER)
    monkeypatch.setenv("MSEG_CITYSCAPES_PASSWORD", PASSWORD)
    results = dl.download_dataset(get_spec("cityscapes"), tmp_path, progress=False)
    assert [r.status for r in results] == ["downloaded", "downloaded"]
    assert (tmp_path / "Cityscapes" / "gtFine_trainvaltest.zip").read_bytes() == gtfine
    posts = [r for r in local_logins.requests if r[0] == "POST"]
    assert len(posts) == 1 and posts[0][1] == "/login/"  # one login serves both packages


def test_wilddash_login_uses_the_csrf_token_and_credentials_file(local_logins, tmp_path):
    val = zip_bytes({"wd_val_01/a.png": b"wd" * 50})
    local_logins.files["/download/wd_val_01.zip"] = val
    creds = tmp_path / "creds.yaml"
    creds.write_text(f"wilddash:\n  username: {USER}\n  password: '{PASSWORD}'\n")
    results = dl.download_dataset(get_spec("wilddash"), tmp_path, credentials_file=creds, progress=False)
    assert results[0].status == "downloaded" and results[1].status == "skipped (optional)"
    assert (tmp_path / "WildDash" / "wd_val_01.zip").read_bytes() == val


def test_a_refused_login_never_shows_the_secret(local_logins, tmp_path, monkeypatch, capsys, caplog):
    wrong = "Wr0ng-S3cret!"
    monkeypatch.setenv("MSEG_CITYSCAPES_USERNAME", USER)
    monkeypatch.setenv("MSEG_CITYSCAPES_PASSWORD", wrong)
    caplog.set_level(logging.DEBUG)
    code = main(["download", "cityscapes", "--root", str(tmp_path), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2 and "login refused" in captured.err
    text = captured.out + captured.err + caplog.text
    assert wrong not in text and "Wr0ng" not in text
    # the exception itself is clean too
    with pytest.raises(dl.DownloadError) as info:
        dl.download_dataset(get_spec("cityscapes"), tmp_path, progress=False)
    assert wrong not in str(info.value) and wrong not in repr(info.value.__context__ or "")


def test_personal_link_is_never_printed(http_server, tmp_path, monkeypatch, caplog):
    http_server.files["/secret-token-123/data_semantics.zip"] = SMALL
    monkeypatch.setenv("MSEG_KITTI_URL", f"{http_server.base}/secret-token-123/data_semantics.zip")
    caplog.set_level(logging.INFO)
    results = dl.download_dataset(get_spec("kitti"), tmp_path, progress=False)
    assert results[0].status == "downloaded"
    assert "secret-token-123" not in caplog.text
    monkeypatch.setenv("MSEG_KITTI_URL", f"{http_server.base}/secret-token-123/gone.zip")
    (tmp_path / "KITTI" / "data_semantics.zip").unlink()
    with pytest.raises(dl.ManualStepRequired) as info:
        dl.download_dataset(get_spec("kitti"), tmp_path, progress=False)
    assert "secret-token-123" not in str(info.value) and "HTTP 404" in str(info.value)


# ---------------------------------------------------------------------------------------------- releases, manual steps
def test_browser_only_dataset_prints_the_manual_step_for_todays_files(tmp_path, capsys):
    code = main(["download", "bdd", "--root", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "bdd100k_images_10k.zip" in err and "bdd100k_sem_seg_labels_trainval.zip" in err
    assert "https://bdd-data.berkeley.edu/" in err and "bdd100k_seg.zip" in err  # the 2018 archive is named as accepted
    assert str((tmp_path / "BDD" / "bdd100k_images_10k.zip").resolve()) in err
    # MSeg's 2018 archive placed by hand (under the name of its legacy link) is a complete release on its own
    (tmp_path / "BDD" / "bdd100k_seg_2018.zip").write_bytes(SMALL)
    assert main(["download", "bdd", "--root", str(tmp_path), "--no-progress"]) == 0
    assert checksums(tmp_path)["BDD/bdd100k_seg_2018.zip"]["sha256"] == sha256(SMALL)
    assert "bdd100k_seg.zip" in capsys.readouterr().out


def test_mapillary_personal_link_to_the_v2_package_is_saved_under_its_name(http_server, tmp_path, monkeypatch):
    http_server.files["/sig/mapillary-vistas-dataset_public_v2.0.zip"] = SMALL
    monkeypatch.setenv("MSEG_MAPILLARY_URL", f"{http_server.base}/sig/mapillary-vistas-dataset_public_v2.0.zip")
    results = dl.download_dataset(get_spec("mapillary"), tmp_path, progress=False)
    assert [(r.archive, r.status) for r in results] == [("mapillary-vistas-dataset_public_v2.0.zip", "downloaded")]
    assert (tmp_path / "MapillaryVistasPublic" / "mapillary-vistas-dataset_public_v2.0.zip").is_file()
    # a v1.2 archive placed by hand makes v1.2 the release in use (the first in order of preference)
    (tmp_path / "MapillaryVistasPublic" / "mapillary-vistas-dataset_public_v1.2.zip").write_bytes(SMALL)
    assert [r.archive for r in dl.download_dataset(get_spec("mapillary"), tmp_path, progress=False)] == [
        "mapillary-vistas-dataset_public_v1.2.zip"]


def test_wilddash_archive_is_accepted_under_its_other_name(tmp_path):
    (tmp_path / "WildDash").mkdir()
    (tmp_path / "WildDash" / "wd_val_01.zip").write_bytes(SMALL)
    (tmp_path / "WildDash" / "wd_bench_01.zip").write_bytes(zip_bytes({"wd_both_01/x.jpg": b"b"}))
    results = dl.download_dataset(get_spec("wilddash"), tmp_path, progress=False)
    assert [(r.status, r.path.name) for r in results] == [("present", "wd_val_01.zip"), ("present", "wd_bench_01.zip")]


def test_one_manifest_serves_both_tools(tmp_path):
    """prepare's checksums.json and the weights cache's are the same class with the same policy."""
    from mseg_semantic.model import weights

    assert dl.prepare_manifest(tmp_path).__class__ is ChecksumManifest
    assert weights._manifest(tmp_path).__class__ is ChecksumManifest


def test_credentials_env_overrides_file_and_values_stay_hidden(tmp_path):
    creds_file = tmp_path / "c.yaml"
    creds_file.write_text("idd:\n  url: https://file/x\ncityscapes:\n  username: u\n  password: p\n")
    creds = load_credentials("cityscapes", creds_file, environ={"MSEG_CITYSCAPES_PASSWORD": "from-env"})
    assert creds.get("username").reveal() == "u" and creds.get("password").reveal() == "from-env"
    assert creds.sources["password"] == "$MSEG_CITYSCAPES_PASSWORD"
    assert "from-env" not in repr(creds) and str(Secret("abc")) == "***"
    assert redact("user=a%40b&pw=p%26q", Secret("a@b"), Secret("p&q")) == "user=***&pw=***"
    creds_file.write_text("cityscapes:\n  passwrd: x\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_credentials("cityscapes", creds_file, environ={})
    creds_file.write_text("cityscapes: [unclosed 'my-password\n")
    with pytest.raises(ValueError) as info:
        load_credentials("cityscapes", creds_file, environ={})
    assert "my-password" not in str(info.value)
