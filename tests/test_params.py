"""params.json parsing and derived sizes match Meta's published LLaMA-1 and Llama-2 shapes; bad files are named."""

from __future__ import annotations

import json

import pytest

from llamakit.checkpoint.params import PRESETS, config_from_dict, identify, load_params
from llamakit.errors import LlamakitError

# (preset, ffn hidden, head dim, published parameter count in billions, rounded as Meta names them)
PUBLISHED = [
    ("llama-7b", 11008, 128, 6.74), ("llama-13b", 13824, 128, 13.02), ("llama-30b", 17920, 128, 32.53),
    ("llama-65b", 22016, 128, 65.29), ("llama2-7b", 11008, 128, 6.74), ("llama2-13b", 13824, 128, 13.02),
    ("llama2-70b", 28672, 128, 68.98),
]


@pytest.mark.parametrize("name,ffn,head_dim,billions", PUBLISHED)
def test_derived_sizes_match_published_models(name, ffn, head_dim, billions):
    cfg = PRESETS[name]
    assert cfg.ffn_hidden == ffn
    assert cfg.head_dim == head_dim
    assert round(cfg.param_count(32000) / 1e9, 2) == billions


def test_real_params_json_files_parse_and_identify():
    llama1_13b = {"dim": 5120, "multiple_of": 256, "n_heads": 40, "n_layers": 40, "norm_eps": 1e-06, "vocab_size": -1}
    llama2_70b = {"dim": 8192, "multiple_of": 4096, "ffn_dim_multiplier": 1.3, "n_heads": 64, "n_kv_heads": 8,
                  "n_layers": 80, "norm_eps": 1e-05, "vocab_size": -1}
    c1 = config_from_dict(llama1_13b)
    assert (c1.vocab_size, c1.kv_heads, c1.gqa_groups, identify(c1)) == (-1, 40, 1, "LLaMA-1 13B")
    c2 = config_from_dict(llama2_70b)
    assert (c2.kv_heads, c2.gqa_groups, c2.ffn_hidden, identify(c2)) == (8, 8, 28672, "Llama-2 70B")
    code = config_from_dict({**llama1_13b, "rope_theta": 1000000, "vocab_size": 32016})
    assert code.rope_theta == 1e6 and identify(code) == "Llama-2 13B"


def test_allowed_mp_respects_kv_heads():
    assert PRESETS["llama2-70b"].allowed_mp(32000) == [1, 2, 4, 8]
    assert 5 not in PRESETS["llama-13b"].allowed_mp(32000)


@pytest.mark.parametrize("content,needle", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"dim": 64, "n_layers": 2, "n_heads": 4, "rope_scaling": 8}', "unknown key"),
    ('{"dim": 64, "n_layers": 2}', "lacks required key"),
    ('{"dim": "64", "n_layers": 2, "n_heads": 4}', "expected int"),
    ('{"dim": 64, "n_layers": 2, "n_heads": 5}', "not divisible"),
    ('{"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 3}', "n_kv_heads"),
])
def test_bad_params_json_is_one_clear_error(tmp_path, content, needle):
    (tmp_path / "params.json").write_text(content)
    with pytest.raises(LlamakitError) as e:
        load_params(tmp_path)
    assert needle in e.value.what
    assert "params.json" in e.value.one_line() and e.value.fix


def test_missing_params_json(tmp_path):
    with pytest.raises(LlamakitError, match="params.json is missing"):
        load_params(tmp_path)


def test_malformed_json_reports_line(tmp_path):
    (tmp_path / "params.json").write_text('{\n "dim": 64,\n "n_layers": ,\n}')
    with pytest.raises(LlamakitError) as e:
        load_params(tmp_path)
    assert e.value.line == 3


def test_params_round_trip_through_json(tmp_path):
    cfg = PRESETS["llama2-70b"]
    (tmp_path / "params.json").write_text(json.dumps(cfg.to_params_json()))
    assert load_params(tmp_path) == cfg
