"""inspect_checkpoint on tiny checkpoints: exact counts, shapes and plans (computed by hand); every damage named."""

from __future__ import annotations

import json
import shutil

import pytest

from llamakit.checkpoint import open_checkpoint
from llamakit.checkpoint.params import PRESET_MP, PRESETS
from llamakit.checkpoint.tiny import train_tokenizer
from llamakit.gpus import GpuInfo
from llamakit.inspection import InspectReport, fit_options, fit_summary, inspect_checkpoint, memory_info
from llamakit.memory import CUDA_CONTEXT_BYTES, overhead_bytes, plan_memory

GB48 = 51_527_024_640  # what NVML reports for an RTX A6000 "48 GB"


def gpus(n: int, total: int = GB48, name: str = "NVIDIA RTX A6000") -> list[GpuInfo]:
    return [GpuInfo(i, name, total, total, (8, 6)) for i in range(n)]


def codes(report: InspectReport) -> set[str]:
    return {p.code for p in report.problems}


# Hand computation, tiny llama1/llama2 (dim 64, 2 layers, 4 heads, head_dim 16, vocab 512, multiple_of 32):
#   FFN hidden: int(2*4*64/3) = 170 -> next multiple of 32 = 192
#   embeddings + output 2*512*64 = 65,536; per layer: wq wk wv wo 4*64*64 = 16,384, w1 w2 w3 3*64*192 = 36,864,
#   two norms 128 -> 53,376; two layers 106,752; final norm 64  => 172,352 parameters, 320 of them norms.
#   per rank at MP m: (172,352 - 320) / m + 320 = 172,352 | 86,336 | 43,328 (MP 1 | 2 | 4); bf16 = 2 bytes each.
#   KV cache per rank: 2 (k, v) * 2 layers * batch * seq * (4 / m heads) * 16 * 2 bytes = batch*seq*512/m.
# Tiny llama2-gqa (dim 128, 2 layers, 16 heads, 4 kv heads, head_dim 8, multiple_of 64, ffn_dim_multiplier 1.3):
#   FFN hidden: int(2*4*128/3) = 341 -> int(1.3*341) = 443 -> next multiple of 64 = 448
#   embeddings + output 2*512*128 = 131,072; per layer: wq wo 2*128*128 = 32,768, wk wv 2*(4*8)*128 = 8,192,
#   FFN 3*128*448 = 172,032, norms 256 -> 213,248; two layers 426,496; final norm 128  => 557,696, 640 norms.
#   per rank: (557,696 - 640) / m + 640 = 557,696 | 279,168 | 139,904.
#   KV cache per rank: 2 * 2 * batch * seq * (4 / m) * 8 * 2 bytes = batch*seq*256/m.
EXPECTED = {
    "llama1": dict(params=172_352, ffn=192, head_dim=16, groups=1, kv=4, per_rank={1: 172_352, 2: 86_336, 4: 43_328},
                   kv_per_token=512, dtype="fp16", rope=True),
    "llama2": dict(params=172_352, ffn=192, head_dim=16, groups=1, kv=4, per_rank={1: 172_352, 2: 86_336, 4: 43_328},
                   kv_per_token=512, dtype="bf16", rope=False),
    "llama2-gqa": dict(params=557_696, ffn=448, head_dim=8, groups=4, kv=4,
                       per_rank={1: 557_696, 2: 279_168, 4: 139_904}, kv_per_token=256, dtype="bf16", rope=False),
}


@pytest.mark.parametrize("mp", [1, 2, 4])
@pytest.mark.parametrize("style", ["llama1", "llama2", "llama2-gqa"])
def test_report_is_exact_for_every_style_and_mp(tiny_factory, style, mp):
    want = EXPECTED[style]
    r = inspect_checkpoint(tiny_factory(style, mp), batch=2, seq=8, gpus=[])
    assert r.ok and r.problems == []
    m = r.model
    assert (m.name, m.param_count, m.param_count_params) == ("custom", want["params"], want["params"])
    assert (m.ffn_hidden, m.head_dim, m.gqa_groups, m.n_kv_heads, m.vocab_size) == \
           (want["ffn"], want["head_dim"], want["groups"], want["kv"], 512)
    assert m.dtype == want["dtype"] and m.allowed_mp == [1, 2, 4]
    s = r.shards
    assert (s.mp, s.expected_mp, s.consistent, s.matches_params, s.rope_freqs) == (mp, mp, True, True, want["rope"])
    assert [f.name for f in s.files] == [f"consolidated.{i:02d}.pth" for i in range(mp)]
    ckpt = tiny_factory(style, mp)
    assert [f.bytes for f in s.files] == [(ckpt / f.name).stat().st_size for f in s.files]
    assert s.split["tok_embeddings.weight"] == 1 and s.split["layers.*.attention.wq.weight"] == 0
    assert s.split["layers.*.feed_forward.w2.weight"] == 1 and s.split["layers.*.ffn_norm.weight"] is None
    plan = r.memory
    assert plan.mp == mp and plan.weights_bytes == 2 * want["per_rank"][mp]
    assert plan.kv_cache_bytes == 2 * 8 * want["kv_per_token"] // mp
    assert plan.total_bytes == plan.weights_bytes + plan.kv_cache_bytes + plan.overhead_bytes
    assert plan.overhead_bytes > CUDA_CONTEXT_BYTES  # context + the allocator's reserve for activations
    assert plan.fits_here is None and plan.gpus == []
    assert (r.tokenizer.n_words, r.tokenizer.bos_id, r.tokenizer.eos_id, r.tokenizer.matches_embedding) == \
           (512, 1, 2, True)
    assert r.checklist.missing == [] and r.checklist.extra == ["tokenizer.model"] and not r.checklist.verified


def test_shard_shapes_are_the_split_shapes(tiny_factory):
    from llamakit.checkpoint.shards import load_shard

    r = inspect_checkpoint(tiny_factory("llama2", 2), gpus=[])
    sd = load_shard(tiny_factory("llama2", 2) / "consolidated.01.pth")
    # MP 2: rows of column-parallel weights halve, columns of row-parallel ones halve, norms stay whole.
    assert tuple(sd["layers.0.attention.wq.weight"].shape) == (32, 64)
    assert tuple(sd["layers.0.attention.wo.weight"].shape) == (64, 32)
    assert tuple(sd["layers.1.feed_forward.w1.weight"].shape) == (96, 64)
    assert tuple(sd["tok_embeddings.weight"].shape) == (512, 32) and tuple(sd["output.weight"].shape) == (256, 64)
    assert tuple(sd["norm.weight"].shape) == (64,)
    assert r.shards.files[1].keys == len(sd) == 2 * 9 + 3


def test_json_round_trips(tiny_factory):
    r = inspect_checkpoint(tiny_factory("llama2-gqa", 2), batch=3, seq=16, gpus=gpus(2), verify=True)
    text = r.to_json()
    assert InspectReport.from_json(text) == r
    data = json.loads(text)
    assert data["schema"] == "llamakit.inspect/1" and data["ok"] is True
    assert data["model"]["param_count"] == 557_696 and data["memory"]["gpus"][0]["total_bytes"] == GB48
    assert set(data) == {"path", "schema", "params", "model", "shards", "tokenizer", "checklist", "memory",
                         "problems", "seconds", "ok"}


def test_verify_checks_every_md5_with_progress(tiny_factory):
    seen: list[tuple[str, int, int]] = []
    r = inspect_checkpoint(tiny_factory("llama1", 2), verify=True, gpus=[], progress=lambda *a: seen.append(a))
    assert r.ok and r.checklist.verified and r.checklist.ok
    assert [f.name for f in r.checklist.files] == ["consolidated.00.pth", "consolidated.01.pth", "params.json"]
    total = sum((tiny_factory("llama1", 2) / f.name).stat().st_size for f in r.checklist.files)
    assert seen[-1][1:] == (total, total) and {s[0] for s in seen} == {f.name for f in r.checklist.files}


# ------------------------------------------------------------------ damage: each is named, the rest still reported
def test_truncated_shard_is_named_and_the_rest_still_reported(tiny_copy):
    ckpt = tiny_copy("llama2", 2)
    shard = ckpt / "consolidated.01.pth"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    r = inspect_checkpoint(ckpt, gpus=[])
    assert not r.ok and "shard-unreadable" in codes(r)
    bad = next(p for p in r.problems if p.code == "shard-unreadable")
    assert bad.where.endswith("consolidated.01.pth") and "truncated" in bad.fix
    assert [f.readable for f in r.shards.files] == [True, False]
    assert r.model.param_count == 172_352 and r.tokenizer.n_words == 512 and r.memory is not None


def test_corrupted_data_is_caught_only_by_verify(tiny_copy):
    ckpt = tiny_copy("llama2", 1)
    shard = ckpt / "consolidated.00.pth"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside tensor data: the file still opens
    shard.write_bytes(bytes(data))
    assert inspect_checkpoint(ckpt, gpus=[]).ok
    r = inspect_checkpoint(ckpt, gpus=[], verify=True)
    assert not r.ok and codes(r) == {"md5-mismatch"}
    assert r.problems[0].where.endswith("consolidated.00.pth")
    assert [f.ok for f in r.checklist.files] == [False, True] and r.checklist.ok is False


def test_corrupted_header_makes_the_shard_unreadable(tiny_copy):
    ckpt = tiny_copy("llama2", 1)
    shard = ckpt / "consolidated.00.pth"
    shard.write_bytes(b"\0" * 64 + shard.read_bytes()[64:])
    r = inspect_checkpoint(ckpt, gpus=[])
    assert "shard-unreadable" in codes(r) and r.params is not None


def test_deleted_last_shard_is_named(tiny_copy):
    ckpt = tiny_copy("llama2", 2)
    (ckpt / "consolidated.01.pth").unlink()
    r = inspect_checkpoint(ckpt, gpus=[])
    assert {"shard-count", "file-missing"} <= codes(r)
    what = {p.code: p.what for p in r.problems}
    assert "cut for MP 2 but 1 found" in what["shard-count"] and "consolidated.01.pth" in what["shard-count"]
    assert "consolidated.01.pth" in what["file-missing"]
    assert r.shards.expected_mp == 2 and r.model.param_count == 172_352  # counted at the MP the shapes say


def test_deleted_first_shard_is_a_gap(tiny_copy):
    ckpt = tiny_copy("llama2-gqa", 4)
    (ckpt / "consolidated.00.pth").unlink()
    r = inspect_checkpoint(ckpt, gpus=[])
    gap = next(p for p in r.problems if p.code == "shard-missing")
    assert "consolidated.00.pth" in gap.what and r.shards.mp == 3


@pytest.mark.parametrize("edit, code", [
    ({"multiple_of": 256}, "params-mismatch"),  # FFN hidden 192 -> 256: w1/w2/w3 disagree
    ({"n_layers": 3}, "params-mismatch"),  # layers.2.* missing
    ({"dim": 128}, "params-mismatch"),
    ({"vocab_size": 32000}, "vocab-mismatch"),
])
def test_edited_params_json_is_caught(tiny_copy, edit, code):
    ckpt = tiny_copy("llama2", 2)
    params = json.loads((ckpt / "params.json").read_text())
    (ckpt / "params.json").write_text(json.dumps({**params, **edit}))
    r = inspect_checkpoint(ckpt, gpus=[])
    assert code in codes(r) and not r.ok
    assert "file-missing" not in codes(r)
    if code == "params-mismatch":
        assert r.shards.matches_params is False and r.memory is None  # no plan for a config the shards contradict
    # checklist.chk also knows params.json changed
    assert "md5-mismatch" in codes(inspect_checkpoint(ckpt, gpus=[], verify=True))


def test_edited_ffn_names_the_keys(tiny_copy):
    ckpt = tiny_copy("llama2", 1)
    params = json.loads((ckpt / "params.json").read_text())
    (ckpt / "params.json").write_text(json.dumps({**params, "multiple_of": 256}))
    what = next(p.what for p in inspect_checkpoint(ckpt, gpus=[]).problems if p.code == "params-mismatch")
    assert "layers.0.feed_forward.w1.weight is [192, 64], params.json implies [256, 64]" in what


def test_missing_params_json_still_reports_shapes(tiny_copy):
    ckpt = tiny_copy("llama2", 2)
    (ckpt / "params.json").unlink()
    r = inspect_checkpoint(ckpt, gpus=[])
    assert {"params-missing", "file-missing"} <= codes(r)
    assert r.params is None and r.memory is None
    assert (r.model.name, r.model.param_count, r.model.dim, r.model.n_layers, r.model.ffn_hidden) == \
           (None, 172_352, 64, 2, 192)


def test_invalid_params_json_is_one_finding(tiny_copy):
    ckpt = tiny_copy("llama2", 1)
    (ckpt / "params.json").write_text('{"dim": 64,')
    r = inspect_checkpoint(ckpt, gpus=[])
    assert "params-invalid" in codes(r) and r.shards.consistent


def test_shards_from_different_models_are_inconsistent(tiny_copy, tiny_factory):
    ckpt = tiny_copy("llama2", 2)
    shutil.copy(tiny_factory("llama2-gqa", 2) / "consolidated.01.pth", ckpt / "consolidated.01.pth")
    r = inspect_checkpoint(ckpt, gpus=[])
    bad = next(p for p in r.problems if p.code == "shards-inconsistent")
    assert bad.where.endswith("consolidated.01.pth") and not r.shards.consistent


def test_huggingface_folder_is_recognised(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"x")
    r = inspect_checkpoint(tmp_path, gpus=[])
    assert codes(r) == {"hf-checkpoint"}  # one finding, not a list of everything a Meta folder would have
    assert "Hugging Face" in next(p.what for p in r.problems if p.code == "hf-checkpoint")
    assert r.shards is None and r.model is None


def test_not_a_folder_and_empty_folder(tmp_path):
    assert codes(inspect_checkpoint(tmp_path / "nope", gpus=[])) == {"not-a-folder"}
    assert codes(inspect_checkpoint(tmp_path, gpus=[])) == {"not-a-checkpoint"}


def test_tokenizer_with_other_vocab_is_an_error(tiny_factory, tmp_path):
    other = tmp_path / "other.model"
    train_tokenizer(other, vocab_size=400)
    r = inspect_checkpoint(tiny_factory("llama2", 1), tokenizer=other, gpus=[])
    assert codes(r) == {"tokenizer-vocab-mismatch"} and r.tokenizer.matches_embedding is False


def test_tokenizer_found_in_parent_and_missing_is_a_warning(tiny_copy):
    ckpt = tiny_copy("llama1", 1)
    (ckpt / "tokenizer.model").rename(ckpt.parent / "tokenizer.model")  # Meta's layout: ../tokenizer.model
    r = inspect_checkpoint(ckpt, gpus=[])
    assert r.ok and r.tokenizer.path == str(ckpt.parent / "tokenizer.model")
    (ckpt.parent / "tokenizer.model").unlink()
    r = inspect_checkpoint(ckpt, gpus=[])
    assert r.ok and codes(r) == {"tokenizer-missing"} and r.memory is not None  # vocab from the embedding


# ------------------------------------------------------------------ memory plan and advice
def test_fits_on_two_a6000_with_data_parallel_copies(tiny_factory):
    r = inspect_checkpoint(tiny_factory("llama2", 1), batch=2, seq=8, gpus=gpus(2))
    assert r.memory.fits_here is True
    assert r.memory.advice[0].startswith("fits: weights 0.0 GiB + reserve 0.8 GiB per GPU at MP 1 on NVIDIA RTX "
                                         "A6000 (48.0 GiB), the rest is KV cache; 2 data-parallel copies use 2 GPUs "
                                         "(torchrun --nproc_per_node 2")
    # largest batch: (48 GB card - weights - overhead) / (8 tokens * 512 bytes), capped at 512
    assert r.memory.max_batch_here == 512


def test_mp4_on_two_gpus_suggests_reshard(tiny_factory):
    ckpt = tiny_factory("llama2", 4)
    r = inspect_checkpoint(ckpt, gpus=gpus(2))
    assert r.memory.fits_here is False and r.ok  # a warning, not an error: the checkpoint is fine
    assert "does-not-fit" in codes(r)
    assert r.memory.advice[0] == "this checkpoint has MP 4, so it needs 4 GPUs; this machine has 2"
    assert f"`llamakit reshard {ckpt} {ckpt}-mp1 --mp 1`" in r.memory.advice[1]


def test_int8_suggested_when_bf16_does_not_fit():
    # 13B at MP 1, batch 1, seq 2048 on one card 1 GiB larger than the int8 plan: bf16 weights alone are 24.2 GiB
    cfg = PRESETS["llama-13b"]
    int8 = plan_memory(cfg, 32000, 1, "int8", 1, 2048)
    card = int8.total + (1 << 30)
    assert plan_memory(cfg, 32000, 1, "bf16", 1, 2048).total > card
    info = memory_info(cfg, 32000, 1, "bf16", 1, 2048, gpus(1, card, "small"), "/data/LLaMA/13B-mp1")
    assert info.fits_here is False and any("set `quantize: int8` in the recipe" in a for a in info.advice)
    assert not any("reshard" in a for a in info.advice)  # MP 1 already
    info8 = memory_info(cfg, 32000, 1, "int8", 1, 2048, gpus(1, card, "small"), "/data/LLaMA/13B-mp1")
    assert info8.fits_here is True and info8.weights_bytes == int8.weights < info.weights_bytes // 2 + (1 << 30)


def test_a_batch_beyond_the_cache_fits_as_an_upper_limit(tiny_factory):
    """Paged KV cache: room for 10 sequences of --seq, --batch 20 still fits (the cache holds 10 at once); without
    room for one sequence it does not. A sequence of 8 tokens takes a whole block of 16 (512 bytes a token)."""
    ckpt = tiny_factory("llama2", 1)
    card = overhead_bytes(open_checkpoint(ckpt).config, 1, "bf16", 8) + 344_704 + 10 * 16 * 512  # room for 10 seqs
    r = inspect_checkpoint(ckpt, batch=20, seq=8, gpus=gpus(1, card, "small"))
    assert r.memory.fits_here is True and r.memory.max_batch_here == 10
    assert "10 sequences of max_seq_len 8" in r.memory.advice[0] and "upper limit" in r.memory.advice[0]
    r = inspect_checkpoint(ckpt, batch=20, seq=8, gpus=gpus(1, card - 9 * 16 * 512 - 1, "small"))
    assert r.memory.fits_here is False and r.memory.max_batch_here == 0
    assert "for its weights, reserve and one sequence of 8 tokens" in r.memory.advice[0]


def test_the_four_folders_on_two_a6000():
    """The users' question: which of 7B/13B/30B/65B runs on 2x RTX A6000, and how (bf16, batch 4, seq 2048)."""
    advice = {}
    for name in ("llama-7b", "llama-13b", "llama-30b", "llama-65b"):
        info = memory_info(PRESETS[name], 32000, PRESET_MP[name], "bf16", 4, 2048, gpus(2), f"/data/LLaMA/{name}")
        advice[name] = (info.fits_here, " | ".join(info.advice))
    assert advice["llama-7b"][0] and "2 data-parallel copies" in advice["llama-7b"][1]
    assert advice["llama-13b"][0] and "--nproc_per_node 2" in advice["llama-13b"][1]
    assert advice["llama-30b"][0] is False and "--mp 2" in advice["llama-30b"][1]
    assert "quantize: int8" not in advice["llama-30b"][1]
    assert advice["llama-65b"][0] is False and "--mp 2" in advice["llama-65b"][1]
    assert "quantize: int8" in advice["llama-65b"][1]


def test_fit_options_name_cards():
    # 13B bf16, batch 4, seq 2048: weights 13,015,864,320 * 2 B = 24.24 GiB; KV cache 2*40*4*2048*5120*2 B = 6.25 GiB;
    # overhead 0.75 GiB context + 2.5 x 8192 tokens x 2 B x (2*5120 + 3*13824/MP): 2.72 GiB at MP 1, 1.93 at MP 2,
    # 1.54 at MP 4. One card: 33.21 GiB -> 40 GB. Two: 12.12 + 3.13 + 1.93 = 17.18 GiB -> 24 GB (a 16 GB card holds
    # 15.84 GiB). Four: 6.06 + 1.56 + 1.54 = 9.16 GiB -> 16 GB.
    opts = fit_options(PRESETS["llama-13b"], 32000, "bf16", 4, 2048)
    assert [(o.gpus, o.gpu_gb) for o in opts] == [(1, 40), (2, 24), (4, 16)]
    assert fit_summary(opts, "bf16") == "needs 1x 40 GB or 2x 24 GB or 4x 16 GB at bf16"


def test_fit_summary_small_model_names_memory_not_a_card():
    # the built-in demo model: 1.8 MiB of weights + 32 MiB KV cache + 0.8 GiB overhead; "1x 16 GB" would mislead
    from llamakit.checkpoint.params import ModelConfig

    cfg = ModelConfig(dim=128, n_layers=4, n_heads=4, vocab_size=1024, multiple_of=32, ffn_dim_multiplier=0.75)
    summary = fit_summary(fit_options(cfg, 1024, "bf16", 32, 512), "bf16")
    assert summary == "needs 1 GPU with 0.8 GiB free at bf16"


def test_bad_arguments_raise():
    from llamakit.errors import LlamakitError

    with pytest.raises(LlamakitError, match="unknown dtype"):
        inspect_checkpoint(".", dtype="fp8")


# Process totals measured with tools/memory_check.py on an H200 (torch 2.11+cu130, 2026-11-24; docs/BENCHMARKS.md):
# (preset, layers, dtype, batch, GiB that nvidia-smi would show) at max_seq_len 2048, every slot filled.
MEASURED = [("llama-65b", 40, "int8", 6, 52.96), ("llama-30b", 30, "int8", 20, 49.74),
            ("llama-30b", 30, "bf16", 10, 48.75), ("llama-13b", 20, "bf16", 43, 48.41),
            ("llama-7b", 16, "bf16", 80, 48.65)]


@pytest.mark.parametrize("preset,layers,dtype,batch,measured_gib", MEASURED)
def test_memory_plan_covers_what_the_process_really_held(preset, layers, dtype, batch, measured_gib):
    from dataclasses import replace

    cfg = replace(PRESETS[preset].with_vocab(32000), n_layers=layers)
    plan = plan_memory(cfg, 32000, 1, dtype, batch, 2048)
    assert plan.total / 2**30 >= measured_gib  # the plan may not promise a batch that runs out of memory
    assert plan.total / 2**30 <= measured_gib + 3.0  # nor waste a card: at most 3 GiB above the measured total
