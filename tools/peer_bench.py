"""Peers on the benchmark's workload, for the side-by-side table in docs/BENCHMARKS.md (run on a GPU machine).

    python3 tools/peer_bench.py meta    PEERS/llama     # facebookresearch/llama generation.py: batch 1 and batch 32
    python3 tools/peer_bench.py gptfast PEERS/gpt-fast  # pytorch-labs/gpt-fast, torch.compile reduce-overhead, batch 1

The peers' source is fetched and carried to the device call only, never committed. Both build the 7B shape with
random N(0, 0.02) weights (norms 1.0) on the GPU and generate 256 new tokens for the benchmark's prompts
(llamakit.bench.standard_prompts), EOS never matching; one JSON line per measurement.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import torch

from llamakit.bench import standard_prompts

GEN = 256


def _init_random_(model: torch.nn.Module) -> None:
    gen = torch.Generator(device="cuda").manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)


def meta(src: str, batches: list[tuple[int, int]]) -> None:
    """Meta's own Llama.generate, fixed batches in file order (as the seed's users run it), fp16."""
    sys.path.insert(0, src)
    import torch.distributed as dist
    from fairscale.nn.model_parallel.initialize import initialize_model_parallel
    from llama.generation import Llama
    from llama.model import ModelArgs, Transformer

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl", rank=0, world_size=1)
    initialize_model_parallel(1)
    torch.cuda.set_device(0)

    class NoEos:  # the benchmark ignores EOS: an id that never occurs
        pad_id, eos_id, bos_id = -1, -999, 1

    prompts = standard_prompts(128)
    for bsz, n in batches:
        torch.set_default_dtype(torch.float16)  # as Llama.build (fairscale's layers use the legacy torch.Tensor()
        model = Transformer(ModelArgs(max_batch_size=bsz, max_seq_len=1024, vocab_size=32000)).cuda()  # on CPU)
        _init_random_(model)
        gen = Llama(model, NoEos())
        gen.generate([prompts[0][:16]], 4)  # warm-up
        torch.cuda.synchronize()
        t = time.perf_counter()
        tokens = 0
        for i in range(0, n, bsz):
            out, _ = gen.generate(prompts[i:i + bsz], GEN, temperature=0.6, top_p=0.9)
            tokens += sum(len(o) for o in out)
        torch.cuda.synchronize()
        s = time.perf_counter() - t
        print(json.dumps({"generator": "facebookresearch/llama generation.py", "dtype": "fp16", "batch": bsz,
                          "prompts": n, "tokens": tokens, "seconds": round(s, 2), "tok_s": round(tokens / s, 1),
                          "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}), flush=True)
        del gen, model
        torch.cuda.empty_cache()


def gptfast(src: str, n: int = 4) -> None:
    """gpt-fast's generate() with decode_one_token under torch.compile(mode='reduce-overhead'), bf16, batch 1; one
    cache size for every prompt so nothing recompiles between prompts; its own sampling (temperature 0.6, top_k
    200: it has no top_p)."""
    sys.path.insert(0, src)
    if not hasattr(torch.backends.cuda, "sdp_kernel"):  # removed from newer torch; gpt-fast only uses it as a hint
        torch.backends.cuda.sdp_kernel = lambda **kw: contextlib.nullcontext()
    import generate as G
    from model import Transformer

    with torch.device("meta"):
        model = Transformer.from_name("7B")
    model = model.to_empty(device="cuda").to(torch.bfloat16)
    _init_random_(model)
    model.eval()
    with torch.device("cuda"):
        model.setup_caches(max_batch_size=1, max_seq_length=480 + GEN + 8)
    G.decode_one_token = torch.compile(G.decode_one_token, mode="reduce-overhead", fullgraph=True)
    prompts = standard_prompts(128)
    kw = dict(batch_size=1, interactive=False, draft_model=None, temperature=0.6, top_k=200)
    t = time.perf_counter()
    for _ in range(2):  # compile + capture
        G.generate(model, torch.tensor(prompts[0], device="cuda", dtype=torch.int), GEN, **kw)
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    for p in prompts[:n]:
        G.generate(model, torch.tensor(p, device="cuda", dtype=torch.int), GEN, **kw)
    torch.cuda.synchronize()
    s = time.perf_counter() - t
    print(json.dumps({"generator": "pytorch-labs/gpt-fast", "dtype": "bf16", "batch": 1, "prompts": n,
                      "tokens": n * GEN, "seconds": round(s, 2), "tok_s": round(n * GEN / s, 1),
                      "compile_s": round(compile_s, 1)}), flush=True)


if __name__ == "__main__":
    which, src = sys.argv[1], sys.argv[2]
    if which == "meta":
        meta(src, [(int(a), int(b)) for a, b in (x.split("x") for x in sys.argv[3:] or ["1x4", "32x128"])])
    else:
        gptfast(src)
