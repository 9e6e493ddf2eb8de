"""The one set of defaults for a run's shape (batch x sequence length, dtype): engine, recipe, inspect and doctor read
them here, so every command judges the same folder at the same size. Torch-free, so the CLI can import it cheaply."""

from __future__ import annotations

MAX_BATCH_SIZE = 32  # sequences decoded together (the engine may use fewer)
MAX_SEQ_LEN = 512  # prompt + generated tokens, per sequence
DTYPE = "bf16"  # what `dtype: auto` and inspect's plan assume on a GPU
