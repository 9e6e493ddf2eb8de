"""Sampling on the device: greedy, or temperature + top-p with noise that depends only on (seed, key, step)."""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding values < 2**32 (products wrap mod 2**64; low bits kept)."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _M32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _M32
    return x ^ (x >> 16)


def hash_uniform(seed: int, keys: torch.Tensor, steps: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Uniform (0, 1) numbers, one per (row key, row step, token id): the same on every rank, batch and resume."""
    row = _mix32((keys * 0x9E3779B1 + (seed & _M32)) & _M32)
    row = _mix32((row ^ (steps * 0x7FEB352D)) & _M32)
    x = _mix32((row[:, None] ^ (token_ids * 0x27D4EB2F)) & _M32)
    return ((x >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def sample(logits: torch.Tensor, temperature: float, top_p: float, seed: int,
           keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Next token per row of `logits` [B, V]: argmax when temperature == 0, else top-p sampling as Meta's
    generator (keep the smallest prefix of sorted probabilities whose mass before it is <= top_p), drawn by
    the exponential race argmax(p / E) with E = -log(U), U from `hash_uniform`."""
    if temperature <= 0:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    p_sorted, idx = torch.sort(probs, dim=-1, descending=True)
    cum = torch.cumsum(p_sorted, dim=-1)
    p_sorted = p_sorted.masked_fill(cum - p_sorted > top_p, 0.0)
    u = hash_uniform(seed, keys, steps, idx)
    choice = torch.argmax(p_sorted / -torch.log(u), dim=-1, keepdim=True)
    return idx.gather(-1, choice).squeeze(-1)
