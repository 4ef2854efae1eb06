"""Reading and checking the `pretrained` channel's weights file before and after timm loads it.

timm reads the file itself, but its errors are not a user's (a text file named model.safetensors
gives "SafetensorError: header too large", an empty pytorch_model.bin "EOFError" with no
message), and with the classifier removed (`num_classes=0`) it loads non-strictly: a file of
another model's weights "loads" and the backbone silently stays random. Here the file's tensor
names and shapes are read (a header for safetensors, a memory map for PyTorch files: not the
tensors themselves), any failure is a `DataError` naming the file and what was expected, and
after loading, enough of the backbone's tensors must have come from the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError, safe_open

from birdsed.errors import DataError

# Where timm finds the weights in a training checkpoint (timm.models.load_state_dict), in its order.
NESTED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
# Below this share of the backbone's tensors found in the file (by name and shape), it holds another model.
MIN_MATCHED_FRACTION = 0.5


def expected_weights(backbone: str) -> str:
    """What the channel should hold for `backbone`, for error messages."""
    config = timm.models.get_pretrained_cfg(backbone)
    hub = f" of the Hugging Face repo {config.hf_hub_id}" if config is not None and config.hf_hub_id else ""
    return (
        f"expected the timm weights of '{backbone}': the model.safetensors{hub}, or a PyTorch state dict of the "
        "same tensors (.pth, .pt, .bin)"
    )


def read_shapes(path: Path, backbone: str) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of a weights file, as timm will read it; `DataError` if it is not a weights file."""
    try:
        size = path.stat().st_size
    except OSError as error:
        raise DataError(f"The pretrained weights file {path} cannot be read ({error.strerror}).") from None
    if size == 0:
        raise _error(path, backbone, "is empty (0 bytes)")
    if path.suffix == ".safetensors":
        return _safetensors_shapes(path, backbone)
    return _torch_shapes(path, backbone)


def _safetensors_shapes(path: Path, backbone: str) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise _error(path, backbone, f"is not a safetensors file ({_first_line(error)})") from None


def _torch_shapes(path: Path, backbone: str) -> dict[str, tuple[int, ...]]:
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # mmap needs the zip format of torch.save; older files load whole
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        problem = "holds pickled Python objects besides tensors (refused: only tensors are loaded, for safety)"
        raise _error(path, backbone, problem) from None
    except Exception as error:  # noqa: BLE001 - anything unreadable is the user's file, not our error
        problem = f"is not a PyTorch weights file ({type(error).__name__}: {_first_line(error)})"
        raise _error(path, backbone, problem) from None
    if isinstance(state, dict):
        nested = next((key for key in NESTED_KEYS if isinstance(state.get(key), dict)), None)
        state = state[nested] if nested else state
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = f"a {type(state).__name__}" if not isinstance(state, dict) else "a dict of other values"
        raise _error(path, backbone, f"holds {found}, not a state dict of tensors")
    return {name.removeprefix("module."): tuple(tensor.shape) for name, tensor in state.items()}


def check_loaded(model: torch.nn.Module, shapes: dict[str, tuple[int, ...]], path: Path, backbone: str) -> None:
    """Refuse a file that filled too few of the backbone's tensors (timm loads non-strictly)."""
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    matched = sum(1 for name, shape in expected.items() if shapes.get(name) == shape)
    if matched < MIN_MATCHED_FRACTION * len(expected):
        example = next((name for name in expected if name not in shapes), next(iter(expected)))
        raise _error(
            path,
            backbone,
            f"holds the weights of another model: only {matched} of the backbone's {len(expected)} tensors are in "
            f"it by name and shape (e.g. no {example})",
        )


def loading_error(path: Path, backbone: str, error: BaseException) -> DataError:
    """timm's error while loading the file (mismatched shapes, missing keys), in one line."""
    return _error(path, backbone, f"does not fit '{backbone}' ({type(error).__name__}: {_first_detail(error)})")


def _error(path: Path, backbone: str, problem: str) -> DataError:
    return DataError(f"The pretrained weights file {path} {problem}; {expected_weights(backbone)}.")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else "no message"


def _first_detail(error: BaseException) -> str:
    """load_state_dict's message is a heading then one line per tensor: keep the first tensor's line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return (lines[1] if len(lines) > 1 else lines[0] if lines else "no message")[:300]
