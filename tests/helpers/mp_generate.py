"""Run under torchrun: generate with llamakit's engine at MP = world size and dump the completions as JSON."""

from __future__ import annotations

import json
import os
import sys

import torch.distributed as dist
from fairscale.nn.model_parallel.initialize import initialize_model_parallel

from llamakit.checkpoint import open_checkpoint
from llamakit.engine.api import EngineConfig, Request
from llamakit.engine.engine import build_engine


def main() -> None:
    ckpt_dir, spec_path, out_path = sys.argv[1:4]
    spec = json.loads(open(spec_path).read())
    dist.init_process_group("gloo")
    initialize_model_parallel(int(os.environ["WORLD_SIZE"]))
    engine = build_engine(open_checkpoint(ckpt_dir), EngineConfig(**spec["config"]))
    reqs = [Request(i, p, spec["max_gen_len"]) for i, p in enumerate(spec["prompts"])]
    out = {c.request.key: [c.tokens, c.finish_reason] for c in engine.generate(reqs)}
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(out, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
