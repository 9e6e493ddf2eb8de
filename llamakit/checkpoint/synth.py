"""Write a random-weight Meta checkpoint of any shape (e.g. full 7B) tensor by tensor, for benchmarks and timings."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from llamakit.checkpoint.layout import DTYPES, expected_shapes
from llamakit.checkpoint.params import PRESETS, ModelConfig
from llamakit.checkpoint.checklist import write_checklist
from llamakit.checkpoint.shards import new_checkpoint_dir
from llamakit.errors import LlamakitError



def _fill(shape: tuple[int, ...], dtype: torch.dtype, key: str, fill: str, device: str,
          gen: torch.Generator) -> torch.Tensor:
    """One tensor: norms 1.0, everything else N(0, 0.02) (or zeros); made on `device`, returned on CPU."""
    if key.endswith("norm.weight"):
        return torch.ones(shape, dtype=dtype)
    if fill == "zeros":
        return torch.zeros(shape, dtype=dtype)
    t = torch.empty(shape, dtype=dtype, device=device)
    t.normal_(0.0, 0.02, generator=gen)
    return t.cpu()


def write_random_checkpoint(out_dir: str | Path, config: ModelConfig, mp: int = 1, dtype: str = "bf16",
                            vocab: int = 32000, *, with_rope_freqs: bool = False, fill: str = "normal",
                            seed: int = 0, device: str = "cpu", checklist: bool = True) -> Path:
    """Write params.json, consolidated.NN.pth x mp (random, correctly shaped and split) and checklist.chk.

    Each shard is built from its own per-rank tensors, so memory peaks at one shard (7B bf16 MP 1: 13.5 GB).
    `device="cuda"` fills on the GPU (much faster for full-size shapes); `fill="zeros"` skips the RNG.
    `checklist=False` skips the md5 pass (about a minute for 13 GB).
    """
    if dtype not in DTYPES:
        raise LlamakitError(f"unknown dtype {dtype!r}", f"use one of {', '.join(DTYPES)}")
    if fill not in ("normal", "zeros"):
        raise LlamakitError(f"unknown fill {fill!r}", "use normal or zeros")
    if mp not in config.allowed_mp(vocab):
        allowed = [m for m in config.allowed_mp(vocab) if m <= 16]
        raise LlamakitError(f"MP {mp} does not split this shape evenly", f"use one of {allowed}")
    out = new_checkpoint_dir(out_dir)
    tdtype = DTYPES[dtype]
    shapes = expected_shapes(config, vocab, mp, with_rope_freqs)
    gen = torch.Generator(device=device).manual_seed(seed)
    for rank in range(mp):
        sd: dict[str, torch.Tensor] = {}
        for key, shape in shapes.items():
            if key == "rope.freqs":
                hd = config.head_dim
                sd[key] = 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
            else:
                sd[key] = _fill(shape, tdtype, key, fill, device, gen)
        torch.save(sd, out / f"consolidated.{rank:02d}.pth")
        del sd
    (out / "params.json").write_text(json.dumps(config.to_params_json()))
    if checklist:
        write_checklist(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m llamakit.checkpoint.synth OUT --preset llama2-7b --mp 1`: write a full-size random checkpoint."""
    ap = argparse.ArgumentParser(prog="python -m llamakit.checkpoint.synth", description=main.__doc__)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--preset", default="llama2-7b", choices=sorted(PRESETS))
    ap.add_argument("--mp", type=int, default=1)
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--fill", default="normal", choices=["normal", "zeros"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-checklist", action="store_true", help="skip writing checklist.chk (md5 of every file)")
    args = ap.parse_args(argv)
    config = PRESETS[args.preset]
    t0 = time.perf_counter()
    try:
        path = write_random_checkpoint(args.out_dir, config, args.mp, args.dtype, args.vocab,
                                       with_rope_freqs=not args.preset.startswith("llama2"), fill=args.fill,
                                       device=args.device, checklist=not args.no_checklist)
    except LlamakitError as e:
        sys.stderr.write(f"error: {e.one_line()}\n")
        return 2
    size = sum(p.stat().st_size for p in path.iterdir())
    sys.stderr.write(f"wrote {args.preset} MP {args.mp} {args.dtype} to {path}: "
                     f"{size / 1e9:.1f} GB in {time.perf_counter() - t0:.0f} s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
