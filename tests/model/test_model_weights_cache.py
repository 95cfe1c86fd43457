"""Weights registry and cache: HTTP download with resume, Google Drive via gdown (faked), checksums, offline.

Never touches the network: HTTP goes to a server on 127.0.0.1 started here, gdown is monkeypatched.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from mseg_semantic.model import weights as W
from mseg_semantic.tool import weights as cli


def _checkpoint_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.arange(3000, dtype=torch.float32)}, buffer)  # a real checkpoint, ~13 KB
    return buffer.getvalue()


PAYLOAD = _checkpoint_bytes()
LOGIN_PAGE = b"<!DOCTYPE html><html><form><input type='password' name='password'></form></html>"


def _damaged(data: bytes) -> bytes:
    """The same checkpoint with one byte of tensor data flipped: still a valid zip, another digest."""
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
REFERENCE_TSV = Path("/work/shared/reference/mseg_released_models.tsv")


class _Server:
    def __init__(self):
        self.payload = PAYLOAD
        self.ranges: list[str | None] = []
        self.honour_range = True
        self.cut_after: int | None = None  # send only this many bytes of the body, then close
        self.content_type = "application/octet-stream"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                header = self.headers.get("Range")
                server.ranges.append(header)
                body, status = server.payload, 200
                if header and server.honour_range:
                    start = int(header.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    body, status = body[start:], 206
                self.send_response(status)
                self.send_header("Content-Type", server.content_type)
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
                self.end_headers()
                self.wfile.write(body if server.cut_after is None else body[: server.cut_after])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/tiny.pth"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _entry(url=None, gdrive_id=None, sha256=None, manual_url=None) -> W.WeightsEntry:
    return W.WeightsEntry(
        name="tiny-test",
        filename="tiny.pth",
        model="hrnet_tiny",
        num_classes=3,
        taxonomy="universal",
        url=url,
        gdrive_id=gdrive_id,
        sha256=sha256,
        manual_url=manual_url,
    )


def _manifest(cache: Path) -> dict:
    return json.loads((cache / "weights" / "checksums.json").read_text())


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MSEG_CACHE", str(tmp_path / "c"))
    assert W.cache_dir() == tmp_path / "c" / "weights"
    assert W.cache_dir(tmp_path / "other") == tmp_path / "other" / "weights"
    monkeypatch.delenv("MSEG_CACHE")
    assert W.cache_dir() == Path.home() / ".cache" / "mseg_semantic" / "weights"


def test_http_download_records_checksum_then_verifies(server, tmp_path):
    entry = _entry(url=server.url)
    path = W.download_weights(entry, tmp_path, quiet=True)
    assert path == tmp_path / "weights" / "tiny.pth" and path.read_bytes() == PAYLOAD
    record = _manifest(tmp_path)["tiny.pth"]
    assert record["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    assert record["size"] == len(PAYLOAD) and record["source"] == server.url
    assert not (path.parent / "tiny.pth.part").exists()
    # a second call finds the file, checks it and does not download again
    assert W.download_weights(entry, tmp_path, quiet=True) == path
    assert len(server.ranges) == 1


def test_http_download_resumes_a_partial_file(server, tmp_path):
    part = tmp_path / "weights" / "tiny.pth.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:3000])
    path = W.download_weights(_entry(url=server.url), tmp_path, quiet=True)
    assert server.ranges == ["bytes=3000-"]
    assert path.read_bytes() == PAYLOAD


def test_interrupted_download_is_kept_and_resumed(server, tmp_path):
    server.cut_after = 4000
    with pytest.raises(W.OfflineError, match="resume"):
        W.download_weights(_entry(url=server.url), tmp_path, quiet=True)
    part = tmp_path / "weights" / "tiny.pth.part"
    assert part.read_bytes() == PAYLOAD[:4000]
    assert not (tmp_path / "weights" / "tiny.pth").exists()
    server.cut_after = None
    path = W.download_weights(_entry(url=server.url), tmp_path, quiet=True)
    assert server.ranges[-1] == "bytes=4000-" and path.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts(server, tmp_path):
    server.honour_range = False
    part = tmp_path / "weights" / "tiny.pth.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes from another file")
    path = W.download_weights(_entry(url=server.url), tmp_path, quiet=True)
    assert path.read_bytes() == PAYLOAD


def test_complete_partial_file_is_accepted_on_416(server, tmp_path):
    part = tmp_path / "weights" / "tiny.pth.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD)
    path = W.download_weights(_entry(url=server.url), tmp_path, quiet=True)
    assert path.read_bytes() == PAYLOAD and server.ranges == [f"bytes={len(PAYLOAD)}-"]


def test_corrupted_file_is_an_error_that_keeps_it(server, tmp_path):
    entry = _entry(url=server.url)
    path = W.download_weights(entry, tmp_path, quiet=True)
    path.write_bytes(_damaged(PAYLOAD))
    with pytest.raises(W.ChecksumMismatchError, match=r"--force"):
        W.verify_weights(entry, tmp_path)
    with pytest.raises(W.ChecksumMismatchError):
        W.download_weights(entry, tmp_path, quiet=True)
    assert path.read_bytes() == _damaged(PAYLOAD)  # kept for inspection
    W.download_weights(entry, tmp_path, force=True, quiet=True)
    assert path.read_bytes() == PAYLOAD
    assert W.verify_weights(entry, tmp_path) == hashlib.sha256(PAYLOAD).hexdigest()


def test_published_checksum_mismatch(server, tmp_path):
    with pytest.raises(W.ChecksumMismatchError, match="published"):
        W.download_weights(_entry(url=server.url, sha256="0" * 64), tmp_path, quiet=True)
    assert not (tmp_path / "weights" / "tiny.pth").exists()
    assert (tmp_path / "weights" / "tiny.pth.sha256-mismatch").read_bytes() == PAYLOAD  # kept for inspection


def test_offline_message_names_url_and_destination(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/tiny.pth"
    with pytest.raises(W.OfflineError) as caught:
        W.download_weights(_entry(url=url), tmp_path, quiet=True, timeout=5)
    message = str(caught.value)
    assert url in message and str(tmp_path / "weights" / "tiny.pth") in message
    assert "mseg-weights verify tiny-test" in message


def test_google_drive_download_through_gdown(monkeypatch, tmp_path):
    import gdown

    calls = []

    def fake_download(id=None, output=None, quiet=False, resume=False, **kwargs):
        calls.append(dict(id=id, output=output, resume=resume))
        Path(output).write_bytes(PAYLOAD)
        return output

    monkeypatch.setattr(gdown, "download", fake_download)
    entry = _entry(gdrive_id="1AbCdEf")
    path = W.download_weights(entry, tmp_path, quiet=True)
    assert calls == [dict(id="1AbCdEf", output=str(path) + ".gdown", resume=True)]
    assert path.read_bytes() == PAYLOAD and not Path(str(path) + ".gdown").exists()
    assert _manifest(tmp_path)["tiny.pth"]["source"] == "https://drive.google.com/uc?id=1AbCdEf"


def test_google_drive_offline(monkeypatch, tmp_path):
    import gdown
    import requests

    def offline(**kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'drive.google.com'")

    monkeypatch.setattr(gdown, "download", offline)
    with pytest.raises(W.OfflineError, match=r"drive\.google\.com/uc\?id=1AbCdEf.*place it at"):
        W.download_weights(_entry(gdrive_id="1AbCdEf"), tmp_path, quiet=True)


def test_manual_only_entry_and_placing_the_file_by_hand(server, tmp_path):
    entry = _entry(manual_url="https://onedrive.example/hrnet")
    with pytest.raises(W.WeightsError, match=r"by hand from https://onedrive.example/hrnet.*--url"):
        W.download_weights(entry, tmp_path, quiet=True)
    dest = W.weights_path(entry, tmp_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(PAYLOAD)
    assert W.cached_status(entry, tmp_path) == "cached (checksum not recorded)"
    assert W.verify_weights(entry, tmp_path) == hashlib.sha256(PAYLOAD).hexdigest()
    assert W.cached_status(entry, tmp_path) == "cached"
    # or with a direct mirror link
    dest.unlink()
    assert W.download_weights(entry, tmp_path, force=True, url=server.url, quiet=True).read_bytes() == PAYLOAD


def test_resolve_weights(monkeypatch, server, tmp_path):
    local = tmp_path / "mine.pth"
    local.write_bytes(b"abc")
    assert W.resolve_weights(local) == local
    monkeypatch.setitem(W.WEIGHTS, "tiny-test", _entry(url=server.url))
    with pytest.raises(W.WeightsError, match="mseg-weights download tiny-test"):
        W.resolve_weights("tiny-test", tmp_path)
    assert W.resolve_weights("tiny-test", tmp_path, download=True).read_bytes() == PAYLOAD
    with pytest.raises(FileNotFoundError, match="neither a file"):
        W.resolve_weights("no-such-model", tmp_path)


def test_cli(monkeypatch, server, tmp_path, capsys):
    monkeypatch.setitem(W.WEIGHTS, "tiny-test", _entry(url=server.url))
    base = ["--cache-dir", str(tmp_path)]
    assert cli.main(base + ["path", "tiny-test"]) == 1
    assert "not downloaded yet" in capsys.readouterr().err
    assert cli.main(base + ["download", "tiny-test", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "weights" / "tiny.pth")
    assert cli.main(base + ["verify", "tiny-test"]) == 0
    assert "OK sha256=" + hashlib.sha256(PAYLOAD).hexdigest() in capsys.readouterr().out
    assert cli.main(base + ["list"]) == 0
    listing = capsys.readouterr().out
    assert any(line.startswith("tiny-test") and line.endswith("cached") for line in listing.splitlines())
    assert "mseg-3m-480p" in listing and "missing (manual download)" in listing
    # a name typo is bad input: exit 2 with one line (was 1 before the shared CLI policy, issue 11 item 3)
    assert cli.main(base + ["download", "mseg-3m"]) == 2
    err = capsys.readouterr().err
    assert "unknown weights 'mseg-3m'" in err and err.count("\n") == 1 and "Traceback" not in err


def test_registry_matches_the_released_models_table():
    assert W.WEIGHTS["mseg-3m-1080p"].gdrive_id == "1iobea9IW2cWPF6DtM04OvKtDRVNggSb5"
    assert W.WEIGHTS["mseg-naive-1m"].num_classes == 316
    assert W.WEIGHTS["oracle-camvid-11-1m"].num_classes == 11
    assert W.WEIGHTS["hrnet_w48_imagenet"].num_classes is None
    if not REFERENCE_TSV.is_file():
        pytest.skip(f"reference table not present ({REFERENCE_TSV})")
    with open(REFERENCE_TSV, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert {r["name"] for r in rows} == {n for n, e in W.WEIGHTS.items() if e.gdrive_id}
    for row in rows:
        entry = W.WEIGHTS[row["name"]]
        assert (entry.gdrive_id, entry.taxonomy) == (row["google_drive_file_id"], row["taxonomy"])
        published = {d: float(row[d]) for d in W.ZERO_SHOT_DATASETS if row[d]}
        assert entry.zero_shot_miou == published, row["name"]
        assert entry.harmonic_mean == (float(row["harmonic_mean"]) if row["harmonic_mean"] else None)


# ---------------------------------------------------------------------------------------------- issue 11 item 5
def test_login_page_served_as_octet_stream_is_never_recorded(server, tmp_path, capsys):
    server.payload = LOGIN_PAGE  # no text/html content type: only the content tells
    with pytest.raises(W.InvalidWeightsFile, match="HTML page") as caught:
        W.download_weights(_entry(url=server.url), tmp_path, quiet=True)
    assert caught.value.exit_code == 1  # the server's fault, not the user's input
    weights = tmp_path / "weights"
    assert not (weights / "tiny.pth").exists() and (weights / "tiny.pth.invalid").read_bytes() == LOGIN_PAGE
    assert not (weights / "checksums.json").exists() or "tiny.pth" not in _manifest(tmp_path)
    server.payload = PAYLOAD  # the way out: simply download again
    assert W.download_weights(_entry(url=server.url), tmp_path, quiet=True).read_bytes() == PAYLOAD


def test_truncated_file_placed_by_hand_is_refused_and_moved_aside(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(W.WEIGHTS, "tiny-test", _entry(manual_url="https://example.org/tiny"))
    dest = W.weights_path("tiny-test", tmp_path)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(PAYLOAD[: len(PAYLOAD) // 2])
    assert cli.main(["--cache-dir", str(tmp_path), "verify", "tiny-test"]) == 2  # bad input: one line, no traceback
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated or damaged" in err and "tiny.pth.invalid" in err
    assert not dest.exists() and not (dest.parent / "checksums.json").exists()  # nothing recorded
    dest.write_bytes(PAYLOAD)  # the complete file placed later is recorded, not refused
    assert W.verify_weights("tiny-test", tmp_path) == hashlib.sha256(PAYLOAD).hexdigest()


def test_rerecord_trusts_a_file_replaced_on_purpose(server, tmp_path):
    entry = _entry(url=server.url)
    path = W.download_weights(entry, tmp_path, quiet=True)
    replacement = _damaged(PAYLOAD)
    path.write_bytes(replacement)
    with pytest.raises(W.ChecksumMismatchError, match="--rerecord"):
        W.verify_weights(entry, tmp_path)
    assert W.verify_weights(entry, tmp_path, rerecord=True) == hashlib.sha256(replacement).hexdigest()
    assert W.verify_weights(entry, tmp_path) == hashlib.sha256(replacement).hexdigest()


def test_force_discards_a_stale_part_and_keeps_the_old_file_until_the_new_one_is_whole(server, tmp_path):
    entry = _entry(url=server.url)
    path = W.download_weights(entry, tmp_path, quiet=True)
    part = path.with_name("tiny.pth.part")
    part.write_bytes(b"bytes of some other file")  # resuming this would corrupt the download
    server.cut_after = 100
    with pytest.raises(W.OfflineError):
        W.download_weights(entry, tmp_path, force=True, quiet=True)
    assert path.read_bytes() == PAYLOAD  # the cached file survives a failed forced download
    assert part.read_bytes() == PAYLOAD[:100]  # the stale part was dropped: the new one starts at 0
    server.cut_after = None
    assert W.download_weights(entry, tmp_path, force=True, quiet=True).read_bytes() == PAYLOAD


def test_failed_download_names_the_part_only_when_there_is_one(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(W.OfflineError) as caught:
        W.download_weights(_entry(url=f"http://127.0.0.1:{port}/tiny.pth"), tmp_path, quiet=True, timeout=5)
    assert "resume from" not in str(caught.value) and "try again" in str(caught.value)
    assert caught.value.exit_code == 1  # a network failure is not bad input
