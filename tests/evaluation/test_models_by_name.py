"""Released models by name: ``model_path=NAME`` (mseg-demo / mseg-test / mseg-export) and ``weights=NAME``
(mseg-train) resolve through the weights registry, download on first use into the cache and are checked there.

No network: a registry entry is pointed at a server on 127.0.0.1 started here, and the real entries' downloads are
made to fail through an unreachable proxy (what an offline machine sees).
"""

from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest
import torch
import yaml

from eval_helpers import random_image
from mseg_semantic.model import build_model, save_weights
from mseg_semantic.model import weights as W
from mseg_semantic.tool import demo as mseg_demo

TINY = ["test_h=32", "test_w=32", "base_size=40", "window_batch=4", "test_device=cpu", "test_precision=fp32"]


def _tiny_checkpoint(tmp_path) -> bytes:
    model = build_model("hrnet_tiny", 194)
    path = save_weights(model.state_dict(), {"model": "hrnet_tiny", "num_classes": 194, "model_taxonomy": "universal"},
                        tmp_path / "tiny-seg.pth")
    return path.read_bytes()


class _Server:
    """Serves one payload over HTTP on 127.0.0.1 and counts the requests."""

    def __init__(self, payload: bytes):
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/tiny-seg.pth"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def released(tmp_path, monkeypatch):
    """A released segmentation model named ``tiny-seg`` served locally; the cache in tmp_path."""
    payload = _tiny_checkpoint(tmp_path)
    server = _Server(payload)
    entry = W.WeightsEntry(name="tiny-seg", filename="tiny-seg.pth", model="hrnet_tiny", num_classes=194, taxonomy="universal",
                           url=server.url)
    monkeypatch.setitem(W.WEIGHTS, "tiny-seg", entry)
    monkeypatch.setenv("MSEG_CACHE", str(tmp_path / "cache"))
    yield server
    server.close()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Every HTTP(S) request fails as on a machine without internet (a proxy nobody listens on)."""
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MSEG_CACHE", str(tmp_path / "cache"))


def test_demo_by_name_downloads_once_and_equals_the_demo_of_the_file(released, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), random_image(30, 50, seed=3))
    by_name = ["model_path=tiny-seg", f"input={tmp_path / 'a.png'}", f"save_folder={tmp_path / 'by_name'}", *TINY]
    assert mseg_demo.main(by_name) == 0
    assert released.requests == 1
    cached = W.weights_path("tiny-seg")
    assert cached.is_file() and W.cached_status("tiny-seg") == "cached"  # SHA-256 recorded
    assert mseg_demo.main(by_name) == 0
    assert released.requests == 1  # the second run reads the cache
    by_file = ["model_path=" + str(tmp_path / "tiny-seg.pth"), f"input={tmp_path / 'a.png'}", f"save_folder={tmp_path / 'by_file'}", *TINY]
    assert mseg_demo.main(by_file) == 0
    named = cv2.imread(str(tmp_path / "by_name" / "a_label.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(named, cv2.imread(str(tmp_path / "by_file" / "a_label.png"), cv2.IMREAD_UNCHANGED))


def test_a_damaged_cached_model_is_refused_by_name(released, tmp_path, capsys):
    W.download_weights("tiny-seg", quiet=True)
    path = W.weights_path("tiny-seg")
    data = path.read_bytes()
    middle = len(data) // 2
    path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    cv2.imwrite(str(tmp_path / "a.png"), random_image(30, 50))
    assert mseg_demo.main(["model_path=tiny-seg", f"input={tmp_path / 'a.png'}", *TINY]) == 2
    assert f"{path}: SHA-256" in capsys.readouterr().err


def test_offline_the_name_resolves_and_only_the_download_fails_in_one_line(offline, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "x.jpg"), random_image(30, 50))
    assert mseg_demo.main(["model_path=mseg-3m-480p", f"input={tmp_path / 'x.jpg'}"]) == 1  # a download failure (docs/exit_codes.md)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("mseg-demo: error: could not download mseg-3m-480p from https://drive.google.com/uc?id=")
    assert f"place it at {tmp_path / 'cache' / 'weights' / 'mseg-3m-480p.pth'}" in line


def test_print_config_says_where_a_released_model_will_be(offline, capsys, tmp_path):
    assert mseg_demo.main(["--print-config", "model_path=mseg-3m-1080p"]) == 0
    out = capsys.readouterr().out
    assert f"# model_path: released model mseg-3m-1080p -> {tmp_path / 'cache' / 'weights' / 'mseg-3m-1080p.pth'} (downloaded on first use" in out


def test_a_backbone_is_not_a_model_to_segment_with(offline, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "x.jpg"), random_image(30, 50))
    assert mseg_demo.main(["model_path=hrnet_w48_imagenet", f"input={tmp_path / 'x.jpg'}"]) == 2
    err = capsys.readouterr().err
    assert "backbone without a segmentation head" in err and "mseg-3m-480p" in err


def test_training_weights_by_name_download_on_first_use(released, tmp_path, capsys):
    from mseg_semantic.data.demo_world import generate
    from mseg_semantic.tool import train as mseg_train

    world = generate(tmp_path / "world", counts={"train": 2}, heldout_counts={"val": 1}).root
    config = {
        "DATA": {"dataset": ["cityscapes-19"], "data_root": str(world)},
        "TRAIN": {"model": "hrnet_tiny", "train_h": 32, "train_w": 32, "short_size": 48, "batch_size": 2, "max_iters": 1,
                  "workers": 0, "tensorboard": False, "cpu_threads": 1, "weights": "tiny-seg"},
    }
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(config))
    assert mseg_train.main(["--config", str(tmp_path / "ft.yaml"), f"output_dir={tmp_path / 'run'}"]) == 0
    assert released.requests == 1
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"fine-tuning from {W.weights_path('tiny-seg')}" in log and "1 iterations" in log
    # the first training step moved the weights away from the released ones, which were loaded
    initial = torch.load(W.weights_path("tiny-seg"), weights_only=True)["state_dict"]
    final = torch.load(tmp_path / "run" / "model_final.pth", weights_only=True)["state_dict"]
    assert final.keys() == initial.keys()
    assert not torch.equal(final["head.classifier.bias"], initial["head.classifier.bias"])


def test_training_weights_by_name_offline_is_the_one_line_download_error(offline, tmp_path, capsys):
    from mseg_semantic.data.demo_world import generate
    from mseg_semantic.tool import train as mseg_train

    world = generate(tmp_path / "world", counts={"train": 2}, heldout_counts={"val": 1}).root
    assert mseg_train.main(["--config", "demo", f"data_root={world}", f"output_dir={tmp_path / 'run'}", "model=hrnet_tiny",
                            "weights=mseg-3m-720p", "workers=0", "max_iters=1"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and err[0].startswith("mseg-train: error: could not download mseg-3m-720p from https://drive.google.com/")
