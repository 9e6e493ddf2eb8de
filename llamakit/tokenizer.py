"""SentencePiece tokenizer with Meta's LLaMA conventions: bos 1, eos 2, pad -1, encode with bos, stop at eos."""

from __future__ import annotations

from pathlib import Path

from sentencepiece import SentencePieceProcessor

from llamakit.errors import LlamakitError


class Tokenizer:
    """Wraps a `tokenizer.model`; the ids are the model's, so they must match the checkpoint's embedding rows."""

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
        self.sp = SentencePieceProcessor()
        try:
            ok = self.sp.Load(str(path))
        except Exception as e:  # sentencepiece raises OSError/RuntimeError with a C++ message
            raise LlamakitError(f"not a SentencePiece model ({str(e).splitlines()[0][:100]})",
                                "use the tokenizer.model that came with the LLaMA download", path.resolve()) from None
        if not ok:
            raise LlamakitError("not a SentencePiece model",
                                "use the tokenizer.model that came with the LLaMA download", path.resolve())
        self.path = path
        self.n_words: int = self.sp.vocab_size()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.pad_id: int = self.sp.pad_id()

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of `text`, with bos first (as Meta's generator feeds prompts)."""
        ids = self.sp.encode(text)
        if bos:
            ids = [self.bos_id] + ids
        if eos:
            ids = ids + [self.eos_id]
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`, cut at the first eos (the generated ids after eos are not part of the answer)."""
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.sp.decode(ids)


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
