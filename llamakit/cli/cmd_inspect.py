"""`llamakit inspect CKPT_DIR`: parse options, call inspect_checkpoint, render with rich, set the exit code."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from llamakit.cli.app import app, console, err_console
from llamakit.units import human_bytes
from llamakit.errors import LlamakitError
from llamakit.explain import explain_param, explain_texts
from llamakit import defaults

if TYPE_CHECKING:
    from llamakit.inspection import InspectReport

# llamakit.defaults, not llamakit.inspection: importing that here would pull torch into every `llamakit --help`.
DEFAULT_BATCH, DEFAULT_SEQ, DEFAULT_DTYPE = defaults.MAX_BATCH_SIZE, defaults.MAX_SEQ_LEN, defaults.DTYPE

def _count(n: int) -> str:
    return f"{n:,} ({n / 1e9:.2f} B)" if n >= 1e8 else f"{n:,}"


def _term_short(term: str) -> str:
    entry = explain_texts()["terms"].get(term)
    return entry.short if entry else ""


def _out(text: str = "", markup: bool = True) -> None:
    """One report line; never wrapped, so paths and commands stay copy-pasteable."""
    console.print(text, markup=markup, soft_wrap=True)


def render(report: InspectReport, explain: bool = False) -> None:
    from llamakit.inspection import fit_summary

    """Print the report as tables and short lines (stdout); problems are printed by the caller."""
    _out(f"[bold]Checkpoint[/bold] {escape(report.path)}")
    if report.params is not None:
        t = Table(title="params.json", title_justify="left", show_edge=False)
        t.add_column("field", style="bold")
        t.add_column("value", justify="right")
        t.add_column("meaning")
        for k, v in report.params.items():
            e = explain_param(k)
            t.add_row(escape(k), "absent" if v is None else escape(str(v)), e.short if e else "")
        console.print(t)
        if explain:
            for k in report.params:
                e = explain_param(k)
                if e:
                    _out(f"\n[bold]{k}[/bold]")
                    console.print(e.long, markup=False)  # paragraphs: let rich wrap them at word boundaries
            _out()
    m = report.model
    if m is not None:
        t = Table(title=f"Model: {m.name or 'unknown (no valid params.json)'}", title_justify="left", show_edge=False,
                  show_header=False)
        for justify in ("left", "right", "left"):
            t.add_column("", justify=justify)  # type: ignore[arg-type]
        t.add_row("parameters", _count(m.param_count), "exact, from the shard shapes")
        if m.head_dim is not None:
            t.add_row("head_dim", str(m.head_dim), f"dim / n_heads = {m.dim} / {m.n_heads}")
        if m.ffn_hidden is not None:
            t.add_row("FFN hidden", str(m.ffn_hidden), _term_short("ffn_hidden"))
        if m.gqa_groups is not None:
            t.add_row("GQA groups", str(m.gqa_groups), "plain multi-head attention" if m.gqa_groups == 1
                      else f"{m.n_heads} query heads share {m.n_kv_heads} key/value heads")
        if m.vocab_size is not None:
            t.add_row("vocab", str(m.vocab_size), "rows of tok_embeddings.weight")
        if m.dtype:
            t.add_row("dtype on disk", m.dtype, "")
        if m.allowed_mp:
            t.add_row("possible MP", ", ".join(map(str, m.allowed_mp)), "splits every sharded dimension evenly")
        console.print(t)
        if m.chat:
            _out(f"chat: {escape(m.chat)}")
    s = report.shards
    if s is not None:
        mp = s.expected_mp or s.mp
        _out(f"[bold]Shards[/bold]: {s.mp} file(s); MP {mp}: run with {mp} process(es), one GPU each")
        t = Table(show_edge=False)
        t.add_column("file")
        t.add_column("size", justify="right")
        t.add_column("keys", justify="right")
        for f in s.files:
            t.add_row(f.name, human_bytes(f.bytes), str(f.keys) if f.readable else "[red]unreadable[/red]")
        console.print(t)
        verdict = "agree across shards" if s.consistent else "[red]differ between shards[/red]"
        if s.matches_params is not None:
            verdict += " and match params.json" if s.matches_params else "; [red]do not match params.json[/red]"
        _out(f"keys and shapes {verdict}")
        if s.split:
            by_dim: dict[str, list[str]] = {}
            for pattern, d in s.split.items():
                short = pattern.replace("layers.*.", "").replace(".weight", "").split(".")[-1]
                by_dim.setdefault("copied to every shard" if d is None else f"split on dim {d}", []).append(short)
            _out("layout: " + "; ".join(f"{k}: {' '.join(dict.fromkeys(v))}" for k, v in by_dim.items()))
    tok = report.tokenizer
    if tok is not None:
        match = "" if tok.matches_embedding is None else \
            " = embedding rows" if tok.matches_embedding else " [red]!= embedding rows[/red]"
        kind = "tiktoken BPE (Llama 3)" if tok.kind == "tiktoken" else "SentencePiece"
        _out(f"tokenizer {escape(tok.path)} ({kind}): {tok.n_words} tokens{match}; bos {tok.bos_id}, "
             f"eos {tok.eos_id}, pad {tok.pad_id}; generation stops on {', '.join(map(str, tok.stop_ids))}")
    c = report.checklist
    if c is not None:
        line = f"checklist.chk lists {len(c.listed)} file(s)"
        if c.missing:
            line += f"; [red]missing: {escape(', '.join(c.missing))}[/red]"
        if c.extra:
            line += f"; not listed: {escape(', '.join(c.extra))}"
        if c.verified:
            bad = [f.name for f in c.files if f.md5 is not None and not f.ok]
            line += "; md5 " + (f"[red]differs: {escape(', '.join(bad))}[/red]" if bad else "all match")
        else:
            line += " (md5 not checked: add --verify)"
        _out(line)
    mem = report.memory
    if mem is not None:
        _out(f"[bold]Memory per GPU[/bold] (MP {mem.mp}, {mem.dtype}, batch {mem.batch}, seq {mem.seq}): "
             f"weights {human_bytes(mem.weights_bytes)} + KV cache {human_bytes(mem.kv_cache_bytes)} + overhead "
             f"{human_bytes(mem.overhead_bytes)} = {human_bytes(mem.total_bytes)}")
        needs = fit_summary(mem.options, mem.dtype, mem.mp)
        if any(o.dtype == "int8" for o in mem.options):
            needs += f"; {fit_summary(mem.options, 'int8', mem.mp)}"
        _out(f"  {needs}", markup=False)
        for line in mem.advice:
            _out(f"  {line}", markup=False)


def print_problems(report: InspectReport) -> None:
    """Each problem as one clean line on stderr."""
    for p in report.problems:
        style = "red" if p.level == "error" else "yellow"
        err_console.print(f"[{style}]{p.level}[/{style}]: ", end="")
        err_console.print(p.one_line(), markup=False, soft_wrap=True)


@app.command("inspect")
def inspect_cmd(
    ckpt_dir: Optional[Path] = typer.Argument(None, help="Checkpoint folder (consolidated.NN.pth + params.json)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="tokenizer.model (default: found next to "
                                             "the checkpoint or in its parent)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Take batch, seq, dtype, tokenizer from a recipe."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help=f"bf16, fp16, fp32 or int8 (default {DEFAULT_DTYPE})."),
    batch: Optional[int] = typer.Option(None, "--batch",
                                        help=f"max_batch_size for the plan (default {DEFAULT_BATCH})."),
    seq: Optional[int] = typer.Option(None, "--seq", help=f"max_seq_len for the plan (default {DEFAULT_SEQ})."),
    verify: bool = typer.Option(False, "--verify", help="md5 of every file against checklist.chk (reads all bytes)."),
    explain: bool = typer.Option(False, "--explain", help="Print the longer explanation of each params.json field."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object (see docs/inspect.md)."),
) -> None:
    """What a checkpoint is, whether its files are intact, and how it fits on this machine's GPUs."""
    from llamakit.inspection import inspect_checkpoint, recipe_settings

    settings = recipe_settings(recipe) if recipe else {}
    ckpt = ckpt_dir or settings.get("ckpt_dir")
    if ckpt is None:
        raise LlamakitError("no checkpoint folder given", "pass CKPT_DIR (or a --recipe that names ckpt_dir)")
    if str(ckpt).startswith("builtin:"):  # e.g. `llamakit inspect builtin:demo`, as recipes name it
        from llamakit.run.recipe import resolve_builtin

        ckpt = resolve_builtin("ckpt_dir", str(ckpt))
    kwargs = dict(tokenizer=tokenizer or settings.get("tokenizer"),
                  dtype=dtype or settings.get("dtype") or DEFAULT_DTYPE,
                  batch=batch or settings.get("batch") or DEFAULT_BATCH,
                  seq=seq or settings.get("seq") or DEFAULT_SEQ, verify=verify)
    if verify:
        columns = (TextColumn("md5 {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=err_console, transient=True) as bar:
            task = bar.add_task("", total=None)
            report = inspect_checkpoint(ckpt, **kwargs,
                                        progress=lambda name, done, total: bar.update(
                                            task, description=name, completed=done, total=total))
    else:
        report = inspect_checkpoint(ckpt, **kwargs)
    if as_json:
        sys.stdout.write(report.to_json() + "\n")
    else:
        render(report, explain)
    print_problems(report)
    if not report.ok:  # the same problems stop run and new-recipe with exit code 2
        raise typer.Exit(2)
