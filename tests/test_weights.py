"""Released weights against a real HTTP server on 127.0.0.1: download by name and URL, the cache, every failure,
the dry run without weights, and `mlflow run` of the transfer preset from a URL."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from rain_mlflow import weights
from tests.conftest import REPO, assert_user_error, run_env

FIXTURES = Path(__file__).parent / "fixtures"
LAYOUT = json.loads((FIXTURES / "timerxl_checkpoint_layout.json").read_text())
WAYS_FORWARD = ("--pretrain-model-path FILE", "--pretrain-model-path none", "--preset scratch")


@pytest.fixture(scope="session")
def released_file(tmp_path_factory) -> tuple[Path, str]:
    """A checkpoint in the released layout (the published key -> shape list) with random values; written once."""
    generator = torch.Generator().manual_seed(7)
    state = {key: torch.randn(shape, generator=generator) * 0.02 for key, shape in LAYOUT["keys"].items()}
    path = tmp_path_factory.mktemp("released") / "checkpoint.pth"
    torch.save(state, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def server(released_file, tmp_path_factory):
    """http://127.0.0.1:PORT serving the released file, and the ways a download goes wrong; counts GETs per path."""
    wrong = tmp_path_factory.mktemp("wrong") / "other.pth"
    torch.save({"embedding.weight": torch.zeros(64, 24), "embedding.bias": torch.zeros(64)}, wrong)
    html = b"<!DOCTYPE html>\n<html><head><title>Seafile</title></head><body>share page</body></html>\n"
    files = {"/mirror/timer-xl-260b.pth": released_file[0], "/files/checkpoint.pth": released_file[0],
             "/wrong.pth": wrong}
    gets: Counter = Counter()

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.respond(body=False)

        def do_GET(self):
            gets[self.path] += 1
            self.respond(body=True)

        def respond(self, body: bool) -> None:
            if self.path in files:
                self.headers_for(files[self.path].stat().st_size, "application/octet-stream")
                if body:
                    with open(files[self.path], "rb") as fh:
                        shutil.copyfileobj(fh, self.wfile)
            elif self.path in ("/share/", "/page.pth"):  # a share page, labelled honestly or as a file
                self.headers_for(len(html), "text/html" if self.path == "/share/" else "application/octet-stream")
                if body:
                    self.wfile.write(html)
            elif self.path == "/truncated.pth":  # promises 1 MB, sends 4 kB, hangs up
                self.headers_for(1 << 20, "application/octet-stream")
                if body:
                    self.wfile.write(released_file[0].read_bytes()[:4096])
                    self.close_connection = True
            else:
                self.send_error(404, "Not Found")

        def headers_for(self, size: int, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(size))
            self.end_headers()

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # a client that hangs up mid-file (a failed download) is expected here, not a server fault

    httpd = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", gets
    httpd.shutdown()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("RAIN_MLFLOW_CACHE", str(path))
    monkeypatch.delenv("RAIN_MLFLOW_OFFLINE", raising=False)
    monkeypatch.delenv("RAIN_MLFLOW_WEIGHTS_MIRROR", raising=False)
    return path


def cached_files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []


@pytest.mark.unit
def test_the_release_layout_is_the_published_one():
    release = weights.RELEASES["timer-xl-260b"]
    layout = weights.release_layout(release)
    assert {k: list(v) for k, v in layout.items()} == LAYOUT["keys"]
    assert list(layout) == list(LAYOUT["keys"])
    assert release.n_parameters == LAYOUT["num_parameters"] == sum(torch.Size(s).numel() for s in layout.values())
    assert {k: release.config[k] for k in LAYOUT["config"]} == LAYOUT["config"]


@pytest.mark.unit
def test_what_a_pretrain_model_path_names_and_where_the_cache_is(tmp_path, monkeypatch):
    monkeypatch.delenv("RAIN_MLFLOW_CACHE", raising=False)
    monkeypatch.delenv("RAIN_MLFLOW_WEIGHTS_MIRROR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert weights.cache_dir() == tmp_path / "home" / ".cache" / "rain-mlflow"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "xdg" / "rain-mlflow"
    monkeypatch.setenv("RAIN_MLFLOW_CACHE", str(tmp_path / "mine"))
    assert weights.cache_dir() == tmp_path / "mine"

    assert weights.parse("none") is None and weights.parse("") is None and weights.parse(None) is None
    release = weights.parse("timer-xl-260b")
    assert (release.kind, release.path, release.url) == (
        "release", tmp_path / "mine" / "weights" / "timer-xl-260b.pth",
        "https://cloud.tsinghua.edu.cn/f/01c35ca13f474176be7b/?dl=1")
    monkeypatch.setenv("RAIN_MLFLOW_WEIGHTS_MIRROR", "http://intranet/models/")
    assert weights.parse("timer-xl-260b").url == "http://intranet/models/timer-xl-260b.pth"
    a, b = weights.parse("https://a.example/x/ckpt.pth?dl=1"), weights.parse("https://b.example/x/ckpt.pth")
    assert a.kind == "url" and a.path.parent == tmp_path / "mine" / "weights" and a.path.name.startswith("ckpt-")
    assert a.path != b.path  # same file name, other URL: other cache entry
    assert weights.parse("ckpts/my.pth").kind == "file"


@pytest.mark.e2e
def test_download_by_release_name_through_the_mirror_then_from_the_cache(cli, server, cache, released_file,
                                                                         monkeypatch):
    base, gets = server
    monkeypatch.setenv("RAIN_MLFLOW_WEIGHTS_MIRROR", f"{base}/mirror")
    target = cache / "weights" / "timer-xl-260b.pth"
    result = cli("weights", "path")
    assert result.code == 0 and result.out.strip() == str(target) and "not downloaded yet" in result.err

    result = cli("weights", "download", "timer-xl-260b")
    assert result.code == 0, result.err
    assert f"downloaded: {target}" in result.out and f"sha256 {released_file[1]}" in result.out
    assert target.read_bytes() == released_file[0].read_bytes()
    assert cached_files(cache) == [target]                     # no temporary file left beside it

    result = cli("weights", "download")
    assert result.code == 0 and "already cached" in result.out
    assert gets["/mirror/timer-xl-260b.pth"] == 1                # the second call did not download again
    result = cli("weights", "verify")
    assert result.code == 0 and "142 tensors, 67,398,880 parameters" in result.out


@pytest.mark.e2e
def test_download_by_url_then_from_the_cache(cli, server, cache, released_file):
    base, gets = server
    url = f"{base}/files/checkpoint.pth"
    before = gets["/files/checkpoint.pth"]
    for verb in ("downloaded", "already cached"):
        result = cli("weights", "download", url)
        assert result.code == 0, result.err
        assert verb in result.out and released_file[1] in result.out and f"from {url}" in result.out
    assert gets["/files/checkpoint.pth"] == before + 1
    (path,) = cached_files(cache)
    assert path == weights.parse(url).path and hashlib.sha256(path.read_bytes()).hexdigest() == released_file[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
@pytest.mark.parametrize("path, problem", [
    ("/missing.pth", "HTTP 404 Not Found"),
    ("/share/", "HTML page instead of a checkpoint"),
    ("/page.pth", "HTML page instead of a checkpoint"),
    ("/truncated.pth", "truncated: 4,096 of 1,048,576 bytes"),
    ("/wrong.pth", "does not fit the model"),
    ("offline", "RAIN_MLFLOW_OFFLINE=1 forbids downloading"),
    ("no-network", "cannot reach 127.0.0.1"),
], ids=["404", "html", "html-as-file", "truncated", "wrong-layout", "offline", "no-network"])
def test_every_failed_download_is_one_error_line_and_leaves_nothing(cli, store, server, cache, synthetic_csv,
                                                                    tmp_path, monkeypatch, path, problem):
    base, _ = server
    url = f"{base}{path}"
    if path == "offline":
        monkeypatch.setenv("RAIN_MLFLOW_OFFLINE", "1")
        url = f"{base}/files/checkpoint.pth"
    elif path == "no-network":
        url = f"http://127.0.0.1:{closed_port()}/checkpoint.pth"
    result = cli("train", "--preset", "smoke", "--data", synthetic_csv, "--pretrain-model-path", url)
    assert_user_error(result, url, problem, *WAYS_FORWARD)
    assert cached_files(cache) == []                           # no partial file
    assert not (tmp_path / "mlflow.db").exists()               # checked before the store opened: no run at all


@pytest.mark.e2e
def test_an_unwritable_cache_is_one_error_line(cli, server, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("RAIN_MLFLOW_CACHE", str(blocker / "cache"))
    url = f"{server[0]}/files/checkpoint.pth"
    assert_user_error(cli("weights", "download", url), url, "could not save", "RAIN_MLFLOW_CACHE", *WAYS_FORWARD)


@pytest.mark.e2e
def test_a_release_that_cannot_fit_the_model_is_refused_before_downloading(cli, store, server, cache, synthetic_csv,
                                                                           tmp_path, monkeypatch):
    base, gets = server
    monkeypatch.setenv("RAIN_MLFLOW_WEIGHTS_MIRROR", f"{base}/mirror")
    before = sum(gets.values())
    result = cli("train", "--preset", "smoke", "--data", synthetic_csv, "--pretrain-model-path", "timer-xl-260b")
    assert_user_error(result, "release timer-xl-260b does not fit the model", "d_model=32 (the release has 1024)")
    assert sum(gets.values()) == before and cached_files(cache) == []


@pytest.mark.e2e
def test_transfer_dry_run_offline_without_weights_still_estimates(cli, store, cache, synthetic_csv, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setenv("RAIN_MLFLOW_OFFLINE", "1")
    result = cli("train", "--preset", "transfer", "--data", synthetic_csv, "--dry-run")
    assert result.code == 0, result.err
    release = weights.RELEASES["timer-xl-260b"]
    assert (f"pretrained weights: not cached: would be downloaded from {release.url} (about 270 MB) into "
            f"{cache / 'weights' / 'timer-xl-260b.pth'}") in result.out
    # 67,409,122 with 5 variables (docs/model.md); the record's gaps add one indicator variable, and the
    # last-token head has d_model x 2 = 2,048 weights per variable
    for fragment in (f"{67_409_122 + 1024 * 2:,} parameters", "training memory (VRAM on a GPU), batch 16",
                     "epoch time on cpu", "budget 7 GB"):
        assert fragment in result.out, fragment
    assert cached_files(cache) == [] and not (tmp_path / "mlflow.db").exists()


@pytest.mark.e2e
def test_dry_run_json_for_scripts(cli, store, server, cache, synthetic_csv, released_file, tmp_path):
    from rain_mlflow.config import presets
    from rain_mlflow.data.source import load_clean
    from rain_mlflow.data.dataset import prepare

    url = f"{server[0]}/files/checkpoint.pth"
    result = cli("train", "--preset", "smoke", "--data", synthetic_csv, "--pretrain-model-path", url,
                 "--accumulate-steps", "2", "--dry-run", "--format", "json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    cfg = presets.build("smoke", {"data": str(synthetic_csv)})
    data = prepare(load_clean(cfg.data)[1], cfg)
    for split in ("train", "val", "test"):
        expected = data.splits[split]
        assert summary["windows"][split]["windows"] == expected.size
        assert summary["windows"][split]["rain"] == int(expected.labels.sum())
    assert summary["config"]["train"]["accumulate_steps"] == 2 and summary["preset"] == "smoke"
    m = summary["memory"]
    assert m["effective_batch_size"] == 128
    parts = m["weights_gb"] + m["optimizer_gb"] + m["activations_gb"] + m["gradients_gb"]  # accumulating: summed
    assert m["vram_gb"] == pytest.approx(1.05 * parts)
    assert summary["time"]["steps_per_epoch"] == -(-data.splits["train"].size // 128)
    assert summary["weights"] == {"kind": "url", "spec": url, "path": str(weights.parse(url).path), "url": url,
                                  "offline": False, "state": "download", "size_bytes": released_file[0].stat().st_size,
                                  "size_basis": "HEAD request"}
    assert cached_files(cache) == [] and not (tmp_path / "mlflow.db").exists()
    assert_user_error(cli("train", "--preset", "smoke", "--format", "json"), "format must be text")


@pytest.fixture(scope="module")
def three_hourly_year(tmp_path_factory) -> Path:
    """One year of 3-hourly data: a short evaluation set for the 67M-parameter transfer model on a CPU."""
    from rain_mlflow.synth import SynthConfig, write_synthetic

    path = tmp_path_factory.mktemp("transfer") / "three_hourly.csv"
    write_synthetic(str(path), SynthConfig(years=1.0, freq="3h"))
    return path


@pytest.mark.e2e
def test_mlflow_run_transfer_from_a_url_logs_where_the_weights_came_from(store, server, cache, released_file,
                                                                         three_hourly_year, tmp_path):
    url = f"{server[0]}/files/checkpoint.pth"
    env = {**run_env(store), "RAIN_MLFLOW_CACHE": str(cache)}
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "train", "--env-manager", "local",
         "--experiment-name", "transfer", "-P", "preset=transfer", "-P", f"pretrain_model_path={url}",
         "-P", f"data={three_hourly_year}", "-P", "seq_len=192", "-P", "window_stride=12",
         "-P", "freeze_epochs=1", "-P", "train_epochs=1"],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("transfer").experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["pretrain_sha256"] == released_file[1]
    assert (params["pretrain_source"], params["pretrain_origin"]) == ("url", url)
    assert params["pretrained_tensors"] == "142" and params["effective_batch_size"] == "16"
    (cached,) = cached_files(cache)
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == released_file[1]
    served = torch.load(released_file[0], weights_only=True)
    best = torch.load(client.download_artifacts(run.info.run_id, "checkpoints/best.pt", str(tmp_path)),
                      weights_only=True)
    for key in ("embedding.weight", "blocks.attn_layers.7.conv2.weight"):  # frozen epoch: the file's weights
        assert torch.equal(best["model"][f"backbone.{key}"], served[key])
