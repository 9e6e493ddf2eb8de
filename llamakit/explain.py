"""Plain-language texts for params.json fields and glossary terms, read from checks/explain.yaml (data, not code)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from llamakit.data import data_dir, load_table
from llamakit.errors import LlamakitError

EXPLAIN_FILE = "explain.yaml"
SECTIONS = ("params", "terms")


@dataclass(frozen=True)
class Explanation:
    """One entry: a one-line `short` for tables and a `long` onboarding text."""

    key: str
    section: str  # "params" or "terms"
    short: str
    long: str
    aliases: tuple[str, ...] = ()


def _norm(name: str) -> str:
    """Spelling-insensitive lookup key: 'Local Rank', '--local-rank', 'LOCAL_RANK' -> 'local_rank'."""
    return name.strip().lstrip("-").lower().replace("-", "_").replace(" ", "_")


@lru_cache(maxsize=None)
def explain_texts() -> dict[str, dict[str, Explanation]]:
    """Load and check checks/explain.yaml: {'params': {field: Explanation}, 'terms': {term: Explanation}}."""
    where = data_dir("checks") / EXPLAIN_FILE
    try:
        raw = load_table(EXPLAIN_FILE)
    except Exception as e:  # yaml.YAMLError or OSError: a broken data file is a packaging bug with a fix
        raise LlamakitError(f"cannot read the explanation texts ({type(e).__name__})",
                            "restore checks/explain.yaml from the llamakit release", where) from None
    if not isinstance(raw, dict) or any(not isinstance(raw.get(s), dict) for s in SECTIONS):
        raise LlamakitError("explain.yaml must have the sections `params:` and `terms:`",
                            "restore checks/explain.yaml from the llamakit release", where)
    out: dict[str, dict[str, Explanation]] = {}
    for section in SECTIONS:
        entries: dict[str, Explanation] = {}
        for key, entry in raw[section].items():
            if not isinstance(entry, dict) or not all(isinstance(entry.get(f), str) for f in ("short", "long")):
                raise LlamakitError(f"explain.yaml {section}.{key} needs text fields `short` and `long`",
                                    "add them (plain strings)", where)
            aliases = entry.get("aliases") or []
            entries[str(key)] = Explanation(str(key), section, entry["short"].strip(), entry["long"].rstrip(),
                                            tuple(str(a) for a in aliases))
        out[section] = entries
    return out


def explain_param(field: str) -> Explanation | None:
    """The explanation of one params.json field, or None for a field the texts do not cover."""
    return explain_texts()["params"].get(field)


def explain_term(name: str) -> Explanation | None:
    """Look a word up in the glossary (then among params fields), by key or alias, ignoring case, '-', ' '."""
    want = _norm(name)
    texts = explain_texts()
    for section in ("terms", "params"):
        for entry in texts[section].values():
            if want == _norm(entry.key) or want in (_norm(a) for a in entry.aliases):
                return entry
    return None
