"""Texts to score in (.jsonl / .txt, checked line by line before anything starts) and their token windows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from llamakit.errors import LlamakitError

# Fields a score row starts with; the input's other fields follow unchanged (so they must not clash).
ROW_FIELDS = ("id", "n_tokens", "logprob_sum", "logprob_mean", "ppl", "logrank_mean", "lrr", "entropy_mean",
              "gltr_top10", "gltr_top100", "gltr_top1000", "fastdetect", "xent_mean", "binoculars",
              "token_ids", "token_logprobs", "token_ranks", "token_entropies")


@dataclass
class Text:
    """One text of the input file."""

    index: int  # 0-based line index
    line: int  # 1-based line number, for messages
    id: str | int
    text: str
    prefix: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # every input field but the id, passed through


def read_texts(path: Path, text_field: str = "text", prefix_field: str | None = None, id_field: str = "id",
               label_field: str | None = None) -> list[Text]:
    """Every text; blank lines are ignored, anything else that cannot be scored is an error naming file:line."""
    from llamakit.run.prompts import records, unique_id

    path = Path(path)
    is_txt, rows = records(path, "text", text_field)
    if is_txt and (prefix_field or label_field):
        raise LlamakitError("a .txt file has one text per line and no fields, but the recipe sets "
                            f"{'prefix_field' if prefix_field else 'label_field'}",
                            "use a .jsonl file with those fields, or leave the key out", path)
    texts: list[Text] = []
    seen: dict[str, int] = {}
    for index, line, obj in rows:
        if is_txt:
            texts.append(Text(index, line, line, obj))
            continue
        for key, what, required in ((text_field, "text", True), (prefix_field, "prefix", False)):
            if key is None:
                continue
            if key not in obj:
                keys = ", ".join(list(obj)[:6]) or "none"
                fix = (f"add it, or set {'text_field' if what == 'text' else 'prefix_field'} in the recipe to the "
                       "field holding it")
                raise LlamakitError(f"no '{key}' field (fields: {keys})", fix, path, line)
            if not isinstance(obj[key], str):
                raise LlamakitError(f"field '{key}' is {type(obj[key]).__name__}, not text",
                                    f"make the {what} a JSON string", path, line)
        if not obj[text_field].strip():
            raise LlamakitError(f"field '{text_field}' is empty: there is nothing to score",
                                "remove the line or give it a text", path, line)
        if label_field is not None:
            if label_field not in obj or obj[label_field] is None:
                raise LlamakitError(f"no '{label_field}' label (label_field)",
                                    "give every text a label (e.g. human / machine), or leave label_field out",
                                    path, line)
            if not isinstance(obj[label_field], (str, int, bool)):
                raise LlamakitError(f"label '{label_field}' is {type(obj[label_field]).__name__}",
                                    "use a string, integer or true/false label", path, line)
        extra = {k: v for k, v in obj.items() if k != id_field}
        clash = sorted(set(ROW_FIELDS) & set(extra) - {text_field, prefix_field})
        if clash:
            raise LlamakitError(f"field '{clash[0]}' would be overwritten by the score of that name",
                                "rename it in the input", path, line)
        tid = unique_id(obj, id_field, line, seen, path, "scored texts")
        texts.append(Text(index, line, tid, obj[text_field], obj[prefix_field] if prefix_field else "", extra))
    if not texts:
        raise LlamakitError("text file has no texts",
                            "add one text per line" if is_txt else "add one JSON object per line", path)
    return texts


@dataclass
class Window:
    """One forward pass: `tokens` of a text, scoring targets tokens[lo:hi] (each from the logits one before)."""

    key: int  # the text's index
    part: int  # window number within the text
    tokens: list[int]
    lo: int
    hi: int


@dataclass
class Tokenized:
    text: Text
    tokens: list[int]  # [bos] + encode(prefix) + encode(text)
    n_context: int  # bos + prefix tokens (conditioning, not scored)


def tokenize(texts: list[Text], encode: Callable[[list[str]], list[list[int]]], bos_id: int,
             max_seq_len: int, stride: int | None, path: Path, hint: str = "") -> list[Tokenized]:
    """[bos] + encode(prefix) + encode(text), each encoded on its own; without stride a text longer than
    max_seq_len, and with stride a prefix that leaves no room in the window, is an error with file:line."""
    bodies = encode([t.text for t in texts])
    prefixes = encode([t.prefix for t in texts]) if any(t.prefix for t in texts) else [[] for _ in texts]
    out = []
    for t, body, pre in zip(texts, bodies, prefixes):
        if not body:
            raise LlamakitError("the text encodes to no tokens: there is nothing to score",
                                "remove the line or give it a text", path, t.line)
        tokens = [bos_id] + pre + body
        if stride is None and len(tokens) > max_seq_len:
            raise LlamakitError(f"text has {len(tokens)} tokens (bos + prefix + text), more than max_seq_len "
                                f"{max_seq_len}", f"raise max_seq_len, or set stride (e.g. stride: "
                                f"{max(1, max_seq_len // 2)}) to score it in sliding windows{hint}", path, t.line)
        out.append(Tokenized(t, tokens, 1 + len(pre)))
    return out


def windows(item: Tokenized, max_seq_len: int, stride: int | None) -> list[Window]:
    """The forward passes for one text, as the HF perplexity guide slides them: windows of max_seq_len tokens
    starting every `stride` tokens; each scores only the tokens the previous window did not, with at least
    max_seq_len - stride tokens of context. Tokens before n_context (bos, prefix) are never scored."""
    toks, n = item.tokens, len(item.tokens)
    first = max(1, item.n_context)
    if stride is None or n <= max_seq_len:
        return [Window(item.text.index, 0, toks, first, n)]
    out: list[Window] = []
    prev_end = 0
    begin = 0
    while prev_end < n:
        end = min(begin + max_seq_len, n)
        lo, hi = max(prev_end, first), end
        if hi > lo:
            out.append(Window(item.text.index, len(out), toks[begin:end], lo - begin, hi - begin))
        prev_end = end
        begin += stride
    return out
