"""Prompt files in and the output JSONL out: every bad input is one error with file:line; rows are never lost."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from llamakit.errors import LlamakitError
from llamakit.run.output import (RowWriter, finalize_output, output_row, read_rows, repair_tail, scan_output,
                                 torn_tail)
from llamakit.run.prompts import prepare, read_prompts


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def lines(*objs: object) -> str:
    return "".join((o if isinstance(o, str) else json.dumps(o, ensure_ascii=False)) + "\n" for o in objs)


# ---------------------------------------------------------------- reading


def test_jsonl_keeps_other_fields_and_numbers_lines_without_id(tmp_path):
    p = write(tmp_path / "p.jsonl", "\ufeff" + lines({"id": "a", "prompt": "Grüße aus Köln", "src": "zeit"},
                                                     "", {"prompt": "ohne id", "n": 3}))
    got = read_prompts(p)
    assert [(x.index, x.line, x.id, x.text) for x in got] == [(0, 1, "a", "Grüße aus Köln"), (2, 3, 3, "ohne id")]
    assert got[0].extra == {"src": "zeit"} and got[1].extra == {"n": 3}


def test_custom_prompt_and_id_fields(tmp_path):
    p = write(tmp_path / "p.jsonl", lines({"uuid": 7, "lead": "Hallo", "prompt_len": 5}))
    (x,) = read_prompts(p, prompt_field="lead", id_field="uuid")
    assert (x.id, x.text, x.extra) == (7, "Hallo", {"prompt_len": 5})


def test_txt_is_one_prompt_per_line_with_line_number_ids(tmp_path):
    p = write(tmp_path / "p.txt", "Erste Zeile\r\n\nZweite Zeile mit ä\n")
    assert [(x.id, x.text) for x in read_prompts(p)] == [(1, "Erste Zeile"), (3, "Zweite Zeile mit ä")]


@pytest.mark.parametrize("content, line, words", [
    (lines({"id": 1, "prompt": "ok"}, '{"id": 2, "prompt": "broken'), 2, "not valid JSON"),
    (lines({"id": 1, "text": "x"}), 1, "no 'prompt' field"),
    (lines({"id": 1, "prompt": ""}), 1, "is empty"),
    (lines({"id": 1, "prompt": "  "}), 1, "is empty"),
    (lines({"id": 1, "prompt": 42}), 1, "not text"),
    (lines({"id": 1, "prompt": None}), 1, "not text"),
    (lines("[1, 2]"), 1, "not an object"),
    (lines({"id": 1.5, "prompt": "x"}), 1, "not a string or integer"),
    (lines({"id": 1, "prompt": "a"}, {"id": 2, "prompt": "b"}, {"id": 1, "prompt": "c"}), 3, "duplicate id 1"),
    (lines({"prompt": "a"}, {"id": 1, "prompt": "b"}), 2, "duplicate id 1"),
    (lines({"id": 1, "prompt": "a", "completion": "old"}), 1, "'completion' would be overwritten"),
])
def test_bad_jsonl_line_is_one_error_with_file_and_line(tmp_path, content, line, words):
    p = write(tmp_path / "bad.jsonl", content)
    with pytest.raises(LlamakitError) as e:
        read_prompts(p)
    msg = e.value.one_line()
    assert msg.startswith(f"{p}:{line}: ") and words in msg and "Fix: " in msg and "\n" not in msg


def test_non_utf8_bytes_name_the_line_and_the_fix(tmp_path):
    p = write(tmp_path / "latin1.jsonl", lines({"id": 1, "prompt": "gut"}).encode() +
              '{"id": 2, "prompt": "Gr\xfc\xdfe"}\n'.encode("latin-1"))
    with pytest.raises(LlamakitError) as e:
        read_prompts(p)
    assert e.value.line == 2 and "not UTF-8" in e.value.what and "iconv" in e.value.fix


def test_missing_and_empty_and_unknown_files(tmp_path):
    with pytest.raises(LlamakitError, match="does not exist"):
        read_prompts(tmp_path / "nope.jsonl")
    with pytest.raises(LlamakitError, match="no prompts"):
        read_prompts(write(tmp_path / "empty.jsonl", "\n\n"))
    with pytest.raises(LlamakitError, match="unknown prompt file type"):
        read_prompts(write(tmp_path / "p.csv", "a,b\n"))


# ---------------------------------------------------------------- long prompts


def fake_encode(prompts):
    return [[1] + [ord(c) for c in p.text] for p in prompts]


def test_long_prompt_policies(tmp_path):
    p = write(tmp_path / "p.jsonl", lines({"id": 1, "prompt": "short"}, {"id": 2, "prompt": "x" * 20},
                                          {"id": 3, "prompt": "y" * 30}))
    prompts = read_prompts(p)
    with pytest.raises(LlamakitError) as e:
        prepare(prompts, fake_encode, 10, "error", p)
    assert e.value.line == 2 and "21 tokens" in e.value.what and "1 more" in e.value.what
    assert "on_long_prompt" in e.value.fix
    cut = prepare(prompts, fake_encode, 10, "truncate", p)
    assert [t.truncated for t in cut] == [False, True, True]
    assert cut[1].tokens == [1] + [ord("x")] * 9 and cut[1].n_tokens == 21  # beginning kept, bos first
    skip = prepare(prompts, fake_encode, 10, "skip", p)
    assert [t.skipped for t in skip] == [False, True, True] and skip[0].tokens == fake_encode(prompts[:1])[0]


# ---------------------------------------------------------------- output


def test_rows_keep_umlauts_and_field_order(tmp_path):
    out = tmp_path / "out.jsonl"
    with RowWriter(out) as w:
        w.write(output_row("de-1", "Straße", {"quelle": "Zeit"}, " über Brücken", 3, 4, "stop", truncated=True))
    raw = out.read_text(encoding="utf-8")
    assert "Straße" in raw and "über Brücken" in raw and "\\u" not in raw
    row = json.loads(raw)
    assert list(row) == ["id", "prompt", "completion", "prompt_tokens", "completion_tokens", "finish_reason",
                         "sample", "truncated", "quelle"]


def _append_rows(path: str, start: int, n: int) -> None:
    with RowWriter(Path(path), every=7) as w:
        for i in range(start, start + n):
            w.write(output_row(i, "p" * 50, {}, "ä" * (i % 5000), 1, 1, "length"))


def test_concurrent_writers_never_interleave_rows(tmp_path):
    out = tmp_path / "out.jsonl"
    procs = [mp.get_context("fork").Process(target=_append_rows, args=(str(out), k * 200, 200)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    rows = [r for _, r in read_rows(out)]
    assert sorted(r["id"] for r in rows) == list(range(600))
    assert all(r["completion"] == "ä" * (r["id"] % 5000) for r in rows)


def test_torn_last_line_is_repaired_not_fatal(tmp_path):
    out = write(tmp_path / "out.jsonl", lines({"id": 1, "completion": "a"}, {"id": 2, "completion": "b"}) +
                '{"id": 3, "compl')
    assert torn_tail(out) == len('{"id": 3, "compl')
    assert [r["id"] for _, r in read_rows(out)] == [1, 2]  # reading ignores the torn tail
    assert repair_tail(out) == 16 and out.read_text().endswith('"b"}\n') and torn_tail(out) == 0
    assert repair_tail(out) == 0


def test_damaged_row_in_the_middle_is_an_error_with_line(tmp_path):
    out = write(tmp_path / "out.jsonl", lines({"id": 1}, "{oops", {"id": 3}))
    with pytest.raises(LlamakitError) as e:
        read_rows(out)
    assert e.value.line == 2 and "damaged" in e.value.what


def test_scan_output_finds_done_ids_and_rejects_foreign_rows(tmp_path):
    p = write(tmp_path / "p.jsonl", lines({"id": 1, "prompt": "a"}, {"id": "1", "prompt": "b"}, {"prompt": "c"}))
    prompts = read_prompts(p)
    out = write(tmp_path / "out.jsonl", lines({"id": "1"}, {"id": 3}, {"id": 3}) + '{"id": 1')
    state = scan_output(out, prompts)
    assert state.done == {'"1"', "3"} and state.duplicates == 1 and state.torn_bytes == 8
    assert state.rows == {'["1", 0]', "[3, 0]"}  # (id, sample): a row without sample is sample 0
    write(out, lines({"id": 99}))
    with pytest.raises(LlamakitError) as e:
        scan_output(out, prompts)
    assert e.value.line == 1 and "not in the prompt file" in e.value.what and "new out_path" in e.value.fix


def test_finalize_rewrites_in_input_order_once_each(tmp_path):
    p = write(tmp_path / "p.jsonl", lines(*({"id": f"k{i}", "prompt": "x"} for i in range(5))))
    out = write(tmp_path / "out.jsonl", lines(*({"id": f"k{i}", "completion": str(i)} for i in (3, 0, 4, 3, 1, 2))))
    assert finalize_output(out, read_prompts(p)) == 5
    assert [r["id"] for _, r in read_rows(out)] == ["k0", "k1", "k2", "k3", "k4"]
    assert not list(tmp_path.glob(".*sorting"))


def test_free_space_warning_counts_every_sample_of_a_prompt(tmp_path):
    """n samples write n rows: a prompt's max_gen_len sized to a fifth of the free disk fits once (its row and the
    ordered copy), but not four times."""
    import shutil

    from llamakit.run.output import space_note
    from llamakit.run.prompts import Prepared, Prompt

    gen = shutil.disk_usage(tmp_path).free // 20  # 4 bytes per token: a fifth of the free space per row
    one = Prepared(Prompt(0, 1, 1, "Guten Morgen"), [1, 5, 6], 3, settings={"max_gen_len": gen})
    four = Prepared(Prompt(0, 1, 1, "Guten Morgen"), [1, 5, 6], 3, samples=[0, 1, 2, 3], settings={"max_gen_len": gen})
    assert space_note(tmp_path / "out.jsonl", [one], 16) is None
    note = space_note(tmp_path / "out.jsonl", [four], 16)
    assert note is not None and "is free on the disk of" in note
