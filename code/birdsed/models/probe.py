"""A timm backbone that holds only what `forward_features` uses, checked when it is built.

timm keeps some modules outside `forward_features`, after the global pool: MobileNetV3's and
GhostNet's `conv_head`, the `head.norm` of ConvNeXt and EdgeNeXt, HGNetV2's `head.last_conv`.
The SED model never calls them, so their parameters never get a gradient: they stay as initialised
(AdamW skips them), are saved and exported for nothing, and DistributedDataParallel (which keeps
`find_unused_parameters=False`, the fast path) stops a multi-GPU job at its second step.

One forward and backward pass of a small input on the CPU finds them: a top-level module none of
whose parameters gets a gradient is replaced by `nn.Identity`, whatever the timm family, and any
other parameter without a gradient is an error naming it, raised before a job starts training.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from birdsed.errors import ConfigError

logger = logging.getLogger(__name__)

# [1, C, 64, 64]: every stride-32 CNN still has a 2 x 2 map, and the pass takes well under a second.
PROBE_SIZE = 64
# Parameters named in an error message; the rest are counted.
NAMES_SHOWN = 8


@dataclass(frozen=True)
class Probe:
    output: object  # what forward_features returned for the probe input, detached
    differentiable: bool  # the output depends on at least one parameter
    unused: frozenset[str]  # trainable parameters that got no gradient


def probe_input(in_chans: int) -> torch.Tensor:
    """A fixed input from a generator of its own: building a model draws nothing from the global random state."""
    return torch.randn(1, in_chans, PROBE_SIZE, PROBE_SIZE, generator=torch.Generator().manual_seed(0))


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode for the probe (batch-norm statistics stay as they are), then the mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def probe(model: nn.Module, in_chans: int) -> Probe:
    """`forward_features` + backward of the probe input; which parameters got a gradient."""
    with evaluating(model), torch.enable_grad():
        try:
            output = model.forward_features(probe_input(in_chans))
            differentiable = isinstance(output, torch.Tensor) and output.requires_grad
            if differentiable:
                output.float().sum().backward()
            unused = frozenset(
                name
                for name, parameter in model.named_parameters()
                if parameter.requires_grad and parameter.grad is None
            )
        finally:
            model.zero_grad(set_to_none=True)  # the first training step must not add the probe's gradients
    if isinstance(output, torch.Tensor):
        output = output.detach()
    return Probe(output, differentiable, unused)


def keep_used_modules(model: nn.Module, name: str, in_chans: int) -> nn.Module:
    """Check the feature map, drop the head-side modules, refuse parameters that would get no gradient."""
    try:
        found = probe(model, in_chans)
    except (RuntimeError, AssertionError, ValueError) as error:
        raise ConfigError(
            f"Backbone '{name}' fails on a small spectrogram ([1, {in_chans}, {PROBE_SIZE}, {PROBE_SIZE}]): "
            f"{str(error).strip()[:300]}; use a convolutional backbone (EfficientNet, ConvNeXt, ResNet, ...)."
        ) from None
    check_feature_map(found, model, name)
    dropped = head_side_modules(model, found.unused)
    if dropped:
        drop_modules(model, dropped, found.output, name, in_chans)
    remaining = sorted(parameter for parameter in found.unused if parameter.split(".")[0] not in dropped)
    if remaining:
        shown = ", ".join(remaining[:NAMES_SHOWN])
        if len(remaining) > NAMES_SHOWN:
            shown += f" and {len(remaining) - NAMES_SHOWN} more"
        raise ConfigError(
            f"Backbone '{name}' (timm {type(model).__name__}) has {len(remaining)} parameters that its "
            f"forward_features does not use, inside modules it does use: {shown}. They would get no gradient, "
            "and a multi-GPU job would stop at its first step; choose another backbone (see docs/backbones.md)."
        )
    return model


def check_feature_map(found: Probe, model: nn.Module, name: str) -> None:
    """The SED head needs `[B, C, F, T]` with C = `num_features` (not tokens, not channels-last maps)."""
    output = found.output
    if not isinstance(output, torch.Tensor) or output.ndim != 4:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ConfigError(
            f"Backbone '{name}' returns features of shape {shape}, not a [B, C, F, T] "
            "feature map; use a convolutional backbone (EfficientNet, ConvNeXt, ResNet, ...)."
        )
    if output.shape[1] != model.num_features:
        raise ConfigError(
            f"Backbone '{name}' returns features of shape {tuple(output.shape)}, not [B, C, F, T] with its "
            f"C={model.num_features} channels (channels-last maps?); use a backbone whose forward_features "
            "returns [B, C, F, T] (EfficientNet, ConvNeXt, ResNet, ...)."
        )
    if not found.differentiable:
        raise ConfigError(f"Backbone '{name}': its features do not depend on its parameters, so it cannot be trained.")


def head_side_modules(model: nn.Module, unused: frozenset[str]) -> list[str]:
    """Top-level modules that hold trainable parameters, none of which got a gradient."""
    names = []
    for child_name, child in model.named_children():
        parameters = [f"{child_name}.{name}" for name, parameter in child.named_parameters() if parameter.requires_grad]
        if parameters and unused.issuperset(parameters):
            names.append(child_name)
    return names


def drop_modules(model: nn.Module, names: list[str], expected: torch.Tensor, name: str, in_chans: int) -> None:
    """Replace `names` by `nn.Identity`; `forward_features` must give exactly what it gave before."""
    counts = {child: sum(p.numel() for p in getattr(model, child).parameters()) for child in names}
    for child in names:
        setattr(model, child, nn.Identity())
    with evaluating(model), torch.no_grad():
        after = model.forward_features(probe_input(in_chans))
    if after.shape != expected.shape or not torch.allclose(after, expected, rtol=1e-5, atol=1e-6):
        raise ConfigError(
            f"Backbone '{name}': its modules {', '.join(names)} get no gradient but change its features; "
            "birdsed cannot train this backbone (see docs/backbones.md)."
        )
    # A model.pt written before these modules were dropped still loads: their weights are ignored.
    model.register_load_state_dict_pre_hook(ignore_weights_of(tuple(names)))
    logger.info(
        "Backbone %s: dropped the head-side modules that forward_features does not use: %s",
        name,
        ", ".join(f"{child} ({count:,} parameters)" for child, count in counts.items()),
    )


def ignore_weights_of(names: tuple[str, ...]) -> Callable[..., None]:
    """A `load_state_dict` pre-hook that discards the weights of the modules `names`."""
    prefixes = tuple(f"{name}." for name in names)

    def hook(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
        for key in [key for key in state_dict if key[len(prefix) :].startswith(prefixes) and key.startswith(prefix)]:
            del state_dict[key]

    return hook
