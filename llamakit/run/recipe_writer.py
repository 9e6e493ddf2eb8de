"""`llamakit new-recipe`: a commented recipe sized from the checkpoint, the prompt file and the GPUs found here.

A student should never start from an empty file: every key is written with a plain-words comment (the texts of
checks/explain.yaml where a glossary term exists, else the recipe key's own meaning from llamakit.run.recipe) and
a note on why the value was chosen. max_seq_len comes from the longest prompt (tokenized) + max_gen_len,
max_batch_size from llamakit.memory on the GPUs found (or a small batch on the CPU).
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from llamakit.errors import LlamakitError
from llamakit.gpus import GpuInfo

if TYPE_CHECKING:
    from llamakit.checkpoint.params import ModelConfig

GiB = 1024**3
SEQ_STEP = 64  # max_seq_len is rounded up to a multiple of this
# The most sequences a written recipe decodes at once. max_batch_size is an upper limit (the paged KV cache admits by
# free memory), and larger batches still paid on an H200: the 1,024-prompt dataset workload ran at 11,052 tok/s at
# batch 256 and 11,421-12,210 with all 1,024 at once (`llamakit bench --preset 7b --workload dataset`, 2026-11-30,
# docs/BENCHMARKS.md). Beyond ~512 a step's matmuls are compute-bound and the steps only get longer.
BATCH_CAP = 512
HEADROOM = 0.9  # plan for 90% of each GPU: room for memory fragmentation and small jobs of other users
CPU_BATCH = 8  # on the CPU a small batch already uses every core
BIG_FOR_CPU = 1_000_000_000  # parameters above which a CPU run is hopeless (minutes per token)
# Longest text each published family was trained on: longer sequences work but get worse.
TRAINED_CONTEXT = {"LLaMA-1": 2048, "Llama-2": 4096}
# Meta's example values: some variety, still on topic.
TEMPERATURE, TOP_P = 0.6, 0.9


@dataclass(frozen=True)
class Target:
    """The GPUs the recipe is sized for: the ones found here, or ones described with --gpus (e.g. 2x48)."""

    gpus: tuple[GpuInfo, ...]
    cuda_ok: bool  # PyTorch here can use them (always true for described GPUs)
    described: str = ""  # the --gpus text when the GPUs were described (NxMEM or cpu), not found here

    def label(self) -> str:
        if not self.gpus:
            return "the CPU" if self.described else "the CPU (no GPU found)"
        if self.described:
            return f"{len(self.gpus)} GPU(s) of {self.gpus[0].total_bytes / GiB:g} GB (--gpus {self.described})"
        names: dict[str, int] = {}
        for g in self.gpus:
            names[g.name] = names.get(g.name, 0) + 1
        what = ", ".join(f"{n}x {name} ({g_total(self.gpus, name) / GiB:.0f} GiB)" for name, n in names.items())
        return what


def g_total(gpus: tuple[GpuInfo, ...], name: str) -> int:
    return min(g.total_bytes for g in gpus if g.name == name)


def parse_gpus(spec: str, gpu_facts: tuple[list[GpuInfo], bool] | None = None) -> Target:
    """--gpus: `auto` (those found here), `cpu`, `N` (the first N found here) or `NxMEM` (N GPUs of MEM GB)."""
    text = spec.strip().lower()
    m = re.fullmatch(r"(\d+)\s*x\s*(\d+(?:\.\d+)?)\s*(gb|gib|g)?", text)
    if m:
        n, mem = int(m.group(1)), float(m.group(2))
        if n < 1 or mem <= 0:
            raise LlamakitError(f"--gpus {spec}: needs at least one GPU with some memory",
                                "write it like --gpus 2x48 (two GPUs of 48 GB)", "command line")
        return Target(tuple(GpuInfo(i, "GPU", int(mem * GiB), int(mem * GiB), (8, 0)) for i in range(n)), True,
                      described=spec.strip())
    if text == "cpu" or text == "0":
        return Target((), False, described="cpu")
    if text != "auto" and not text.isdigit():
        raise LlamakitError(f"--gpus {spec!r} is not understood",
                            "use auto (the GPUs found here), cpu, a number (use that many of them) or a "
                            "description such as 2x48 (two GPUs of 48 GB)", "command line")
    if gpu_facts is None:
        from llamakit.run.plan import cuda_facts
        gpu_facts = cuda_facts()
    found, cuda_ok = list(gpu_facts[0]), gpu_facts[1]
    if text.isdigit():
        n = int(text)
        if n > len(found):
            raise LlamakitError(f"--gpus {n}: only {len(found)} GPU(s) found here",
                                f"use --gpus auto, --gpus {len(found) or 'cpu'}, or describe the server's GPUs, "
                                "e.g. --gpus 2x48", "command line")
        found = found[:n]
    return Target(tuple(found), cuda_ok)


@dataclass
class RecipePlan:
    """Every value new-recipe writes and the reason for it (the reasons become the recipe's comments)."""

    ckpt_value: str  # as the user wrote it (builtin:demo or a path)
    ckpt_path: Path
    model: str  # "LLaMA-1 13B", "custom", ...
    mp: int
    params: int
    tokenizer_value: str | None  # None: found inside ckpt_dir, left out of the recipe
    tokenizer_path: Path
    prompt_value: str
    prompt_path: Path
    prompt_field: str
    id_field: str
    n_prompts: int
    longest: int  # tokens of the longest prompt, bos included
    longest_line: int
    out_value: str
    log_value: str
    max_gen_len: int
    max_seq_len: int
    on_long_prompt: str
    n_long: int  # prompts cut by on_long_prompt: truncate
    max_batch_size: int
    quantize: str
    target: Target
    dp: int
    device: str  # what device: auto will pick for this target: cuda or cpu
    fits_batch: int  # the largest batch the memory plan allows (0 on the CPU)
    per_gpu: str  # memory estimate per GPU at the chosen values ("" on the CPU)
    notes: list[str] = field(default_factory=list)  # warnings for the terminal and the recipe's head
    chat_format: str = "none"  # llama2-chat / llama3-instruct when the prompt file holds message lists
    chat_format_for_tokenizer: str = "llama2-chat"  # the chat format this checkpoint's tokenizer belongs to


def round_up(n: int, step: int = SEQ_STEP) -> int:
    return max(step, math.ceil(n / step) * step)


def _trained_context(model: str) -> int | None:
    for family, ctx in TRAINED_CONTEXT.items():
        if model.startswith(family):
            return ctx
    return None


@dataclass
class Sizing:
    """The values chosen from the model, the prompt lengths and the GPUs, with notes on anything unusual."""

    max_seq_len: int
    on_long_prompt: str
    n_long: int
    max_batch_size: int
    quantize: str
    target: Target
    dp: int
    device: str
    fits_batch: int
    per_gpu: str
    notes: list[str]


def choose_size(config: ModelConfig, vocab_rows: int, mp: int, model: str, lengths: list[int], max_gen_len: int,
                target: Target, ckpt_path: Path) -> Sizing:
    """Pure rule: max_seq_len from the longest prompt, max_batch_size (and int8 if needed) from the memory plan."""
    from llamakit.fit import capacity_words, mp_within, reshard_command, verdict
    from llamakit.memory import fmt_gib, kv_tokens_that_fit, plan_memory, weight_dtype

    longest = max(lengths)
    notes: list[str] = []
    ctx = _trained_context(model)
    max_seq_len, on_long, n_long = round_up(longest + max_gen_len), "error", 0
    if ctx and max_seq_len > ctx:
        if max_gen_len >= ctx // 2:
            raise LlamakitError(f"--max-gen-len {max_gen_len} leaves little room for prompts in the {ctx} tokens "
                                f"{model} was trained on", f"use a smaller --max-gen-len (e.g. {ctx // 4})",
                                "command line")
        max_seq_len, on_long = ctx, "truncate"
        n_long = sum(1 for n in lengths if n > ctx - max_gen_len)
        if n_long:
            notes.append(f"{n_long} prompt(s) are longer than {ctx - max_gen_len} tokens (the {ctx} tokens {model} "
                         f"was trained on minus max_gen_len {max_gen_len}): on_long_prompt: truncate keeps their "
                         "beginning")

    n = len(target.gpus)
    params = config.with_vocab(vocab_rows).param_count()
    quantize, fits_batch, per_gpu = "none", 0, ""
    if n:
        if n < mp:
            budget = int(min(g.total_bytes for g in target.gpus) * HEADROOM)
            v = verdict(config, vocab_rows, mp, "bf16", 1, max_seq_len, budget, n)
            m = v.mp_to or mp_within(mp, n)
            raise LlamakitError(f"this checkpoint has MP={mp} shards and needs {mp} GPUs for one copy, but the recipe "
                                f"is for {n} GPU(s) ({target.label()})",
                                f"reshard it first: {reshard_command(ckpt_path, m)}, then run new-recipe with that "
                                "folder (it adds quantize: int8 if needed)", str(ckpt_path))
        dp = n // mp
        gpu_total = min(g.total_bytes for g in target.gpus[: mp * dp])
        gpu_bytes = int(gpu_total * HEADROOM)
        # the largest batch at this MP (no reshard: the recipe is for this folder), bf16 first, else int8
        v = verdict(config, vocab_rows, mp, "bf16", 4096, max_seq_len, gpu_bytes, mp, cap=4096)
        if not v.fits and v.fix_plan is None:
            w = plan_memory(config, vocab_rows, mp, "int8", 1, max_seq_len)
            wider = verdict(config, vocab_rows, mp, "bf16", 1, max_seq_len, gpu_bytes, n)
            more = (f"reshard to MP={wider.mp_to} to spread it over {wider.mp_to} GPUs: "
                    f"{reshard_command(ckpt_path, wider.mp_to)}" if wider.mp_to else
                    "use a machine with more or larger GPUs")
            raise LlamakitError(f"{model} at MP={mp} does not fit {fmt_gib(gpu_total)} per GPU even with int8 "
                                f"weights ({fmt_gib(w.total)} at batch 1, max_seq_len {max_seq_len})", more,
                                str(ckpt_path))
        fits_batch = v.max_batch if v.fits else (v.fix_plan.batch if v.fix_plan else 4096)
        if v.int8:
            quantize = "int8"
            notes.append(f"the bf16 weights do not fit {fmt_gib(gpu_total)} per GPU at MP={mp}: the recipe uses "
                         "quantize: int8 (about half the weight memory, slightly different text)")
        per_replica = math.ceil(len(lengths) / dp)
        batch = max(1, min(fits_batch, BATCH_CAP, per_replica))
        m = plan_memory(config, vocab_rows, mp, weight_dtype("bf16", quantize), batch, max_seq_len)
        typical = min(max_seq_len, sorted(lengths)[len(lengths) // 2] + max_gen_len) if lengths else None
        kv = kv_tokens_that_fit(config, vocab_rows, mp, weight_dtype("bf16", quantize), max_seq_len, gpu_bytes, batch)
        per_gpu = f"{m.breakdown()} of {fmt_gib(gpu_total)} per GPU; {capacity_words(kv, max_seq_len, typical)}"
        device = "cuda" if target.cuda_ok else "cpu"
        if not target.cuda_ok:
            notes.append("GPUs were found but PyTorch here cannot use them (a CPU-only torch or a driver problem): "
                         "run `llamakit doctor` and apply its fix, or the run goes to the CPU")
        busy = [g for g in target.gpus[: mp * dp] if not target.described and g.free_bytes < m.total]
        if busy:
            notes.append(f"GPU {busy[0].index} has only {fmt_gib(busy[0].free_bytes)} free right now (another job "
                         "is using it): the run may stop with 'out of memory' until that job ends (see nvidia-smi)")
    else:
        dp, device = 1, "cpu"
        batch = max(1, min(CPU_BATCH, len(lengths)))
        if params > BIG_FOR_CPU:
            notes.append(f"no GPU: this recipe runs {model} ({params / 1e9:.1f} billion parameters) on the CPU, "
                         "which takes minutes per token; write the recipe on the GPU server, or pass --gpus 2x48")
    return Sizing(max_seq_len, on_long, n_long, batch, quantize, target, dp, device, fits_batch, per_gpu, notes)


def plan_recipe(ckpt: str, prompts: str, recipe_path: str | Path, out: str | None = None, gpus: str = "auto",
                max_gen_len: int = 256, tokenizer: str | None = None, prompt_field: str = "prompt",
                id_field: str = "id", gpu_facts: tuple[list[GpuInfo], bool] | None = None) -> RecipePlan:
    """Read the checkpoint (shapes only), the prompts (tokenized) and the GPUs, and choose every recipe value."""
    from llamakit.checkpoint.params import identify
    from llamakit.checkpoint.shards import open_checkpoint
    from llamakit.run.prompts import prompt_encoder, read_prompts
    from llamakit.run.recipe import resolve_builtin
    from llamakit.tokenizer import Tokenizer, find_tokenizer

    if max_gen_len < 1:
        raise LlamakitError(f"--max-gen-len {max_gen_len} is too small", "use a number of new tokens >= 1, e.g. 256",
                            "command line")
    recipe_path = Path(recipe_path)
    ckpt_path = resolve_builtin("ckpt_dir", ckpt)
    c = open_checkpoint(ckpt_path)
    model = ("the built-in demo model (0.9M parameters, trained on bundled news text)" if ckpt.startswith("builtin:")
             else identify(c.config))
    model = "a model of unpublished shape" if model == "custom" else model
    params = c.config.with_vocab(c.vocab_rows).param_count()
    if tokenizer:
        tok_path = Path(tokenizer).expanduser()
        tok_value: str | None = tokenizer
    else:
        tok_path = find_tokenizer(ckpt_path)
        tok_value = None if tok_path.resolve().parent == ckpt_path else str(tok_path.resolve())
    tok = Tokenizer(tok_path)
    if tok.n_words != c.vocab_rows:
        raise LlamakitError(f"tokenizer has {tok.n_words} tokens but the checkpoint's embedding has {c.vocab_rows} "
                            "rows", "use the tokenizer.model that came with this checkpoint (--tokenizer FILE)",
                            tok_path.resolve())
    prompt_path = resolve_builtin("prompt_path", prompts)
    # Base or chat weights cannot be told apart; message lists in the prompt file can: then the chat format is the
    # one of this tokenizer's family.
    tok_format = "llama3-instruct" if tok.kind == "tiktoken" else "llama2-chat"
    items = read_prompts(prompt_path, prompt_field, id_field, tok_format)
    chat_format = tok_format if any(not isinstance(p.text, str) for p in items) else "none"
    lengths = [len(ids) for ids in prompt_encoder(tok, chat_format, prompt_path)(items)]  # bos included, as run
    longest = max(lengths)
    longest_line = items[lengths.index(longest)].line

    size = choose_size(c.config, c.vocab_rows, c.mp, model, lengths, max_gen_len, parse_gpus(gpus, gpu_facts),
                       ckpt_path)
    out_value = out if out else str(recipe_path.with_suffix(".jsonl"))
    if not out and Path(out_value).expanduser().resolve() == prompt_path:
        # `new-recipe ... news.jsonl news.yaml` would otherwise write the output over the prompt file's name
        out_value = str(recipe_path.with_name(recipe_path.stem + "-out.jsonl"))
    log_value = str(Path(out_value).with_suffix(".log"))
    notes = size.notes
    if Path(out_value).expanduser().exists():
        notes.append(f"{out_value} already exists: the run keeps its rows and generates only the missing prompts "
                     "(use --out for a fresh file)")
    return RecipePlan(ckpt, ckpt_path, model, c.mp, params, tok_value, tok_path.resolve(), prompts, prompt_path,
                      prompt_field, id_field, len(items), longest, longest_line, out_value, log_value, max_gen_len,
                      size.max_seq_len, size.on_long_prompt, size.n_long, size.max_batch_size, size.quantize,
                      size.target, size.dp, size.device, size.fits_batch, size.per_gpu, notes, chat_format, tok_format)


# ---------------------------------------------------------------- rendering


def _about(key: str) -> str:
    """What a recipe key means, in the users' words: the glossary's short text if it has one, else the key's."""
    from llamakit.explain import explain_term
    from llamakit.run.recipe import KEYS

    e = explain_term(key)
    if e is not None and e.section == "terms":
        return e.short
    return KEYS[key].meaning


def _scalar(value: Any) -> str:
    """One YAML scalar exactly as yaml would write it (quotes only where needed)."""
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10_000).strip().removesuffix(
        "\n...").removesuffix("...").strip()


def render_recipe(p: RecipePlan, recipe_name: str, today: _dt.date | None = None) -> str:
    """The recipe text: a header on how to use it, then every key with its meaning and why this value."""
    today = today or _dt.date.today()
    cwd = Path.cwd()
    gen_room = p.max_seq_len - p.max_gen_len
    lines: list[str] = [
        f"# Recipe for `llamakit run`, written by `llamakit new-recipe` on {today.isoformat()}",
        f"# for {p.model} and {p.n_prompts} prompts, sized for {p.target.label()}.",
        f"#   llamakit run {recipe_name} --dry-run    # check everything, show the plan; starts nothing",
        f"#   llamakit run {recipe_name}              # generate; after a crash or Ctrl-C the same command resumes",
        "# Change any value here, or for one run: --set key=value. `llamakit explain WORD` explains a word.",
        f"# Relative paths start at the folder you run llamakit from (it was {cwd} when this was written),",
        "# not at this file. builtin: means data shipped with llamakit.",
    ]
    for note in p.notes:
        lines.append(f"# NOTE: {note}")
    lines.append("")

    def key(name: str, value: Any, why: str = "", commented: bool = False) -> None:
        about = _about(name)
        lines.append(f"# {about[:1].upper()}{about[1:]}.")
        if why:
            lines.append(f"# {why}")
        lines.append(f"{'# ' if commented else ''}{name}: {_scalar(value)}")
        lines.append("")

    lines += ["# ---- what to read and where to write", ""]
    key("ckpt_dir", p.ckpt_value, f"Here: {p.model}, MP={p.mp} ({p.mp} shard file(s): one GPU each), "
        f"{p.params / 1e9:.2f} billion parameters." if p.params >= 1e8 else
        f"Here: {p.model}, MP={p.mp} ({p.mp} shard file(s)), {p.params:,} parameters.")
    if p.tokenizer_value is None:
        key("tokenizer_path", "tokenizer.model", "Left out: the tokenizer.model inside ckpt_dir is used.",
            commented=True)
    else:
        key("tokenizer_path", p.tokenizer_value, "Its size matches the checkpoint's embedding rows.")
    key("prompt_path", p.prompt_value, f"Here: {p.n_prompts} prompts; the longest has {p.longest} tokens (line "
        f"{p.longest_line}).")
    key("prompt_field", p.prompt_field)
    if p.chat_format != "none":
        key("chat_format", p.chat_format, "The prompt file holds message lists, and this tokenizer belongs to this "
            "format; a plain string prompt is one user turn.")
    else:
        key("chat_format", "none", f"Plain text. Whether the weights are a chat model the files cannot tell (Meta's "
            f"folder names say it: ...-chat, ...-Instruct); for one, set {p.chat_format_for_tokenizer}.")
    key("id_field", p.id_field, "Ids must be unique: resume finds the finished prompts by them.")
    key("params_field", "params", "A prompt line may hold its own decoding settings there, e.g. "
        '{"params": {"temperature": 0, "n": 1}}; they override this recipe for that prompt.')
    key("out_path", p.out_value, "Each row: id, prompt, completion, prompt_tokens, completion_tokens, finish_reason "
        "and your other fields.")
    key("logging_path", p.log_value, "Left out on purpose: the log then sits next to out_path (out_path with .log), "
        "also when you change out_path with --out for one run.", commented=True)

    lines += ["# ---- how much text", ""]
    key("max_gen_len", p.max_gen_len, "A token is a word or a piece of one; German text needs more tokens than English.")
    key("max_seq_len", p.max_seq_len,
        f"Longest prompt {p.longest} + max_gen_len {p.max_gen_len}, rounded up to a multiple of {SEQ_STEP}; "
        f"prompts may have up to {gen_room} tokens." if p.on_long_prompt == "error" else
        f"The {p.max_seq_len} tokens {p.model} was trained on; prompts may have up to {gen_room} tokens.")
    key("on_long_prompt", p.on_long_prompt,
        "error = stop before anything starts and name the line; truncate = keep the prompt's beginning; "
        "skip = write a row with finish_reason skipped." if p.on_long_prompt == "error" else
        f"{p.n_long} prompt(s) are longer than {gen_room} tokens: their beginning is kept (skip: leave them out; "
        "error: stop).")

    lines += ["# ---- speed and memory", ""]
    if p.target.gpus:
        fit = (f"The memory plan allows {p.fits_batch} at this max_seq_len (using {HEADROOM:.0%} of each GPU)" if p.fits_batch < 4096 else
               "The memory plan allows far more")
        why_cap = (f"; capped at {BATCH_CAP} (beyond it a step's matmuls are compute-bound; try --set "
                   "max_batch_size=N)"
                   if p.max_batch_size == BATCH_CAP and p.fits_batch > BATCH_CAP else
                   "; no more than the prompts each copy of the model gets" if p.max_batch_size < min(p.fits_batch,
                                                                                                      BATCH_CAP)
                   else "")
        key("max_batch_size", p.max_batch_size, f"{fit}{why_cap}. Per GPU: {p.per_gpu}.")
    else:
        key("max_batch_size", p.max_batch_size, "A small batch for the CPU. On a GPU server, write the recipe there (or pass --gpus "
            "2x48): new-recipe then picks the batch from the GPU memory.")
    key("quantize", p.quantize, "none = the weights as Meta ships them (16 bit); int8 = half the weight memory." if
        p.quantize == "none" else "int8: the 16-bit weights do not fit these GPUs.")
    auto_dev = ("cuda" if p.device == "cuda" else "cpu")
    key("device", "auto", f"Here auto means {auto_dev}.")
    key("dtype", "auto", "auto = bf16 on Ampere or newer GPUs (A6000: yes), fp16 on older ones, fp32 on the CPU.")
    key("nproc", "auto", f"auto = MP x data-parallel copies = {p.mp} x {p.dp} = {p.mp * p.dp} process(es) "
        f"{'on ' + str(p.mp * p.dp) + ' GPU(s)' if p.device == 'cuda' else 'on the CPU'}.")
    key("fast", True, "Set false only to rule it out when looking for a bug.")
    key("kv_cache_dtype", "auto", "auto = keys/values in the compute dtype; fp8 holds twice the tokens (twice the "
        "sequences at once) and rounds them to 3 mantissa bits (vLLM's key).")
    key("batch_invariant", False, "true = a prompt's text and logprobs do not depend on what else is in its batch, "
        "bit for bit, also in bf16 on GPUs; costs 10-20 % of the speed (docs/run.md).")
    key("gpu_memory_utilization", 1.0, "Fraction of each GPU's memory this run may use (vLLM's key); e.g. 0.34 "
        "acts as a 48 GB card on a 141 GB H200.")

    lines += ["# ---- sampling (how the next token is chosen)", ""]
    key("temperature", TEMPERATURE, "Meta's example value. 0 = greedy: the same text every time.")
    key("top_p", TOP_P, "Meta's example value; only used when temperature > 0.")
    key("seed", 1, "Same seed + same prompts = same texts, also after a resume.")
    key("n", 1, "More than 1 (with temperature > 0): that many different texts per prompt, rows marked sample 0..n-1.")
    key("top_k", 0, "0 = off; e.g. 50 keeps the 50 most likely tokens.")
    key("min_p", 0.0, "0 = off.")
    key("repetition_penalty", 1.0, "1 = off; 1.2 discourages repeating tokens of the prompt and the text so far.")
    key("presence_penalty", 0.0, "0 = off.")
    key("frequency_penalty", 0.0, "0 = off.")
    key("min_tokens", 0, "0 = the model may end a text at once.")
    key("stop", [], 'e.g. ["\\n\\n"] ends each text at its first blank line.')
    key("stop_token_ids", [], "The tokenizer's end-of-text token always stops a text; these ids too.")
    key("logprobs", None, "e.g. 5: rows also get each token's log-probability, rank and the 5 most likely tokens.")
    key("ignore_eos", False, "true = every text runs to max_gen_len, past the end-of-text token.")
    return "\n".join(lines).rstrip() + "\n"


def check_text(text: str, where: Path) -> None:
    """Validate the written text with the run's own loader, so the recipe is known good before it is saved."""
    from llamakit.run.recipe import check_recipe_text

    check_recipe_text(text, where)


def write_new_recipe(recipe_path: str | Path, ckpt: str, prompts: str, **kw: Any) -> tuple[Path, RecipePlan, str]:
    """Plan, render, validate and write a new recipe file; an existing file is never overwritten."""
    path = Path(recipe_path)
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise LlamakitError("the recipe file name must end in .yaml",
                            f"e.g. {path.with_suffix('.yaml').name} (the generated texts go to --out, default "
                            f"{path.with_suffix('.jsonl').name})", path)
    if path.exists():
        raise LlamakitError("this file already exists; new-recipe never overwrites a file",
                            "choose another name, or delete the old file first", path.resolve())
    plan = plan_recipe(ckpt, prompts, path, **kw)
    text = render_recipe(plan, str(recipe_path))
    check_text(text, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x", encoding="utf-8") as f:  # "x": fails if someone created it meanwhile
            f.write(text)
    except FileExistsError:
        raise LlamakitError("this file already exists; new-recipe never overwrites a file",
                            "choose another name, or delete the old file first", path.resolve()) from None
    return path, plan, text


def summary_lines(path: Path, p: RecipePlan) -> list[str]:
    """What the CLI prints after writing: what was found, what was chosen, what to type next."""
    where = ("cuda" if p.device == "cuda" else "cpu")
    out = [f"wrote {path}",
           f"  model     {p.ckpt_value}: {p.model}, MP={p.mp}",
           f"  prompts   {p.prompt_value}: {p.n_prompts} prompts, longest {p.longest} tokens",
           f"  sized for {p.target.label()}: {where}, MP={p.mp} x DP={p.dp}, max_batch_size {p.max_batch_size}, "
           f"max_seq_len {p.max_seq_len}, max_gen_len {p.max_gen_len}"
           + (", quantize int8" if p.quantize == "int8" else ""),
           f"  output    {p.out_value} (log: {p.log_value})"]
    out += [f"note: {n}" for n in p.notes]
    out += [f"next: llamakit run {path} --dry-run   (checks everything, starts nothing)",
            f"      llamakit run {path}             (generates; the same command resumes)"]
    return out
