"""params.json as a typed config, with the derived sizes computed exactly as Meta's model.py does."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llamakit.errors import LlamakitError

# Every key Meta has shipped in a LLaMA-1 / Llama-2 / Code Llama / Llama 3 / 3.1 params.json, with its type.
KNOWN_KEYS: dict[str, tuple[type, ...]] = {
    "dim": (int,),
    "n_layers": (int,),
    "n_heads": (int,),
    "n_kv_heads": (int, type(None)),
    "vocab_size": (int,),
    "multiple_of": (int,),
    "ffn_dim_multiplier": (float, int, type(None)),
    "norm_eps": (float, int),
    "rope_theta": (float, int),
    "use_scaled_rope": (bool,),  # Llama 3.1: Meta's apply_scaling on the rotary frequencies
    "max_seq_len": (int,),
    "max_batch_size": (int,),
}
REQUIRED_KEYS = ("dim", "n_layers", "n_heads")


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of one LLaMA model; defaults are Meta's ModelArgs defaults."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None
    vocab_size: int = -1  # -1: take it from the tokenizer
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    use_scaled_rope: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # max_seq_len etc., kept for display

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (= n_heads unless the model uses grouped-query attention)."""
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def llama3_family(self) -> bool:
        """Meta's Llama 3 code (rope_theta 500000 in every Llama 3 / 3.1 params.json): a vocab-parallel embedding
        and, at MP 1, the layout a reshard writes."""
        return self.rope_theta == 500000.0 or self.use_scaled_rope

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def gqa_groups(self) -> int:
        """Query heads per key/value head (1 = plain multi-head attention)."""
        return self.n_heads // self.kv_heads

    @property
    def ffn_hidden(self) -> int:
        """FFN hidden size, computed as in Meta's FeedForward.__init__ (2/3 of 4*dim, scaled, rounded up)."""
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def with_vocab(self, vocab_size: int) -> "ModelConfig":
        """Return a copy with vocab_size filled in (LLaMA-1 ships -1 and takes it from the tokenizer)."""
        d = asdict(self)
        d["vocab_size"] = vocab_size
        return ModelConfig(**d)

    def param_count(self, vocab_size: int | None = None) -> int:
        """Exact number of parameters (embeddings, output head, all layers, norms; rope.freqs excluded)."""
        v = vocab_size if vocab_size is not None else self.vocab_size
        if v <= 0:
            raise ValueError("vocab_size unknown: pass the tokenizer's vocab size")
        hd, kv = self.head_dim, self.kv_heads
        attn = self.dim * self.n_heads * hd * 2 + self.dim * kv * hd * 2
        ffn = 3 * self.dim * self.ffn_hidden
        per_layer = attn + ffn + 2 * self.dim
        return 2 * v * self.dim + self.n_layers * per_layer + self.dim

    def allowed_mp(self, vocab_size: int | None = None) -> list[int]:
        """Model-parallel sizes (1..64) that split every sharded dimension evenly."""
        v = vocab_size if vocab_size is not None else self.vocab_size
        out = []
        for mp in range(1, 65):
            dims = [self.dim, self.n_heads, self.kv_heads, self.ffn_hidden]
            if v > 0:
                dims.append(v)
            if all(d % mp == 0 for d in dims):
                out.append(mp)
        return out

    def to_params_json(self) -> dict[str, Any]:
        """The params.json object Meta would write for this config."""
        d: dict[str, Any] = {"dim": self.dim, "multiple_of": self.multiple_of, "n_heads": self.n_heads,
                             "n_layers": self.n_layers, "norm_eps": self.norm_eps, "vocab_size": self.vocab_size}
        if self.n_kv_heads is not None:
            d["n_kv_heads"] = self.n_kv_heads
        if self.ffn_dim_multiplier is not None:
            d["ffn_dim_multiplier"] = self.ffn_dim_multiplier
        if self.rope_theta != 10000.0:
            d["rope_theta"] = self.rope_theta
        if self.use_scaled_rope:
            d["use_scaled_rope"] = True
        d.update(self.extra)
        return d


# Published shapes (Meta's params.json files); used by inspect to name a checkpoint and by bench presets.
PRESETS: dict[str, ModelConfig] = {
    "llama-7b": ModelConfig(dim=4096, n_layers=32, n_heads=32, multiple_of=256, norm_eps=1e-6),
    "llama-13b": ModelConfig(dim=5120, n_layers=40, n_heads=40, multiple_of=256, norm_eps=1e-6),
    "llama-30b": ModelConfig(dim=6656, n_layers=60, n_heads=52, multiple_of=256, norm_eps=1e-6),
    "llama-65b": ModelConfig(dim=8192, n_layers=80, n_heads=64, multiple_of=256, norm_eps=1e-5),
    "llama2-7b": ModelConfig(dim=4096, n_layers=32, n_heads=32, multiple_of=256, norm_eps=1e-5, vocab_size=32000),
    "llama2-13b": ModelConfig(dim=5120, n_layers=40, n_heads=40, multiple_of=256, norm_eps=1e-5, vocab_size=32000),
    "llama2-70b": ModelConfig(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, multiple_of=4096,
                              ffn_dim_multiplier=1.3, norm_eps=1e-5, vocab_size=32000),
    # Llama 3 / 3.1 (Meta's "original" params.json): 128256-token tiktoken vocabulary, 8 kv heads.
    "llama3-8b": ModelConfig(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, multiple_of=1024,
                             ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0, vocab_size=128256),
    "llama3-70b": ModelConfig(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, multiple_of=4096,
                              ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0, vocab_size=128256),
    "llama3.1-8b": ModelConfig(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, multiple_of=1024,
                               ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True,
                               vocab_size=128256),
    "llama3.1-70b": ModelConfig(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, multiple_of=4096,
                                ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True,
                                vocab_size=128256),
}
# Meta's shard counts for the published models.
PRESET_MP = {"llama-7b": 1, "llama-13b": 2, "llama-30b": 4, "llama-65b": 8,
             "llama2-7b": 1, "llama2-13b": 2, "llama2-70b": 8,
             "llama3-8b": 1, "llama3-70b": 8, "llama3.1-8b": 1, "llama3.1-70b": 8}


def config_from_dict(raw: Any, where: str | Path = "params.json") -> ModelConfig:
    """Validate a params.json object and build the config; every problem is a LlamakitError naming the key."""
    if not isinstance(raw, dict):
        raise LlamakitError("params.json must hold a JSON object like {\"dim\": 4096, ...}",
                            "restore params.json from the original download", where)
    unknown = sorted(set(raw) - set(KNOWN_KEYS))
    if unknown:
        raise LlamakitError(f"unknown key(s) {', '.join(map(repr, unknown))} in params.json "
                            f"(known: {', '.join(KNOWN_KEYS)})",
                            "remove them or restore params.json from the original download; "
                            "this may be a newer Meta format (e.g. Llama 3.2 vision) llamakit does not support", where)
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise LlamakitError(f"params.json lacks required key(s) {', '.join(missing)}",
                            "restore params.json from the original download", where)
    for key, value in raw.items():
        types = KNOWN_KEYS[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise LlamakitError(f"params.json key {key!r} is {value!r}, expected {names}",
                                "restore params.json from the original download", where)
    for key in ("dim", "n_layers", "n_heads", "multiple_of"):
        if key in raw and raw[key] <= 0:
            raise LlamakitError(f"params.json key {key!r} must be positive, got {raw[key]}",
                                "restore params.json from the original download", where)
    if raw["dim"] % raw["n_heads"]:
        raise LlamakitError(f"dim {raw['dim']} is not divisible by n_heads {raw['n_heads']}",
                            "restore params.json from the original download", where)
    kv = raw.get("n_kv_heads")
    if kv is not None and (kv <= 0 or raw["n_heads"] % kv):
        raise LlamakitError(f"n_heads {raw['n_heads']} is not a multiple of n_kv_heads {kv}",
                            "restore params.json from the original download", where)
    extra = {k: raw[k] for k in ("max_seq_len", "max_batch_size") if k in raw}
    fields = {k: v for k, v in raw.items() if k not in extra}
    if "norm_eps" in fields:
        fields["norm_eps"] = float(fields["norm_eps"])
    if "rope_theta" in fields:
        fields["rope_theta"] = float(fields["rope_theta"])
    if fields.get("ffn_dim_multiplier") is not None:
        fields["ffn_dim_multiplier"] = float(fields["ffn_dim_multiplier"])
    return ModelConfig(**fields, extra=extra)


def load_params(ckpt_dir: str | Path) -> ModelConfig:
    """Read `ckpt_dir/params.json`; a missing or malformed file is a LlamakitError with the fix."""
    path = Path(ckpt_dir) / "params.json"
    if not path.is_file():
        raise LlamakitError("params.json is missing", "copy params.json from the original download "
                            "into the checkpoint folder", path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LlamakitError(f"params.json is not valid JSON ({e.msg}, column {e.colno})",
                            "restore params.json from the original download", path, e.lineno) from None
    except UnicodeDecodeError:
        raise LlamakitError("params.json is not UTF-8 text", "restore params.json from the original download",
                            path) from None
    return config_from_dict(raw, path)


NAMES = {"llama-7b": "LLaMA-1 7B", "llama-13b": "LLaMA-1 13B", "llama-30b": "LLaMA-1 30B",
         "llama-65b": "LLaMA-1 65B", "llama2-7b": "Llama-2 7B", "llama2-13b": "Llama-2 13B",
         "llama2-70b": "Llama-2 70B", "llama3-8b": "Llama 3 8B", "llama3-70b": "Llama 3 70B",
         "llama3.1-8b": "Llama 3.1 8B", "llama3.1-70b": "Llama 3.1 70B"}


def identify(config: ModelConfig) -> str:
    """Name the published model with this shape (e.g. 'LLaMA-1 13B', 'Llama 3.1 8B'), else 'custom'."""
    shape = (config.dim, config.n_layers, config.n_heads, config.kv_heads, config.ffn_hidden, config.llama3_family,
             config.use_scaled_rope)
    matches = [k for k, p in PRESETS.items()
               if (p.dim, p.n_layers, p.n_heads, p.kv_heads, p.ffn_hidden, p.llama3_family, p.use_scaled_rope) == shape]
    if not matches:
        return "custom"
    # LLaMA-1 and Llama-2 7B/13B share shapes; Meta's LLaMA-1 files say vocab_size -1, Llama-2 32000.
    if len(matches) > 1:
        pick = [m for m in matches if m.startswith("llama2")] if config.vocab_size > 0 else \
               [m for m in matches if not m.startswith("llama2")]
        matches = pick or matches
    return NAMES[matches[0]]
