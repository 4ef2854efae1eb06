"""The training loop, mixed precision, checkpoints and the job runner."""
