"""An independent reference: HF transformers' LlamaForCausalLM built from the same Meta weights."""

from __future__ import annotations

from pathlib import Path

import torch

from llamakit.checkpoint.layout import merge_tensors
from llamakit.checkpoint.shards import open_checkpoint


def meta_to_hf_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta rotates interleaved pairs (0,1),(2,3)..; HF rotates halves: reorder rows of wq/wk per head."""
    out_dim, in_dim = w.shape
    return w.view(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def build_hf_model(ckpt_dir: Path):
    """LlamaForCausalLM (fp32, eager attention) holding the merged weights of a Meta checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM

    ck = open_checkpoint(ckpt_dir)
    shards = [ck.load(i) for i in range(ck.mp)]
    full = {k: merge_tensors(k, [s[k] for s in shards], ck.vocab_parallel).float() for k in shards[0]}
    c = ck.config
    vocab = ck.vocab_rows
    # Llama 3.1: HF's own implementation of Meta's scaling (rope_type "llama3"), not llamakit's
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192} if c.use_scaled_rope else None
    hf_cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=c.dim, intermediate_size=c.ffn_hidden, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.kv_heads, rms_norm_eps=c.norm_eps,
        max_position_embeddings=4096, rope_theta=c.rope_theta, rope_scaling=scaling, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False, hidden_act="silu", bos_token_id=1, eos_token_id=2,
    )
    hf_cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(hf_cfg).float().eval()
    sd = {"model.embed_tokens.weight": full["tok_embeddings.weight"], "model.norm.weight": full["norm.weight"],
          "lm_head.weight": full["output.weight"]}
    for i in range(c.n_layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        sd[q + "self_attn.q_proj.weight"] = meta_to_hf_permute(full[p + "attention.wq.weight"], c.n_heads)
        sd[q + "self_attn.k_proj.weight"] = meta_to_hf_permute(full[p + "attention.wk.weight"], c.kv_heads)
        sd[q + "self_attn.v_proj.weight"] = full[p + "attention.wv.weight"]
        sd[q + "self_attn.o_proj.weight"] = full[p + "attention.wo.weight"]
        sd[q + "mlp.gate_proj.weight"] = full[p + "feed_forward.w1.weight"]
        sd[q + "mlp.down_proj.weight"] = full[p + "feed_forward.w2.weight"]
        sd[q + "mlp.up_proj.weight"] = full[p + "feed_forward.w3.weight"]
        sd[q + "input_layernorm.weight"] = full[p + "attention_norm.weight"]
        sd[q + "post_attention_layernorm.weight"] = full[p + "ffn_norm.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    return model


@torch.no_grad()
def hf_greedy(model, prompt: list[int], max_gen_len: int, stop_ids=frozenset({2})) -> tuple[list[int], str]:
    """Greedy decoding by full recomputation each step (no cache): slow, but nothing shared with llamakit."""
    ids = list(prompt)
    out: list[int] = []
    for _ in range(max_gen_len):
        logits = model(torch.tensor([ids])).logits[0, -1]
        tok = int(torch.argmax(logits))
        if tok in stop_ids:
            return out, "stop"
        out.append(tok)
        ids.append(tok)
    return out, "length"


@torch.no_grad()
def hf_generate(model, prompt: list[int], max_gen_len: int, eos_id: int, **kwargs) -> tuple[list[int], str]:
    """HF `generate` itself (its own logits processors), e.g. repetition_penalty=1.3 with do_sample=False."""
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
                         max_new_tokens=max_gen_len, eos_token_id=eos_id, pad_token_id=0, **kwargs)
    gen = out[0, len(prompt):].tolist()
    if eos_id in gen:
        return gen[: gen.index(eos_id)], "stop"
    return gen, "length"


@torch.no_grad()
def hf_token_logprobs(model, prompt: list[int], tokens: list[int], top: int = 0):
    """log-softmax of HF's logits at each generated position: (logprob of the token, its rank, top-`top` [id, lp],
    the whole log-softmax row)."""
    logits = model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1: len(prompt) - 1 + len(tokens)].float()
    lsm = torch.log_softmax(logits, dim=-1)
    out = []
    for i, t in enumerate(tokens):
        rank = int((logits[i] > logits[i, t]).sum()) + 1
        v, ids = torch.topk(lsm[i], top) if top else (torch.empty(0), torch.empty(0, dtype=torch.long))
        out.append((float(lsm[i, t]), rank, [[int(a), float(b)] for a, b in zip(ids, v)], lsm[i]))
    return out
