"""compile=true compiles backbone + head inside the model, with the same outputs and state_dict keys; the
weights' layout (memory_format) changes no output."""

import pytest
import torch

from birdsed.config import from_hyperparameters
from birdsed.errors import ConfigError
from birdsed.models import create_model
from birdsed.training.performance import optimise_model

SMALL = {"backbone": "test_efficientnet", "sample_rate": 16000, "fmax": 8000, "n_mels": 32, "n_fft": 512}


def test_compiled_core_keeps_outputs_and_checkpoint_keys():
    torch.manual_seed(0)
    model = create_model(from_hyperparameters({**SMALL, "hop_length": 128, "duration": 1}), 3).eval()
    keys = list(model.state_dict())
    waveform = torch.randn(2, 16000)
    with torch.no_grad():
        eager = model(waveform)["clipwise_logits"]
        model.compile_core(backend="eager")  # the inductor backend needs a C++ toolchain; the wiring is the same
        compiled = model(waveform)["clipwise_logits"]
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(compiled, eager)
    assert optimise_model(model, compile_model=False) is model


def test_cpu_training_model_is_channels_last_with_the_same_outputs():
    torch.manual_seed(0)
    cfg = from_hyperparameters({**SMALL, "hop_length": 128, "duration": 1})
    model = create_model(cfg, 3).eval()
    waveform = torch.randn(2, 16000)
    with torch.no_grad():
        contiguous = model(waveform)["clipwise_logits"]
        optimise_model(model, compile_model=False)
        nhwc = model(waveform)["clipwise_logits"]
    convolutions = [p for p in model.parameters() if p.ndim == 4]
    assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    torch.testing.assert_close(nhwc, contiguous, rtol=1e-4, atol=1e-5)
    # Checkpoints stay loadable into a model in either layout.
    fresh = create_model(cfg, 3).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(waveform)["clipwise_logits"], contiguous, rtol=1e-4, atol=1e-5)


def test_memory_format_contiguous_keeps_pytorchs_default_layout_with_the_same_outputs():
    torch.manual_seed(0)
    cfg = from_hyperparameters({**SMALL, "hop_length": 128, "duration": 1, "memory_format": "contiguous"})
    assert cfg.run.memory_format == "contiguous"
    model = create_model(cfg, 3).eval()
    waveform = torch.randn(2, 16000)
    with torch.no_grad():
        before = model(waveform)["clipwise_logits"]
        optimise_model(model, compile_model=False, memory_format=cfg.run.memory_format)
        after = model(waveform)["clipwise_logits"]
    convolutions = [p for p in model.parameters() if p.ndim == 4]
    assert convolutions and all(p.is_contiguous() for p in convolutions)
    # Unlike a channels_last model: most of its weights are not NCHW-contiguous (1x1 and depthwise ones can be both).
    assert not all(p.is_contiguous() for p in create_model(cfg, 3).to(memory_format=torch.channels_last).parameters())
    torch.testing.assert_close(after, before)


def test_an_unknown_memory_format_is_a_one_line_reason():
    with pytest.raises(ConfigError, match="memory_format"):
        from_hyperparameters({**SMALL, "memory_format": "nhwc"})
