"""The model equals an independent implementation (HF LlamaForCausalLM, same weights) greedily, token for token,
in fp32 on CPU, for LLaMA-1, Llama-2, Llama-2-70B-style GQA and Llama 3 / 3.1 checkpoints, at MP 1, 2, 4 and 8."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llamakit.checkpoint import open_checkpoint
from llamakit.engine.api import EngineConfig, Request
from llamakit.engine.engine import build_engine
from llamakit.tokenizer import Tokenizer
from tests.helpers.hf_reference import build_hf_model, hf_greedy
from tests.helpers.mp_generate import run_jobs_under_torchrun, run_under_torchrun

PROMPTS = [
    "Der Stadtrat hat am Montagabend",
    "The railway company apologised",
    "Über die Zukunft der Innenstadt wird seit Jahren gestritten; Händler fürchten",
    "A",
    "Scientists found that the river is cleaner today than it was thirty years ago. The report",
]
GEN = 24
STYLES = ["llama1", "llama2", "llama2-gqa", "llama2-kv8", "llama3", "llama3.1"]


def _prompts(ckpt: Path) -> list[list[int]]:
    tok = Tokenizer(ckpt / "tokenizer.model")
    return [tok.encode(p) for p in PROMPTS]


def _stop_ids(ckpt: Path) -> frozenset[int]:
    """The reference stops where Meta's generator does: eos; for Llama 3 also eom and eot."""
    return Tokenizer(ckpt / "tokenizer.model").stop_ids


def _engine_outputs(ckpt: Path, batch: int, temperature: float = 0.0) -> dict[int, tuple[list[int], str]]:
    engine = build_engine(open_checkpoint(ckpt), EngineConfig(max_seq_len=128, max_batch_size=batch,
                                                               temperature=temperature, top_p=0.9, seed=7))
    reqs = [Request(i, p, GEN) for i, p in enumerate(_prompts(ckpt))]
    return {c.request.key: (c.tokens, c.finish_reason) for c in engine.generate(reqs)}


def _torchrun_outputs(ckpt: Path, nproc: int, tmp_path: Path,
                      config: dict | None = None) -> dict[int, tuple[list[int], str]]:
    """The prompts' completions by the engine under torchrun (`nproc` ranks) with `config` (tests/test_int8.py)."""
    config = config or {"max_seq_len": 128, "max_batch_size": 3}
    raw = run_under_torchrun(ckpt, nproc, tmp_path, config, _prompts(ckpt), GEN)
    return {k: (v[0], v[1]) for k, v in raw.items()}


@pytest.fixture(scope="module")
def hf_expected(tiny_factory):
    """Greedy completions of the HF reference for each style (computed once)."""
    torch.manual_seed(0)
    expected = {}
    for style in STYLES:
        ckpt = tiny_factory(style, 1)
        model = build_hf_model(ckpt)
        expected[style] = {i: hf_greedy(model, p, GEN, _stop_ids(ckpt)) for i, p in enumerate(_prompts(ckpt))}
    return expected


@pytest.mark.parametrize("style", STYLES)
def test_mp1_batched_greedy_equals_hf_reference(style, tiny_factory, hf_expected, mp1_group):
    got = _engine_outputs(tiny_factory(style, 1), batch=3)
    assert got == hf_expected[style]
    # the reference must really generate (not stop at once), or the comparison proves little
    assert sum(len(t) for t, _ in got.values()) > 3 * GEN


MP_CASES = [("llama1", 2), ("llama2", 2), ("llama2-gqa", 2), ("llama2-gqa", 4),
            ("llama2-kv8", 8),  # 70B's own split: one kv head per rank
            ("llama3", 2), ("llama3.1", 8)]  # vocab-parallel embedding


@pytest.fixture(scope="module")
def torchrun_outputs(tiny_factory, tmp_path_factory):
    """get(style, mp) -> greedy completions of the engine under torchrun (gloo, `mp` ranks). One torchrun start per
    MP serves every style checked at that MP (engines built one after the other): the start is most of the time."""
    done: dict[tuple[str, int], dict[int, tuple[list[int], str]]] = {}

    def get(style: str, mp: int) -> dict[int, tuple[list[int], str]]:
        if (style, mp) not in done:
            styles = [s for s, m in MP_CASES if m == mp]
            jobs = [{"ckpt": tiny_factory(s, mp), "config": {"max_seq_len": 128, "max_batch_size": 3},
                     "prompts": _prompts(tiny_factory(s, mp)), "max_gen_len": GEN} for s in styles]
            for s, raw in zip(styles, run_jobs_under_torchrun(mp, tmp_path_factory.mktemp(f"mp{mp}"), jobs)):
                done[(s, mp)] = {k: (v[0], v[1]) for k, v in raw.items()}
        return done[(style, mp)]

    return get


@pytest.mark.parametrize("style,mp", MP_CASES)
def test_model_parallel_greedy_equals_hf_reference(style, mp, torchrun_outputs, hf_expected):
    assert torchrun_outputs(style, mp) == hf_expected[style]


def test_batch_size_does_not_change_greedy_or_sampled_text(tiny_factory, mp1_group):
    ckpt = tiny_factory("llama2", 1)
    assert _engine_outputs(ckpt, batch=1) == _engine_outputs(ckpt, batch=5)
    sampled_1 = _engine_outputs(ckpt, batch=1, temperature=0.8)
    sampled_4 = _engine_outputs(ckpt, batch=4, temperature=0.8)
    assert sampled_1 == sampled_4
    assert sampled_1 != _engine_outputs(ckpt, batch=1)  # sampling really differs from greedy


def test_bf16_first_tokens_agree_with_fp32(tiny_factory, mp1_group):
    ckpt = tiny_factory("llama2", 1)
    reqs = [Request(i, p, 4) for i, p in enumerate(_prompts(ckpt))]
    outs = {}
    for dtype in ("fp32", "bf16"):
        eng = build_engine(open_checkpoint(ckpt), EngineConfig(max_seq_len=128, max_batch_size=4, dtype=dtype))
        outs[dtype] = {c.request.key: c.tokens[:1] for c in eng.generate(reqs)}
    agree = sum(outs["fp32"][k] == outs["bf16"][k] for k in outs["fp32"])
    assert agree >= len(reqs) - 1


@pytest.mark.parametrize("fast", [False, True])
def test_preempted_sequences_still_equal_hf_reference(fast, tiny_factory, hf_expected, mp1_group):
    """A KV cache of 4 blocks of 16 tokens for 5 sequences of 26 to 64 tokens: admission waits for blocks and
    running sequences are preempted (recomputed later) mid-run; the text is still HF's, token for token."""
    ckpt = tiny_factory("llama2-gqa", 1)
    engine = build_engine(open_checkpoint(ckpt), EngineConfig(max_seq_len=64, max_batch_size=5, kv_cache_tokens=64,
                                                               block_size=16, fast=fast))
    reqs = [Request(i, p, GEN) for i, p in enumerate(_prompts(ckpt))]
    got = {c.request.key: (c.tokens, c.finish_reason) for c in engine.generate(reqs)}
    assert engine.last is not None and engine.last.preemptions > 0
    assert got == hf_expected["llama2-gqa"]


def test_sampling_with_preemption_equals_sampling_at_batch_1(tiny_factory, mp1_group):
    """Sampling depends on (seed, key, step) only: preempting and recomputing a sequence changes nothing."""
    ckpt = tiny_factory("llama2", 1)

    def run(batch: int, kv_tokens: int) -> tuple[dict, int]:
        cfg = EngineConfig(max_seq_len=64, max_batch_size=batch, kv_cache_tokens=kv_tokens, temperature=0.8, seed=7)
        engine = build_engine(open_checkpoint(ckpt), cfg)
        reqs = [Request(i, p, GEN) for i, p in enumerate(_prompts(ckpt))]
        out = {c.request.key: c.tokens for c in engine.generate(reqs)}
        return out, engine.last.preemptions

    alone, _ = run(1, 0)
    squeezed, preemptions = run(5, 64)
    assert preemptions > 0 and squeezed == alone


def test_chained_steps_with_rows_ending_mid_chain_sample_what_batch_1_samples(tiny_factory, mp1_group):
    """Steps launched before the previous step's tokens are read (engine.graphs chain; eager on the CPU): rows that end
    by length or at eos inside a chain stay as scratch rows until compaction, and a queue waits for free rows. Every
    sequence still gets exactly the tokens it gets alone."""
    ckpt = tiny_factory("llama2", 1)
    prompts = _prompts(ckpt) * 2

    def run(batch: int) -> tuple[dict, int]:
        cfg = EngineConfig(max_seq_len=96, max_batch_size=batch, temperature=0.9, seed=3, eos_id=5)
        engine = build_engine(open_checkpoint(ckpt), cfg)
        reqs = [Request(i, p, 4 + 5 * (i % 4)) for i, p in enumerate(prompts)]
        out = {c.request.key: (c.tokens, c.finish_reason) for c in engine.generate(reqs)}
        return out, engine.last.chained

    alone, _ = run(1)
    together, chained = run(6)
    assert chained > 5 and together == alone
    assert {r for _, r in alone.values()} == {"length", "stop"}  # ends known ahead and ends found when recorded
