"""llamakit: run Meta-format LLaMA checkpoints on the GPUs you have."""

__version__ = "0.1.0"
