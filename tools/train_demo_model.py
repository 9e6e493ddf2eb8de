"""Train the built-in demo model shipped in llamakit/assets/demo/ (developer tool, not part of the package).

    . .venv/bin/activate
    python tools/train_demo_model.py                 # writes llamakit/assets/demo/ (must not exist or be empty)
    python tools/train_demo_model.py --force         # overwrite an existing llamakit/assets/demo/

Takes about 3 minutes on one CPU thread of a lightly loaded machine (7 minutes under heavy load); no GPU.
Everything is seeded; two runs with the defaults gave bit-identical weights and tokenizer.

What it does:
  1. trains a SentencePiece BPE tokenizer (Meta's ids: unk 0, bos 1, eos 2, no pad; byte fallback) on
     llamakit/assets/demo-corpus.txt, with `make-tiny`'s settings plus Meta's `identity` normalization;
  2. trains a small LLaMA (plain torch, written below: RMSNorm, Meta's interleaved rotary, SwiGLU, causal
     attention) with next-token loss; every corpus line is one document `bos + tokens + eos`, so the model
     learns where a news item ends and stops by itself;
  3. saves a Meta-format checkpoint: consolidated.00.pth (bf16, Meta's key names and shapes), params.json,
     tokenizer.model, checklist.chk, plus TRAINING.md with the corpus, shape, steps, final loss and command.

The module names below are exactly Meta's (tok_embeddings, layers.N.attention.wq/wk/wv/wo,
layers.N.feed_forward.w1/w2/w3, layers.N.attention_norm, layers.N.ffn_norm, norm, output), so the model's
state_dict *is* the consolidated.00.pth that llamakit (and Meta's own code) loads.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from llamakit.checkpoint.params import ModelConfig  # noqa: E402
from llamakit.checkpoint.checklist import write_checklist  # noqa: E402
from llamakit.model.llama import RMSNorm, apply_rope, rope_tables  # noqa: E402  (the inference model's pieces)

DEFAULT_OUT = REPO / "llamakit" / "assets" / "demo"
DEFAULT_CORPUS = REPO / "llamakit" / "assets" / "demo-corpus.txt"
BOS, EOS = 1, 2


# ---------------------------------------------------------------------------------------------- model
def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Meta's rotary embedding on x [B, T, H, D] with cos/sin [T, D/2]: llamakit's own, so training and
    inference rotate the same pairs."""
    return apply_rope(x, cos[None], sin[None])


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        shape = (b, t, self.n_heads, self.head_dim)
        q = rotate(self.wq(x).view(shape), cos, sin).transpose(1, 2)
        k = rotate(self.wk(x).view(shape), cos, sin).transpose(1, 2)
        v = self.wv(x).view(shape).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(o.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)  # training only; not part of Meta's model (no weights)
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, cos, sin):
        h = x + self.drop(self.attention(self.attention_norm(x), cos, sin))
        return h + self.drop(self.feed_forward(self.ffn_norm(h)))


class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig, max_len: int, dropout: float = 0.0):
        super().__init__()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(Block(cfg, dropout) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.head_dim, max_len, cfg.rope_theta)
        self.register_buffer("cos", cos, persistent=False)  # not saved: Meta has no such key
        self.register_buffer("sin", sin, persistent=False)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                continue
            std = 0.02
            if name.endswith(("wo.weight", "w2.weight")):  # residual projections: scaled as in GPT-2
                std = 0.02 / math.sqrt(2 * cfg.n_layers)
            nn.init.normal_(p, 0.0, std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        h = self.drop(self.tok_embeddings(tokens))
        for layer in self.layers:
            h = layer(h, self.cos[:t], self.sin[:t])
        return self.output(self.norm(h))


# ----------------------------------------------------------------------------------------------- data
def train_tokenizer(out_path: Path, vocab_size: int, corpus: Path) -> None:
    """SentencePiece BPE with Meta's ids and make-tiny's settings, but `identity` normalization as in Meta's
    tokenizer.model: no NFKC table in the file (it would add ~240 KB to a model of ~1.8 MB)."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, hard_vocab_limit=True, minloglevel=2, split_digits=True,
        normalization_rule_name="identity",
    )
    out_path.write_bytes(model.getvalue())


def load_documents(corpus: Path, tokenizer_path: Path, max_len: int) -> list[list[int]]:
    """Every non-empty line of the corpus as bos + tokens + eos (cut to max_len)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    lines = [ln.strip() for ln in corpus.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return [([BOS] + sp.encode(ln) + [EOS])[:max_len] for ln in lines]


def make_batch(docs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded inputs and targets; padded targets are -100 (ignored by the loss)."""
    t = max(len(d) for d in docs) - 1
    x = torch.zeros(len(docs), t, dtype=torch.long)
    y = torch.full((len(docs), t), -100, dtype=torch.long)
    for i, d in enumerate(docs):
        n = len(d) - 1
        x[i, :n] = torch.tensor(d[:-1])
        y[i, :n] = torch.tensor(d[1:])
    return x, y


# ------------------------------------------------------------------------------------------------ main
def greedy(model: Llama, prompt: list[int], n: int) -> list[int]:
    out = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([out]))[0, -1].argmax())
            if nxt == EOS:
                break
            out.append(nxt)
    return out[len(prompt):]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--force", action="store_true", help="replace an existing output folder")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn-mult", type=float, default=0.75, help="ffn_dim_multiplier (0.75: hidden 256 at dim 128)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32, help="documents per step")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-len", type=int, default=96, help="longest training document in tokens")
    ap.add_argument("--dropout", type=float, default=0.2, help="residual/embedding dropout (the corpus is tiny)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        if not args.force:
            print(f"{out} is not empty; pass --force to replace it", file=sys.stderr)
            return 2
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    started = time.time()
    train_tokenizer(out / "tokenizer.model", vocab_size=args.vocab, corpus=args.corpus)
    docs = load_documents(args.corpus, out / "tokenizer.model", args.max_len)
    n_tokens = sum(len(d) for d in docs)
    cfg = ModelConfig(dim=args.dim, n_layers=args.layers, n_heads=args.heads, multiple_of=32,
                      ffn_dim_multiplier=args.ffn_mult, norm_eps=1e-5, vocab_size=args.vocab)
    model = Llama(cfg, args.max_len, args.dropout)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"corpus: {len(docs)} documents, {n_tokens} tokens; model: {n_params} parameters, "
          f"ffn hidden {cfg.ffn_hidden}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < warmup:
            return args.lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    order: list[int] = []
    recent: list[float] = []
    model.train()
    for step in range(args.steps):
        if len(order) < args.batch:  # a new epoch: a fresh shuffle of all documents
            perm = list(range(len(docs)))
            rng.shuffle(perm)
            order += perm
        batch = [docs[i] for i in order[: args.batch]]
        del order[: args.batch]
        x, y = make_batch(batch)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), y.reshape(-1), ignore_index=-100)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent = (recent + [loss.item()])[-50:]
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.3f}  mean(last 50) {sum(recent) / len(recent):.3f}  "
                  f"{time.time() - started:.0f}s", flush=True)

    # Final loss: mean next-token loss over the whole corpus (every document once, eval mode).
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(docs), 64):
            x, y = make_batch(docs[i:i + 64])
            logits = model(x)
            total += F.cross_entropy(logits.reshape(-1, cfg.vocab_size), y.reshape(-1), ignore_index=-100,
                                     reduction="sum").item()
            count += int((y != -100).sum())
    final_loss = total / count
    minutes = (time.time() - started) / 60

    sd = {k: v.detach().to(torch.bfloat16).contiguous().clone() for k, v in model.state_dict().items()}
    torch.save(sd, out / "consolidated.00.pth")
    (out / "params.json").write_text(json.dumps(cfg.to_params_json()))
    write_checklist(out)

    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    samples = []
    for prompt in ("The city council voted on Tuesday to", "In München öffnen die Biergärten"):
        gen = greedy(model, [BOS] + sp.encode(prompt), 32)
        samples.append(f"{prompt} -> {sp.decode(gen)}")
        print(samples[-1])

    cmd = "python tools/train_demo_model.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    (out / "TRAINING.md").write_text(f"""# The built-in demo model

Trained by `tools/train_demo_model.py` on {datetime.date.today().isoformat()}; `ckpt_dir: builtin:demo` loads this folder.
A toy: it has seen only ~{len(docs)} short news items, so it writes news-like English and German phrases that are
often copied from its corpus and rarely make sense. It exists so that the demo shows language, not random tokens.

- command: `{cmd}` ({minutes:.1f} min on {args.threads} CPU thread(s))
- corpus: `llamakit/assets/demo-corpus.txt`, {len(docs)} lines (one document each: bos + text + eos), {n_tokens} tokens
- tokenizer: SentencePiece BPE, {args.vocab} pieces, byte fallback, unk 0 / bos 1 / eos 2 / no pad
- shape: dim {cfg.dim}, {cfg.n_layers} layers, {cfg.n_heads} heads, multiple_of 32, ffn_dim_multiplier {cfg.ffn_dim_multiplier} (ffn hidden {cfg.ffn_hidden}), {n_params} parameters, bf16 on disk
- training: {args.steps} steps of {args.batch} documents, AdamW lr {args.lr} (warmup {warmup}, cosine to 10%), weight decay 0.1, clip 1.0, dropout {args.dropout}, seed {args.seed}
- final loss (mean next-token cross-entropy over the whole corpus, fp32, after training): {final_loss:.3f}
- mean training loss over the last 50 steps: {sum(recent) / len(recent):.3f}

Greedy samples from the fp32 model right after training:

""" + "".join(f"- {s}\n" for s in samples))
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"final loss {final_loss:.3f}; wrote {out} ({size} bytes) in {minutes:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
