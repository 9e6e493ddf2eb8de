"""Meta's two tokenizer files behind one API: SentencePiece (LLaMA-1/2: bos 1, eos 2) and tiktoken BPE (Llama 3:
base64 token + rank per line, 256 special tokens after the base vocabulary), told apart by the file's content."""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path

from llamakit.errors import LlamakitError

# Meta's Llama 3 pre-tokenizer split pattern (llama3 / llama-models tokenizer.py).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
N_SPECIAL = 256
# The named specials in id order after the base vocabulary (Llama 3.1 names; Llama 3.0 calls 8 reserved_4);
# the rest up to 256 are <|reserved_special_token_N|>.
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>"]
# tiktoken handles at most this many characters per call without a panic (Meta splits longer text the same way).
_MAX_CHARS = 400_000
_BPE_LINE = re.compile(rb"^[A-Za-z0-9+/]+={0,2} \d+$")


def llama3_special_tokens(n_base: int) -> dict[str, int]:
    """The 256 special tokens of a Llama 3 tokenizer with `n_base` base tokens (128000 for Meta's)."""
    names = LLAMA3_SPECIALS + [f"<|reserved_special_token_{2 + i}|>" for i in range(N_SPECIAL - len(LLAMA3_SPECIALS))]
    return {name: n_base + i for i, name in enumerate(names)}


def tokenizer_kind(path: Path) -> str:
    """'tiktoken' when the file is tiktoken BPE text (`base64 rank` lines), else 'sentencepiece' (a protobuf)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    lines = head.split(b"\n")[:-1] if len(head) == 4096 else head.split(b"\n")
    lines = [ln for ln in lines if ln.strip()]
    return "tiktoken" if lines and all(_BPE_LINE.match(ln.strip()) for ln in lines) else "sentencepiece"


def read_bpe_ranks(path: Path) -> dict[bytes, int]:
    """The mergeable ranks of a tiktoken BPE file; a malformed line is a LlamakitError naming it."""
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise LlamakitError("not a tiktoken BPE line (expected 'base64-token rank')",
                                "use the tokenizer.model that came with the Llama 3 download", path.resolve(),
                                n) from None
    return ranks


class Tokenizer:
    """Wraps a `tokenizer.model` of either kind; the ids are the model's, so they must match the embedding rows.

    Common API: encode / encode_batch / decode, n_words, bos_id, eos_id, pad_id, stop_ids (generation ends on any of
    them: eos for SentencePiece; end_of_text, eom and eot for Llama 3), special (name -> id, Llama 3 only)."""

    def __init__(self, model_path: str | Path):
        path = Path(model_path)
        if path.is_dir():
            inside = path / "tokenizer.model"
            hint = f"set tokenizer_path to {inside}" if inside.is_file() else \
                "set tokenizer_path to the tokenizer.model file (e.g. /data/LLaMA/tokenizer.model)"
            raise LlamakitError("tokenizer path is a folder, not a tokenizer file", hint, path.resolve())
        if not path.is_file():
            raise LlamakitError("tokenizer file does not exist",
                                "set tokenizer_path to Meta's tokenizer.model (e.g. /data/LLaMA/tokenizer.model)",
                                path.resolve())
        self.path = path
        self.kind = tokenizer_kind(path)
        self.special: dict[str, int] = {}
        if self.kind == "tiktoken":
            self._load_tiktoken(path)
        else:
            self._load_sentencepiece(path)

    def _load_sentencepiece(self, path: Path) -> None:
        from sentencepiece import SentencePieceProcessor

        self.sp = SentencePieceProcessor()
        try:
            ok = self.sp.Load(str(path))
        except Exception as e:  # sentencepiece raises OSError/RuntimeError with a C++ message
            raise LlamakitError(f"not a SentencePiece model or tiktoken BPE file ({str(e).splitlines()[0][:100]})",
                                "use the tokenizer.model that came with the LLaMA download", path.resolve()) from None
        if not ok:
            raise LlamakitError("not a SentencePiece model or tiktoken BPE file",
                                "use the tokenizer.model that came with the LLaMA download", path.resolve())
        self.n_words: int = self.sp.vocab_size()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.pad_id: int = self.sp.pad_id()
        self.stop_ids: frozenset[int] = frozenset({self.eos_id})

    def _load_tiktoken(self, path: Path) -> None:
        import tiktoken

        ranks = read_bpe_ranks(path)
        self.special = llama3_special_tokens(len(ranks))
        try:
            self.tt = tiktoken.Encoding(name=path.name, pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                                        special_tokens=self.special)
        except ValueError as e:
            raise LlamakitError(f"tiktoken cannot use this BPE file ({str(e)[:100]})",
                                "use the tokenizer.model that came with the Llama 3 download", path.resolve()) from None
        self.n_words = len(ranks) + N_SPECIAL
        self.bos_id = self.special["<|begin_of_text|>"]
        self.eos_id = self.special["<|end_of_text|>"]
        self.pad_id = self.special["<|finetune_right_pad_id|>"]
        self.stop_ids = frozenset({self.eos_id, self.special["<|eom_id|>"], self.special["<|eot_id|>"]})

    def _tt_encode(self, text: str) -> list[int]:
        # Special-token text in a prompt is encoded as plain text (Meta's default: disallowed_special=()).
        out: list[int] = []
        for i in range(0, len(text), _MAX_CHARS):
            out.extend(self.tt.encode(text[i:i + _MAX_CHARS], allowed_special=set(), disallowed_special=()))
        return out

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of `text`, with bos first (as Meta's generator feeds prompts)."""
        ids = self._tt_encode(text) if self.kind == "tiktoken" else self.sp.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of many texts, without bos (SentencePiece encodes a list in one call)."""
        return [self._tt_encode(t) for t in texts] if self.kind == "tiktoken" else self.sp.encode(texts)

    def decode(self, ids: list[int], cut_at_stop: bool = True) -> str:
        """Text of `ids`, cut at the first stop id (the generated ids after it are not part of the answer); a chat
        prompt holds stop ids of earlier turns, so prompt text is decoded with cut_at_stop=False."""
        if cut_at_stop:
            ids = ids[:next((i for i, t in enumerate(ids) if t in self.stop_ids), len(ids))]
        return self.tt.decode(ids) if self.kind == "tiktoken" else self.sp.decode(ids)


def find_tokenizer(ckpt_dir: str | Path, explicit: str | Path | None = None) -> Path:
    """Resolve the tokenizer: the explicit path, else `ckpt_dir/tokenizer.model`, else Meta's `../tokenizer.model`."""
    if explicit:
        return Path(explicit)
    ckpt_dir = Path(ckpt_dir)
    for cand in (ckpt_dir / "tokenizer.model", ckpt_dir.parent / "tokenizer.model"):
        if cand.is_file():
            return cand
    raise LlamakitError("no tokenizer.model in the checkpoint folder or its parent",
                        "set tokenizer_path in the recipe (e.g. tokenizer_path: /data/LLaMA/tokenizer.model), "
                        "or pass --tokenizer to inspect", ckpt_dir.resolve())
