"""Sampling on the device: penalties, temperature, top-k / top-p / min-p (vLLM's order) with noise that depends only on
(seed, key, sample, step), and the logprobs of what was chosen. Per-row settings are tensors, so one CUDA graph serves
every mix of settings; three variants keep the plain cases as cheap as before (see `choose_mode`)."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from llamakit.engine.api import MAX_EOS_IDS, MAX_LOGPROBS, MAX_STOP_IDS, SamplingParams, TokenLogprobs
from llamakit.engine.nucleus import U_MAX, nucleus_keep_sorted, nucleus_sample, use_kernel

_M32 = 0xFFFFFFFF
BAN = MAX_STOP_IDS + MAX_EOS_IDS  # ids banned while min_tokens is not reached: the tokenizer's stop ids +
# stop_token_ids, a fixed width for graphs

# rows of the per-step integer and float inputs (each [rows, batch]); the ban ids follow INT_ROWS
INT_ROWS = ("key", "sample", "step", "seed", "top_k", "prompt_len", "seen_len", "banned")
FLOAT_ROWS = ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")
N_INT = len(INT_ROWS) + BAN
N_FLOAT = len(FLOAT_ROWS)
MODES = ("greedy", "sample", "full")
PACKED = 3 + 2 * MAX_LOGPROBS  # full mode's output row: token, logprob, rank, top ids, top logprobs


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding values < 2**32 (products wrap mod 2**64; low bits kept)."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _M32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _M32
    return x ^ (x >> 16)


def hash_uniform(seed: int | torch.Tensor, keys: torch.Tensor, steps: torch.Tensor, token_ids: torch.Tensor,
                 samples: torch.Tensor | None = None) -> torch.Tensor:
    """Uniform (0, 1) numbers, one per (row seed, key, sample, step, token id): the same on every rank, batch and
    resume. Sample 0 draws what llamakit drew before samples existed, so older outputs resume identically."""
    if isinstance(seed, torch.Tensor):
        seed = seed & _M32
    else:
        seed = seed & _M32
    row = _mix32((keys * 0x9E3779B1 + seed) & _M32)
    row = _mix32((row ^ (steps * 0x7FEB352D)) & _M32)
    if samples is not None:
        row = torch.where(samples > 0, _mix32((row ^ (samples * 0x165667B1)) & _M32), row)
    x = _mix32((row[:, None] ^ (token_ids * 0x27D4EB2F)) & _M32)
    return (((x >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))).clamp_(max=U_MAX)


def _race(probs: torch.Tensor, idx: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The exponential race argmax(p / E), E = -log(U): an exact draw from `probs` (sorted as `idx`)."""
    choice = torch.argmax(probs / -torch.log(u), dim=-1, keepdim=True)
    return idx.gather(-1, choice).squeeze(-1)


def sample(logits: torch.Tensor, temperature: float, top_p: float, seed: int,
           keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Next token per row of `logits` [B, V] with one setting for all rows: argmax when temperature == 0, else
    top-p sampling as Meta's generator (keep the smallest prefix of sorted probabilities whose mass before it is
    <= top_p), drawn by the exponential race with U from `hash_uniform`."""
    if temperature <= 0:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    p_sorted, idx = torch.sort(probs, dim=-1, descending=True)
    p_sorted = p_sorted.masked_fill(~nucleus_keep_sorted(p_sorted, torch.full_like(p_sorted[:, :1], top_p)), 0.0)
    return _race(p_sorted, idx, hash_uniform(seed, keys, steps, idx))


# ---------------------------------------------------------------------------------------------- host side

def choose_mode(params: Sequence[SamplingParams], banning: bool) -> str:
    """The cheapest variant that serves every row: greedy (argmax only), sample (temperature + top-p), full."""
    if banning or any(p.needs_processors for p in params):
        return "full"
    return "sample" if any(p.temperature > 0 for p in params) else "greedy"


def step_rows(seqs: Sequence[Any], default: SamplingParams,
              eos_ids: Sequence[int]) -> tuple[list[list[int]], list[list[float]], str]:
    """Per-step inputs of the running sequences (scheduler Sequences: request, generated, prompt_len), as
    [N_INT][B] ints and [N_FLOAT][B] floats, and the mode this step needs. Rows a mode does not read are left
    constant (zeros), which keeps the host work of plain steps to a few list comprehensions."""
    b = len(seqs)
    params = [s.request.params or default for s in seqs]
    first = params[0]
    same = all(p is first for p in params)
    uniq = [first] if same else list({id(p): p for p in params}.values())
    banning = any(p.min_tokens > 0 for p in uniq) and any(len(s.generated) < p.min_tokens
                                                            for s, p in zip(seqs, params))
    mode = choose_mode(uniq, banning)

    def col(attr: str) -> list:
        return [getattr(first, attr)] * b if same else [getattr(p, attr) for p in params]

    zeros = [0] * b
    ints = [[s.request.key for s in seqs], [s.request.sample for s in seqs], [len(s.generated) for s in seqs],
            col("seed")] + [zeros] * (N_INT - 4)
    floats = [col("temperature"), col("top_p")] + [[0.0] * b] * (N_FLOAT - 2)
    if mode != "full":
        return ints, floats, mode
    prompt = [s.prompt_len for s in seqs]
    ints[4:7] = [col("top_k"), prompt, [n + g for n, g in zip(prompt, ints[2])]]
    floats[2:] = [col(a) for a in FLOAT_ROWS[2:]]
    if banning:
        flags, cols = [], [[] for _ in range(BAN)]
        for s, p in zip(seqs, params):
            ban = [t for t in (*eos_ids, *p.stop_token_ids) if t >= 0] if len(s.generated) < p.min_tokens else []
            flags.append(1 if ban else 0)
            for c, v in zip(cols, ban + [ban[0]] * (BAN - len(ban)) if ban else [0] * BAN):
                c.append(v)
        ints[7:] = [flags] + cols
    return ints, floats, mode


_MODE_NAMES = ("greedy", "sample", "full")
_I = {n: i for i, n in enumerate(INT_ROWS)}


class SamplingBuffers:
    """The decode step's per-row settings: host rows (pinned on GPUs) and their device copy, which CUDA graphs read.
    A row's constant settings are written when its sequence changes (a new tracker serial), so a step writes only
    its step counts (and, while min_tokens holds, the ban lists): the host work of a plain step stays a few
    vectorised writes."""

    def __init__(self, n: int, device: torch.device):
        pin = device.type == "cuda"
        self.host_i = torch.zeros((N_INT, n), dtype=torch.int64)
        self.host_f = torch.zeros((N_FLOAT, n), dtype=torch.float32)
        if pin:
            self.host_i, self.host_f = self.host_i.pin_memory(), self.host_f.pin_memory()
        self.ints = torch.zeros((N_INT, n), dtype=torch.int64, device=device)
        self.floats = torch.zeros((N_FLOAT, n), dtype=torch.float32, device=device)
        self.np_i, self.np_f = self.host_i.numpy(), self.host_f.numpy()
        self.owner = [-1] * n
        self.mode = [0] * n  # 0 greedy, 1 sample, 2 full: what the row alone needs
        self.min_tokens = [0] * n
        self.params: list[SamplingParams | None] = [None] * n

    def stage(self, seqs: Sequence[Any], default: SamplingParams, eos_ids: Sequence[int]) -> str:
        """Write rows 0..len(seqs)-1 for this step (sequence i in row i); returns the mode the step needs."""
        ni, nf = self.np_i, self.np_f
        for i, s in enumerate(seqs):
            serial = s.track.serial
            if self.owner[i] != serial:
                self.owner[i] = serial
                p = s.request.params or default
                self.params[i] = p
                for name, v in (("key", s.request.key), ("sample", s.request.sample), ("seed", p.seed),
                                ("top_k", p.top_k), ("prompt_len", s.prompt_len)):
                    ni[_I[name], i] = v
                nf[:, i] = (p.temperature, p.top_p, p.min_p, p.repetition_penalty, p.presence_penalty,
                            p.frequency_penalty)
                self.mode[i] = 2 if p.needs_processors else 1 if p.temperature > 0 else 0
                self.min_tokens[i] = p.min_tokens
        n = len(seqs)
        steps = [len(s.generated) for s in seqs]
        ni[_I["step"], :n] = steps
        mode = max(self.mode[:n])
        mins = self.min_tokens[:n]
        if any(mins) and any(st < m for st, m in zip(steps, mins)):
            mode = 2  # eos and stop ids are banned on the device while min_tokens holds
        if mode == 2:
            ni[_I["seen_len"], :n] = ni[_I["prompt_len"], :n] + ni[_I["step"], :n]
            ni[_I["banned"], :n] = 0
            for i in (i for i in range(n) if steps[i] < self.min_tokens[i]):
                p = self.params[i]
                assert p is not None
                ban = [t for t in (*eos_ids, *p.stop_token_ids) if t >= 0]
                if ban:
                    ni[_I["banned"], i] = 1
                    ni[len(INT_ROWS):, i] = ban + [ban[0]] * (BAN - len(ban))
        return _MODE_NAMES[mode]

    def upload(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy rows 0..b-1 to the device (asynchronously on GPUs); rows past the batch hold stale settings, which
        only padding rows read."""
        self.ints[:, :b].copy_(self.host_i[:, :b], non_blocking=True)
        self.floats[:, :b].copy_(self.host_f[:, :b], non_blocking=True)
        return self.ints[:, :b], self.floats[:, :b]


class TokenHistory:
    """Each decode row's tokens by position [rows, max_seq_len] (int64: 8 bytes x rows x max_seq_len, e.g. 8 MiB for
    256 rows of 4,096), for the penalties. A decode step writes its input token (record_history); rows whose
    sequence changed (admitted, moved, or stale after steps that did not need it) are re-uploaded from the host's
    token lists before a step that reads them."""

    def __init__(self, rows: int, max_seq_len: int, device: torch.device):
        self.tokens = torch.zeros((rows, max_seq_len), dtype=torch.int64, device=device)
        self.held: list[tuple[int, int]] = [(-1, -1)] * rows  # (the sequence's tracker serial, positions valid)

    def sync(self, seqs: Sequence[Any], default: SamplingParams) -> None:
        """Before a full decode step: rows of sequences with penalties hold positions 0..next_pos-1."""
        stale = []
        for s in seqs:
            if (s.request.params or default).needs_history:
                need = s.next_pos
                sid, have = self.held[s.slot]
                if sid != s.track.serial or have < need:
                    stale.append((s, need))
                self.held[s.slot] = (s.track.serial, need + 1)  # the step itself writes position next_pos
        if stale:
            width = max(n for _, n in stale)
            block = torch.zeros((len(stale), width), dtype=torch.int64)
            for i, (s, n) in enumerate(stale):
                block[i, :n] = torch.tensor((s.request.prompt_tokens + s.generated)[:n], dtype=torch.int64)
            rows = torch.tensor([s.slot for s, _ in stale], dtype=torch.int64)
            self.tokens[rows.to(self.tokens.device), :width] = block.to(self.tokens.device)


def unpack(out: torch.Tensor, mode: str, seqs: Sequence[Any], default: SamplingParams
           ) -> tuple[list[int], list[tuple[float, int, list[list[float | int]]] | None] | None]:
    """The step's tokens, and in full mode each row's (logprob, rank, top-K) when it asked for logprobs; the one
    host sync of a step is here."""
    if mode != "full":
        return out.tolist(), None
    arr = out.cpu().numpy()
    tokens = arr[:, 0].astype("int64").tolist()
    infos: list[tuple[float, int, list[list[float | int]]] | None] = []
    for i, s in enumerate(seqs):
        k = (s.request.params or default).logprobs
        if k is None:
            infos.append(None)
            continue
        row = arr[i]
        top = [[int(row[3 + j]), float(row[3 + MAX_LOGPROBS + j])] for j in range(k)]
        infos.append((float(row[1]), int(row[2]), top))
    return tokens, infos


def add_logprobs(store: TokenLogprobs, info: tuple[float, int, list[list[float | int]]]) -> None:
    lp, rank, top = info
    store.token_logprobs.append(lp)
    store.token_ranks.append(rank)
    store.top_logprobs.append(top)


# ---------------------------------------------------------------------------------------------- device side

def record_history(hist: torch.Tensor, tokens: torch.Tensor, pos: torch.Tensor) -> None:
    """Write each row's input token at its position (idempotent, so graph warm-up and capture are harmless)."""
    hist[torch.arange(tokens.shape[0], device=tokens.device), pos] = tokens


def _penalise(x: torch.Tensor, hist: torch.Tensor, ints: torch.Tensor, floats: torch.Tensor) -> torch.Tensor:
    """Repetition penalty over prompt + output tokens (HF / vLLM: divide positive logits, multiply negative ones),
    then presence and frequency penalties over the output tokens (OpenAI / vLLM). Counts come from the token
    history [B, L] each step (no per-vocabulary state to keep)."""
    b, v = x.shape
    ar = torch.arange(hist.shape[1], device=x.device)[None, :]
    seen = ar < ints[INT_ROWS.index("seen_len")][:, None]
    out = seen & (ar >= ints[INT_ROWS.index("prompt_len")][:, None])
    any_count = torch.zeros((b, v), dtype=torch.float32, device=x.device).scatter_add_(1, hist, seen.float())
    out_count = torch.zeros((b, v), dtype=torch.float32, device=x.device).scatter_add_(1, hist, out.float())
    rep = floats[FLOAT_ROWS.index("repetition_penalty")][:, None]
    x = torch.where(any_count > 0, torch.where(x > 0, x / rep, x * rep), x)
    pres = floats[FLOAT_ROWS.index("presence_penalty")][:, None]
    freq = floats[FLOAT_ROWS.index("frequency_penalty")][:, None]
    return x - freq * out_count - pres * (out_count > 0).float()


def _ban(x: torch.Tensor, ints: torch.Tensor) -> torch.Tensor:
    """-inf at eos and the stop ids of rows that have not reached min_tokens (unused ban columns repeat the first
    id, or are 0 in rows without a ban, whose values are written back unchanged)."""
    first = len(INT_ROWS)
    idx = ints[first:first + BAN].t()  # [B, BAN]
    flag = ints[INT_ROWS.index("banned")][:, None] > 0
    vals = torch.where(flag, torch.full_like(idx, 0, dtype=x.dtype) - float("inf"), x.gather(1, idx))
    return x.scatter(1, idx, vals)


def sample_step(logits: torch.Tensor, ints: torch.Tensor, floats: torch.Tensor, hist: torch.Tensor | None,
                mode: str) -> torch.Tensor:
    """One step's choice for every row of `logits` [B, V] from per-row settings `ints` [N_INT, B] and `floats`
    [N_FLOAT, B]. greedy/sample: token ids [B]. full: [B, PACKED] float64 (token, logprob, rank, top ids, top
    logprobs), the logprobs taken from the raw logits. Static shapes and no host sync: CUDA graphs capture it."""
    key, smp, step, seed = (ints[INT_ROWS.index(n)] for n in ("key", "sample", "step", "seed"))
    temp = floats[FLOAT_ROWS.index("temperature")]
    top_p = floats[FLOAT_ROWS.index("top_p")][:, None]
    if mode == "greedy":
        return torch.argmax(logits, dim=-1)
    if mode == "sample" and use_kernel(logits):  # one Triton kernel per row, no sort (engine.nucleus)
        return nucleus_sample(logits, ints, floats)
    raw = logits.float()
    x = raw
    if mode == "full":
        if hist is not None:
            x = _penalise(x, hist, ints, floats)
        x = _ban(x, ints)
    greedy = torch.argmax(x, dim=-1)
    t = torch.where(temp > 0, temp, torch.ones_like(temp))[:, None]
    probs = torch.softmax(x / t, dim=-1)
    p_sorted, idx = torch.sort(probs, dim=-1, descending=True)
    if mode == "sample":
        p_sorted = p_sorted.masked_fill(~nucleus_keep_sorted(p_sorted, top_p), 0.0)
    else:
        v = x.shape[1]
        k = ints[INT_ROWS.index("top_k")]
        k = torch.where(k > 0, k, torch.full_like(k, v))[:, None]
        p_sorted = p_sorted.masked_fill(torch.arange(v, device=x.device)[None, :] >= k, 0.0)
        p_sorted = p_sorted.masked_fill(~nucleus_keep_sorted(p_sorted, top_p), 0.0)  # top-p of the top-k
        min_p = floats[FLOAT_ROWS.index("min_p")][:, None]
        p_sorted = p_sorted.masked_fill(p_sorted < min_p * p_sorted[:, :1], 0.0)
    drawn = _race(p_sorted, idx, hash_uniform(seed, key, step, idx, smp))
    tok = torch.where(temp > 0, drawn, greedy)
    if mode != "full":
        return tok
    lsm = torch.log_softmax(raw, dim=-1)
    chosen = raw.gather(1, tok[:, None])
    rank = (raw > chosen).sum(dim=-1) + 1
    top_v, top_i = torch.topk(lsm, min(MAX_LOGPROBS, lsm.shape[1]), dim=-1)
    if top_v.shape[1] < MAX_LOGPROBS:  # a vocabulary smaller than the cap (tiny test models)
        pad = MAX_LOGPROBS - top_v.shape[1]
        top_v = torch.nn.functional.pad(top_v, (0, pad), value=float("-inf"))
        top_i = torch.nn.functional.pad(top_i, (0, pad), value=-1)
    return torch.cat([tok[:, None].double(), lsm.gather(1, tok[:, None]).double(), rank[:, None].double(),
                      top_i.double(), top_v.double()], dim=1)


def sample_rows(logits: torch.Tensor, seqs: Sequence[Any], default: SamplingParams, eos_ids: Sequence[int],
                hist: torch.Tensor | None = None, rows: tuple | None = None) -> tuple[list[int], list | None]:
    """Eager step (prefill, and decode without graphs): host rows (`step_rows`, or given) -> device tensors ->
    tokens (+ logprobs infos). `hist` [B, L]: the tokens seen by each row (read when a row has penalties)."""
    ints, floats, mode = rows if rows is not None else step_rows(seqs, default, eos_ids)
    dev = logits.device
    it = torch.tensor(ints, dtype=torch.int64, device=dev)
    ft = torch.tensor(floats, dtype=torch.float32, device=dev)
    return unpack(sample_step(logits, it, ft, hist, mode), mode, seqs, default)
