"""The generation engine: scheduler, KV cache, model runner and sampler behind one `Engine.generate` call."""
