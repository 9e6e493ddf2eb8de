"""CUDA-only checks (skipped without a GPU; run on the device machine): the Triton kernels in bf16 against
their eager twins at real 7B sizes, and the fast engine (CUDA graphs) against the plain one."""

from __future__ import annotations

import pytest
import torch

from llamakit.model import int8_kernels as Q
from llamakit.model import kernels as K

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("batch,h,hkv,splits", [(1, 32, 32, None), (64, 32, 32, None), (5, 64, 8, 3), (128, 40, 40, 1)])
def test_decode_attention_bf16(batch, h, hkv, splits):
    torch.manual_seed(0)
    L, D, BS = 1024, 128, 16
    nb = L // BS
    q = torch.randn(batch, h, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1 + batch * nb + 7, hkv, BS, D, device="cuda", dtype=torch.bfloat16)  # a paged cache
    v = torch.randn_like(k)
    table = (torch.randperm(batch * nb + 7, device="cuda")[: batch * nb] + 1).view(batch, nb).to(torch.int32)
    lens = torch.randint(1, L + 1, (batch,), device="cuda")
    lens[0] = 1
    got = K.decode_attention(q, k, v, table, lens, splits)
    assert _rel(got, K.decode_attention_eager(q.float(), k.float(), v.float(), table, lens)) < 1e-2


@pytest.mark.parametrize("native", [None, False])
@pytest.mark.parametrize("batch,h,hkv,splits", [(1, 32, 32, None), (300, 32, 32, None), (300, 64, 8, None),
                                                (5, 64, 8, 3)])
def test_decode_attention_over_an_fp8_cache_equals_the_eager_twin(batch, h, hkv, splits, native):
    """kv_cache_dtype fp8: the compiled kernel reads what torch's float8 reads, through the GPU's e4m3 conversion
    (None: where it has one) and through the integer one (False: what GPUs without fp8 instructions run); at 300
    MHA rows by the kernel without tl.dot, at batch 1, GQA and 3 splits through tl.dot."""
    torch.manual_seed(0)
    L, D, BS = 512, 128, 16
    nb = L // BS
    q = torch.randn(batch, h, D, device="cuda", dtype=torch.bfloat16)
    k = K.to_fp8(torch.randn(1 + batch * nb, hkv, BS, D, device="cuda") * 3)
    v = K.to_fp8(torch.randn_like(k, dtype=torch.float32) * 0.05)  # small values: e4m3's subnormals are read too
    table = (torch.randperm(batch * nb, device="cuda") + 1).view(batch, nb).to(torch.int32)
    lens = torch.randint(1, L + 1, (batch,), device="cuda")
    got = K.decode_attention(q, k, v, table, lens, splits, fp8_native=native)
    assert _rel(got, K.decode_attention_eager(q.float(), k, v, table, lens)) < 1e-2


def test_rope_store_into_an_fp8_cache_rounds_as_torch():
    from llamakit.model.llama import rope_tables

    torch.manual_seed(0)
    cos, sin = (t.cuda() for t in rope_tables(128, 2048, 10000.0))
    qkv = torch.randn(6, 96 * 128, device="cuda", dtype=torch.bfloat16) * 30  # past 448 too: saturated
    qkv[:, -128:] *= 1e-3  # and under e4m3's smallest normal
    pos = torch.tensor([0, 1, 7, 100, 2000, 2047], device="cuda")
    kc = torch.zeros(1 + 6 * 128, 32, 16, 128, device="cuda", dtype=K.FP8)
    vc, kc2, vc2 = kc.clone(), kc.clone(), kc.clone()
    table = (torch.randperm(6 * 128, device="cuda") + 1).view(6, 128).to(torch.int32)
    q1 = K.rope_store(qkv, pos, cos, sin, kc, vc, table, 32, 32)
    q2 = K.rope_store_eager(qkv, pos, cos, sin, kc2, vc2, table, 32, 32)[0]
    assert _rel(q1, q2) < 1e-2 and torch.equal(vc.view(torch.uint8), vc2.view(torch.uint8))
    same = (kc.view(torch.uint8) == kc2.view(torch.uint8)).float().mean().item()
    assert same > 0.99  # k: the kernel's fp32 rotation may round to another bf16 than eager's, rarely


@pytest.mark.parametrize("h,hkv", [(32, 32), (64, 8)])
def test_packed_prefill_varlen_attention_equals_padded_sdpa(h, hkv):
    """The packed prefill's flash varlen attention sees each sequence's tokens (rounding padding included) as the
    right-padded causal SDPA does."""
    from llamakit.model.llama import Packing, _varlen_causal

    varlen = _varlen_causal()
    if varlen is None:
        pytest.skip("this torch has no torch.nn.attention.varlen")
    torch.manual_seed(0)
    lengths = torch.tensor([37, 1, 120, 64, 5], device="cuda")
    pack = Packing(lengths, 128, 32)
    n, d = pack.index.shape[0], 128
    q = torch.randn(n, h, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(n, hkv, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    got = varlen(q, k, v, pack.cu_seqlens, pack.t)
    want = pack.unpad(torch.nn.functional.scaled_dot_product_attention(
        pack.pad(q), pack.pad(k), pack.pad(v), is_causal=True, enable_gqa=hkv != h)).view(n, h, d)
    real = (pack.pos < lengths[pack.rows])  # the rounding's padding tokens: garbage either way, never read
    assert _rel(got[real], want[real]) < 1e-2


def test_norm_and_rope_bf16():
    torch.manual_seed(0)
    h = torch.randn(7, 4096, device="cuda", dtype=torch.bfloat16)
    d = torch.randn_like(h)
    w = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
    a, b = K.add_rmsnorm(h, d, w, 1e-6), K.add_rmsnorm_eager(h, d, w, 1e-6)
    assert _rel(a[0], b[0]) < 1e-2 and torch.equal(a[1], b[1])
    from llamakit.model.llama import rope_tables

    cos, sin = (t.cuda() for t in rope_tables(128, 2048, 10000.0))
    qkv = torch.randn(6, 96 * 128, device="cuda", dtype=torch.bfloat16)
    pos = torch.tensor([0, 1, 7, 100, 2000, 2047], device="cuda")
    kc = torch.zeros(1 + 6 * 128, 32, 16, 128, device="cuda", dtype=torch.bfloat16)  # 6 rows of 2048 tokens
    vc, kc2, vc2 = kc.clone(), kc.clone(), kc.clone()
    table = (torch.randperm(6 * 128, device="cuda") + 1).view(6, 128).to(torch.int32)
    q1 = K.rope_store(qkv, pos, cos, sin, kc, vc, table, 32, 32)
    q2 = K.rope_store_eager(qkv, pos, cos, sin, kc2, vc2, table, 32, 32)[0]
    assert _rel(q1, q2) < 1e-2 and _rel(kc, kc2) < 1e-2 and torch.equal(vc, vc2)


def test_fast_engine_matches_plain_engine_on_gpu(tiny_factory, mp1_group):
    from llamakit.checkpoint import open_checkpoint
    from llamakit.engine.api import EngineConfig, Request
    from llamakit.engine.engine import build_engine
    from llamakit.tokenizer import Tokenizer

    ckpt = tiny_factory("llama2-gqa", 1)
    tok = Tokenizer(ckpt / "tokenizer.model")
    prompts = ["Der Wetterdienst warnte", "The museum opens", "Prices for energy fell slightly in October, the"] * 5
    outs = {}
    for fast, dtype, kv_tokens in [(True, "fp32", 0), (False, "fp32", 0), (True, "bf16", 0), (True, "fp32", 160)]:
        eng = build_engine(open_checkpoint(ckpt), EngineConfig(max_seq_len=128, max_batch_size=6, fast=fast,
                                                               dtype=dtype, device="cuda", kv_cache_tokens=kv_tokens))
        reqs = [Request(i, tok.encode(p), 24) for i, p in enumerate(prompts)]
        outs[(fast, dtype, kv_tokens)] = {c.request.key: c.tokens for c in eng.generate(reqs)}
        if kv_tokens:
            assert eng.last.preemptions > 0  # 6 rows of up to ~40 tokens in 160: preempted and recomputed
    # fp32 fast path on GPU: attention falls back to eager (no tf32 Triton dot), graphs still captured
    assert outs[(True, "fp32", 0)] == outs[(False, "fp32", 0)] == outs[(True, "fp32", 160)]
    outs = {k[:2]: v for k, v in outs.items() if not k[2]}
    first = [outs[(True, "bf16")][k][:2] == outs[(False, "fp32")][k][:2] for k in outs[(False, "fp32")]]
    assert sum(first) >= len(first) - 2


def test_fp8_kv_cache_engine_on_gpu_fast_equals_plain(tiny_factory, mp1_group):
    """kv_cache_dtype fp8 through CUDA graphs and the fused kernels gives the plain path's tokens (the same bytes in the
    cache, read back exactly)."""
    from llamakit.checkpoint import open_checkpoint
    from llamakit.engine.api import EngineConfig, Request
    from llamakit.engine.engine import build_engine
    from llamakit.tokenizer import Tokenizer

    ckpt = tiny_factory("llama2-gqa", 1)
    tok = Tokenizer(ckpt / "tokenizer.model")
    prompts = ["Der Wetterdienst warnte", "The museum opens", "Prices for energy fell slightly in October, the"] * 4
    outs = {}
    for fast, kv in [(True, "fp8"), (False, "fp8")]:
        eng = build_engine(open_checkpoint(ckpt), EngineConfig(max_seq_len=128, max_batch_size=6, fast=fast,
                                                               dtype="fp32", device="cuda", kv_cache_dtype=kv))
        assert eng.runner.cache.k.dtype == K.FP8
        reqs = [Request(i, tok.encode(p), 24) for i, p in enumerate(prompts)]
        outs[(fast, kv)] = {c.request.key: c.tokens for c in eng.generate(reqs)}
    assert outs[(True, "fp8")] == outs[(False, "fp8")]


def _int8_case(m: int, n: int, k: int):
    from llamakit.model.linear import quantize_int8

    torch.manual_seed(0)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    q, s = quantize_int8(torch.randn(n, k, device="cuda") * 0.02)
    return x, q, s


# decode batches 1, 2 and 8 on 7B's weight shapes (wqkv 12288x4096, wo 4096x4096, w13 22016x4096, w2 4096x11008)
# with the default schedule, and the medium/prefill-sized batches of the tl.dot kernel
@pytest.mark.parametrize("m,n,k", [(m, n, k) for m in (1, 2, 8) for n in (4096, 12288, 22016) for k in (4096, 11008)]
                         + [(64, 4096, 11008), (200, 22016, 4096)])
def test_int8_matmul_bf16(m, n, k):
    x, q, s = _int8_case(m, n, k)
    assert _rel(Q.int8_matmul(x, q, s), Q.int8_matmul_eager(x.float(), q, s)) < 1e-2


@pytest.mark.parametrize("n,k", [(12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008), (32000, 4096), (4100, 5120)])
def test_gemv16_bf16_matches_cublas(n, k):
    """Batch 1 with bf16 weights (linear's GEMV path) against cuBLAS at 7B's shapes and an odd N / 13B's K."""
    from llamakit.model.linear import linear

    torch.manual_seed(0)
    layer = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
    torch.nn.init.normal_(layer.weight, std=0.02)
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    assert Q.use_gemv16(x, layer.weight)
    assert _rel(linear(x, layer), torch.nn.functional.linear(x.float(), layer.weight.float())) < 1e-2


@pytest.mark.parametrize("name", sorted(Q.CONFIGS))
def test_every_int8_config_bf16(name):
    """Every candidate of tools/int8_mm_bench.py, with N and K no multiple of its blocks."""
    for m, n, k in [(1, 4100, 4096), (3, 4100, 11008)]:
        x, q, s = _int8_case(m, n, k)
        assert _rel(Q.int8_matmul(x, q, s, config=name), Q.int8_matmul_eager(x.float(), q, s)) < 1e-2, (m, n, k)


@pytest.mark.parametrize("m,config", [(1, None), (4, None), (8, None), (1, "gemv_n8_k512_w4_s3_cvtbf16"),
                                      (8, "dot_n32_k128_w4_s4_skauto")])
def test_int8_matmul_is_captured_by_a_cuda_graph(m, config):
    """The decode graphs (engine/graphs.py) capture the int8 path: no host sync, the split-K partials come from the
    graph's pool; a replay with new x equals the eager result."""
    x, q, s = _int8_case(m, 12288, 4096)
    Q.int8_matmul(x, q, s, config)  # compile outside the capture, as the graphs' warm-up step does
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = Q.int8_matmul(x, q, s, config)
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    assert _rel(y, Q.int8_matmul_eager(x.float(), q, s)) < 1e-2


def test_decoding_controls_through_cuda_graphs_equal_the_eager_step(tiny_factory, mp1_group, capsys):
    """Issue 15 on the GPU: every processor, n samples and logprobs, per-row settings in the graphs' static buffers;
    fp32 graphs == fp32 without graphs token for token (logprobs to 1e-4). Then bf16: how many sampled texts stay
    the same at batch 1 and batch 8 (printed: the number docs/run.md states for bf16)."""
    from llamakit.checkpoint import open_checkpoint
    from llamakit.engine.api import EngineConfig, Request, SamplingParams
    from llamakit.engine.engine import build_engine
    from llamakit.tokenizer import Tokenizer

    ckpt = tiny_factory("llama2-gqa", 1)
    tok = Tokenizer(ckpt / "tokenizer.model")
    texts = ["Der Wetterdienst warnte", "The museum opens", "Prices for energy fell slightly in October, the"] * 4
    grid = [SamplingParams(temperature=0.8, top_k=50, repetition_penalty=1.2, logprobs=5),
            SamplingParams(temperature=0.7), SamplingParams(), SamplingParams(temperature=1.0, min_p=0.05,
                                                                              presence_penalty=0.4, min_tokens=8)]

    def run(fast: bool, dtype: str, batch: int) -> dict:
        eng = build_engine(open_checkpoint(ckpt), EngineConfig(max_seq_len=128, max_batch_size=batch, fast=fast,
                                                               dtype=dtype, device="cuda"))
        reqs = [Request(i, tok.encode(t), 24, params=grid[i % len(grid)], sample=i % 3) for i, t in enumerate(texts)]
        return {c.request.key: c for c in eng.generate(reqs)}

    graphs, eager = run(True, "fp32", 8), run(False, "fp32", 8)
    assert {k: c.tokens for k, c in graphs.items()} == {k: c.tokens for k, c in eager.items()}
    for k, c in graphs.items():
        if c.logprobs is not None:
            assert max(abs(a - b) for a, b in zip(c.logprobs.token_logprobs, eager[k].logprobs.token_logprobs)) < 1e-4
    assert {k: c.tokens for k, c in run(True, "fp32", 1).items()} == {k: c.tokens for k, c in graphs.items()}
    one, many = run(True, "bf16", 1), run(True, "bf16", 8)
    same = sum(one[k].tokens == many[k].tokens for k in one)
    with capsys.disabled():
        print(f"\nbf16, CUDA graphs, batch 1 vs 8: {same} of {len(one)} sampled texts identical")


def test_gpu_memory_utilization_caps_the_process_and_sizes_the_cache_from_the_cap(tiny_factory, mp1_group):
    """gpu_memory_utilization 0.1: the allocator may hold a tenth of the GPU (set_per_process_memory_fraction), the
    KV cache is sized from that tenth (not from mem_get_info's free bytes, which ignore the cap) and a run stays
    inside it; the cap is lifted afterwards for the other tests."""
    from llamakit.checkpoint import open_checkpoint
    from llamakit.engine.api import EngineConfig, Request
    from llamakit.engine.engine import build_engine

    total = torch.cuda.mem_get_info()[1]
    cap = int(0.1 * total)
    try:
        # 4,096 rows of 8,192 tokens would need far more than the cap: the cap decides the size
        eng = build_engine(open_checkpoint(tiny_factory("llama2", 1)),
                           EngineConfig(max_seq_len=8192, max_batch_size=4096, dtype="bf16", device="cuda",
                                        fast=False, gpu_memory_utilization=0.1))
        cache = eng.runner.cache
        kv = 2 * cache.k.numel() * cache.k.element_size()
        assert 0.5 * cap < kv < cap and torch.cuda.memory_reserved() <= cap
        done = list(eng.generate([Request(i, [1, 5 + i, 9, 7], 32) for i in range(64)]))
        assert len(done) == 64 and torch.cuda.memory_reserved() <= cap
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(cap, dtype=torch.uint8, device="cuda")  # the cap holds
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        eng = cache = None
        torch.cuda.empty_cache()


def test_batch_invariant_matmul_and_attention_give_a_row_the_same_bits_at_every_batch_size():
    """At 7B sizes in bf16: cuBLAS picks kernels by row count and batch 1 takes the GEMV, so a row's product changes
    in the last bits with the batch; through fixed_matmul (its tile changes with the row count, its order does not)
    it does not, with split-K (w2's shape) or without, and neither in INVARIANT_ROWS chunks (int8 weights). Decode
    attention with one key range (what batch_invariant fixes) gives a row the same bits among 1 or 300 rows."""
    from torch import nn

    from llamakit.model import fixed_matmul
    from llamakit.model.linear import INVARIANT_ROWS, linear, quantize_int8_

    torch.manual_seed(0)
    counts = (1, 3, 64, 65, 128, 129, 300, 700)
    # (1000, 11072): an odd N, two parts of K, and a half of K (5,536) that the 128-key tile does not divide
    for n, k in ((4096, 4096), (4096, 11008), (1000, 11072)):
        layer = nn.Module()
        layer.weight = nn.Parameter(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / 64, requires_grad=False)
        x = torch.randn(700, k, device="cuda", dtype=torch.bfloat16)
        plain = [linear(x[:m], layer)[0] for m in counts]
        layer.invariant_rows = INVARIANT_ROWS["cuda"]
        fixed = [linear(x[:m], layer) for m in counts]
        assert all(torch.equal(f[0], fixed[0][0]) for f in fixed), (n, k)
        assert all(torch.equal(f, fixed[-1][:len(f)]) for f in fixed), (n, k)
        assert torch.allclose(fixed[-1].float(), (x.float() @ layer.weight.float().T), atol=2e-2, rtol=2e-2)
        sk = fixed_matmul.split_k(n, k)  # the tiles it picks from by row count: the same bits
        assert all(torch.equal(fixed_matmul.fixed_matmul(x, layer.weight, cfg, sk), fixed[-1])
                   for cfg in fixed_matmul.TILES), (n, k)
        print(f"\n{n}x{k} (split_k {sk}): plain matmul's row 0 identical at "
              f"{sum(torch.equal(p, plain[0]) for p in plain)} of {len(counts)} row counts")
    quantize_int8_(layer)  # int8 weights: linear's fixed row chunks
    chunks = [linear(x[:m], layer)[0] for m in counts]
    assert all(torch.equal(c, chunks[0]) for c in chunks)
    L, D, BS, rows = 1024, 128, 16, 300
    nb = L // BS
    q = torch.randn(rows, 32, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1 + rows * nb, 32, BS, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    table = (torch.randperm(rows * nb, device="cuda") + 1).view(rows, nb).to(torch.int32)
    lengths = torch.randint(1, L + 1, (rows,), device="cuda")
    full = K.decode_attention(q, k, v, table, lengths, splits=1)
    for m in (1, 7, 130):
        assert torch.equal(K.decode_attention(q[:m], k, v, table[:m], lengths[:m], splits=1), full[:m])


@pytest.mark.parametrize("style", ["llama2", "llama2-gqa"])
def test_batch_invariant_engine_gives_the_same_tokens_and_logprobs_alone_and_in_a_tight_batch(style, tiny_factory,
                                                                                             mp1_group):
    """batch_invariant on the GPU in bf16, through the CUDA graphs (sampling) and the eager step (logprobs): each
    sequence's tokens and logprobs are the same bits alone as among 12 in a cache too small for all of them, where
    preempted sequences are recomputed. llama2 (head dim 16) decodes through the Triton attention kernel,
    llama2-gqa (head dim 8) through the eager one."""
    from llamakit.checkpoint import open_checkpoint
    from llamakit.engine.api import EngineConfig, Request, SamplingParams
    from llamakit.engine.engine import build_engine
    from llamakit.tokenizer import Tokenizer

    ckpt = tiny_factory(style, 1)
    tok = Tokenizer(ckpt / "tokenizer.model")
    texts = ["Der Wetterdienst warnte", "The museum opens", "Prices for energy fell slightly in October, the"] * 4

    def run(batch: int, kv_tokens: int, params: SamplingParams) -> tuple[dict, int]:
        eng = build_engine(open_checkpoint(ckpt), EngineConfig(
            max_seq_len=64, max_batch_size=batch, dtype="bf16", device="cuda", kv_cache_tokens=kv_tokens,
            batch_invariant=True))
        reqs = [Request(i, tok.encode(t), 32, params=params, sample=i % 3) for i, t in enumerate(texts)]
        out = {c.request.key: (c.tokens, c.logprobs and c.logprobs.token_logprobs) for c in eng.generate(reqs)}
        return out, eng.last.preemptions

    for params in (SamplingParams(temperature=0.8), SamplingParams(temperature=0.8, top_k=40, logprobs=3)):
        alone, _ = run(1, 64, params)
        together, preempted = run(12, 320, params)
        assert preempted > 0 and together == alone, params  # recomputed by a prefill with the decode steps' bits
