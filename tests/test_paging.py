"""The paged KV cache's bookkeeping (no tensors): blocks are handed out and returned exactly, admission waits for
free blocks instead of failing, and a full cache preempts the newest sequence, which resumes where it was."""

from __future__ import annotations

import pytest

from llamakit.engine.api import Request
from llamakit.engine.block_manager import SCRATCH_BLOCK, BlockManager
from llamakit.engine.scheduler import Scheduler


def test_blocks_are_handed_out_once_and_come_back():
    bm = BlockManager(9, 4)
    a = bm.allocate(3)
    held = list(a)
    assert SCRATCH_BLOCK not in a and bm.n_free == 5
    assert bm.grow(a, 13) and len(a) == 4 and a[:3] == held  # 13 tokens need 4 blocks of 4
    assert bm.grow(a, 16) and len(a) == 4  # still within the last block
    b = bm.allocate(4)
    assert not set(a) & set(b) and bm.n_free == 0
    assert not bm.grow(a, 17) and len(a) == 4  # nothing taken when nothing is free
    bm.free(a)
    assert a == [] and bm.n_free == 4 and bm.can_allocate(4) and not bm.can_allocate(5)
    with pytest.raises(RuntimeError):
        bm.allocate(5)


def _drive(sched: Scheduler, token: int = 7):
    """Run the scheduler as the engine does, with a fake model that always samples `token`."""
    done, prefilled = [], []
    while sched.has_work():
        for group in sched.admit():
            prefilled += [(s.request.key, len(s.generated)) for s in group]
            done += sched.record(group, [token] * len(group))
        running = sched.schedule_decode()
        assert [s.slot for s in running] == list(range(len(running)))
        for s in running:  # every running sequence has room for the token it writes next
            assert len(s.blocks) * sched.blocks.block_size >= s.next_pos + 1
        held = [b for s in running for b in s.blocks]
        assert len(held) == len(set(held)) and SCRATCH_BLOCK not in held
        done += sched.record(running, [token] * len(running))
    return done, prefilled


def test_admission_waits_for_blocks_and_every_request_finishes():
    bm = BlockManager(1 + 8, 4)  # 32 tokens of cache
    sched = Scheduler(n_slots=16, max_seq_len=32, eos_ids=(2,), prefill_tokens=64, blocks=bm)
    sched.add(Request(i, [5] * 10, 6) for i in range(6))  # 16 tokens (4 blocks) each at the end
    first = sched.admit()
    assert sum(len(g) for g in first) == 2  # 3 blocks (prompt + first token) each: only two fit 8
    done, _ = _drive(sched)
    assert sorted(c.request.key for c in done) == list(range(6))
    assert all(len(c.tokens) == 6 and c.finish_reason == "length" for c in done)
    assert bm.n_free == 8  # every block came back


def test_full_cache_preempts_the_newest_sequence_which_resumes_with_its_tokens():
    bm = BlockManager(1 + 6, 4)  # 24 tokens of cache
    sched = Scheduler(n_slots=4, max_seq_len=24, eos_ids=(2,), prefill_tokens=64, blocks=bm)
    sched.add(Request(i, [5] * 6, 12) for i in range(3))  # 18 tokens (5 blocks) each at the end
    done, prefilled = _drive(sched)
    assert sched.preemptions > 0
    resumed = [(k, n) for k, n in prefilled if n > 0]
    assert resumed and all(k != 0 for k, _ in resumed)  # the oldest is never the one preempted
    assert sorted(c.request.key for c in done) == [0, 1, 2]
    assert all(c.tokens == [7] * 12 for c in done)  # nothing lost or repeated across the preemption
    assert bm.n_free == 6


def test_memory_plan_states_what_the_paged_cache_holds_in_sequences_and_tokens():
    """13B at MP=2 on the users' 48 GB A6000s: the verdict says how many tokens the cache holds, and the words give
    sequences at max_seq_len (the old max batch) and at a typical length; max_batch_size is only an upper limit."""
    from llamakit.checkpoint.params import PRESETS
    from llamakit.fit import capacity_words, verdict

    v = verdict(PRESETS["llama-13b"], 32000, 2, "bf16", 32, 1024, int(47.99 * 2**30), 2)
    assert v.fits and v.kv_tokens // 1024 == v.max_batch > 32
    words = capacity_words(v.kv_tokens, 1024, 400)
    assert f"{v.kv_tokens:,} tokens" in words and f"{v.max_batch} sequences of max_seq_len 1024" in words
    assert f"about {v.kv_tokens // 400} of ~400 tokens" in words and "upper limit" in words


def test_a_request_larger_than_the_whole_cache_is_refused_at_add_not_waited_for_forever():
    """Without this guard the scheduler would wait for blocks that can never be free (run and bench check prompt
    lengths first; the engine does not rely on it)."""
    from llamakit.errors import LlamakitError

    bm = BlockManager(1 + 4, 4)  # 16 tokens of cache
    sched = Scheduler(n_slots=4, max_seq_len=64, eos_ids=(2,), prefill_tokens=64, blocks=bm)
    sched.add([Request(0, [5] * 10, 6)])  # 16 tokens at its end: fits exactly
    with pytest.raises(LlamakitError) as e:
        sched.add([Request(1, [5] * 16, 1)])  # the prompt and its one new token: 17 tokens, 5 blocks
    assert "request 1: its prompt (16 tokens) and up to 1 new tokens need 20 tokens of KV cache" in e.value.what
    assert "more than the whole cache (16 tokens)" in e.value.what and "shorten the prompt" in e.value.fix
    with pytest.raises(LlamakitError, match="request 2: "):
        sched.add([Request(2, [5] * 12, 8)])  # the prompt fits, but not prompt + 8 new tokens
    done, _ = _drive(sched)
    assert [c.request.key for c in done] == [0]
