"""The toy detection set of docs/score.md: human-written news leads vs continuations the demo model writes.

    python tools/score_demo_set.py leads docs/examples/score-demo/leads.jsonl
    for s in 1 2 3; do llamakit run docs/examples/score-demo/generate.yaml --set seed=$s --out gen-$s.jsonl; done
    python tools/score_demo_set.py texts demo-texts.jsonl gen-1.jsonl gen-2.jsonl gen-3.jsonl
    llamakit score docs/examples/score-demo/score.yaml

Human text: the 10 shipped demo leads (llamakit/assets/demo-prompts.jsonl, written by a person and NOT in the demo
model's training corpus), each cut after its first 5 words: the 5 words are the context (`lead`), the rest is the
human text. Machine text: the demo model's sampled continuation of the same 5 words, once per seed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LEADS = Path(__file__).resolve().parents[1] / "llamakit" / "assets" / "demo-prompts.jsonl"


def leads(out: Path) -> None:
    with open(out, "w", encoding="utf-8") as f:
        for raw in LEADS.read_text(encoding="utf-8").splitlines():
            row = json.loads(raw)
            words = row["prompt"].split()
            f.write(json.dumps({"id": row["id"], "prompt": " ".join(words[:5]), "human": " " + " ".join(words[5:])},
                               ensure_ascii=False) + "\n")


def texts(out: Path, generated: list[Path]) -> None:
    rows = [[json.loads(x) for x in g.read_text(encoding="utf-8").splitlines()] for g in generated]
    with open(out, "w", encoding="utf-8") as f:
        for row in rows[0]:
            f.write(json.dumps({"id": f"{row['id']}-human", "lead": row["prompt"], "text": row["human"],
                                "label": "human"}, ensure_ascii=False) + "\n")
        for k, gen in enumerate(rows, 1):
            for row in gen:
                if row["completion"].strip():
                    f.write(json.dumps({"id": f"{row['id']}-machine-{k}", "lead": row["prompt"],
                                        "text": row["completion"], "label": "machine"}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["leads"] and len(sys.argv) == 3:
        leads(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["texts"] and len(sys.argv) >= 4:
        texts(Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]])
    else:
        sys.exit(__doc__)
