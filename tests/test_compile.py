"""compile=true compiles backbone + head inside the model, with the same outputs and state_dict keys."""

import torch

from birdsed.config import from_hyperparameters
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
    assert optimise_model(model, torch.device("cpu"), compile_model=False) is model
