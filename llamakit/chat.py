"""Chat prompts as Meta's reference code encodes them: Llama 2 chat ([INST] / <<SYS>>, bos and eos per turn, as
meta-llama/llama generation.py chat_completion) and Llama 3 instruct (header tokens, <|eot_id|>, as the ChatFormat
of meta-llama/llama3 tokenizer.py). A prompt is a string (one user turn) or a list of {role, content} messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llamakit.errors import LlamakitError
from llamakit.tokenizer import Tokenizer

CHAT_FORMATS = ("none", "llama2-chat", "llama3-instruct")
ROLES = ("system", "user", "assistant")
# Llama 2 chat markers (Meta's B_INST/E_INST, B_SYS/E_SYS); Meta refuses prompts that contain the tags themselves.
B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
LLAMA2_TAGS = (B_INST, E_INST, "<<SYS>>", "<</SYS>>")
EXAMPLE = '[{"role": "system", "content": "..."}, {"role": "user", "content": "..."}]'


def _err(what: str, fix: str, where: Path | str | None, line: int | None) -> LlamakitError:
    return LlamakitError(what, fix, where, line)


def messages_of(prompt: Any, where: Path | str | None = None, line: int | None = None) -> list[dict[str, str]]:
    """The messages of one prompt, checked as Meta requires: an optional system message first, then user and
    assistant alternating, starting and ending with user. A string is one user message."""
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise _err(f"a chat prompt must be a string or a non-empty list of messages, got {type(prompt).__name__}",
                   f"write it as a string (one user turn) or as {EXAMPLE}", where, line)
    out = []
    for i, m in enumerate(prompt, 1):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise _err(f"message {i} must be an object with exactly 'role' and 'content'",
                       f"write messages like {EXAMPLE}", where, line)
        if m["role"] not in ROLES:
            raise _err(f"message {i} has role {m['role']!r}", f"use one of: {', '.join(ROLES)}", where, line)
        if not isinstance(m["content"], str):
            raise _err(f"message {i} content is {type(m['content']).__name__}, not text",
                       "make each content a JSON string", where, line)
        out.append({"role": m["role"], "content": m["content"]})
    turns = out[1:] if out[0]["role"] == "system" else out
    expected = ["user" if k % 2 == 0 else "assistant" for k in range(len(turns))]
    roles = [m["role"] for m in turns]
    if roles != expected or not turns or roles[-1] != "user":
        raise _err(f"roles are {', '.join(m['role'] for m in out)}; the chat formats need an optional system "
                   "message, then user and assistant alternating, ending with user",
                   "reorder or merge the messages (the model answers the last user message)", where, line)
    return out


def check_tokenizer(chat_format: str, tok: Tokenizer, where: Path | str | None = None) -> None:
    """Each format belongs to one tokenizer kind: llama2-chat to SentencePiece, llama3-instruct to tiktoken."""
    need = {"llama2-chat": "sentencepiece", "llama3-instruct": "tiktoken"}.get(chat_format)
    if need and tok.kind != need:
        other = "llama3-instruct" if tok.kind == "tiktoken" else "llama2-chat"
        raise _err(f"chat_format {chat_format} needs a {'Llama 3' if need == 'tiktoken' else 'Llama 2'} tokenizer, "
                   f"but {tok.path.name} is a {tok.kind} tokenizer",
                   f"use chat_format: {other} (or none) for this checkpoint", where, None)


def encode_llama2_chat(tok: Tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Meta's Llama 2 chat_completion: the system text folded into the first user turn, each finished
    [INST] user [/INST] answer turn encoded on its own with bos and eos, the last user turn with bos only."""
    if messages[0]["role"] == "system":
        first = B_SYS + messages[0]["content"] + E_SYS + messages[1]["content"]
        messages = [{"role": "user", "content": first}] + messages[2:]
    ids: list[int] = []
    for user, answer in zip(messages[0::2], messages[1::2]):
        ids += tok.encode(f"{B_INST} {user['content'].strip()} {E_INST} {answer['content'].strip()} ",
                          bos=True, eos=True)
    ids += tok.encode(f"{B_INST} {messages[-1]['content'].strip()} {E_INST}", bos=True, eos=False)
    return ids


def encode_llama3_instruct(tok: Tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Meta's Llama 3 ChatFormat.encode_dialog_prompt: <|begin_of_text|>, then per message a header
    (<|start_header_id|>role<|end_header_id|> and "\\n\\n") and the stripped content closed by <|eot_id|>, then an
    open assistant header for the model to complete."""
    sp = tok.special

    def header(role: str) -> list[int]:
        return [sp["<|start_header_id|>"], *tok.encode(role, bos=False), sp["<|end_header_id|>"],
                *tok.encode("\n\n", bos=False)]

    ids = [sp["<|begin_of_text|>"]]
    for m in messages:
        ids += header(m["role"]) + tok.encode(m["content"].strip(), bos=False) + [sp["<|eot_id|>"]]
    return ids + header("assistant")


def encode_prompt(tok: Tokenizer, chat_format: str, prompt: Any, where: Path | str | None = None,
                  line: int | None = None) -> list[int]:
    """Token ids of one prompt (bos included): plain text with chat_format none, else the chat format's."""
    if chat_format == "none":
        if not isinstance(prompt, str):
            raise _err(f"the prompt is a {type(prompt).__name__}, but chat_format is none (plain text)",
                       "set chat_format: llama2-chat or llama3-instruct for message lists", where, line)
        return tok.encode(prompt)
    messages = messages_of(prompt, where, line)
    if chat_format == "llama2-chat":
        bad = next((t for m in messages for t in LLAMA2_TAGS if t in m["content"]), None)
        if bad:
            raise _err(f"a message contains the Llama 2 chat tag {bad!r} (Meta's chat_completion refuses it)",
                       "remove the tag from the text", where, line)
        return encode_llama2_chat(tok, messages)
    if chat_format == "llama3-instruct":
        return encode_llama3_instruct(tok, messages)
    raise _err(f"unknown chat_format {chat_format!r}", f"use one of: {', '.join(CHAT_FORMATS)}", where, line)
