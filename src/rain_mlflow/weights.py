"""Released Timer-XL weights by name, downloaded once into a cache and verified, as torchvision and the HF hub do.

`--pretrain-model-path` takes one of four things (`parse`):
- `none` (or empty): no pretrained weights;
- a release name (`timer-xl-260b`): downloaded once into the cache, read from there afterwards;
- an `http(s)://` URL: the same, cached under a name derived from the URL;
- anything else: a checkpoint file on this machine.

Cache: `$RAIN_MLFLOW_CACHE`, else `$XDG_CACHE_HOME/rain-mlflow`, else `~/.cache/rain-mlflow`; files in `weights/`.
`RAIN_MLFLOW_WEIGHTS_MIRROR=https://host/dir` fetches release NAME from `<mirror>/NAME.pth` instead of its home
(the way `HF_ENDPOINT` redirects the Hugging Face hub), for networks that cannot reach the original host.
`RAIN_MLFLOW_OFFLINE=1` forbids every network access.

A download streams into a temporary file in the cache and becomes the cached file only after it loads with
`torch.load(weights_only=True)` and its tensor layout matches exactly. Every way it can fail (no network, an HTTP
error, an HTML page where the file should be, a truncated body, a wrong layout, offline) is one WeightsError that
names the URL, says what went wrong and gives both ways forward. Nothing is half-written: the temporary file is
removed on any failure, Ctrl-C included.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rain_mlflow.errors import CheckpointError, UserError

# torch, the model and `data.io` (pandas) are imported inside the functions that use them: `presets` and the command
# line import this module for its names, and `--help` or `compare` must start without them.

CACHE_ENV = "RAIN_MLFLOW_CACHE"
MIRROR_ENV = "RAIN_MLFLOW_WEIGHTS_MIRROR"
OFFLINE_ENV = "RAIN_MLFLOW_OFFLINE"
DEFAULT_RELEASE = "timer-xl-260b"
NO_WEIGHTS = ("", "none", "null")
TIMEOUT_S = 60          # per blocking network operation, not for the whole download
HEAD_TIMEOUT_S = 5      # the dry run's size question must not hold it up
CHUNK = 1 << 20
WAYS_FORWARD = ("download the file by hand and pass --pretrain-model-path FILE, or train without pretrained "
                "weights (--preset scratch, or --pretrain-model-path none)")


class WeightsError(UserError):
    """Pretrained weights could not be found, downloaded or verified."""


@dataclass(frozen=True)
class Release:
    name: str
    url: str
    summary: str
    config: dict[str, Any]   # TimerXL keyword arguments of the released backbone
    n_parameters: int

    @property
    def approx_bytes(self) -> int:
        return 4 * self.n_parameters  # float32 tensors; the container adds a few kB


RELEASES = {r.name: r for r in (
    Release(
        name="timer-xl-260b",
        # OpenLTM README, "260B pre-trained Timer in PyTorch": the share link plus `?dl=1`, its direct download.
        url="https://cloud.tsinghua.edu.cn/f/01c35ca13f474176be7b/?dl=1",
        summary="Timer-XL pretrained on 260B time points (OpenLTM), 8 x 1024, tokens of 96",
        config=dict(input_token_len=96, output_token_len=96, d_model=1024, n_heads=8, e_layers=8, d_ff=2048,
                    dropout=0.1, activation="relu", use_norm=True),
        n_parameters=67_398_880,
    ),
)}


@dataclass(frozen=True)
class Source:
    """Where pretrained weights come from, and the local file they are (or will be) read from."""

    kind: str                   # "release", "url" or "file"
    spec: str                   # what the user wrote
    path: Path                  # the cache entry (release, url) or the file itself
    url: str | None = None
    release: Release | None = None

    @property
    def label(self) -> str:
        return {"release": f"release {self.spec}", "url": self.spec, "file": f"checkpoint {self.spec}"}[self.kind]


@dataclass(frozen=True)
class Resolved:
    """Weights ready to load: the local file, its sha256 and where it came from."""

    source: Source
    path: Path
    sha256: str
    downloaded: bool = False
    origin: str = field(default="")   # the URL it was downloaded from, or the file's absolute path


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "rain-mlflow"


def release_url(release: Release) -> str:
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    return f"{mirror.rstrip('/')}/{release.name}.pth" if mirror else release.url


def parse(spec: str | None) -> Source | None:
    """What `--pretrain-model-path` names; None for no pretrained weights."""
    text = (spec or "").strip()
    if text.lower() in NO_WEIGHTS:
        return None
    weights = cache_dir() / "weights"
    if text in RELEASES:
        release = RELEASES[text]
        return Source("release", text, weights / f"{release.name}.pth", url=release_url(release), release=release)
    if text.lower().startswith(("http://", "https://")):
        return Source("url", text, weights / _url_file_name(text), url=text)
    return Source("file", text, Path(text).expanduser())


def _url_file_name(url: str) -> str:
    """A readable, collision-free cache name: the URL's last path part plus a hash of the whole URL."""
    tail = Path(urllib.parse.urlparse(url).path).name or "checkpoint"
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(tail).stem)[:60] or "checkpoint"
    return f"{stem}-{hashlib.sha256(url.encode()).hexdigest()[:12]}.pth"


def release_layout(release: Release) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the released state dict, from the model definition (meta device: nothing allocated)."""
    import torch

    from rain_mlflow.model.timerxl import TimerXL

    with torch.device("meta"):
        backbone = TimerXL(**release.config)
    return {key: tuple(tensor.shape) for key, tensor in backbone.state_dict().items()}


def expected_layout(source: Source, model_layout: dict[str, tuple[int, ...]] | None) -> dict[str, tuple[int, ...]]:
    """What a download must hold: the model's layout when there is a model (a release was checked against it
    first), else the release's own, else the default release's."""
    if model_layout is not None:
        return model_layout
    return release_layout(source.release or RELEASES[DEFAULT_RELEASE])


SHAPE_FIELDS = ("input_token_len", "d_model", "n_heads", "e_layers", "d_ff")  # what fixes the released shapes


def check_release_fits(source: Source, model_config: Any) -> None:
    """Refuse a release the model cannot hold before anything is downloaded (`model_config`: a ModelConfig)."""
    if source.release is None:
        return
    wrong = [f"{k}={getattr(model_config, k)} (the release has {source.release.config[k]})"
             for k in SHAPE_FIELDS if getattr(model_config, k) != source.release.config[k]]
    if wrong:
        raise CheckpointError(f"release {source.spec} does not fit the model: {', '.join(wrong)}; use the "
                              "transfer presets' shape, or --pretrain-model-path none")


def fetch(source: Source, model_layout: dict[str, tuple[int, ...]] | None = None, progress: bool = True) -> Resolved:
    """The local file of `source`, downloaded and verified first when it is not there yet (against `model_layout`,
    the backbone's key -> shape, when given; else against the release's layout)."""
    if source.kind == "file":
        if not source.path.is_file():
            known = ", ".join(RELEASES)
            raise CheckpointError(
                f"checkpoint {source.spec} {'is not a file' if source.path.exists() else 'does not exist'}; "
                f"--pretrain-model-path takes a checkpoint file, an http(s) URL, a release name ({known}) or none")
        return Resolved(source, source.path, sha256_of(source.path), origin=str(source.path.resolve()))
    if source.path.is_file():
        return Resolved(source, source.path, sha256_of(source.path), origin=str(source.url))
    assert source.url is not None
    if offline():
        raise WeightsError(
            f"{source.label} is not in the cache ({source.path}) and {OFFLINE_ENV}=1 forbids downloading it from "
            f"{source.url}; {WAYS_FORWARD}")
    digest = download(source.url, source.path, expected_layout(source, model_layout), progress=progress)
    return Resolved(source, source.path, digest, downloaded=True, origin=source.url)


def download(url: str, target: Path, layout: dict[str, tuple[int, ...]], progress: bool = True) -> str:
    """Stream `url` into `target` through a temporary file; verify; return the sha256 of what arrived."""
    request = urllib.request.Request(url, headers={"User-Agent": "rain-mlflow"})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        _fail(url, f"HTTP {exc.code} {exc.reason}")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        _fail(url, f"cannot reach {urllib.parse.urlparse(url).netloc} ({reason}); no network?")
    try:
        return _save(response, url, target, layout, progress)
    except OSError as exc:  # the cache cannot be written: permissions, a full disk
        raise WeightsError(
            f"could not save pretrained weights from {url} into {target.parent}: {exc.strerror or exc}; set "
            f"{CACHE_ENV} to a writable folder with 300 MB free, or {WAYS_FORWARD}") from None


def _save(response: Any, url: str, target: Path, layout: dict[str, tuple[int, ...]], progress: bool) -> str:
    from tqdm import tqdm

    from rain_mlflow.data.io import atomic_path

    with response, atomic_path(target) as tmp:
        length = response.headers.get("Content-Length", "")
        size = int(length) if length.isdigit() else None
        if response.headers.get_content_type() == "text/html":
            _fail(url, _HTML_PROBLEM)
        digest, received = hashlib.sha256(), 0
        with open(tmp, "wb") as out, tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                                         desc=f"downloading {target.name}", disable=not progress, leave=False,
                                         mininterval=0.5 if sys.stderr.isatty() else 10) as bar:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:  # reset connection, timeout, IncompleteRead
                    _fail(url, f"the download stopped after {received:,} bytes ({type(exc).__name__})")
                if not chunk:
                    break
                if received == 0 and chunk.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
                    _fail(url, _HTML_PROBLEM)
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if size is not None and received != size:
            _fail(url, f"the download is truncated: {received:,} of {size:,} bytes arrived")
        verify(tmp, layout, f"the file from {url}")
    return digest.hexdigest()


_HTML_PROBLEM = ("the server sent an HTML page instead of a checkpoint (a share page? a direct-download link "
                 "such as cloud.tsinghua.edu.cn/f/<id>/?dl=1 is needed)")


def _fail(url: str, problem: str) -> None:
    raise WeightsError(f"could not get pretrained weights from {url}: {problem}; {WAYS_FORWARD}")


def verify(path: Path, layout: dict[str, tuple[int, ...]], label: str) -> dict[str, int]:
    """Load `path` with weights_only=True and require exactly `layout`; return its tensor and parameter counts."""
    from rain_mlflow.model.transfer import check_fits, read_state_dict, shapes_of

    try:
        state = read_state_dict(path, label)
        check_fits(shapes_of(state), layout, label)
    except CheckpointError as exc:
        raise WeightsError(f"{exc}; {WAYS_FORWARD}") from None
    return {"n_tensors": len(state), "n_parameters": sum(t.numel() for t in state.values())}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def status(source: Source) -> dict[str, Any]:
    """What a dry run reports, without downloading: cached, local or to be downloaded (and how big)."""
    out: dict[str, Any] = {"kind": source.kind, "spec": source.spec, "path": str(source.path), "url": source.url,
                           "offline": offline()}
    if source.kind == "file":
        if not source.path.is_file():
            fetch(source)  # the same error a real run gives: a local file cannot be downloaded
        return {**out, "state": "local", "size_bytes": source.path.stat().st_size, "size_basis": "file"}
    if source.path.is_file():
        return {**out, "state": "cached", "size_bytes": source.path.stat().st_size, "size_basis": "file"}
    size, basis = None, "unknown"
    if not offline():
        size = remote_size(source.url or "")
        basis = "HEAD request" if size is not None else basis
    if size is None and source.release is not None:
        size, basis = source.release.approx_bytes, f"{source.release.n_parameters:,} float32 parameters"
    return {**out, "state": "download", "offline": offline(), "size_bytes": size, "size_basis": basis}


def remote_size(url: str) -> int | None:
    """Content-Length from a HEAD request, or None when the server does not say or cannot be reached."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD", headers={"User-Agent": "rain-mlflow"}),
                                    timeout=HEAD_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length", "")
            html = response.headers.get_content_type() == "text/html"
            return int(length) if length.isdigit() and not html else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def describe(info: dict[str, Any]) -> str:
    """One line for the dry run: where the weights are, or that (and how much) would be downloaded."""
    size = f"{info['size_bytes'] / 1e6:,.0f} MB" if info.get("size_bytes") else "size unknown"
    if info["state"] in ("local", "cached"):
        return f"{info['state']} file {info['path']} ({size})"
    approx = "" if info["size_basis"] == "HEAD request" else "about "
    line = f"not cached: would be downloaded from {info['url']} ({approx}{size}) into {info['path']}"
    if info["offline"]:
        line += f", but {OFFLINE_ENV}=1 forbids downloading: unset it, or download by hand and pass the file"
    return line
