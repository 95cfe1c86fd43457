"""Weights registry and cache: HTTP download with resume, Google Drive via gdown (faked), checksums, offline.

Never touches the network: HTTP goes to a server on 127.0.0.1 started here, gdown is monkeypatched.
"""

from __future__ import annotations

import csv
import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mseg_semantic.model import weights as W
from mseg_semantic.tool import weights as cli

PAYLOAD = bytes(range(256)) * 40  # 10240 bytes
REFERENCE_TSV = Path("/work/shared/reference/mseg_released_models.tsv")


class _Server:
    def __init__(self):
        self.payload = PAYLOAD
        self.ranges: list[str | None] = []
        self.honour_range = True
        self.cut_after: int | None = None  # send only this many bytes of the body, then close
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
    path.write_bytes(b"x" + PAYLOAD[1:])
    with pytest.raises(W.ChecksumMismatchError, match=r"--force"):
        W.verify_weights(entry, tmp_path)
    with pytest.raises(W.ChecksumMismatchError):
        W.download_weights(entry, tmp_path, quiet=True)
    assert path.read_bytes()[:1] == b"x"  # kept for inspection
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
    assert cli.main(base + ["download", "mseg-3m"]) == 1
    assert "unknown weights 'mseg-3m'" in capsys.readouterr().err


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
