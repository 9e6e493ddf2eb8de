"""The one set of defaults for a run's shape (batch x sequence length, dtype): engine, recipe, inspect and doctor read
them here, so every command judges the same folder at the same size. Torch-free, so the CLI can import it cheaply."""

from __future__ import annotations

# What `llamakit run` does when a recipe leaves the keys out, so doctor and inspect (given only a folder) judge the
# run a user would get. 8 x 512 tokens: a batch a 13B fits on one 48 GB card beside its weights; new-recipe sizes
# both from the prompts and the GPUs instead.
MAX_BATCH_SIZE = 8  # sequences decoded together (the engine may use fewer)
MAX_SEQ_LEN = 512  # prompt + generated tokens, per sequence
DTYPE = "bf16"  # what `dtype: auto` and inspect's plan assume on a GPU
