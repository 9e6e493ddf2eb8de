"""Measure a large model's GPU memory on one GPU and compare it with llamakit's memory plan (the numbers inspect,
new-recipe and run's plan promise before anything starts).

Default: the per-GPU share of LLaMA-65B at MP=2 with int8 weights, i.e. 40 of its 80 layers at full width on one
GPU, at max_batch_size 6 and max_seq_len 2048 (the row of docs/reshard.md that says 65B fits 2x RTX A6000). Every
slot is filled to 2,000 tokens, so the KV cache is really used. Random weights, built on the GPU, nothing on disk.

Usage (CUDA machine, from a checkout): PYTHONPATH=$PWD python3 tools/memory_check.py [PRESET LAYERS QUANTIZE BATCH SEQ]
Prints one JSON object.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace

import torch
import torch.distributed as dist

from llamakit.bench import random_shard
from llamakit.checkpoint.params import PRESETS
from llamakit.distributed import init_model_parallel
from llamakit.engine.api import EngineConfig, Request
from llamakit.engine.engine import engine_for_model
from llamakit.memory import plan_memory
from llamakit.model.llama import Transformer
from llamakit.run.plan import free_port

GiB = 1024**3


def main(argv: list[str]) -> None:
    preset, layers, quantize, batch, seq = (argv + ["llama-65b", "40", "int8", "6", "2048"][len(argv):])[:5]
    layers, batch, seq = int(layers), int(batch), int(seq)
    vocab = 32000
    cfg = replace(PRESETS[preset].with_vocab(vocab), n_layers=layers)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    init_model_parallel(1)
    dev = torch.device("cuda", 0)
    t0 = time.time()
    model = Transformer.from_shard(cfg, random_shard(cfg, vocab, 1, torch.bfloat16, dev, 0), seq, torch.bfloat16,
                                   dev, quantize)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    after_weights = torch.cuda.memory_allocated()
    ecfg = EngineConfig(max_seq_len=seq, max_batch_size=batch, dtype="bf16", device="cuda", temperature=0.8,
                        top_p=0.95, quantize=quantize, fast=True)
    engine = engine_for_model(model, ecfg, batch, eos_ids=())
    gen = 256
    prompt_len = seq - gen - 48
    g = torch.Generator().manual_seed(0)
    reqs = [Request(i, torch.randint(3, vocab, (prompt_len,), generator=g).tolist(), gen) for i in range(batch)]
    t1 = time.time()
    tokens = sum(len(c.tokens) for c in engine.generate(reqs))
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    plan = plan_memory(cfg, vocab, 1, quantize if quantize == "int8" else "bf16", batch, seq)
    print(json.dumps({
        "shape": f"{preset} width, {layers} layers", "quantize": quantize, "batch": batch, "max_seq_len": seq,
        "filled_to_tokens": prompt_len + gen, "generated_tokens": tokens, "device": torch.cuda.get_device_name(),
        "torch": torch.__version__, "build_s": round(t1 - t0, 1), "generate_s": round(time.time() - t1, 1),
        "measured_weights_gib": round(after_weights / GiB, 2),
        "measured_peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GiB, 2),
        "measured_peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GiB, 2),
        "measured_process_total_gib": round((total - free) / GiB, 2),  # incl. CUDA context, as nvidia-smi shows
        "plan_weights_gib": round(plan.weights / GiB, 2), "plan_kv_cache_gib": round(plan.kv_cache / GiB, 2),
        "plan_total_gib": round(plan.total / GiB, 2),
    }))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
