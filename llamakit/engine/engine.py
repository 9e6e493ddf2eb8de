"""The engine behind `llamakit run`: builds this rank's model and paged KV cache, then runs continuous batching."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch

from llamakit.checkpoint.layout import DTYPES
from llamakit.checkpoint.shards import Checkpoint
from llamakit.engine.api import Completion, EngineConfig, Request
from llamakit.engine.block_manager import BlockManager
from llamakit.engine.runner import Launched, ModelRunner
from llamakit.engine.scheduler import Scheduler
from llamakit.errors import LlamakitError
from llamakit.engine.stopping import Stopping
from llamakit.memory import PREFILL_TOKENS, fmt_gib, kv_capacity, kv_dtype, usable_bytes, weight_dtype
from llamakit.model.kv_cache import KVCache, cache_dtype
from llamakit.model.llama import Transformer, model_parallel_info
from llamakit.tokenizer import Tokenizer, find_tokenizer

log = logging.getLogger("llamakit.engine")


class BatchEngine:
    """Continuous batching over a paged KV cache (see Scheduler), one model step at a time.
    `eos_ids` are the tokenizer's stop ids (eos; Llama 3: end_of_text, eom, eot; empty: never stop at eos);
    `decode` (ids -> text) is needed for stop strings."""

    def __init__(self, runner: ModelRunner, cfg: EngineConfig, eos_ids: Sequence[int],
                 decode: Callable[[list[int]], str] | None = None):
        self.runner = runner
        self.cfg = cfg
        self.eos_ids = tuple(eos_ids)
        self.stopping = Stopping(self.eos_ids, cfg.default_params(), decode)
        self.max_rows = runner.tables.host.shape[0]
        prefill_tokens = PREFILL_TOKENS if runner.device.type == "cuda" else 2048
        self.prefill_tokens = max(prefill_tokens, cfg.max_seq_len)
        self.last: Scheduler | None = None  # the last run's scheduler: peak sequences / tokens, preemptions
        self.timeline = Timeline()  # the last run's: where its wall time went

    def generate(self, requests: Iterable[Request]) -> Iterator[Completion]:
        cache = self.runner.cache
        sched = Scheduler(self.max_rows, self.cfg.max_seq_len, self.eos_ids, self.prefill_tokens,
                          BlockManager(cache.n_blocks, cache.block_size), self.stopping,
                          reserve_whole=self.cfg.batch_invariant and not self.cfg.fast)
        self.last = sched
        tl = self.timeline = Timeline()
        start = time.perf_counter()
        sched.add(requests)
        while sched.has_work():
            for group in sched.admit():
                t0 = time.perf_counter()
                out = self.runner.prefill(group)  # returns sampled tokens: on the host, so the prefill is done
                tl.prefills += 1
                tl.prefill_rows += len(group)
                tl.prefill_s += time.perf_counter() - t0
                yield from tl.recorded(sched, group, *out)
            running = sched.schedule_decode()
            if not running:
                continue
            t0 = time.perf_counter()
            launched = self.runner.launch(running)
            tl.steps += 1
            tl.rows += len(running)
            if not isinstance(launched, Launched):  # run and read at once (full mode, or no graphs)
                tl.wait_s += time.perf_counter() - t0
                yield from tl.recorded(sched, running, *launched)
                continue
            tl.launches += 1
            tl.launch_s += time.perf_counter() - t0
            step: Launched | None = launched
            while step is not None:  # while the batch stays, step N+1 runs while step N's tokens are recorded
                t0 = time.perf_counter()
                rows = sched.chain_rows(step.rows)
                nxt = self.runner.chain(step, rows) if rows is not None else None
                if nxt is not None:
                    tl.steps += 1
                    tl.rows += len(rows)
                t1 = time.perf_counter()
                tokens = self.runner.result(step)
                t2 = time.perf_counter()
                tl.chain_s += t1 - t0
                tl.wait_s += t2 - t1
                alive = [i for i, s in enumerate(step.rows) if s is not None]
                yield from tl.recorded(sched, [step.rows[i] for i in alive], [tokens[i] for i in alive])
                if nxt is not None:  # sequences that ended with step N's token (eos, stop): their rows are ignored
                    nxt.rows = [s if s is not None and s.slot >= 0 else None for s in nxt.rows]
                step = nxt
        tl.total_s = time.perf_counter() - start  # consumers' time between completions included


@dataclass
class Timeline:
    """Where a generate call's wall time went, for `llamakit bench`'s report: prefill calls (their rows, and seconds
    until their first tokens were on the host), decode steps (rows summed over steps; launches: steps started with
    the host waiting, the others chained behind the step in flight), the seconds the host waited for decode tokens
    (time the GPU, not the host, was the limit), spent launching steps (after a batch change, with the GPU idle; or
    chained) and recording tokens, and in all."""

    prefills: int = 0
    prefill_rows: int = 0
    prefill_s: float = 0.0
    steps: int = 0
    rows: int = 0
    launches: int = 0
    wait_s: float = 0.0
    launch_s: float = 0.0  # host time staging and launching decode steps with none in flight (the GPU idle)
    chain_s: float = 0.0  # the same for steps chained behind the one in flight (hidden while the GPU is busier)
    record_s: float = 0.0  # host time recording tokens (stop rules, finished sequences)
    total_s: float = 0.0

    def recorded(self, sched: Scheduler, seqs: list, tokens: list, infos: list | None = None) -> list[Completion]:
        """sched.record, timed."""
        t0 = time.perf_counter()
        done = sched.record(seqs, tokens, infos)
        self.record_s += time.perf_counter() - t0
        return done

    def as_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in self.__dict__.items()}


KV_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def cap_gpu_memory(fraction: float, device: torch.device) -> None:
    """gpu_memory_utilization < 1: this process's caching allocator may hold at most that fraction of the GPU's total
    memory (torch.cuda.set_per_process_memory_fraction), so a run on a larger GPU behaves as on a smaller one."""
    if device.type == "cuda" and fraction < 1.0:
        torch.cuda.set_per_process_memory_fraction(fraction, device)


def gpu_share(device: torch.device, fraction: float) -> tuple[int, int]:
    """(bytes this process may use, bytes it holds now) on `device`, for memory.kv_capacity: of
    gpu_memory_utilization x the GPU's total, not of `mem_get_info`'s free bytes alone (which ignore the cap)."""
    torch.cuda.empty_cache()  # loading temporaries and the probe step's blocks go back: held is what is live
    free, total = torch.cuda.mem_get_info(device)
    held = torch.cuda.memory_reserved(device)
    return usable_bytes(total, free, held, fraction), held


def kv_cache_blocks(cfg: EngineConfig, model_cfg, mp: int, dtype: torch.dtype, device: torch.device,
                    rows: int, step_bytes: int = 0, gpu: tuple[int, int] | None = None) -> int:
    """Blocks for the KV cache (scratch block included): `kv_cache_tokens` if set, else on GPUs memory.kv_capacity of
    (`gpu`: bytes this process may use, bytes it holds; default gpu_share, i.e. gpu_memory_utilization x the
    GPU) less the plan's reserve and the decode graphs' pool (`step_bytes`: one measured step), never more than
    `rows` sequences of max_seq_len need; `llamakit run`'s plan calls the same function. Fails with the fix when
    not even one sequence of max_seq_len fits."""
    per_seq = -(-cfg.max_seq_len // cfg.block_size)
    want = rows * per_seq
    words = ""
    if cfg.kv_cache_tokens > 0:
        want = -(-cfg.kv_cache_tokens // cfg.block_size)
    elif device.type == "cuda" or gpu is not None:
        may_use, held = gpu if gpu is not None else gpu_share(device, cfg.gpu_memory_utilization)
        cap = kv_capacity(model_cfg, mp, weight_dtype(cfg.dtype, cfg.quantize), cfg.max_seq_len, rows, may_use, held,
                          step_bytes, kv_dtype(KV_DTYPE_NAMES.get(dtype, cfg.dtype), cfg.kv_cache_dtype),
                          cfg.block_size)
        want = cap.blocks
        words = f" of {fmt_gib(may_use)} this process may use ({fmt_gib(held)} held)"
    if want < per_seq:
        util = (f"; gpu_memory_utilization is {cfg.gpu_memory_utilization}" if cfg.gpu_memory_utilization < 1
                else "")
        raise LlamakitError(f"the KV cache holds {want * cfg.block_size} tokens{words}, less than one sequence of "
                            f"max_seq_len {cfg.max_seq_len}{util}",
                            "lower max_seq_len, use int8 weights (quantize: int8) or more GPUs (a higher MP)"
                            + (", or raise gpu_memory_utilization" if util else ""))
    log.info("KV cache: %d blocks of %d tokens = %d tokens (%d sequences at max_seq_len %d; max_batch_size %d)%s",
             want, cfg.block_size, want * cfg.block_size, want // per_seq, cfg.max_seq_len, rows, words)
    return int(want) + 1


def build_engine(ckpt: Checkpoint, cfg: EngineConfig, rank: int | None = None,
                 tokenizer: Tokenizer | None = None) -> BatchEngine:
    """Build the engine on this rank (after torch.distributed and fairscale model parallel are initialised).

    `rank` is the model-parallel rank (defaults to fairscale's); it picks shard consolidated.<rank>.pth.
    `tokenizer` (default: the one next to the checkpoint) gives the stop ids (Tokenizer.stop_ids: eos, for Llama 3
    also eom and eot; cfg.eos_id replaces them when set) and the text that stop strings are looked for in.
    """
    tok = tokenizer or Tokenizer(find_tokenizer(ckpt.path))
    eos_ids = eos_ids_for(tok, cfg.eos_id)
    mp_rank, mp_size = model_parallel_info()
    rank = mp_rank if rank is None else rank
    if mp_size != ckpt.mp:
        raise RuntimeError(f"model-parallel size {mp_size} != checkpoint shards {ckpt.mp}")
    device = torch.device("cuda", torch.cuda.current_device()) if cfg.device == "cuda" else torch.device("cpu")
    dtype = DTYPES[cfg.dtype]
    model_cfg = ckpt.config.with_vocab(ckpt.vocab_rows)
    cap_gpu_memory(cfg.gpu_memory_utilization, device)  # before the weights: they count against the cap
    shard = ckpt.load(rank)
    model = Transformer.from_shard(model_cfg, shard, cfg.max_seq_len, dtype, device, cfg.quantize,
                                   vocab_parallel=ckpt.vocab_parallel)
    del shard
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the loading temporaries (fused qkv/w13, casts) go back: free memory is real

    def decode(ids: list[int]) -> str:  # stop-string text: a chat prompt's tail holds <|eot_id|> of its last turn
        return tok.decode(ids, cut_at_stop=False)

    return engine_for_model(model, cfg, None, eos_ids, decode)


def eos_ids_for(tok: Tokenizer, eos_id: int | None) -> tuple[int, ...]:
    """The ids that end a sequence like eos: the tokenizer's stop ids, or the one `eos_id` set (-1: none)."""
    if eos_id is None:
        return tuple(sorted(tok.stop_ids))
    return (eos_id,) if eos_id >= 0 else ()


def engine_for_model(model: Transformer, cfg: EngineConfig, rows: int | None, eos_ids: Sequence[int],
                     decode: Callable[[list[int]], str] | None = None) -> BatchEngine:
    """An engine around an already built model: a paged KV cache sized by `kv_cache_blocks`, decoding at most
    `rows` (None: max_batch_size) sequences at once, its runner, the scheduler."""
    mc = model.cfg
    rows = rows or cfg.max_batch_size
    mp = model_parallel_info()[1]
    cap_gpu_memory(cfg.gpu_memory_utilization, model.device)
    if cfg.batch_invariant:
        model.make_batch_invariant()
    step_bytes = 0
    if model.device.type == "cuda" and cfg.fast and cfg.kv_cache_tokens <= 0:
        from llamakit.engine.graphs import step_peak_bytes

        step_bytes = step_peak_bytes(model, cfg, rows, cfg.max_seq_len)
    n_blocks = kv_cache_blocks(cfg, mc, mp, model.dtype, model.device, rows, step_bytes)
    cache = KVCache(mc.n_layers, n_blocks, cfg.block_size, mc.kv_heads // mp, mc.head_dim,
                    cache_dtype(cfg.kv_cache_dtype, model.dtype), model.device)
    engine = BatchEngine(ModelRunner(model, cache, cfg, rows, eos_ids=eos_ids), cfg, eos_ids, decode)
    if model.device.type == "cuda":  # every rank of a model-parallel group runs the same prefills
        engine.runner.warm_prefill(engine.prefill_tokens)
    return engine
