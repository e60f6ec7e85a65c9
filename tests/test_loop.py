"""The GPU-lean loop on CPU: host syncs per step, late but exact NaN reports, accumulation, checkpointing, compile."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from rain_mlflow.config import presets
from rain_mlflow.data.source import load_clean
from rain_mlflow.data.dataset import prepare
from rain_mlflow.model.factory import build_classifier
from rain_mlflow.model import checkpoint
from rain_mlflow.train.estimate import saved_activation_bytes
from rain_mlflow.data.batches import Batches
from rain_mlflow.train.loop import NonFiniteLoss, build_optimizer, compile_or_eager, fit, train_one_epoch
from rain_mlflow.train.losses import build_loss
from rain_mlflow.train.precision import select_precision

pytestmark = pytest.mark.e2e

SRC = str(Path(__file__).resolve().parents[1] / "src" / "rain_mlflow")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def short_csv(tmp_path_factory) -> Path:
    """One year of the synthetic record: enough steps, and short evaluations."""
    from rain_mlflow.synth import SynthConfig, write_synthetic

    path = tmp_path_factory.mktemp("loop") / "one_year.csv"
    write_synthetic(str(path), SynthConfig(years=1.0))
    return path


@pytest.fixture(scope="module")
def smoke_data(short_csv):
    cfg = presets.build("smoke", {"data": str(short_csv)})
    return prepare(load_clean(cfg.data)[1], cfg)


def config(data_path, **overrides):
    return presets.build("smoke", {"data": str(data_path), "amp": "off", **overrides})


def one_epoch(cfg, data, model=None, epoch: int = 1, sgd: bool = False):
    """Train one epoch the way `fit` does; return (mean loss, optimiser steps taken, model)."""
    torch.manual_seed(0)
    model = model or build_classifier(cfg, data.n_vars)
    precision = select_precision(cfg.train.amp, CPU)
    train = data.splits["train"]
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.learning_rate, momentum=0.9) if sgd else \
        build_optimizer(model, cfg.train.learning_rate, cfg.train.weight_decay, CPU)
    taken = []
    optimizer.register_step_post_hook(lambda *_: taken.append(1))
    loss, _, _ = train_one_epoch(cfg, model, Batches(data, CPU), build_loss(cfg.train.loss, 2.0, train.no_rain,
                                 train.rain), optimizer, precision.grad_scaler(), precision,
                                 torch.Generator().manual_seed(1), epoch)
    return loss, len(taken), model


class HostSyncs:
    """Counts our package's calls to the Python entry points that make the host wait for the device (a GPU read:
    `.item()`, `.tolist()`, `.cpu()`, `.numpy()`, truth and number conversions; `torch.cuda.synchronize`)."""

    NAMES = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            monkeypatch.setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name)))
        monkeypatch.setattr(torch.cuda, "synchronize", self._counting(torch.cuda.synchronize))

    def _counting(self, original):
        def wrapper(*args, **kwargs):
            if sys._getframe(1).f_code.co_filename.startswith(SRC):
                self.count += 1
            return original(*args, **kwargs)
        return wrapper


def test_the_step_loop_waits_for_the_device_only_every_k_steps(monkeypatch, short_csv, smoke_data):
    steps = math.ceil(smoke_data.splits["train"].size / 8)
    assert steps >= 80
    syncs = HostSyncs(monkeypatch)
    one_epoch(config(short_csv, batch_size=8, check_loss_every=10), smoke_data)
    assert 1 <= syncs.count <= steps // 10 + 3, (syncs.count, steps)

    syncs.count = 0  # the same counter sees every look when the loop looks every step
    one_epoch(config(short_csv, batch_size=8, check_loss_every=1), smoke_data)
    assert syncs.count >= steps


class PoisonedAt(nn.Module):
    """A real classifier whose logits become NaN on its `bad_call`-th training forward (1-based)."""

    def __init__(self, inner: nn.Module, bad_call: int):
        super().__init__()
        self.inner, self.bad_call, self.calls = inner, bad_call, 0

    def forward(self, x):
        self.calls += 1
        logits = self.inner(x)
        return logits * float("nan") if self.calls == self.bad_call else logits


def test_a_nan_loss_is_still_caught_with_its_epoch_step_and_checked_range(short_csv, smoke_data):
    cfg = config(short_csv, batch_size=8, check_loss_every=5)
    model = PoisonedAt(build_classifier(cfg, smoke_data.n_vars), bad_call=7)
    steps = math.ceil(smoke_data.splits["train"].size / 8)
    with pytest.raises(NonFiniteLoss) as caught:
        one_epoch(cfg, smoke_data, model, epoch=3)
    message = str(caught.value)
    assert caught.value.epoch == 3
    assert f"the loss became nan at epoch 3, step 7/{steps}" in message
    assert "check over steps 6-10" in message and "learning_rate" in message
    assert model.calls == 10  # it ran on to the check, no further


def test_accumulated_batches_step_like_one_big_batch(short_csv, smoke_data):
    # Plain SGD: its update is proportional to the gradient, so equal gradients mean equal weights (Adam would
    # amplify rounding noise in directions with no gradient, such as the key biases).
    common = dict(loss="ce", dropout="0", lradj="none", grad_clip="0", learning_rate="0.05")
    n = smoke_data.splits["train"].size
    big_loss, big_steps, big = one_epoch(config(short_csv, batch_size=64, **common), smoke_data, sgd=True)
    acc_loss, acc_steps, accumulated = one_epoch(
        config(short_csv, batch_size=16, accumulate_steps=4, **common), smoke_data, sgd=True)
    assert big_steps == acc_steps == math.ceil(n / 64)
    assert acc_loss == pytest.approx(big_loss, rel=1e-5)
    for (name, a), (_, b) in zip(big.state_dict().items(), accumulated.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    _, small_steps, small = one_epoch(config(short_csv, batch_size=16, **common), smoke_data, sgd=True)
    assert small_steps == math.ceil(n / 16)  # without accumulation: four times the steps, other weights
    assert not torch.allclose(small.classifier.weight, big.classifier.weight, atol=1e-3)


def test_resume_with_accumulation_continues_exactly(short_csv, smoke_data, tmp_path):
    cfg = config(short_csv, batch_size=16, accumulate_steps=3, train_epochs=2)
    precision = select_precision("off", CPU)

    def run(workdir: Path, stop_after: int | None, resume=None):
        torch.manual_seed(cfg.train.seed)
        model = build_classifier(cfg, smoke_data.n_vars)
        workdir.mkdir()
        result = fit(cfg, smoke_data, model, precision, workdir,
                     lambda epoch, *_: "stop" if epoch == stop_after else None, resume=resume)
        return result.state.history

    straight = run(tmp_path / "straight", None)
    run(tmp_path / "first", 1)
    resumed = run(tmp_path / "second", None, resume=checkpoint.load(tmp_path / "first" / "last.pt"))
    timing = {"epoch_time_s", "samples_per_s"}
    assert {k: v for k, v in resumed[2].items() if k not in timing} == \
        {k: v for k, v in straight[2].items() if k not in timing}


def saved_bytes_of(model: nn.Module, x: torch.Tensor) -> int:
    """Naive reference: bytes of the distinct tensors autograd keeps after one forward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return sum(seen.values())


def test_activation_checkpointing_keeps_less_and_gives_the_same_gradients(short_csv, smoke_data):
    cfg = config(short_csv)  # dropout 0.1: the recomputation must replay the same dropout masks
    x = Batches(smoke_data, CPU).get("train", torch.arange(4))[0]
    grads, kept = {}, {}
    for on in (False, True):
        torch.manual_seed(0)
        model = build_classifier(presets.build("smoke", {"checkpoint_activations": str(on).lower()}),
                                 smoke_data.n_vars).train()
        torch.manual_seed(1)
        kept[on] = saved_bytes_of(model, x)
        torch.manual_seed(2)
        model(x).float().pow(2).sum().backward()
        grads[on] = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys()
    for key in grads[False]:
        torch.testing.assert_close(grads[True][key], grads[False][key], rtol=0, atol=0, msg=key)
    m = cfg.model
    tokens = smoke_data.n_vars * (smoke_data.window // m.input_token_len)
    layer_inputs = m.e_layers * 4 * tokens * m.d_model * len(x)        # what each checkpointed layer must keep
    assert layer_inputs <= kept[True] < kept[False] / 2


def test_the_estimate_probe_sees_checkpointing(smoke_data):
    x = Batches(smoke_data, CPU).get("train", torch.arange(2))[0]
    precision = select_precision("off", CPU)
    plain = saved_activation_bytes(build_classifier(presets.build("smoke"), smoke_data.n_vars), x, precision)
    lean = saved_activation_bytes(build_classifier(presets.build("smoke", {"checkpoint_activations": "true"}),
                                                   smoke_data.n_vars), x, precision)
    assert plain.recompute == 0 and 0 < lean.recompute < plain.forward
    assert lean.forward < plain.forward
    # what is recomputed is one of the e_layers layers' share of what the plain model keeps
    assert lean.recompute < plain.forward / presets.build("smoke").model.e_layers


def test_compile_falls_back_to_eager_with_one_warning(monkeypatch, caplog, smoke_data):
    import torch._inductor.config as inductor

    # A machine without a C++ compiler: the CPU backend of torch.compile cannot build its kernels.
    monkeypatch.setattr(inductor.cpp, "cxx", ("/nonexistent/c++",))
    torch.manual_seed(0)
    model = build_classifier(presets.build("smoke"), smoke_data.n_vars)
    before = torch.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="rain_mlflow"):
        net = compile_or_eager(model, Batches(smoke_data, CPU), select_precision("off", CPU))
    assert net is model
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "training without it" in warnings[0].getMessage()
    assert torch.equal(torch.get_rng_state(), before)           # the trial step consumed no randomness
    assert all(p.grad is None for p in model.parameters())      # and left no gradients behind
