"""A local HTTP server (Range requests, a Cityscapes-like and a WildDash-like login), tiny archives and tiny
raw-data writers."""

from __future__ import annotations

import io
import json
import re
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
import pytest
from PIL import Image

USER, PASSWORD = "alice@example.org", "s3cr3t-pässword&x=1"
CSRF = "tok123"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, code: int, body: bytes, headers: dict | None = None, content_type="application/octet-stream") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _login_page(self, csrf: bool = False) -> None:
        token = f"<input type='hidden' name='csrfmiddlewaretoken' value='{CSRF}'>" if csrf else ""
        page = f'<html><form method="post">{token}<input name="username"><input type="password" name="password"></form></html>'
        self._send(200, page.encode(), {"Set-Cookie": "csrftoken=abc; Path=/"} if csrf else None, "text/html; charset=utf-8")

    def do_GET(self):
        server = self.server
        server.requests.append((self.command, self.path, dict(self.headers)))
        if self.path.startswith("/accounts/login"):
            return self._login_page(csrf=True)
        path = self.path.split("?")[0]
        if self.path.startswith("/file-handling/") or path.startswith("/download/"):
            if "session=ok" not in self.headers.get("Cookie", ""):
                return self._login_page()
            path = {"/file-handling/": "/" + self.path.split("packageID=")[-1]}.get(path, path)
        if path not in server.files:
            return self._send(404, b"not found", content_type="text/plain")
        data = server.files[path]
        ranged = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
        if ranged:
            start = int(ranged.group(1))
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            body = data[start:]
            code, headers = 206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        else:
            body, code, headers = data, 200, {}
        if path in server.truncate_once:
            server.truncate_once.discard(path)
            self.send_response(code)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(body)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(code, body, headers)

    def do_POST(self):
        server = self.server
        length = int(self.headers.get("Content-Length", 0))
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        server.requests.append((self.command, self.path, dict(self.headers)))
        wilddash = self.path.startswith("/accounts/login")
        ok = form.get("username") == USER and form.get("password") == PASSWORD
        if wilddash:
            ok = ok and form.get("csrfmiddlewaretoken") == CSRF and "csrftoken=abc" in self.headers.get("Cookie", "") \
                and bool(self.headers.get("Referer"))
        if not ok:
            return self._login_page(csrf=wilddash)
        self._send(200, b"<html>welcome</html>", {"Set-Cookie": "session=ok; Path=/"}, "text/html")


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.files = {}
    server.truncate_once = set()
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    server.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


# ------------------------------------------------------------------ tiny archives
def zip_bytes(files: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def tar_bytes(files: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def png_bytes(array: np.ndarray, mode: str | None = None, palette: list[int] | None = None) -> bytes:
    buffer = io.BytesIO()
    img = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
    if palette is not None:
        img.putpalette(palette)
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def jpg_bytes(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


# ------------------------------------------------------------------ tiny raw data
def write_png(path: Path, array: np.ndarray, mode: str | None = None, palette: list[int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
    if palette is not None:
        img.putpalette(palette)
    img.save(path)
    return path


def write_rgb_image(path: Path, height: int, width: int) -> Path:
    rng = np.random.default_rng(len(str(path)))
    return write_png(path, rng.integers(0, 255, (height, width, 3), dtype=np.uint8)) if path.suffix == ".png" else \
        _save_jpg(path, rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def _save_jpg(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG")
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img)


def class_id(taxonomy: str, name: str) -> int:
    from mseg_semantic.taxonomy import load_class_names

    return list(load_class_names(taxonomy)).index(name)
