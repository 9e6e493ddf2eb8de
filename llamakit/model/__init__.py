"""The LLaMA model on fairscale model-parallel layers, its KV cache and its (optionally int8) linear layers."""
