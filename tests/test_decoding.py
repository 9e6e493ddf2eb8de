"""Decoding controls (issue 15) against independent references: greedy + repetition_penalty equals HF `generate` token
for token and logprobs/ranks equal HF's logits (fp32, MP 1 and 2 under torchrun + gloo, LLaMA-1 and GQA styles);
min_tokens, stop ids, stop strings across token boundaries; n samples; batch invariance with every processor on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llamakit.checkpoint import open_checkpoint
from llamakit.engine.api import EngineConfig, Request, SamplingParams
from llamakit.engine.engine import build_engine
from llamakit.tokenizer import Tokenizer
from tests.helpers.hf_reference import build_hf_model, hf_generate, hf_token_logprobs
from tests.helpers.mp_generate import run_jobs_under_torchrun

PROMPTS = ["Der Stadtrat hat am Montagabend", "The railway company apologised",
           "Über die Zukunft der Innenstadt wird seit Jahren gestritten; Händler fürchten", "A"]
GEN = 20
GREEDY_REP = {"temperature": 0.0, "repetition_penalty": 1.3, "logprobs": 5}
# every processor at once, sampled: the batch-invariance workload
SAMPLED = [{"temperature": 0.9, "top_k": 8, "top_p": 0.95, "min_p": 0.02, "repetition_penalty": 1.2,
            "presence_penalty": 0.3, "frequency_penalty": 0.2, "logprobs": 2, "seed": 5},
           {"temperature": 0.7, "sample": 1},  # plain sampling next to processed rows
           {"temperature": 1.1, "top_k": 3, "min_tokens": 6, "sample": 2, "seed": 9},
           {"temperature": 0.0}]


def _tok(ckpt: Path) -> Tokenizer:
    return Tokenizer(ckpt / "tokenizer.model")


def _requests(ckpt: Path, params: list[dict], gen: int = GEN) -> list[Request]:
    tok = _tok(ckpt)
    reqs = []
    for i, (text, kw) in enumerate(zip(PROMPTS * (len(params) // len(PROMPTS) + 1), params)):
        kw = dict(kw)
        sample = kw.pop("sample", 0)
        reqs.append(Request(i, tok.encode(text), gen, params=SamplingParams(**kw), sample=sample))
    return reqs


def _generate(ckpt: Path, reqs: list[Request], batch: int, **cfg) -> dict:
    engine = build_engine(open_checkpoint(ckpt), EngineConfig(max_seq_len=128, max_batch_size=batch, **cfg))
    return {c.request.key: c for c in engine.generate(reqs)}


@pytest.fixture(scope="module")
def hf_models(tiny_factory):
    return {style: build_hf_model(tiny_factory(style, 1)) for style in ("llama1", "llama2-gqa")}


def _check_against_hf(model, ckpt: Path, got: dict[int, tuple[list[int], str, list | None]]) -> None:
    tok = _tok(ckpt)
    for i, text in enumerate(PROMPTS):
        prompt = tok.encode(text)
        want = hf_generate(model, prompt, GEN, tok.eos_id, do_sample=False, repetition_penalty=1.3)
        tokens, finish, logprobs = got[i]
        assert (tokens, finish) == want, f"prompt {i}"
        ref = hf_token_logprobs(model, prompt, tokens)
        assert len(logprobs) == len(tokens)
        assert max(abs(a - r[0]) for a, r in zip(logprobs, ref)) < 1e-4


@pytest.mark.parametrize("style", ["llama1", "llama2-gqa"])
def test_mp1_greedy_repetition_penalty_and_logprobs_equal_hf(style, tiny_factory, hf_models, mp1_group):
    ckpt = tiny_factory(style, 1)
    out = _generate(ckpt, _requests(ckpt, [GREEDY_REP] * len(PROMPTS)), batch=3)
    _check_against_hf(hf_models[style], ckpt, {k: (c.tokens, c.finish_reason, c.logprobs.token_logprobs)
                                               for k, c in out.items()})
    tok = _tok(ckpt)
    plain = _generate(ckpt, _requests(ckpt, [{"temperature": 0.0}] * len(PROMPTS)), batch=3)
    assert any(out[k].tokens != plain[k].tokens for k in out)  # the penalty really changed the text
    ranks = [r for c in out.values() for r in c.logprobs.token_ranks]
    assert min(ranks) == 1 and max(ranks) > 1  # penalised choices are not always the raw argmax
    for k, c in out.items():  # ranks and the top 5 equal HF's, position by position
        ref = hf_token_logprobs(hf_models[style], tok.encode(PROMPTS[k]), c.tokens, top=5)
        assert c.logprobs.token_ranks == [r[1] for r in ref]
        for mine, (_, _, top, row) in zip(c.logprobs.top_logprobs, ref):
            assert max(abs(a[1] - b[1]) for a, b in zip(mine, top)) < 1e-4  # the 5 largest values
            assert all(abs(float(row[t]) - lp) < 1e-4 for t, lp in mine)  # each id has its value (ties may swap)


MP2_STYLES = ["llama1", "llama2-gqa"]
MP2_PARAMS = [GREEDY_REP] * len(PROMPTS) + SAMPLED


INVARIANT = ["invariant-1", "invariant-12"]  # batch_invariant at MP=2: alone, and 12 at once in a tight cache


@pytest.fixture(scope="module")
def mp2_outputs(tiny_factory, tmp_path_factory):
    """{style: the MP=2 engine's completions of MP2_PARAMS' requests}, and {INVARIANT[i]: batch_invariant's
    completions of SAMPLED with logprobs}: all in one torchrun start."""
    jobs = [{"ckpt": tiny_factory(style, 2), "config": {"max_seq_len": 128, "max_batch_size": 3}, "max_gen_len": GEN,
             "prompts": [_tok(tiny_factory(style, 2)).encode(t) for t in PROMPTS] * 2, "params": MP2_PARAMS}
            for style in MP2_STYLES]
    ckpt = tiny_factory("llama2", 2)
    jobs += [{"ckpt": ckpt, "config": {"max_seq_len": 64, "max_batch_size": batch, "kv_cache_tokens": kv,
                                       "batch_invariant": True},
              "max_gen_len": GEN, "prompts": [_tok(ckpt).encode(t) for t in PROMPTS * 3],
              "params": [{**p, "logprobs": 3} for p in SAMPLED] * 3} for batch, kv in ((1, 64), (12, 256))]
    return dict(zip(MP2_STYLES + INVARIANT, run_jobs_under_torchrun(2, tmp_path_factory.mktemp("mp2"), jobs)))


@pytest.mark.slow
@pytest.mark.parametrize("style", MP2_STYLES)
def test_mp2_torchrun_greedy_repetition_penalty_equals_hf_and_sampling_equals_mp1(style, tiny_factory, hf_models,
                                                                                  mp2_outputs, mp1_group):
    ckpt2 = tiny_factory(style, 2)
    params = MP2_PARAMS
    raw = mp2_outputs[style]
    _check_against_hf(hf_models[style], ckpt2, {k: tuple(v) for k, v in raw.items() if k < len(PROMPTS)})
    mp1 = _generate(tiny_factory(style, 1), _requests(tiny_factory(style, 1), params), batch=8)
    assert {k: v[0] for k, v in raw.items()} == {k: c.tokens for k, c in mp1.items()}


def test_sampling_with_every_processor_is_batch_invariant(tiny_factory, mp1_group):
    ckpt = tiny_factory("llama2", 1)
    params = SAMPLED * 3
    one = _generate(ckpt, _requests(ckpt, params), batch=1)
    many = _generate(ckpt, _requests(ckpt, params), batch=5)
    assert {k: c.tokens for k, c in one.items()} == {k: c.tokens for k, c in many.items()}
    for k, c in one.items():
        if c.logprobs is not None:
            assert c.logprobs.token_logprobs == pytest.approx(many[k].logprobs.token_logprobs, abs=1e-5)
    # the noise follows (seed, key, sample, step): the same prompt under another key or seed differs
    assert len({tuple(one[k].tokens) for k in (0, 4, 8)}) == 3
    assert one[0].tokens != _generate(ckpt, _requests(ckpt, [{**SAMPLED[0], "seed": 6}]), batch=1)[0].tokens


def test_n_samples_differ_and_sample_zero_is_the_plain_request(tiny_factory, mp1_group):
    ckpt = tiny_factory("llama2", 1)
    tok = _tok(ckpt)
    prompt = tok.encode(PROMPTS[1])
    p = SamplingParams(temperature=0.8)
    reqs = [Request(3, prompt, GEN, params=p, sample=s) for s in range(4)]
    engine = build_engine(open_checkpoint(ckpt), EngineConfig(max_seq_len=128, max_batch_size=4))
    outs = {c.request.sample: c.tokens for c in engine.generate(reqs)}
    assert len({tuple(t) for t in outs.values()}) == 4
    old = build_engine(open_checkpoint(ckpt), EngineConfig(max_seq_len=128, max_batch_size=1, temperature=0.8))
    assert [c.tokens for c in old.generate([Request(3, prompt, GEN)])] == [outs[0]]


def test_min_tokens_holds_against_eos_and_stop_ids(tiny_factory, mp1_group):
    ckpt = tiny_factory("llama2", 1)
    greedy = _generate(ckpt, _requests(ckpt, [{}] * len(PROMPTS)), batch=4)
    first = greedy[0].tokens[1]  # a token the model picks early: made the eos (and, separately, a stop id)
    stop_early = _generate(ckpt, _requests(ckpt, [{}]), batch=1, eos_id=first)[0]
    assert stop_early.finish_reason == "stop" and len(stop_early.tokens) == 1 and stop_early.stop_reason is None
    held = _generate(ckpt, _requests(ckpt, [{"min_tokens": 12}]), batch=1, eos_id=first)[0]
    assert len(held.tokens) >= 12 and first not in held.tokens[:12]
    by_id = _generate(ckpt, _requests(ckpt, [{"stop_token_ids": (first,)}]), batch=1)[0]
    assert (by_id.tokens, by_id.finish_reason, by_id.stop_reason) == (greedy[0].tokens[:1], "stop", first)
    held = _generate(ckpt, _requests(ckpt, [{"stop_token_ids": (first,), "min_tokens": 9}]), batch=1)[0]
    assert len(held.tokens) >= 9 and first not in held.tokens[:9]


def test_stop_string_spanning_token_boundaries_cuts_the_text(tiny_factory, mp1_group):
    ckpt = tiny_factory("llama2", 1)
    tok = _tok(ckpt)
    prompt = tok.encode(PROMPTS[0])
    plain = _generate(ckpt, _requests(ckpt, [{}]), batch=1)[0].tokens
    pieces = [tok.sp.decode(prompt[-1:] + plain[: i + 1])[len(tok.sp.decode(prompt[-1:] + plain[:i])):]
              for i in range(len(plain))]
    full = "".join(pieces)
    # a stop string made of the end of token 5 and the start of token 6: found only once both are there
    i = next(j for j in range(4, len(pieces) - 1) if len(pieces[j]) >= 2 and len(pieces[j + 1]) >= 2
             and full.find(pieces[j][-2:] + pieces[j + 1][:2]) == len("".join(pieces[:j + 1])) - 2)
    stop = pieces[i][-2:] + pieces[i + 1][:2]
    c = _generate(ckpt, _requests(ckpt, [{"stop": (stop, "never-there")}]), batch=1)[0]
    assert (c.finish_reason, c.stop_reason) == ("stop", stop)
    assert c.tokens == plain[: i + 2] and c.text == full[: full.index(stop)]
    from llamakit.run.worker import completion_text

    assert completion_text(tok, prompt, plain).startswith(c.text)


def test_incremental_text_equals_full_decoding(tiny_factory):
    from llamakit.engine.stopping import IncrementalText

    tok = _tok(tiny_factory("llama2", 1))
    prompt = tok.encode("Über die Brücke")
    gen = tok.encode(" gehen Bürger, 3,5 Mio. € — naïve Ärzte 🙂 und ß.", bos=False)
    inc = IncrementalText(prompt, tok.decode)
    for t in gen:
        inc.add(t)
    full = tok.decode(prompt + gen)
    assert inc.text == full[len(tok.decode(prompt)):]


def test_processors_follow_vllm_order_and_definitions():
    from llamakit.engine.sampler import FLOAT_ROWS, INT_ROWS, N_FLOAT, N_INT, sample_step

    logits = torch.tensor([[2.0, 1.5, -1.0, 0.5, 0.0]])
    hist = torch.tensor([[0, 2, 3, 3, 0, 0]])  # prompt [0, 2], output [3, 3]
    ints = torch.zeros((N_INT, 1), dtype=torch.int64)
    floats = torch.zeros((N_FLOAT, 1))
    ints[INT_ROWS.index("prompt_len")] = 2
    ints[INT_ROWS.index("seen_len")] = 4
    floats[FLOAT_ROWS.index("repetition_penalty")] = 2.0
    floats[FLOAT_ROWS.index("frequency_penalty")] = 0.25
    floats[FLOAT_ROWS.index("presence_penalty")] = 0.5
    floats[FLOAT_ROWS.index("top_p")] = 1.0
    out = sample_step(logits, ints, floats, hist, "full")
    # penalised: [2/2, 1.5, -1*2, 0.5/2 - 2*0.25 - 0.5, 0] -> argmax 1 (greedy); logprob/rank from the raw logits
    assert int(out[0, 0]) == 1 and int(out[0, 2]) == 2
    assert float(out[0, 1]) == pytest.approx(float(torch.log_softmax(logits, -1)[0, 1]), abs=1e-6)
    # top-k 2 at a high temperature: only the two most likely penalised tokens (0 and 1) are ever drawn
    floats[FLOAT_ROWS.index("temperature")] = 5.0
    ints[INT_ROWS.index("top_k")] = 2
    many = torch.zeros((N_INT, 2000), dtype=torch.int64) + ints
    many[INT_ROWS.index("key")] = torch.arange(2000)
    fl = torch.zeros((N_FLOAT, 2000)) + floats
    toks = sample_step(logits.expand(2000, -1), many, fl, hist.expand(2000, -1), "full")[:, 0].long()
    assert set(toks.tolist()) == {0, 1}
    # min_p 0.9 relative to the top: only near-ties survive (here none: argmax only)
    ints[INT_ROWS.index("top_k")] = 0
    fl[FLOAT_ROWS.index("min_p")] = 0.99
    fl[FLOAT_ROWS.index("repetition_penalty")] = 1.0
    fl[FLOAT_ROWS.index("frequency_penalty")] = 0.0
    fl[FLOAT_ROWS.index("presence_penalty")] = 0.0
    many[INT_ROWS.index("top_k")] = 0
    toks = sample_step(logits.expand(2000, -1), many, fl, hist.expand(2000, -1), "full")[:, 0].long()
    assert set(toks.tolist()) == {0}


def test_ignore_eos_generates_to_max_gen_len_but_stop_ids_still_end():
    from llamakit.engine.api import Request, SamplingParams
    from llamakit.engine.stopping import Tracker
    from llamakit.run.decoding import DecodingKeys, to_params

    req = Request(0, [5, 6], 4)
    keep = Tracker(req, SamplingParams(ignore_eos=True, stop_token_ids=(9,)), (2,), None)
    gen: list[int] = []
    assert keep.add(gen, 4, 2, None) is None and gen == [2]  # eos is just a token now
    done = keep.add(gen, 4, 9, None)
    assert done is not None and done.stop_reason == 9 and done.tokens == [2]
    plain = Tracker(req, SamplingParams(), (2,), None)
    assert plain.add([], 4, 2, None).finish_reason == "stop"
    assert to_params({**DecodingKeys(ignore_eos=True).model_dump()}).ignore_eos is True


@pytest.mark.parametrize("dtype,fast", [("fp32", True), ("bf16", True), ("bf16", False)])
def test_batch_invariant_gives_every_sequence_the_same_bits_at_any_batch_even_when_preempted(dtype, fast,
                                                                                              tiny_factory, mp1_group):
    """batch_invariant: true. Each sequence's tokens and logprobs are bit for bit the same alone (batch 1, a cache for
    one sequence) as among 12 at once in a cache too small for all of them: preempted sequences are recomputed by a
    prefill that attends through the decode kernel (the fast path), or never preempted (the plain path reserves
    each sequence's whole length)."""
    ckpt = tiny_factory("llama2", 1)
    params = [{**p, "logprobs": 3} for p in SAMPLED] * 3

    def run(batch: int, kv_tokens: int, invariant: bool) -> tuple[dict, int]:
        engine = build_engine(open_checkpoint(ckpt), EngineConfig(
            max_seq_len=64, max_batch_size=batch, kv_cache_tokens=kv_tokens, dtype=dtype, fast=fast,
            batch_invariant=invariant))
        out = {c.request.key: (c.tokens, c.logprobs.token_logprobs, c.logprobs.top_logprobs)
               for c in engine.generate(_requests(ckpt, params))}
        return out, engine.last.preemptions

    alone, _ = run(1, 64, True)
    together, preempted = run(12, 256, True)
    assert together == alone  # == on floats: the same bits
    assert (preempted > 0) == fast
    assert len({tuple(v[0]) for v in alone.values()}) > 6  # the rows really sample different texts


@pytest.mark.slow
def test_batch_invariant_at_mp2_over_gloo_gives_the_same_bits_alone_and_in_a_full_batch(mp2_outputs):
    """The same at MP=2 under torchrun (gloo): the all-reduce of two ranks' partial sums is one addition per value,
    the same whichever order; so alone and among 12 in a tight cache a sequence gets the same tokens and logprobs."""
    alone, together = (mp2_outputs[k] for k in INVARIANT)
    assert together == alone and len(alone) == 12
    assert all(v[2] is not None and len(v[2]) == len(v[0]) for v in alone.values())
