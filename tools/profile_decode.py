"""Where a step's GPU time goes (run on a GPU machine, from a checkout with PYTHONPATH set): a kernel-level profile of
the 7B decode step at batch 1 / 128 / 1,024 and of a standard-workload prefill (int8b1: the int8 step at batch 1), the
decode-attention and rotary kernels' achieved bandwidth per launch configuration, and the sampling step's cost.

    python3 tools/profile_decode.py [--preset 7b] [--part all|step,prefill,overlap,green,green_attn,gaps,
                                    gaps_dataset,tunable,attn_layers,attn,fp8,fp8_gqa,rope,gemv,mm,nucleus,sample,
                                    int8b1,fixed_mm] > profile.txt

Random weights of the bench preset (llamakit.bench), KV lengths as in the standard workload halfway through its
256 tokens (batch 128) and as the dataset workload holds them (batch 1,024). Numbers are for reading, not for the docs:
speed claims come from `llamakit bench`.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from types import SimpleNamespace

import torch
import torch.distributed as dist

from llamakit.bench import BENCH_PRESETS, bench_vocab, random_shard, standard_prompts
from llamakit.distributed import free_port, init_model_parallel
from llamakit.engine.sampler import N_FLOAT, N_INT, sample_step
from llamakit.model import kernels
from llamakit.model.kv_cache import KVCache
from llamakit.model.llama import Transformer

PAGE = 16


def cuda_ms(fn, reps: int = 20, warm: int = 3) -> float:
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps


def graph_ms(fn, calls: int = 10, reps: int = 5) -> float:
    """GPU time of one fn() inside a CUDA graph of `calls` calls (what a decode step replays): no host launch cost,
    which dominates eager timings of small kernels (batch 1)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    ms = cuda_ms(g.replay, reps=reps, warm=1)
    del g
    return ms / calls


def lengths_for(batch: int) -> list[int]:
    """KV lengths per row: prompt + 128 generated (standard, halfway), capped so 1,024 rows fit ~230k tokens."""
    prompts = standard_prompts(max(batch, 1))
    lens = [len(p) + 128 for p in prompts[:batch]]
    if batch >= 512:
        lens = [min(n, 225) for n in lens]
    return lens


def paged_table(lens: list[int], n_kv_blocks: int | None = None, seed: int = 0) -> tuple[torch.Tensor, int]:
    """A block table with the blocks of all rows shuffled (sequences grow together, so their blocks interleave)."""
    need = [-(-n // PAGE) for n in lens]
    total = sum(need)
    ids = list(range(1, total + 1))
    random.Random(seed).shuffle(ids)
    width = max(need)
    table = torch.zeros((len(lens), width), dtype=torch.int32)
    at = 0
    for i, n in enumerate(need):
        table[i, :n] = torch.tensor(ids[at:at + n], dtype=torch.int32)
        at += n
    return table.cuda(), total + 1


def top_kernels(prof, n: int = 18) -> list[dict]:
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None)
        if t is None:
            t = getattr(e, "self_cuda_time_total", 0)
        if t > 0:
            rows.append({"kernel": e.key[:90], "calls": e.count, "us": round(t, 1)})
    rows.sort(key=lambda r: -r["us"])
    total = sum(r["us"] for r in rows)
    return [{"total_us": round(total, 1)}] + rows[:n]


def build(preset: str, quantize: str = "none") -> Transformer:
    cfg = BENCH_PRESETS[preset]
    vocab = bench_vocab(cfg)
    cfg = cfg.with_vocab(vocab)
    shard = random_shard(cfg, vocab, 1, torch.bfloat16, torch.device("cuda"), 1234)
    model = Transformer.from_shard(cfg, shard, 1024, torch.bfloat16, torch.device("cuda"), quantize,
                                   vocab_parallel=cfg.llama3_family)
    del shard
    torch.cuda.empty_cache()
    return model


def part_step(model: Transformer, batches: tuple[int, ...] = (1, 128, 1024)) -> None:
    """Profile decode_fast + sample_step eagerly (the kernels a graph replays) and time the graph-free step."""
    from torch.profiler import ProfilerActivity, profile

    cfg = model.cfg
    for batch in batches:
        lens = lengths_for(batch)
        table, n_blocks = paged_table(lens)
        cache = KVCache(cfg.n_layers, n_blocks, PAGE, cfg.kv_heads, cfg.head_dim, torch.bfloat16, "cuda")
        tok = torch.randint(3, 32000, (batch,), device="cuda")
        pos = torch.tensor(lens, device="cuda") - 1
        ints = torch.zeros((N_INT, batch), dtype=torch.int64, device="cuda")
        floats = torch.zeros((N_FLOAT, batch), dtype=torch.float32, device="cuda")
        floats[0], floats[1] = 0.6, 0.9

        def step():
            logits = model.decode_fast(tok, pos, cache, table)
            return sample_step(logits, ints, floats, None, "sample")

        with torch.inference_mode():
            eager = cuda_ms(step, reps=5)
            g = torch.cuda.CUDAGraph()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                step()
            torch.cuda.current_stream().wait_stream(s)
            with torch.cuda.graph(g):
                step()
            graph = cuda_ms(g.replay, reps=10)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    step()
                torch.cuda.synchronize()
        kv_gb = sum(lens) * cfg.n_layers * 2 * cfg.kv_heads * cfg.head_dim * 2 / 1e9
        w_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
        print(json.dumps({"part": "step", "batch": batch, "kv_tokens": sum(lens), "eager_ms": round(eager, 3),
                          "graph_ms": round(graph, 3), "weights_gb": round(w_gb, 2), "kv_gb": round(kv_gb, 2),
                          "limit_ms_4.3TB/s": round((kv_gb + w_gb) / 4.3, 3)}), flush=True)
        for r in top_kernels(prof):
            print("   ", json.dumps(r))
        del cache, g
        torch.cuda.empty_cache()


def part_prefill(model: Transformer) -> None:
    """A prefill step of the standard workload's first 48 prompts (4,608 padded tokens), profiled; timed with the
    flash varlen attention on the packed tokens and with SDPA on their right-padded copy."""
    from torch.profiler import ProfilerActivity, profile

    from llamakit.model import llama

    cfg = model.cfg
    prompts = standard_prompts(128)
    group = sorted(prompts, key=len)[:48]
    t = max(len(p) for p in group)
    t = -(-t // 32) * 32
    tokens = torch.zeros((len(group), t), dtype=torch.int64)
    for i, p in enumerate(group):
        tokens[i, :len(p)] = torch.tensor(p)
    lens = [len(p) for p in group]
    table, n_blocks = paged_table([t] * len(group))
    cache = KVCache(cfg.n_layers, n_blocks, PAGE, cfg.kv_heads, cfg.head_dim, torch.bfloat16, "cuda")
    tokens, lengths = tokens.cuda(), torch.tensor(lens, device="cuda")
    varlen = llama._varlen_causal
    try:
        llama._varlen_causal = lambda: None
        padded_ms = cuda_ms(lambda: model.prefill(tokens, lengths, table, cache), reps=5)
        padded_logits = model.prefill(tokens, lengths, table, cache)
    finally:
        llama._varlen_causal = varlen
    ms = cuda_ms(lambda: model.prefill(tokens, lengths, table, cache), reps=5)
    logits = model.prefill(tokens, lengths, table, cache)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        model.prefill(tokens, lengths, table, cache)
        torch.cuda.synchronize()
    flops = 2 * sum(p.numel() for p in model.parameters()) * sum(lens)
    print(json.dumps({"part": "prefill", "rows": len(group), "padded_len": t, "real_tokens": sum(lens),
                      "varlen": varlen() is not None, "ms": round(ms, 2), "padded_sdpa_ms": round(padded_ms, 2),
                      "tflops_real": round(flops / ms / 1e9, 1),
                      "top1_same": (logits.argmax(-1) == padded_logits.argmax(-1)).float().mean().item()}),
          flush=True)
    for r in top_kernels(prof):
        print("   ", json.dumps(r))
    del cache
    torch.cuda.empty_cache()


def part_overlap(model: Transformer, rows: tuple[int, ...] = (256, 512)) -> None:
    """Do decode attention (bound by memory) and the matmuls (bound by compute at these rows) overlap on two streams?
    32 layers of each for `rows` rows (dataset-workload KV lengths), timed alone, one after the other on one stream,
    and on two streams launched layer by layer (no priority, matmuls first, attention first), free or in lockstep
    (both streams joined after each layer, as a two-half pipelined step would be)."""
    import torch.nn.functional as F

    cfg = model.cfg
    h, d = cfg.n_heads, cfg.head_dim
    for m in rows:
        lens = lengths_for(1024)[:m]
        table, n_blocks = paged_table(lens)
        kc = torch.randn((n_blocks, h, PAGE, d), dtype=torch.bfloat16, device="cuda")
        vc = torch.randn_like(kc)
        q = torch.randn((m, h, d), dtype=torch.bfloat16, device="cuda")
        lengths = torch.tensor(lens, dtype=torch.int32, device="cuda")
        order = kernels.longest_first(lengths)
        x = torch.randn((m, cfg.dim), dtype=torch.bfloat16, device="cuda")
        hidden = model.layers[0].feed_forward.hidden_local

        def attn(_layer: int) -> None:
            kernels.decode_attention(q, kc, vc, table, lengths, order=order)

        def mm(layer: int) -> None:
            blk = model.layers[layer]
            F.linear(x, blk.attention.wqkv.weight)
            F.linear(x, blk.attention.wo.weight)
            g = kernels.silu_mul(F.linear(x, blk.feed_forward.w13.weight), hidden)
            F.linear(g, blk.feed_forward.w2.weight)

        def run(mode: str, prio: str = "none", lockstep: bool = False) -> float:
            hi, lo = torch.cuda.Stream(priority=-1), torch.cuda.Stream(priority=0)
            s_attn, s_mm = (hi, lo) if prio == "attn" else (lo, hi) if prio == "mm" else (lo, torch.cuda.Stream())
            main = torch.cuda.current_stream()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            for rep in range(2):  # the first round warms up
                torch.cuda.synchronize()
                a.record(main)
                s_attn.wait_stream(main)
                s_mm.wait_stream(main)
                for layer in range(cfg.n_layers):
                    if mode == "attn":
                        attn(layer)
                    elif mode == "mm":
                        mm(layer)
                    elif mode == "serial":
                        attn(layer)
                        mm(layer)
                    else:
                        with torch.cuda.stream(s_attn):
                            attn(layer)
                        with torch.cuda.stream(s_mm):
                            mm(layer)
                        if lockstep:
                            s_attn.wait_stream(s_mm)
                            s_mm.wait_stream(s_attn)
                main.wait_stream(s_attn)
                main.wait_stream(s_mm)
                b.record(main)
                torch.cuda.synchronize()
            return a.elapsed_time(b)

        out = {"part": "overlap", "rows": m, "kv_tokens": sum(lens)}
        for name, args in (("attn", ("attn",)), ("mm", ("mm",)), ("serial", ("serial",)),
                           ("two_streams", ("two",)), ("two_streams_mm_first", ("two", "mm")),
                           ("two_streams_attn_first", ("two", "attn")),
                           ("lockstep", ("two", "none", True)), ("lockstep_mm_first", ("two", "mm", True))):
            with torch.inference_mode():
                out[name + "_ms"] = round(run(*args), 3)
        out["overlap_saved_pct"] = round(100 * (1 - min(v for k, v in out.items() if k.startswith(("two", "lock")))
                                                / out["serial_ms"]), 1)
        print(json.dumps(out), flush=True)
        del kc, vc
        torch.cuda.empty_cache()


class GreenSplit:
    """Two CUDA green contexts over disjoint SMs of device 0 (driver API through ctypes: torch's GreenContext.create
    always takes the first SMs, so two of them would share), with one stream each as torch ExternalStreams."""

    def __init__(self, n_first: int):
        import ctypes

        cu = ctypes.CDLL("libcuda.so.1")
        self.cu = cu

        def ok(r, what):
            if r != 0:
                raise RuntimeError(f"{what} failed: CUresult {r}")

        dev = ctypes.c_int()
        ok(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
        whole, first, rest = (ctypes.create_string_buffer(1024) for _ in range(3))
        ok(cu.cuDeviceGetDevResource(dev, whole, 1), "cuDeviceGetDevResource")  # CU_DEV_RESOURCE_TYPE_SM
        n = ctypes.c_uint(1)
        ok(cu.cuDevSmResourceSplitByCount(first, ctypes.byref(n), whole, rest, 0, n_first),
           "cuDevSmResourceSplitByCount")
        sm = lambda buf: int.from_bytes(buf.raw[96:100], "little")  # noqa: E731 (CUdevSmResource.smCount)
        self.sms = (sm(first), sm(rest), sm(whole))
        self.streams, self._keep = [], []
        for res in (first, rest):
            desc, ctx, stream = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
            ok(cu.cuDevResourceGenerateDesc(ctypes.byref(desc), res, 1), "cuDevResourceGenerateDesc")
            ok(cu.cuGreenCtxCreate(ctypes.byref(ctx), desc, dev, 1), "cuGreenCtxCreate")  # DEFAULT_STREAM
            ok(cu.cuGreenCtxStreamCreate(ctypes.byref(stream), ctx, 1, 0), "cuGreenCtxStreamCreate")  # NON_BLOCKING
            self._keep.append(ctx)
            self.streams.append(torch.cuda.ExternalStream(stream.value, device=torch.device("cuda", 0)))


def part_green(model: Transformer, rows: tuple[int, ...] = (1024, 512)) -> None:
    """Do decode attention (bound by memory) and the matmuls (bound by compute) overlap when each runs on its own SMs?
    CUDA green contexts split the SMs in two (attention on n, matmuls on the rest); 32 layers for `rows` rows
    (dataset-workload KV lengths): each alone on its part, both free-running, and as the two-half pipelined step
    would run them (half A's attention beside half B's matmuls, dependencies through events), eager and in a CUDA
    graph, against one after the other on all SMs."""
    import torch.nn.functional as F

    cfg = model.cfg
    h, d = cfg.n_heads, cfg.head_dim
    hidden = model.layers[0].feed_forward.hidden_local
    print(json.dumps({"part": "green", "torch": torch.__version__,
                      "torch_green": hasattr(torch._C, "_CUDAGreenContext") or hasattr(torch._C, "GreenContext"),
                      "sms": torch.cuda.get_device_properties(0).multi_processor_count}), flush=True)
    for m in rows:
        lens = lengths_for(1024)[:m]
        table, n_blocks = paged_table(lens)
        kc = torch.randn((n_blocks, h, PAGE, d), dtype=torch.bfloat16, device="cuda")
        vc = torch.randn_like(kc)
        halves = []
        for part in (slice(0, m // 2), slice(m // 2, m)):
            ln = torch.tensor(lens[part], dtype=torch.int32, device="cuda")
            halves.append({"q": torch.randn((len(lens[part]), h, d), dtype=torch.bfloat16, device="cuda"),
                           "table": table[part].contiguous(), "lengths": ln, "order": kernels.longest_first(ln),
                           "x": torch.randn((len(lens[part]), cfg.dim), dtype=torch.bfloat16, device="cuda")})
        full = {"q": torch.randn((m, h, d), dtype=torch.bfloat16, device="cuda"), "table": table,
                "lengths": torch.tensor(lens, dtype=torch.int32, device="cuda"),
                "x": torch.randn((m, cfg.dim), dtype=torch.bfloat16, device="cuda")}
        full["order"] = kernels.longest_first(full["lengths"])

        def attn(t, _layer):
            kernels.decode_attention(t["q"], kc, vc, t["table"], t["lengths"], order=t["order"])

        def mm(t, layer):
            blk = model.layers[layer]
            x = t["x"]
            F.linear(x, blk.attention.wqkv.weight)
            F.linear(x, blk.attention.wo.weight)
            g = kernels.silu_mul(F.linear(x, blk.feed_forward.w13.weight), hidden)
            F.linear(g, blk.feed_forward.w2.weight)

        def timed(fn, reps=3):
            main = torch.cuda.current_stream()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            best = 1e9
            for _ in range(reps):
                torch.cuda.synchronize()
                a.record(main)
                fn()
                b.record(main)
                torch.cuda.synchronize()
                best = min(best, a.elapsed_time(b))
            return round(best, 3)

        def on(stream, fn):
            main = torch.cuda.current_stream()
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                fn()
            main.wait_stream(stream)

        layers = range(cfg.n_layers)
        out = {"part": "green", "rows": m, "kv_tokens": sum(lens)}
        with torch.inference_mode():
            out["attn_ms"] = timed(lambda: [attn(full, i) for i in layers])
            out["mm_ms"] = timed(lambda: [mm(full, i) for i in layers])
            out["serial_ms"] = timed(lambda: [(attn(full, i), mm(full, i)) for i in layers])
            out["serial_halves_ms"] = timed(lambda: [(attn(t, i), mm(t, i)) for i in layers for t in halves])
        print(json.dumps(out), flush=True)
        for n_attn in (40, 56, 72, 88):
            row = {"part": "green", "rows": m, "n_attn": n_attn}
            try:
                split = GreenSplit(n_attn)
            except Exception as e:  # no green contexts here is a finding, not a stop
                row["error"] = repr(e)[:200]
                print(json.dumps(row), flush=True)
                break
            sa, sb = split.streams
            row["sms"] = split.sms

            def pipelined():
                main = torch.cuda.current_stream()
                sa.wait_stream(main)
                sb.wait_stream(main)
                done_mm = [torch.cuda.Event(), torch.cuda.Event()]
                done_attn = [torch.cuda.Event(), torch.cuda.Event()]
                for i in layers:
                    for k, t in enumerate(halves):
                        with torch.cuda.stream(sb):
                            if i:
                                sb.wait_event(done_attn[k])
                            mm(t, i)  # half k's wo/ffn of layer i-1 and qkv of layer i, as one layer's matmuls
                            done_mm[k].record(sb)
                        with torch.cuda.stream(sa):
                            sa.wait_event(done_mm[k])
                            attn(t, i)
                            done_attn[k].record(sa)
                main.wait_stream(sa)
                main.wait_stream(sb)

            def free():  # no dependencies between the two: what running side by side costs each
                main = torch.cuda.current_stream()
                sa.wait_stream(main)
                sb.wait_stream(main)
                with torch.cuda.stream(sa):
                    [attn(full, i) for i in layers]
                with torch.cuda.stream(sb):
                    [mm(full, i) for i in layers]
                main.wait_stream(sa)
                main.wait_stream(sb)

            with torch.inference_mode():
                try:
                    row["attn_alone_ms"] = timed(lambda: on(sa, lambda: [attn(full, i) for i in layers]))
                    row["mm_alone_ms"] = timed(lambda: on(sb, lambda: [mm(full, i) for i in layers]))
                    torch._C._set_sm_carveout_experimental(n_attn)
                    row["mm_alone_carveout_ms"] = timed(lambda: on(sb, lambda: [mm(full, i) for i in layers]))
                    row["free_carveout_ms"] = timed(free)
                    row["pipelined_carveout_ms"] = timed(pipelined)
                    torch._C._set_sm_carveout_experimental(None)
                    row["free_ms"] = timed(free)
                    row["pipelined_ms"] = timed(pipelined)
                    g = torch.cuda.CUDAGraph()
                    pipelined()
                    torch.cuda.synchronize()
                    with torch.cuda.graph(g):
                        pipelined()
                    row["pipelined_graph_ms"] = timed(g.replay)
                    del g
                except Exception as e:  # what does not work is a finding, not a stop
                    row["error"] = repr(e)[:300]
                finally:
                    torch._C._set_sm_carveout_experimental(None)
            row["saved_pct"] = round(100 * (1 - min(v for k, v in row.items() if k.startswith(("free", "pipe"))
                                                    and isinstance(v, float)) / out["serial_ms"]), 1) \
                if any(k.startswith("pipe") and isinstance(v, float) for k, v in row.items()) else None
            print(json.dumps(row), flush=True)
        del kc, vc
        torch.cuda.empty_cache()


def part_green_attn(h: int = 32, d: int = 128, rows: int = 1024) -> None:
    """Decode attention's bytes per second per SM when it has only part of the GPU (a green context of n SMs), per
    launch configuration: sharing the SMs with the matmuls pays only if attention saturates memory on part of them."""
    c = attention_case(rows, h, h, d)
    q, k, v, table, lengths, order = c.q, c.k, c.v, c.table, c.lengths, c.order
    gb = sum(c.lens) * h * d * 2 * 2 / 1e9
    for n in (66, 132):
        stream = GreenSplit(n).streams[0] if n < 132 else torch.cuda.Stream()
        sweep = []
        for block_n in (32, 64, 128):
            for warps in (2, 4, 8):
                for stages in (None, 2, 3, 4):
                    def fn():
                        for _ in range(8):
                            kernels.decode_attention(q, k, v, table, lengths, 1, block_n, warps, stages, order=order)
                    try:
                        stream.wait_stream(torch.cuda.current_stream())
                        with torch.cuda.stream(stream):
                            ms = cuda_ms(fn, reps=3, warm=1) / 8
                        torch.cuda.current_stream().wait_stream(stream)
                        sweep.append((round(gb / ms, 1), round(gb / ms / n * 1000, 1), block_n, warps, stages or 0))
                    except Exception as e:  # a configuration that does not compile is a finding, not a stop
                        sweep.append((0, 0, block_n, warps, stages or 0, str(e)[:60]))
        with torch.cuda.stream(stream):
            ms = cuda_ms(lambda: kernels.decode_attention(q, k, v, table, lengths, order=order), reps=8)
        print(json.dumps({"part": "green_attn", "sms": n, "default_TB/s": round(gb / ms, 2),
                          "best_TB/s_GB/s_per_sm_block_warps_stages": sorted(sweep, reverse=True)[:6]}), flush=True)


def part_fp8_gqa(h: int = 32, hkv: int = 8, d: int = 128) -> None:
    """Decode attention over a GQA cache (Llama 3 8B: 32 query heads, 8 kv heads), bf16 against fp8 through tl.dot:
    us a layer per launch configuration, at 128 and 1,024 rows."""
    for rows in (128, 1024):
        _fp8_gqa(h, hkv, d, rows)


def _fp8_gqa(h: int, hkv: int, d: int, rows: int) -> None:
    c = attention_case(rows, h, hkv, d)
    ref = kernels.decode_attention_eager(c.q, c.k8, c.v8, c.table, c.lengths)
    out = {"part": "fp8_gqa", "rows": rows, "kv_tokens": sum(c.lens)}
    for name, kk, vv in (("bf16", c.k, c.v), ("fp8", c.k8, c.v8)):
        fn = lambda: kernels.decode_attention(c.q, kk, vv, c.table, c.lengths, order=c.order)  # noqa: E731
        err = (fn().float() - ref.float()).abs().max().item() if name == "fp8" else None
        out[name + "_default_us"] = round(graph_ms(fn) * 1000, 1)
        sweep = []
        for splits in (1, 2):
            for block_n in (32, 64, 128):
                for warps in (2, 4, 8):
                    for stages in (None, 3):
                        try:
                            fn = lambda: kernels.decode_attention(c.q, kk, vv, c.table, c.lengths, splits,  # noqa
                                                                  block_n, warps, stages, order=c.order)
                            sweep.append((round(graph_ms(fn) * 1000, 1), splits, block_n, warps, stages or 0))
                        except Exception as e:  # a configuration that does not compile is a finding, not a stop
                            sweep.append((1e9, splits, block_n, warps, stages or 0, str(e)[:60]))
        out[name + "_best"] = sorted(sweep)[:4]
        out[name + "_max_err"] = err and round(err, 4)
    print(json.dumps(out), flush=True)


def attention_case(rows: int, h: int, hkv: int, d: int) -> SimpleNamespace:
    """Decode-attention inputs at the dataset workload's KV lengths: q, a paged bf16 cache k/v and its fp8 copy
    k8/v8 (shuffled blocks), table, lengths (and lens on the host), order (longest first)."""
    lens = lengths_for(rows)
    table, n_blocks = paged_table(lens)
    k = torch.randn((n_blocks, hkv, PAGE, d), dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    lengths = torch.tensor(lens, dtype=torch.int32, device="cuda")
    return SimpleNamespace(lens=lens, table=table, k=k, v=v, k8=kernels.to_fp8(k), v8=kernels.to_fp8(v),
                           q=torch.randn((rows, h, d), dtype=torch.bfloat16, device="cuda"), lengths=lengths,
                           order=kernels.longest_first(lengths))


def part_fp8(h: int = 32, d: int = 128) -> None:
    """Decode attention over a bf16 cache against an fp8 one (kv_cache_dtype fp8), read through the GPU's e4m3
    conversion and through the integer one: us a layer and the cache bytes read per second."""
    for batch in (128, 1024):
        c = attention_case(batch, h, h, d)
        lens, table, k, v, k8, v8, q, lengths, order = (c.lens, c.table, c.k, c.v, c.k8, c.v8, c.q, c.lengths,
                                                         c.order)
        tokens = sum(lens)
        ref = kernels.decode_attention_eager(q, k8, v8, table, lengths)
        out = {"part": "fp8", "batch": batch, "kv_tokens": tokens}
        for name, kk, vv, native in (("bf16", k, v, None), ("fp8_native", k8, v8, True), ("fp8_int", k8, v8, False)):
            fn = lambda: kernels.decode_attention(q, kk, vv, table, lengths, order=order, fp8_native=native)  # noqa
            ms = graph_ms(fn)
            gb = tokens * h * d * 2 * kk.element_size() / 1e9
            out[name] = {"us": round(ms * 1000, 1), "GB/s": round(gb / ms * 1000)}
        sweep = []
        for block_n in (32, 64, 128):
            for warps in (2, 4, 8):
                for stages in (None, 2, 3, 4):
                    try:
                        fn = lambda: kernels.decode_attention(q, k8, v8, table, lengths, 1, block_n, warps,  # noqa
                                                              stages, order=order)
                        sweep.append((round(graph_ms(fn) * 1000, 1), block_n, warps, stages or 0))
                    except Exception as e:  # a configuration that does not compile is a finding, not a stop
                        sweep.append((1e9, block_n, warps, stages or 0, str(e)[:60]))
        out["fp8_best"] = sorted(sweep)[:6]
        rows = []
        for kk, vv, native in ((k8, v8, True), (k8, v8, False), (k, v, None)):
            for block_n in (16, 32, 64):
                for warps in (1, 2, 4, 8):
                    for stages in (None, 3):
                        try:
                            fn = lambda: kernels.decode_attention(q, kk, vv, table, lengths, 1, block_n, warps,  # noqa
                                                                  stages, order=order, fp8_native=native,
                                                                  per_row=True)
                            err = (fn().float() - ref.float()).abs().max().item() if native else None
                            rows.append((round(graph_ms(fn) * 1000, 1), str(kk.dtype)[6:], native, block_n, warps,
                                         stages or 0, err and round(err, 4)))
                        except Exception as e:  # a configuration that does not compile is a finding, not a stop
                            rows.append((1e9, str(kk.dtype)[6:], native, block_n, warps, stages or 0, str(e)[:60]))
        for dt in ("float8_e4m3fn", "bfloat16"):
            for native in ((True, False) if dt != "bfloat16" else (None,)):
                out[f"row_{dt}_{native}"] = sorted(r for r in rows if r[1] == dt and r[2] == native)[:4]
        print(json.dumps(out), flush=True)
        del c, k, v, k8, v8
        torch.cuda.empty_cache()


def part_attn(h: int = 32, d: int = 128) -> None:
    """Achieved bandwidth of decode attention (one layer) per launch configuration, against the eager reference (an MHA
    variant without tl.dot was slower at 128 and 1,024 rows on the H200, 2026-11-30, and was dropped)."""
    for batch in (1, 128, 1024):
        c = attention_case(batch, h, h, d)
        lens, table, k, v, q, lengths, order = c.lens, c.table, c.k, c.v, c.q, c.lengths, c.order
        ref = kernels.decode_attention_eager(q, k, v, table, lengths)
        gb = sum(lens) * h * d * 2 * 2 / 1e9
        results = []
        for ordered in ((False,) if batch == 1 else (False, True)):
            fn = lambda: kernels.decode_attention(q, k, v, table, lengths, order=order if ordered else None)  # noqa
            ms = graph_ms(fn)
            results.append({"kernel": "dot", "default": True, "ordered": ordered, "us": round(ms * 1000, 1),
                            "GB/s": round(gb / ms * 1000),
                            "err": round((fn().float() - ref.float()).abs().max().item(), 4)})
        for splits in ((None,) if batch == 1 else (None, 2, 4)):
            for block_n in ((32, 64) if batch == 1 else (64, 128)):
                for warps in ((4, 8) if batch == 1 else (4,)):
                    for stages in ((None, 3) if batch == 1 else (None, 2, 3, 4)):
                        try:
                            fn = lambda: kernels.decode_attention(q, k, v, table, lengths, splits, block_n,  # noqa
                                                                  warps, stages)
                            err = (fn().float() - ref.float()).abs().max().item()
                            ms = graph_ms(fn)
                            results.append({"kernel": "dot", "splits": splits, "block_n": block_n, "warps": warps,
                                            "stages": stages, "us": round(ms * 1000, 1),
                                            "GB/s": round(gb / ms * 1000), "err": round(err, 4)})
                        except Exception as e:  # a configuration that does not compile is a finding, not a stop
                            results.append({"kernel": "dot", "block_n": block_n, "warps": warps, "stages": stages,
                                            "error": str(e)[:80]})
        ok = sorted((r for r in results if "us" in r), key=lambda r: r["us"])
        default = [r for r in results if r.get("default")]
        print(json.dumps({"part": "attn", "batch": batch, "kv_tokens": sum(lens), "kv_gb": round(gb, 3),
                          "default": default, "best": ok[:8], "errors": [r for r in results if "error" in r][:3]}),
              flush=True)
        del c, k, v
        torch.cuda.empty_cache()


def part_rope(h: int = 32, hkv: int = 32, d: int = 128) -> None:
    """The rotary + cache-write kernel per (heads per program, warps) at 1 / 128 / 1,024 decode rows and a 4,608-token
    prefill (48 x 96), against its eager twin; bytes moved: qkv read, q (and k) out, k/v into the cache."""
    from llamakit.model.llama import Packing, rope_tables

    cos, sin = (t.cuda() for t in rope_tables(d, 2048, 10000.0))
    width = (h + 2 * hkv) * d
    for tokens, prefill in ((1, False), (128, False), (1024, False), (4608, True)):
        rows, t = (48, 96) if prefill else (tokens, 1)
        lens = [t] * rows if prefill else lengths_for(tokens)
        table, n_blocks = paged_table([max(n, t) + 1 for n in lens])
        kc = torch.zeros((n_blocks, hkv, PAGE, d), dtype=torch.bfloat16, device="cuda")
        vc = torch.zeros_like(kc)
        qkv = torch.randn((tokens, width), dtype=torch.bfloat16, device="cuda")
        pack = Packing(torch.tensor(lens, device="cuda"), t)  # a prefill's tokens, packed (all real here)
        pos = pack.pos if prefill else torch.tensor(lens, device="cuda") - 1

        def call(config):
            if prefill:
                return kernels.rope_packed(qkv, pos, pack.rows, cos, sin, kc, vc, table, h, hkv, config)[0]
            return kernels.rope_store(qkv, pos, cos, sin, kc, vc, table, h, hkv, config)

        ref = kernels.rope_store_eager(qkv, pos, cos, sin, kc, vc, table, h, hkv, pack.rows if prefill else None)[0]
        gb = tokens * (width + (h + 2 * hkv if prefill else h + hkv) * d) * 2 / 1e9
        results = []
        for config in (None, (1, 1), (2, 1), (4, 1), (4, 2), (8, 1), (8, 2), (8, 4), (16, 2), (16, 4), (32, 4)):
            try:
                err = (call(config).float() - ref.float()).abs().max().item()
                ms = graph_ms(lambda: call(config))
                results.append({"config": config, "us": round(ms * 1000, 1), "GB/s": round(gb / ms * 1000),
                                "err": round(err, 4)})
            except Exception as e:  # a configuration that does not compile is a finding, not a stop
                results.append({"config": config, "error": str(e)[:80]})
        print(json.dumps({"part": "rope", "tokens": tokens, "prefill": prefill, "default": kernels.rope_config(
            tokens, h + hkv), "results": results}), flush=True)
        del kc, vc
        torch.cuda.empty_cache()


def part_gemv() -> None:
    """Batch 1's matmuls (the 7B shapes, bf16 weights): cuBLAS against the Triton GEMV of llamakit.model.int8_kernels
    reading 16-bit weights, per launch configuration, inside CUDA graphs."""
    from llamakit.model.int8_kernels import Int8Config, int8_matmul

    shapes = {"wqkv": (12288, 4096), "wo": (4096, 4096), "w13": (22016, 4096), "w2": (4096, 11008),
              "output": (32000, 4096)}
    configs = [Int8Config("gemv", n, k, w, st) for n, k, w, st in (
        (8, 512, 4, 3), (8, 1024, 4, 3), (8, 1024, 8, 3), (16, 512, 4, 3), (16, 512, 8, 3), (4, 1024, 4, 3),
        (8, 512, 4, 4), (16, 1024, 8, 3), (32, 256, 4, 3), (8, 256, 2, 4))]
    totals: dict[str, float] = {}
    for name, (n, k) in shapes.items():
        w = torch.randn((n, k), dtype=torch.bfloat16, device="cuda") * 0.02
        x = torch.randn((1, k), dtype=torch.bfloat16, device="cuda")
        one = torch.ones(n, dtype=torch.bfloat16, device="cuda")
        ref = torch.nn.functional.linear(x, w)
        row = {"part": "gemv", "matrix": name, "MB": round(n * k * 2 / 1e6, 1)}
        us = graph_ms(lambda: torch.nn.functional.linear(x, w)) * 1000
        row["cublas_us"] = round(us, 1)
        totals["cublas"] = totals.get("cublas", 0.0) + us * (1 if name == "output" else 32)
        for c in configs:
            try:
                err = (int8_matmul(x, w, one, c).float() - ref.float()).abs().max().item()
                us = graph_ms(lambda: int8_matmul(x, w, one, c)) * 1000
                row[c.name] = round(us, 1)
                row[c.name + "_err"] = round(err, 4)
                totals[c.name] = totals.get(c.name, 0.0) + us * (1 if name == "output" else 32)
            except Exception as e:  # a configuration that does not compile is a finding, not a stop
                row[c.name] = str(e)[:60]
        print(json.dumps(row), flush=True)
        del w
    print(json.dumps({"part": "gemv", "step_us (32 layers + output)": {k: round(v) for k, v in totals.items()}}),
          flush=True)


def part_mm(rows: tuple[int, ...] = (128, 256)) -> None:
    """The decode step's bf16 matmuls at 128+ rows: cuBLAS on the stored [N, K] weight (what linear runs), cuBLAS on a
    [K, N] copy, and the Triton tl.dot kernel of int8_kernels reading the 16-bit weight (scale 1), inside CUDA graphs.
    Each call reads another copy of the matrix (>= 200 MB in all), so the 50 MB L2 does not hold it between calls."""
    from llamakit.model.int8_kernels import CONFIGS, int8_matmul

    shapes = {"wqkv": (12288, 4096), "wo": (4096, 4096), "w13": (22016, 4096), "w2": (4096, 11008)}
    for m in rows:
        for name, (n, k) in shapes.items():
            copies = max(2, -(-200_000_000 // (n * k * 2)))
            ws = [torch.randn((n, k), dtype=torch.bfloat16, device="cuda") * 0.02 for _ in range(copies)]
            wts = [w.t().contiguous() for w in ws]
            one = torch.ones(n, dtype=torch.float32, device="cuda")
            x = torch.randn((m, k), dtype=torch.bfloat16, device="cuda")
            ref = torch.nn.functional.linear(x, ws[0]).float()
            mb = n * k * 2 / 1e6
            row = {"part": "mm", "rows": m, "matrix": name, "MB": round(mb, 1)}
            cands = {"cublas_nk": lambda w, wt: torch.nn.functional.linear(x, w),
                     "cublas_kn": lambda w, wt: torch.mm(x, wt)}
            for c in ("dot_n64_k128_w4_s4", "dot_n64_k128_w4_s4_skauto", "dot_n32_k128_w4_s4_skauto"):
                cands[c] = lambda w, wt, c=c: int8_matmul(x, w, one, CONFIGS[c])
            for cname, fn in cands.items():
                try:
                    err = (fn(ws[0], wts[0]).float() - ref).abs().max().item()
                    ms = graph_ms(lambda: [fn(w, wt) for w, wt in zip(ws, wts)], calls=2) / copies
                    row[cname] = {"us": round(ms * 1000, 1), "TB/s": round(mb / ms / 1e3, 2), "err": round(err, 3)}
                except Exception as e:  # a candidate that does not run is a finding, not a stop
                    row[cname] = str(e)[:80]
            print(json.dumps(row), flush=True)
            del ws, wts
            torch.cuda.empty_cache()


def part_fixed_mm(rows: tuple[int, ...] = (1, 16, 64, 128, 256, 512, 1024)) -> None:
    """Batch-invariant matmuls (llamakit.model.fixed_matmul's Triton kernel: its TILES schedule, and tiles one by one
    with split_k 1 and 2) against what runs by default (cuBLAS on all rows; the GEMV at one row) and cuBLAS in chunks
    of 256 rows (linear's fallback), the 7B step's five matrices, per row count, inside CUDA graphs, each call on
    another copy of the matrix (>= 200 MB in all, past the L2). Then the bits: the schedule's rows alone and among
    1,024 (its tiles change with the row count), and every tile against the first with the same split."""
    from llamakit.model.fixed_matmul import FixedConfig, fixed_matmul, invariant_matmul, split_k
    from llamakit.model.linear import INVARIANT_ROWS, _fixed_rows, _linear

    shapes = {"wqkv": (12288, 4096), "wo": (4096, 4096), "w13": (22016, 4096), "w2": (4096, 11008),
              "output": (32000, 4096)}
    tiles = [FixedConfig(*t) for t in ((64, 64, 128, 4, 4), (64, 64, 64, 4, 4), (64, 128, 64, 4, 4),
                                       (128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 256, 64, 8, 3))]

    totals: dict[tuple[int, str, str], float] = {}
    for name, (n, k) in shapes.items():
        copies = max(2, -(-200_000_000 // (n * k * 2)))
        ws = [torch.randn((n, k), dtype=torch.bfloat16, device="cuda") * 0.02 for _ in range(copies)]
        mods = [SimpleNamespace(weight=w) for w in ws]
        xs = torch.randn((max(rows), k), dtype=torch.bfloat16, device="cuda")
        times = 32 if name != "output" else 1
        for m in rows:
            x = xs[:m]
            row = {"part": "fixed_mm", "rows": m, "matrix": name}
            cands = {"cublas": lambda mod: _linear(x, mod),  # the default path (the GEMV at one row)
                     "chunks256": lambda mod: _fixed_rows(x, mod, INVARIANT_ROWS["cuda"]),
                     "schedule": lambda mod: invariant_matmul(x, mod.weight)}
            for c in tiles:
                for sk in (1, 2):
                    cands[f"{c.name}_sk{sk}"] = lambda mod, c=c, sk=sk: fixed_matmul(x, mod.weight, c, sk)
            ref = torch.nn.functional.linear(x, ws[0]).float()
            for cname, fn in cands.items():
                try:
                    err = (fn(mods[0]).float() - ref).abs().max().item()
                    us = graph_ms(lambda: [fn(mod) for mod in mods], calls=2) / copies * 1000
                    row[cname] = round(us, 1)
                    if err > 0.05:
                        row[cname + "_err"] = round(err, 4)
                    totals[(m, name, cname)] = us * times
                except Exception as e:  # a configuration that does not compile is a finding, not a stop
                    row[cname] = str(e)[:80]
            print(json.dumps(row), flush=True)
        full = invariant_matmul(xs, ws[0])
        bits = {"schedule_alone_eq_among_1024": all(torch.equal(invariant_matmul(xs[:r], ws[0]), full[:r])
                                                    for r in (1, 3, 64, 65, 100, 128, 129, 300))}
        sk = split_k(n, k)
        for c in tiles:
            try:
                bits[c.name + "_eq_schedule"] = torch.equal(fixed_matmul(xs, ws[0], c, sk), full)
            except Exception as e:
                bits[c.name] = str(e)[:80]

        print(json.dumps({"part": "fixed_mm_bits", "matrix": name, "split_k": sk, **bits}), flush=True)
        del ws, mods
        torch.cuda.empty_cache()
    for m in rows:  # a step's 32 x 4 + 1 matmuls: the cuBLAS ways, the schedule, and each tile with the best split
        mine = {key: us for key, us in totals.items() if key[0] == m}
        step = {way: round(sum(us for key, us in mine.items() if key[2] == way))
                for way in ("cublas", "chunks256", "schedule")}
        for c in tiles:
            step[c.name] = round(sum(min(mine.get((m, name, f"{c.name}_sk{sk}"), 1e9) for sk in (1, 2))
                                     for name in shapes))

        print(json.dumps({"part": "fixed_mm_step_us", "rows": m, **step}), flush=True)


def part_tunable(rows: tuple[int, ...] = (128, 1024)) -> None:
    """cuBLAS's own pick against PyTorch TunableOp's (every cuBLASLt algorithm timed on the shape, rotating buffers so
    the L2 does not hold the matrix) for the step's bf16 matmuls, inside CUDA graphs, each call on another copy."""
    import torch.cuda.tunable as tunable

    shapes = {"wqkv": (12288, 4096), "wo": (4096, 4096), "w13": (22016, 4096), "w2": (4096, 11008)}
    for m in rows:
        for name, (n, k) in shapes.items():
            copies = max(2, -(-200_000_000 // (n * k * 2)))
            ws = [torch.randn((n, k), dtype=torch.bfloat16, device="cuda") * 0.02 for _ in range(copies)]
            x = torch.randn((m, k), dtype=torch.bfloat16, device="cuda")
            mb = n * k * 2 / 1e6
            row = {"part": "tunable", "rows": m, "matrix": name, "MB": round(mb, 1)}
            fn = lambda: [torch.nn.functional.linear(x, w) for w in ws]  # noqa: E731
            ref = torch.nn.functional.linear(x, ws[0]).float()
            ms = graph_ms(fn, calls=2) / copies
            row["cublas"] = {"us": round(ms * 1000, 1), "TB/s": round(mb / ms / 1e3, 2)}
            tunable.enable(True)
            tunable.tuning_enable(True)
            tunable.set_rotating_buffer_size(256)
            tunable.set_max_tuning_duration(200)
            try:
                t0 = time.perf_counter()
                err = (torch.nn.functional.linear(x, ws[0]).float() - ref).abs().max().item()
                torch.cuda.synchronize()
                tune_s = time.perf_counter() - t0
                tunable.tuning_enable(False)
                ms = graph_ms(fn, calls=2) / copies
                row["tunableop"] = {"us": round(ms * 1000, 1), "TB/s": round(mb / ms / 1e3, 2), "err": round(err, 4),
                                    "tune_s": round(tune_s, 2)}
            except Exception as e:  # a finding, not a stop
                row["tunableop"] = repr(e)[:200]
            finally:
                tunable.enable(False)
            print(json.dumps(row), flush=True)
            del ws
            torch.cuda.empty_cache()
    print(json.dumps({"part": "tunable", "results": str(tunable.get_results())[:600]}), flush=True)


def part_attn_layers(h: int = 32, d: int = 128, n_layers: int = 32) -> None:
    """Why decode attention is slower inside the step than alone: 32 launches on the 32 layers of a full-size cache
    (as the step reads it) against 32 on one layer, with and without a 1,024-row w13 matmul between launches (the
    attention kernels' own time, from the profiler)."""
    from torch.profiler import ProfilerActivity, profile

    for batch in (128, 1024):
        lens = lengths_for(batch)
        table, n_blocks = paged_table(lens)
        cache = KVCache(n_layers, n_blocks, PAGE, h, d, torch.bfloat16, "cuda")
        cache.k.normal_()
        cache.v.normal_()
        q = torch.randn((batch, h, d), dtype=torch.bfloat16, device="cuda")
        lengths = torch.tensor(lens, dtype=torch.int32, device="cuda")
        order = kernels.longest_first(lengths)
        w = torch.randn((22016, 4096), dtype=torch.bfloat16, device="cuda") * 0.02
        x = torch.randn((1024, 4096), dtype=torch.bfloat16, device="cuda")
        gb = sum(lens) * h * d * 2 * 2 / 1e9
        out = {"part": "attn_layers", "batch": batch, "kv_gb_per_layer": round(gb, 3)}
        wide = torch.zeros((batch, 64), dtype=torch.int32, device="cuda")  # as the engine's table (max_seq_len)
        wide[:, :table.shape[1]] = table
        all_layers = list(range(n_layers))
        for name, layers, mm, lens_t, tab in (
                ("one_layer", [0] * n_layers, False, lengths, table), ("all_layers", all_layers, False, lengths, table),
                ("one_layer_mm", [0] * n_layers, True, lengths, table),
                ("all_layers_mm", all_layers, True, lengths, table),
                ("all_layers_int64_lengths", all_layers, False, lengths.long(), table),
                ("all_layers_wide_table", all_layers, False, lengths, wide),
                ("all_layers_int64_wide", all_layers, False, lengths.long(), wide)):
            def fn():
                for layer in layers:
                    kernels.decode_attention(q, cache.k[layer], cache.v[layer], tab, lens_t, order=order)
                    if mm:
                        torch.nn.functional.linear(x, w)
            ms = graph_ms(fn, calls=1, reps=3)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
            att = sum(e.self_device_time_total for e in prof.key_averages() if "decode_attn" in e.key) / n_layers
            out[name] = {"graph_ms": round(ms, 2), "attn_us": round(att, 1), "TB/s": round(gb / att * 1e3, 2)}
        print(json.dumps(out), flush=True)
        del cache, w
        torch.cuda.empty_cache()


def part_nucleus(vocab: int = 32000) -> None:
    """The sampling step by batch inside CUDA graphs: the eager sort path against the nucleus kernel per (block,
    warps); both pick the same tokens here (checked)."""
    from llamakit.engine.nucleus import nucleus_sample

    for batch in (1, 8, 32, 64, 128, 1024):
        logits = (torch.randn((batch, vocab), device="cuda") * 2).to(torch.bfloat16).float()
        ints = torch.zeros((N_INT, batch), dtype=torch.int64, device="cuda")
        ints[0] = torch.arange(batch, device="cuda")
        floats = torch.zeros((N_FLOAT, batch), dtype=torch.float32, device="cuda")
        floats[0], floats[1] = 0.6, 0.9
        row = {"part": "nucleus", "batch": batch}
        # the eager path (CPU; full mode's base): sort, nucleus rule, race
        import llamakit.engine.sampler as S
        old, S.use_kernel = S.use_kernel, (lambda _x: False)
        try:
            ref = sample_step(logits, ints, floats, None, "sample")
            row["eager_us"] = round(graph_ms(lambda: sample_step(logits, ints, floats, None, "sample")) * 1000, 1)
        finally:
            S.use_kernel = old
        for block, warps in ((256, 4), (512, 4), (512, 8), (1024, 8), (1024, 16), (2048, 16), (1024, 32), (2048, 32),
                             (4096, 32)):
            try:
                same = bool(torch.equal(nucleus_sample(logits, ints, floats, block=block, num_warps=warps), ref))
                us = graph_ms(lambda: nucleus_sample(logits, ints, floats, block=block, num_warps=warps)) * 1000
                row[f"k{block}w{warps}"] = round(us, 1) if same else f"{us:.1f} DIFFERENT"
            except Exception as e:  # a configuration that does not compile is a finding, not a stop
                row[f"k{block}w{warps}"] = str(e)[:60]
        print(json.dumps(row), flush=True)


def part_sample(vocab: int = 32000) -> None:
    """The sampling step's cost by batch: the whole sample_step, and its pieces."""
    for batch in (1, 128, 1024):
        logits = torch.randn((batch, vocab), device="cuda").to(torch.bfloat16) * 0.5
        ints = torch.zeros((N_INT, batch), dtype=torch.int64, device="cuda")
        floats = torch.zeros((N_FLOAT, batch), dtype=torch.float32, device="cuda")
        floats[0], floats[1] = 0.6, 0.9
        probs = torch.softmax(logits.float() / 0.6, -1)
        out = {"part": "sample", "batch": batch}
        for name, fn in {
            "sample_step": lambda: sample_step(logits, ints, floats, None, "sample"),
            "greedy_step": lambda: sample_step(logits, ints, floats, None, "greedy"),
            "softmax": lambda: torch.softmax(logits.float() / 0.6, -1),
            "sort": lambda: torch.sort(probs, dim=-1, descending=True),
            "cumsum": lambda: torch.cumsum(probs, -1),
            "topk64": lambda: torch.topk(probs, 64, dim=-1),
        }.items():
            out[name + "_us"] = round(cuda_ms(fn) * 1000, 1)
        print(json.dumps(out), flush=True)


def part_gaps(model: Transformer, workload: str = "standard") -> None:
    """Where a run of the standard workload (128 prompts, 256 tokens) or the dataset one (1,024 prompts, max_gen_len
    drawn per prompt, all held at once), as `llamakit bench` runs it, leaves the GPU idle: the kernels' busy time
    against the wall time, from the first prefill to the last token, the idle time by the pair of kernels around it,
    and the largest gaps. CUPTI's tracing adds its own microseconds per kernel: read gaps against each other."""
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    from llamakit.bench import BenchOptions, dataset_gen_lens, sampling_params
    from llamakit.engine.api import EngineConfig, Request
    from llamakit.engine.engine import engine_for_model

    n_prompts = 1024 if workload == "dataset" else 128
    prompts = standard_prompts(n_prompts)
    gen_lens = dataset_gen_lens(n_prompts) if workload == "dataset" else [256] * n_prompts
    params, _ = sampling_params(BenchOptions())
    ecfg = EngineConfig(max_seq_len=max(len(p) for p in prompts) + max(gen_lens), max_batch_size=n_prompts,
                        dtype="bf16", device="cuda", temperature=0.6, top_p=0.9, graph_modes=("sample",))
    engine = engine_for_model(model, ecfg, n_prompts, eos_ids=())
    list(engine.generate([Request(10_000 + i, p[:32], 8, params=params) for i, p in enumerate(prompts[:8])]))
    torch.cuda.synchronize()
    reqs = [Request(i, p, g, params=params) for i, (p, g) in enumerate(zip(prompts, gen_lens))]
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        n = sum(len(c.tokens) for c in engine.generate(reqs))
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    kern = sorted(((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                   if e.device_type.name == "CUDA"), key=lambda r: r[0])
    busy, gaps, end, prev = 0.0, [], kern[0][0], kern[0][2]
    for start, stop, name in kern:
        if start > end:
            gaps.append((start - end, prev[:50], name[:50]))
        if stop > end:
            busy += stop - max(start, end)
            end, prev = stop, name
    span = end - kern[0][0]
    by_pair: Counter = Counter()
    for g, a, b in gaps:
        by_pair[f"{a} -> {b}"] += g
    gaps.sort(reverse=True)
    sizes = [g[0] for g in gaps]
    print(json.dumps({"part": "gaps", "workload": workload, "tokens": n, "wall_s": round(wall, 3),
                      "tok_s": round(n / wall, 1), "gpu_span_ms": round(span / 1000, 1),
                      "gpu_busy_ms": round(busy / 1000, 1), "idle_ms": round((span - busy) / 1000, 1),
                      "gaps": len(gaps), "idle_over_20us_ms": round(sum(g for g in sizes if g > 20) / 1000, 1),
                      "idle_2_20us_ms": round(sum(g for g in sizes if 2 < g <= 20) / 1000, 1),
                      "timeline": engine.timeline.as_dict()}), flush=True)
    for pair, us in by_pair.most_common(8):
        print("   ", json.dumps({"idle_ms": round(us / 1000, 1), "between": pair}))
    for g in gaps[:10]:
        print("   ", json.dumps({"gap_us": round(g[0], 1), "after": g[1], "before": g[2]}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="7b")
    ap.add_argument("--part", default="all")
    a = ap.parse_args()
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    init_model_parallel(1)
    torch.cuda.set_device(0)
    parts = (("rope", part_rope), ("gemv", part_gemv), ("mm", part_mm), ("fixed_mm", part_fixed_mm), ("tunable", part_tunable),
             ("attn_layers", part_attn_layers), ("nucleus", part_nucleus),
             ("sample", part_sample),
             ("attn", part_attn),
             ("fp8", part_fp8),
             ("fp8_gqa", part_fp8_gqa),
             ("green_attn", part_green_attn),
             ("step", lambda: part_step(build(a.preset))),
             ("prefill", lambda: part_prefill(build(a.preset))),
             ("overlap", lambda: part_overlap(build(a.preset))),
             ("green", lambda: part_green(build(a.preset))),
             ("gaps", lambda: part_gaps(build(a.preset))),
             ("gaps_dataset", lambda: part_gaps(build(a.preset), "dataset")),
             ("int8b1", lambda: part_step(build(a.preset, "int8"), (1,))))
    for name, fn in parts:
        if a.part == "all" or name in a.part.split(","):
            try:
                fn()
            except Exception as e:  # one part failing still leaves the others' numbers
                print(json.dumps({"part": name, "error": repr(e)[:300]}), flush=True)


if __name__ == "__main__":
    main()
