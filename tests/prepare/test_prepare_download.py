"""Downloads against a local HTTP server: resume, checksums, login flows, secrets kept out of logs, manual steps."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging

import pytest

from mseg_semantic.prepare import download as dl
from mseg_semantic.prepare.credentials import Secret, load_credentials, redact
from mseg_semantic.prepare.specs import SPECS, get_spec
from mseg_semantic.tool.prepare import main

from prepare_helpers import PASSWORD, USER

PAYLOAD = bytes(range(256)) * 4000  # ~1 MB, not a multiple of the read chunk


def test_fetch_resumes_a_dropped_connection_with_a_range_request(http_server, tmp_path):
    http_server.files["/big.zip"] = PAYLOAD
    http_server.truncate_once.add("/big.zip")
    dest = dl.fetch(f"{http_server.base}/big.zip", tmp_path / "big.zip", progress=False, retries=3, retry_wait=0)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "big.zip.part").exists()
    ranges = [h.get("Range") for (_, path, h) in http_server.requests if path == "/big.zip"]
    assert ranges[0] is None and ranges[1] == f"bytes={len(PAYLOAD) // 2}-"


def test_fetch_continues_an_existing_part_file(http_server, tmp_path):
    http_server.files["/a.zip"] = PAYLOAD
    (tmp_path / "a.zip.part").write_bytes(PAYLOAD[:1000])
    dl.fetch(f"{http_server.base}/a.zip", tmp_path / "a.zip", progress=False)
    assert (tmp_path / "a.zip").read_bytes() == PAYLOAD
    assert http_server.requests[-1][2].get("Range") == "bytes=1000-"


def test_fetch_refuses_an_html_page_and_a_404(http_server, tmp_path):
    with pytest.raises(dl.DownloadError, match="HTTP 404"):
        dl.fetch(f"{http_server.base}/missing.zip", tmp_path / "m.zip", progress=False)
    with pytest.raises(dl.DownloadError, match="HTML page"):
        dl.fetch(f"{http_server.base}/accounts/login", tmp_path / "x.zip", progress=False)
    assert not (tmp_path / "x.zip").exists()


def _local_spec(monkeypatch, key, base, **archive_urls):
    spec = SPECS[key]
    archives = tuple(dataclasses.replace(a, url=archive_urls.get(a.filename, a.url)) for a in spec.archives)
    monkeypatch.setitem(SPECS, key, dataclasses.replace(spec, archives=archives))
    return SPECS[key]


def test_download_records_sha256_then_detects_a_changed_file(http_server, tmp_path, monkeypatch):
    http_server.files["/stills.zip"] = PAYLOAD
    http_server.files["/labels.zip"] = PAYLOAD[:5000]
    spec = _local_spec(monkeypatch, "camvid", http_server.base, **{
        "701_StillsRaw_full.zip": f"{http_server.base}/stills.zip", "LabeledApproved_full.zip": f"{http_server.base}/labels.zip"})
    results = dl.download_dataset(spec, tmp_path, progress=False)
    assert [r.status for r in results] == ["downloaded", "downloaded"]
    sums = json.loads((tmp_path / ".mseg_prepare" / "checksums.json").read_text())
    assert sums["Camvid/701_StillsRaw_full.zip"]["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    # second run: nothing fetched, the files are checked
    count = len(http_server.requests)
    assert [r.status for r in dl.download_dataset(spec, tmp_path, progress=False)] == ["present", "present"]
    assert len(http_server.requests) == count
    # a file that changed on disk no longer matches what was recorded
    path = tmp_path / "Camvid" / "LabeledApproved_full.zip"
    path.write_bytes(PAYLOAD[:4999] + b"!")
    with pytest.raises(dl.ChecksumMismatch, match="does not match") as info:
        dl.download_dataset(spec, tmp_path, progress=False)
    assert "LabeledApproved_full.zip.sha256-mismatch" in str(info.value)
    assert not path.exists() and path.with_name(path.name + ".sha256-mismatch").exists()


def test_pinned_digest_is_enforced_on_first_download(http_server, tmp_path, monkeypatch):
    http_server.files["/s.tgz"] = PAYLOAD
    spec = SPECS["sunrgbd"]
    archive = dataclasses.replace(spec.archives[0], url=f"{http_server.base}/s.tgz", sha256="0" * 64)
    monkeypatch.setitem(SPECS, "sunrgbd", dataclasses.replace(spec, archives=(archive,)))
    with pytest.raises(dl.ChecksumMismatch, match="published digest"):
        dl.download_dataset(SPECS["sunrgbd"], tmp_path, progress=False)


@pytest.fixture
def local_logins(http_server, monkeypatch):
    monkeypatch.setitem(dl.LOGIN_BASES, "cityscapes", http_server.base)
    monkeypatch.setitem(dl.LOGIN_BASES, "wilddash", http_server.base)
    monkeypatch.delenv("MSEG_CITYSCAPES_USERNAME", raising=False)
    return http_server


def test_cityscapes_login_then_download(local_logins, tmp_path, monkeypatch):
    local_logins.files["/1"] = b"gtfine" * 100
    local_logins.files["/3"] = b"images" * 100
    monkeypatch.setenv("MSEG_CITYSCAPES_USERNAME", USER)
    monkeypatch.setenv("MSEG_CITYSCAPES_PASSWORD", PASSWORD)
    results = dl.download_dataset(get_spec("cityscapes"), tmp_path, progress=False)
    assert [r.status for r in results] == ["downloaded", "downloaded"]
    assert (tmp_path / "Cityscapes" / "gtFine_trainvaltest.zip").read_bytes() == b"gtfine" * 100
    posts = [r for r in local_logins.requests if r[0] == "POST"]
    assert len(posts) == 1 and posts[0][1] == "/login/"  # one login serves both packages


def test_wilddash_login_uses_the_csrf_token_and_credentials_file(local_logins, tmp_path):
    local_logins.files["/download/wd_val_01.zip"] = b"wd" * 50
    creds = tmp_path / "creds.yaml"
    creds.write_text(f"wilddash:\n  username: {USER}\n  password: '{PASSWORD}'\n")
    results = dl.download_dataset(get_spec("wilddash"), tmp_path, credentials_file=creds, progress=False)
    assert results[0].status == "downloaded" and results[1].status == "skipped (optional)"
    assert (tmp_path / "WildDash" / "wd_val_01.zip").read_bytes() == b"wd" * 50


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
    http_server.files["/secret-token-123/data_semantics.zip"] = b"kitti" * 10
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


def test_browser_only_dataset_prints_the_manual_step(tmp_path, capsys):
    code = main(["download", "bdd", "--root", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "bdd100k_seg.zip" in err and "https://bdd-data.berkeley.edu/" in err
    assert str((tmp_path / "BDD" / "bdd100k_seg.zip").resolve()) in err
    # once the file is placed by hand, the step passes and records its digest
    (tmp_path / "BDD").mkdir(exist_ok=True)
    (tmp_path / "BDD" / "bdd100k_seg.zip").write_bytes(b"placed")
    assert main(["download", "bdd", "--root", str(tmp_path), "--no-progress"]) == 0
    sums = json.loads((tmp_path / ".mseg_prepare" / "checksums.json").read_text())
    assert sums["BDD/bdd100k_seg.zip"]["sha256"] == hashlib.sha256(b"placed").hexdigest()


def test_wilddash_archive_is_accepted_under_its_other_name(tmp_path):
    (tmp_path / "WildDash").mkdir()
    (tmp_path / "WildDash" / "wd_val_01.zip").write_bytes(b"v")
    (tmp_path / "WildDash" / "wd_bench_01.zip").write_bytes(b"b")
    results = dl.download_dataset(get_spec("wilddash"), tmp_path, progress=False)
    assert [(r.status, r.path.name) for r in results] == [("present", "wd_val_01.zip"), ("present", "wd_bench_01.zip")]


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
