"""The tokenizer follows Meta's conventions: bos 1, eos 2, pad -1, bos on encode, decode stops at eos."""

from __future__ import annotations

import pytest

from llamakit.errors import LlamakitError
from llamakit.tokenizer import Tokenizer, find_tokenizer


def test_ids_and_round_trip_with_umlauts(tiny_factory):
    tok = Tokenizer(tiny_factory("llama2", 1) / "tokenizer.model")
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.n_words) == (1, 2, -1, 512)
    text = "Die Bürgermeisterin kündigte an, mehr Geld für Schulen auszugeben. Straße: ß, Ü, é, 😀"
    ids = tok.encode(text)
    assert ids[0] == 1 and 2 not in ids
    assert tok.decode(ids[1:]) == text  # byte fallback keeps every character
    assert tok.decode(ids[1:] + [2] + ids[1:]) == text  # decode stops at eos


def test_missing_or_bad_tokenizer(tmp_path):
    with pytest.raises(LlamakitError, match="does not exist"):
        Tokenizer(tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(LlamakitError, match="SentencePiece"):
        Tokenizer(tmp_path / "tokenizer.model")


def test_find_tokenizer_meta_layout(tmp_path):
    ckpt = tmp_path / "13B"
    ckpt.mkdir()
    with pytest.raises(LlamakitError):
        find_tokenizer(ckpt)
    (tmp_path / "tokenizer.model").write_bytes(b"x")
    assert find_tokenizer(ckpt) == tmp_path / "tokenizer.model"
