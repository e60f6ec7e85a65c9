"""Loading an official Timer-XL checkpoint into the backbone, and freezing the backbone for fine-tuning.

Accepted files (always read with `torch.load(..., map_location="cpu", weights_only=True)`, so a file that
carries code is refused, never run):
- a plain state dict, as OpenLTM saves it (`checkpoint.pth`);
- the same wrapped as {"state_dict": ...} or {"model": ...} (other top-level entries are ignored);
- keys with a `module.` prefix (saved from a DDP-wrapped model) are accepted; the prefix is stripped.
Loading is strict, and everything is validated before any parameter is touched, so a failed load leaves the
model as it was. Every problem raises one CheckpointError line naming the file and the problem.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import Tensor

from rain_mlflow.errors import CheckpointError
from rain_mlflow.model.classifier import RainClassifier
from rain_mlflow.model.timerxl import TimerXL

_WRAPPER_KEYS = ("state_dict", "model")
_DDP_PREFIX = "module."


def load_pretrained_backbone(backbone: TimerXL, path: str | Path) -> dict:
    """Load the checkpoint at `path` into `backbone` strictly; return {path, n_tensors, n_parameters}."""
    path = Path(path)
    state = read_state_dict(path)
    check_fits(shapes_of(state), shapes_of(backbone.state_dict()), f"checkpoint {path}")
    backbone.load_state_dict(state, strict=True)
    return {
        "path": str(path),
        "n_tensors": len(state),
        "n_parameters": sum(tensor.numel() for tensor in state.values()),
    }


def read_state_dict(path: Path, label: str | None = None) -> dict[str, Tensor]:
    """The backbone state dict in the file at `path` (unwrapped, prefix stripped); errors name `label` or path."""
    label = label or f"checkpoint {path}"
    return _strip_prefix(_unwrap(_read(path, label), label))


def shapes_of(state: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(tensor.shape) for key, tensor in state.items()}


def check_fits(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], label: str) -> None:
    """Raise on the first missing key, unexpected key or shape mismatch (in the model's key order)."""
    prefix = f"{label} does not fit the model:"
    missing = [key for key in expected if key not in found]
    if missing:
        raise CheckpointError(
            f"{prefix} {len(missing)} key(s) missing from the file, first {missing[0]} "
            "(e_layers differs, or not a Timer-XL checkpoint?)"
        )
    unexpected = [key for key in found if key not in expected]
    if unexpected:
        raise CheckpointError(
            f"{prefix} {len(unexpected)} unexpected key(s) in the file, first {unexpected[0]} "
            "(e_layers differs, or not a Timer-XL checkpoint?)"
        )
    for key, shape in expected.items():
        if tuple(found[key]) != tuple(shape):
            raise CheckpointError(
                f"{prefix} {key} has shape {list(found[key])} in the file but {list(shape)} in the "
                f"model ({_shape_hint(key)} differ?)"
            )


def set_backbone_frozen(model: RainClassifier, frozen: bool) -> None:
    """Turn gradients of `model.backbone` off or back on; the pooling and classification head always train.

    Dropout inside the backbone still follows model.train()/eval(); only requires_grad changes here.
    """
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(not frozen)


def _read(path: Path, label: str) -> object:
    if not path.exists():
        raise CheckpointError(f"{label} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{label} is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # The weights-only unpickler names the refused GLOBAL when the pickle references code (a class,
        # a function such as os.system); other refusals mean the bytes are not a checkpoint at all.
        if "GLOBAL" in str(error):
            raise CheckpointError(
                f"{label} contains Python objects other than tensors; refusing to load it (weights_only=True)"
            ) from None
        raise CheckpointError(f"{label} is truncated or not a PyTorch checkpoint") from None
    except PermissionError:
        raise CheckpointError(f"{label} cannot be read: permission denied") from None
    except Exception as error:  # damaged files surface as RuntimeError, OSError, EOFError, KeyError...
        raise CheckpointError(
            f"{label} is truncated or not a PyTorch checkpoint ({type(error).__name__})"
        ) from None


def _unwrap(content: object, label: str) -> dict[str, Tensor]:
    if isinstance(content, dict) and not _all_tensors(content):
        for key in _WRAPPER_KEYS:
            if isinstance(content.get(key), dict):
                content = content[key]
                break
    if not isinstance(content, dict) or not content:
        raise CheckpointError(
            f"{label} is not a state dict: expected a non-empty dict of tensors (optionally under "
            f"{' or '.join(repr(k) for k in _WRAPPER_KEYS)}); got {_describe(content)}"
        )
    for key, value in content.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(
                f"{label} is not a state dict of tensors: entry {key!r} holds {_describe(value)}"
            )
    return content


def _strip_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {key.removeprefix(_DDP_PREFIX): value for key, value in state.items()}


def _shape_hint(key: str) -> str:
    """Which config fields set the shape of this key."""
    if key.startswith("embedding."):
        return "d_model or input_token_len"
    if key.startswith("head."):
        return "d_model or output_token_len"
    if key.endswith("attn_bias.emb.weight"):
        return "n_heads"
    if ".conv" in key:
        return "d_model or d_ff"
    return "d_model"


def _all_tensors(content: dict) -> bool:
    return all(isinstance(value, Tensor) for value in content.values())


def _describe(value: object) -> str:
    if isinstance(value, dict):
        return f"a dict with keys {list(value)[:5]}"
    return f"a {type(value).__name__}"
