"""checks/explain.yaml: every params.json field and every glossary term the users asked about is explained."""

from __future__ import annotations

import pytest

from llamakit.checkpoint.params import KNOWN_KEYS
from llamakit.explain import explain_param, explain_term, explain_texts

TERMS = ["mp", "shard", "world_size", "rank", "local_rank", "data_parallel", "nproc_per_node", "kv_cache", "top_p",
         "temperature", "max_seq_len", "max_batch_size", "bf16", "int8", "nccl", "torchrun"]


def test_every_params_json_key_has_short_and_long_text():
    params = explain_texts()["params"]
    assert set(KNOWN_KEYS) <= set(params)
    for key in KNOWN_KEYS:
        e = params[key]
        assert e.short and "\n" not in e.short and len(e.short) < 90, key
        assert len(e.long) > len(e.short), key


def test_glossary_has_the_onboarding_terms():
    assert set(TERMS) <= set(explain_texts()["terms"])


def test_long_texts_state_what_follows():
    assert "head_dim = dim / n_heads" in explain_param("dim").long
    assert "hidden = int(2 * 4 * dim / 3)" in explain_param("multiple_of").long  # the FFN formula, not "dim % x"
    assert "-1" in explain_param("vocab_size").long and "tokenizer" in explain_param("vocab_size").long
    assert "grouped-query attention" in explain_param("n_kv_heads").long


def test_folded_paragraphs_keep_list_and_formula_lines():
    text = explain_param("dim").long
    assert "stays that size through all layers" in text  # a paragraph is one line
    assert "\n  - head_dim = dim / n_heads" in text  # list items keep their own lines


@pytest.mark.parametrize("spelling, key", [("MP", "mp"), ("model parallel", "mp"), ("--local-rank", "local_rank"),
                                           ("WORLD_SIZE", "world_size"), ("fp16", "bf16"), ("top-p", "top_p"),
                                           ("KV cache", "kv_cache"), ("multiple_of", "multiple_of")])
def test_term_lookup_ignores_spelling(spelling, key):
    assert explain_term(spelling).key == key


def test_unknown_term_is_none():
    assert explain_term("flux capacitor") is None
