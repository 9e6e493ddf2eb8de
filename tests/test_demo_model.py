"""The shipped demo model (llamakit/assets/demo/, made by tools/train_demo_model.py) loads with llamakit's own
checkpoint reader and engine, is small, and writes corpus words (not random tokens) that end with eos."""

from __future__ import annotations

import json
import re

import pytest
import torch

from llamakit.checkpoint.shards import open_checkpoint
from llamakit.checkpoint.checklist import md5_file
from llamakit.data import asset_path

DEMO = asset_path("demo")
MAX_BYTES = 2_000_000
PROMPTS = [  # three of the shipped demo leads (llamakit/assets/demo-prompts.jsonl)
    "The city council voted on Tuesday to extend the night bus service, after",
    "The museum reopened its doors on Sunday with an exhibition about",
    "In München öffnen die Biergärten früher als üblich, weil die Temperaturen",
]
WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")  # letters (umlauts included), inner ' and -

pytestmark = pytest.mark.skipif(not (DEMO / "params.json").is_file(), reason="no shipped demo model")


def _words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def test_demo_folder_is_a_small_complete_meta_checkpoint():
    files = {p.name: p.stat().st_size for p in DEMO.iterdir() if p.is_file()}
    for name in ("consolidated.00.pth", "params.json", "tokenizer.model", "checklist.chk"):
        assert name in files, name
    assert sum(files.values()) < MAX_BYTES, files
    for line in (DEMO / "checklist.chk").read_text().splitlines():
        md5, name = line.split()
        assert md5_file(DEMO / name) == md5, f"{name} changed after the checklist was written"


def test_params_tokenizer_and_weights_agree():
    from llamakit.tokenizer import Tokenizer

    ckpt = open_checkpoint(DEMO)
    tok = Tokenizer(DEMO / "tokenizer.model")
    params = json.loads((DEMO / "params.json").read_text())
    assert ckpt.mp == 1
    assert params["vocab_size"] == tok.n_words == ckpt.vocab_rows
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.sp.unk_id()) == (1, 2, -1, 0)
    assert set(ckpt.dtypes[0].values()) == {torch.bfloat16}
    assert ckpt.config.param_count(tok.n_words) == sum(
        torch.Size(s).numel() for s in ckpt.shapes[0].values())
    assert tok.decode(tok.encode("Größere Änderungen für Schüler")[1:]) == "Größere Änderungen für Schüler"


def test_builtin_demo_resolves_to_the_shipped_folder():
    from llamakit.run.recipe import demo_checkpoint

    assert demo_checkpoint().resolve() == DEMO.resolve()


@pytest.fixture
def one_thread():
    """One CPU thread while the test runs (the demo's text as one thread computes it), the previous count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_greedy_generation_writes_corpus_words_and_stops(mp1_group, one_thread):
    from llamakit.engine.api import EngineConfig, Request
    from llamakit.engine.engine import build_engine
    from llamakit.tokenizer import Tokenizer

    tok = Tokenizer(DEMO / "tokenizer.model")
    vocab = set(_words(asset_path("demo-corpus.txt").read_text(encoding="utf-8")))
    engine = build_engine(open_checkpoint(DEMO), EngineConfig(max_seq_len=128, max_batch_size=4))
    requests = [Request(i, tok.encode(p), 48) for i, p in enumerate(PROMPTS)]
    done = {c.request.key: c for c in engine.generate(requests)}
    assert sorted(done) == list(range(len(PROMPTS)))

    texts = {i: tok.decode(done[i].tokens) for i in done}
    generated = [w for t in texts.values() for w in _words(t)]
    known = [w for w in generated if w in vocab]
    assert len(generated) >= 10, texts
    assert len(known) / len(generated) > 0.6, (known, generated, texts)
    assert any(c.finish_reason == "stop" for c in done.values()), texts


def test_every_shipped_lead_gets_words_not_a_lone_full_stop(mp1_group, one_thread):
    # leads that end where a sentence can end got "." + eos from this model (2026-11-30); all ten must get words
    from llamakit.engine.api import EngineConfig, Request
    from llamakit.engine.engine import build_engine
    from llamakit.tokenizer import Tokenizer

    tok = Tokenizer(DEMO / "tokenizer.model")
    leads = [json.loads(line)["prompt"] for line in asset_path("demo-prompts.jsonl").read_text("utf-8").splitlines()]
    engine = build_engine(open_checkpoint(DEMO), EngineConfig(max_seq_len=128, max_batch_size=10))
    done = {c.request.key: tok.decode(c.tokens) for c in engine.generate(
        [Request(i, tok.encode(p), 32) for i, p in enumerate(leads)])}
    assert len(done) == 10 and all(_words(done[i]) for i in range(10)), done
