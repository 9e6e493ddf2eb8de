#!/usr/bin/env bash
# Paged-KV-cache evidence on a GPU machine (the device tool), from a checkout with PYTHONPATH set:
#   check  GPU tests (Triton kernels on the paged cache, fast engine with preemption) + both bench workloads
#   table  the side-by-side table of docs/BENCHMARKS.md in one call: llamakit bench (standard, dataset, int8)
#          next to Meta's generation.py and gpt-fast (their source under $PEERS, never committed)
#   run    `llamakit run` of a 7B-shaped checkpoint on disk, 1,024 text prompts, against bench --workload dataset
# Writes JSON and logs into $OUT (or ./gpu-out).
set -u
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PEERS=${PEERS:-.peers}
what=${1:-check}
step() { echo; echo "=== $* ($(date +%T))"; }
bench() {  # name, args...
  local name=$1; shift
  step "llamakit bench $*"
  python3 -m llamakit bench "$@" --json > "$OUT/$name.json" 2> "$OUT/$name.err"; echo "rc=$?"
  tail -2 "$OUT/$name.err"; cat "$OUT/$name.json"
}
if [[ $what == check ]]; then
  step "GPU tests"; python3 -m pytest -q -x -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -15
  bench bench-7b-standard
  bench bench-7b-dataset --workload dataset
fi
if [[ $what == table ]]; then
  step "GPU tests"; python3 -m pytest -q -x -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -4
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
  bench bench-7b-standard
  bench bench-7b-dataset --workload dataset
  bench bench-7b-int8 --quantize int8
  step "gpt-fast, batch 1"; timeout 240 python3 tools/peer_bench.py gptfast "$PEERS/gpt-fast" 2>"$OUT/gptfast.err" | tee "$OUT/gptfast.json"; tail -3 "$OUT/gptfast.err"
  step "Meta generation.py"; timeout 180 python3 tools/peer_bench.py meta "$PEERS/llama" ${META_BATCHES:-1x2 32x64} 2>"$OUT/meta.err" | tee "$OUT/meta.json"; tail -3 "$OUT/meta.err"
fi
if [[ $what == run ]]; then
  step "7B-shaped MP=1 checkpoint on disk (vocab of the tiny tokenizer)"
  python3 -m llamakit make-tiny /tmp/tiny >/dev/null
  rm -rf /tmp/ck7b && python3 - <<'PY'
import shutil
from llamakit.checkpoint.params import PRESETS
from llamakit.checkpoint.synth import write_random_checkpoint
write_random_checkpoint("/tmp/ck7b", PRESETS["llama-7b"].with_vocab(512), mp=1, dtype="bf16", vocab=512,
                        device="cuda", checklist=False)
shutil.copy("/tmp/tiny/tokenizer.model", "/tmp/ck7b/tokenizer.model")
PY
  python3 - <<'PY'
import json, random
# 1,024 text prompts of about 140 tokens (the tiny tokenizer: ~3 characters a token)
words = " ".join(json.loads(l)["prompt"] for l in open("llamakit/assets/demo-prompts.jsonl", encoding="utf-8")).split()
rng = random.Random(0)
with open("/tmp/p1024.jsonl", "w", encoding="utf-8") as f:
    for i in range(1024):
        f.write(json.dumps({"id": f"d{i:04d}", "prompt": " ".join(rng.choice(words) for _ in range(60))}) + "\n")
PY
  printf 'ckpt_dir: /tmp/ck7b\nprompt_path: /tmp/p1024.jsonl\nout_path: /tmp/out1024.jsonl\nmax_seq_len: 1024\nmax_gen_len: 256\nmax_batch_size: 1024\ntemperature: 0.6\ntop_p: 0.9\n' > /tmp/r1024.yaml
  step "llamakit run (1,024 prompts, max_gen_len 256, eos on)"
  rm -rf /tmp/out1024.jsonl /tmp/.out1024.jsonl.llamakit
  python3 -m llamakit run /tmp/r1024.yaml > "$OUT/run-1024.txt" 2>&1; echo "rc=$?"; tail -8 "$OUT/run-1024.txt"
  python3 -c "
import json, statistics
rows = [json.loads(l) for l in open('/tmp/out1024.jsonl')]
print('rows', len(rows), 'prompt tokens median', statistics.median(r['prompt_tokens'] for r in rows),
      'completion tokens mean', round(statistics.mean(r['completion_tokens'] for r in rows), 1))" | tee -a "$OUT/run-1024.txt"
  grep -h "KV cache\|done:" /tmp/out1024.log 2>/dev/null | tail -3 | tee -a "$OUT/run-1024.txt"
fi
