"""The peer of `llamakit bench --workload score`: HF transformers' LlamaForCausalLM with random weights of the same
shape, on the same texts (llamakit.score.bench.score_texts), per-token logprob, rank and entropy from the full
logits as zero-shot detectors compute them today; a forward-pass loop at batch 1, then length-sorted padded batches
of growing size until one runs out of memory. Prints one JSON object per batch size.

    python tools/hf_score_peer.py --preset 7b --texts 1000 --batches 1,8,16,32,64
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def build(preset: str, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    from llamakit.bench import BENCH_PRESETS
    from llamakit.score.bench import SCORE_VOCAB

    c = BENCH_PRESETS[preset]
    cfg = LlamaConfig(vocab_size=SCORE_VOCAB, hidden_size=c.dim, intermediate_size=c.ffn_hidden,
                      num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.kv_heads,
                      rms_norm_eps=c.norm_eps, max_position_embeddings=4096, rope_theta=c.rope_theta,
                      tie_word_embeddings=False, attention_bias=False, mlp_bias=False, hidden_act="silu")
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with device:
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    for p in model.parameters():  # the benchmark's weights: normal(0, 0.02), norms 1 (speed does not depend on them)
        if p.dim() > 1:
            p.data.normal_(0.0, 0.02)
    return model


@torch.no_grad()
def score_batch(model, texts: list[list[int]], device: torch.device) -> int:
    """Right-padded batch; per text token: logprob, rank (1 + #logits above the target's), entropy."""
    t = max(len(x) for x in texts)
    ids = torch.zeros((len(texts), t), dtype=torch.long)
    mask = torch.zeros((len(texts), t), dtype=torch.long)
    for i, x in enumerate(texts):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    ids, mask = ids.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    target = ids[:, 1:]
    logp = torch.log_softmax(logits, -1)
    tok_lp = logp.gather(-1, target[..., None])[..., 0]
    ranks = (logits > logits.gather(-1, target[..., None])).sum(-1) + 1
    entropy = -(logp.exp() * logp).sum(-1)
    valid = mask[:, 1:].bool()
    out = [(tok_lp[i][valid[i]].tolist(), ranks[i][valid[i]].tolist(), entropy[i][valid[i]].tolist())
           for i in range(len(texts))]
    return sum(len(o[0]) for o in out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="7b")
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--batches", default="1,8,16,32,64", help="batch sizes, comma-separated (1 = as detectors do)")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    from llamakit.score.bench import score_texts

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]
    model = build(args.preset, device, dtype)
    texts = score_texts(args.texts)
    import transformers

    for b in [int(x) for x in args.batches.split(",")]:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i])) if b > 1 else list(range(len(texts)))
        groups = [[texts[i] for i in order[k: k + b]] for k in range(0, len(order), b)]
        try:
            score_batch(model, groups[0], device)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            n = sum(score_batch(model, g, device) for g in groups)
            if device.type == "cuda":
                torch.cuda.synchronize()
        except torch.OutOfMemoryError:
            print(json.dumps({"peer": "hf", "batch": b, "error": "out of memory"}), flush=True)
            break
        s = time.perf_counter() - t0
        peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None
        print(json.dumps({"peer": "hf", "transformers": transformers.__version__, "preset": args.preset,
                          "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                          "dtype": name, "batch": b, "texts": len(texts), "scored_tokens": n, "seconds": round(s, 3),
                          "texts_per_s": round(len(texts) / s, 1), "tokens_per_s": round(n / s, 1),
                          "peak_gpu_mem_gib": peak}), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
