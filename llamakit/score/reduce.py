"""Per-position scores from this rank's vocabulary shard of the logits, reduced over the model-parallel group.

The output layer is column-parallel over the vocabulary: rank r holds logits for ids [r*V/MP, (r+1)*V/MP).
Nothing here gathers the full vocabulary. Two all-reduces per chunk of positions carry everything:
  1. MAX of [max logit of q, logit of the target under q, max logit of p]   (the target's logit is -inf on
     every rank that does not hold it, so MAX finds it);
  2. SUM of [sum e_q, sum e_q*a, #(logit > target's), sum e_p, sum e_p*a, sum e_p*a^2]
with a = l_q - max_q, e_q = exp(a), e_p = exp(l_p - max_p). From these (S_q = sum e_q, log q = a - log S_q):
  logprob  = t_q - max_q - log S_q
  rank     = 1 + #(logit > target's logit)              (1 = most likely; ties rank together, best first)
  entropy  = log S_q - sum e_q a / S_q                  (= -sum q log q)
  mu       = sum e_p a / S_p - log S_q                  (= sum_v p(v) log q(v); xent = -mu)
  s2       = sum e_p a^2 / S_p - (sum e_p a / S_p)^2     (= Var_p(log q), shift-invariant)
p is the reference model's distribution; without one p = q. The vocabulary sums accumulate in fp64, so the
variance's subtraction keeps its digits (fp32 sums were off by ~1e-4 in s2, tests/test_score_stats.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

# Elements (positions x local vocabulary) reduced at once. The reduction holds about 8 fp32 tensors of this size
# (logits of q and p, exp, shifted logits and their products): 8 x 2^25 x 4 bytes = 1 GiB at most, whatever the
# text length, batch or vocabulary (a chunk has max(1, 2^25 // (V / MP)) positions: 1,048 for V = 32,000).
CHUNK_ELEMENTS = 1 << 25


@dataclass
class TokenScores:
    """Per scored position (fp64, rank int64); on the logits' device until `to_host`."""

    logprob: torch.Tensor
    rank: torch.Tensor
    entropy: torch.Tensor
    mu: torch.Tensor  # sum_v p(v) log q(v)
    s2: torch.Tensor  # sum_v p(v) (log q(v))^2 - mu^2

    def to_host(self) -> "TokenScores":
        """All five on the CPU with one device-to-host copy (one sync per batch, not per field)."""
        packed = torch.stack([self.logprob, self.rank.double(), self.entropy, self.mu, self.s2]).cpu()
        return TokenScores(packed[0], packed[1].long(), packed[2], packed[3], packed[4])

    @staticmethod
    def cat(parts: list["TokenScores"]) -> "TokenScores":
        if not parts:
            z = torch.zeros(0, dtype=torch.float64)
            return TokenScores(z, torch.zeros(0, dtype=torch.int64), z, z, z)
        return TokenScores(*(torch.cat([getattr(p, f) for p in parts]) for f in
                             ("logprob", "rank", "entropy", "mu", "s2")))


def _all_reduce(t: torch.Tensor, op: dist.ReduceOp, group) -> torch.Tensor:
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(t, op=op, group=group)
    return t


def chunk_positions(vocab_local: int) -> int:
    """Positions per reduction chunk so that a chunk holds at most CHUNK_ELEMENTS logits of this rank."""
    return max(1, CHUNK_ELEMENTS // max(1, vocab_local))


@torch.inference_mode()
def reduce_shard(q_logits: torch.Tensor, targets: torch.Tensor, vocab_start: int, group=None,
                 p_logits: torch.Tensor | None = None) -> TokenScores:
    """Scores of `targets` [N] (global ids) from this rank's logits shards [N, V_local] of q (scored model) and,
    optionally, p (reference model, same vocabulary split). `group`: the model-parallel group (None = one rank)."""
    q = q_logits.float()
    n, v_local = q.shape
    local = targets - vocab_start
    held = (local >= 0) & (local < v_local)
    t_local = q.gather(1, local.clamp(0, v_local - 1).unsqueeze(1)).squeeze(1)
    t_local = torch.where(held, t_local, torch.full_like(t_local, float("-inf")))
    p = None if p_logits is None else p_logits.float()
    maxes = torch.stack([q.amax(1), t_local, (p if p is not None else q).amax(1)])
    _all_reduce(maxes, dist.ReduceOp.MAX, group)
    m_q, t_q, m_p = maxes[0], maxes[1], maxes[2]
    a = q - m_q.unsqueeze(1)
    e_q = a.exp()
    e_p = e_q if p is None else (p - m_p.unsqueeze(1)).exp()
    ea_p = e_p * a
    f64 = torch.float64
    sums = torch.stack([  # fp64 accumulation: in fp32 the variance s2 lost ~1e-4 to the subtraction below
        e_q.sum(1, dtype=f64),
        (e_q * a).sum(1, dtype=f64) if p is not None else ea_p.sum(1, dtype=f64),
        (q > t_q.unsqueeze(1)).sum(1, dtype=torch.int32).double(),
        e_p.sum(1, dtype=f64),
        ea_p.sum(1, dtype=f64),
        (ea_p * a).sum(1, dtype=f64),
    ])
    _all_reduce(sums, dist.ReduceOp.SUM, group)
    s_q, ea_q, greater, s_p, ea_pq, ea2_pq = sums
    log_s_q = s_q.log()
    mean_a = ea_pq / s_p
    return TokenScores(
        logprob=t_q.double() - m_q.double() - log_s_q,
        rank=greater.round().long() + 1,
        entropy=log_s_q - ea_q / s_q,
        mu=mean_a - log_s_q,
        s2=(ea2_pq / s_p - mean_a * mean_a).clamp_min(0.0),
    )
