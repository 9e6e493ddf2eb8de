#!/usr/bin/env bash
# Evidence on a GPU machine (the device tool), from a checkout with PYTHONPATH set (no install needed):
#   GPU tests, llamakit bench (bf16 and int8), doctor --json, inspect of a full-size 7B-shaped checkpoint written
#   to disk, and llamakit run end to end on it (kill -9 + resume). Writes its logs and JSON into $OUT (or ./gpu-out).
# Usage: bash tools/gpu_evidence.sh [all|tests|bench|doctor|run|arch|stop|memory]  (memory: H200, not part of all)
set -u
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-}:$PWD PYTHONUNBUFFERED=1
what=${1:-all}
step() { echo; echo "=== $* ($(date +%T))"; }
if [[ $what == all || $what == tests ]]; then
  step "GPU tests"; python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -5
fi
if [[ $what == all || $what == bench ]]; then
  step "bench 7b bf16"; python3 -m llamakit bench --json > "$OUT/bench-7b-bf16.json" 2> "$OUT/bench-7b-bf16.err"; cat "$OUT/bench-7b-bf16.json"
  step "bench 7b int8"; python3 -m llamakit bench --quantize int8 --json > "$OUT/bench-7b-int8.json" 2> "$OUT/bench-7b-int8.err"; cat "$OUT/bench-7b-int8.json"
fi
if [[ $what == all || $what == doctor ]]; then
  step "doctor"; python3 -m llamakit make-tiny /tmp/tiny >/dev/null
  python3 -m llamakit doctor --json --ckpt-dir /tmp/tiny > "$OUT/doctor.json"; echo "doctor --json rc=$?"
  python3 -m llamakit doctor --ckpt-dir /tmp/tiny --report "$OUT/doctor-report.txt" > "$OUT/doctor.txt" 2>&1; echo "doctor rc=$?"
  cat "$OUT/doctor.txt"
fi
if [[ $what == ref ]]; then
  # side by side: Meta's own generation.py (facebookresearch/llama, copied into .refbench/, never committed)
  step "reference generator"; python3 .refbench/ref_bench.py 1x4 32x128 2>&1 | grep '^{' | tee "$OUT/reference.json"
fi
if [[ $what == all || $what == run ]]; then
  step "write a 7B-shaped MP=1 checkpoint (vocab of the tiny tokenizer) to disk"
  [[ -f /tmp/tiny/tokenizer.model ]] || python3 -m llamakit make-tiny /tmp/tiny >/dev/null
  rm -rf /tmp/ck7b && python3 - <<'PY'
import time
from llamakit.checkpoint.params import PRESETS
from llamakit.checkpoint.synth import write_random_checkpoint
import shutil
t = time.time()
cfg = PRESETS["llama-7b"].with_vocab(512)
write_random_checkpoint("/tmp/ck7b", cfg, mp=1, dtype="bf16", vocab=512, device="cuda")
shutil.copy("/tmp/tiny/tokenizer.model", "/tmp/ck7b/tokenizer.model")
print(f"written in {time.time() - t:.1f} s")
PY
  du -sh /tmp/ck7b
  step "inspect (no --verify)"; /usr/bin/time -f "inspect wall %e s, max RSS %M KB" python3 -m llamakit inspect /tmp/ck7b 2>&1 | tail -25
  python3 -m llamakit inspect /tmp/ck7b --json > "$OUT/inspect-7b.json"
  step "run: 7B-shaped MP=1 end to end, killed, resumed"
  python3 - <<'PY'
import json
src = [json.loads(l) for l in open("llamakit/assets/demo-prompts.jsonl", encoding="utf-8")]
with open("/tmp/prompts.jsonl", "w", encoding="utf-8") as f:
    for i in range(400):
        r = dict(src[i % len(src)]); r["id"] = f"p{i:04d}"
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
PY
  cat > /tmp/r7b.yaml <<'Y'
ckpt_dir: /tmp/ck7b
prompt_path: /tmp/prompts.jsonl
out_path: /tmp/out7b.jsonl
logging_path: /tmp/out7b.log
max_seq_len: 512
max_gen_len: 128
max_batch_size: 64
temperature: 0.8
top_p: 0.95
Y
  rm -f /tmp/out7b.jsonl; python3 -m llamakit run /tmp/r7b.yaml --dry-run 2>&1 | tail -14
  setsid python3 -m llamakit run /tmp/r7b.yaml > "$OUT/run-first.txt" 2>&1 & pid=$!
  for i in $(seq 1 120); do sleep 1; n=$(wc -l < /tmp/out7b.jsonl 2>/dev/null || echo 0); [[ $n -ge 100 ]] && break; done
  kill -9 -- -$pid 2>/dev/null; sleep 2; pkill -9 -f llamakit.run.worker; sleep 1
  echo "killed after $(wc -l < /tmp/out7b.jsonl) rows"
  python3 -m llamakit run /tmp/r7b.yaml > "$OUT/run-resume.txt" 2>&1; echo "resume rc=$?"; tail -6 "$OUT/run-resume.txt"
  python3 - <<'PY'
import json, collections
rows = [json.loads(l) for l in open("/tmp/out7b.jsonl", encoding="utf-8")]
c = collections.Counter(r["id"] for r in rows)
print("rows", len(rows), "unique ids", len(c), "duplicates", sum(v > 1 for v in c.values()),
      "missing", 400 - len(c), "finish", collections.Counter(r["finish_reason"] for r in rows))
PY
  cp /tmp/out7b.log "$OUT/run-7b.log"
fi
if [[ $what == all || $what == arch ]]; then
  step "Triton kernels compiled for sm_80/86/89/90: shared memory per block vs each generation's limit"
  python3 tools/triton_arch_check.py 2>&1 | tee "$OUT/triton-arch.txt"
fi
if [[ $what == all || $what == stop ]]; then
  step "Ctrl-C (SIGINT to the process group) during a GPU run with CUDA graphs, then resume"
  [[ -f /tmp/tiny/tokenizer.model ]] || python3 -m llamakit make-tiny /tmp/tiny >/dev/null
  python3 - "$OUT" <<'PY'
import collections, json, os, signal, subprocess, sys, time
out_dir = sys.argv[1]
src = [json.loads(l) for l in open("llamakit/assets/demo-prompts.jsonl", encoding="utf-8")]
with open("/tmp/p-stop.jsonl", "w", encoding="utf-8") as f:
    for i in range(20000):
        r = dict(src[i % len(src)]); r["id"] = f"s{i:05d}"; f.write(json.dumps(r, ensure_ascii=False) + "\n")
for p in ("/tmp/out-stop.jsonl", "/tmp/out-stop.log"):
    if os.path.exists(p):
        os.remove(p)
cmd = [sys.executable, "-m", "llamakit", "run", "demo", "--set", "ckpt_dir=/tmp/tiny", "--set", "device=cuda",
       "--set", "prompt_path=/tmp/p-stop.jsonl", "--set", "max_gen_len=64", "--set", "max_batch_size=64",
       "--set", "logging_path=/tmp/out-stop.log", "--out", "/tmp/out-stop.jsonl"]
proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
t0 = time.time()
while time.time() - t0 < 120:
    n = sum(1 for _ in open("/tmp/out-stop.jsonl")) if os.path.exists("/tmp/out-stop.jsonl") else 0
    if n >= 2000 or proc.poll() is not None:
        break
    time.sleep(0.2)
os.killpg(proc.pid, signal.SIGINT)
_, err = proc.communicate(timeout=90)
rows = sum(1 for _ in open("/tmp/out-stop.jsonl"))
print(f"interrupted after {rows} rows: rc={proc.returncode}, stderr: {err.strip()!r}")
res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
print("resume rc", res.returncode, res.stdout.strip().splitlines()[-4:-2])
ids = collections.Counter(json.loads(l)["id"] for l in open("/tmp/out-stop.jsonl", encoding="utf-8"))
print(f"rows {sum(ids.values())}, unique ids {len(ids)}, duplicates {sum(v > 1 for v in ids.values())}, "
      f"missing {20000 - len(ids)}; run folder keeps {sorted(os.listdir('/tmp/.out-stop.jsonl.llamakit'))}")
log = open("/tmp/out-stop.log", encoding="utf-8").read()
print("KeyboardInterrupt traceback in the log:", "KeyboardInterrupt" in log)
open(os.path.join(out_dir, "stop-resume.log"), "w").write(log)
PY
fi
if [[ $what == memory ]]; then  # not in all: the 65B share needs a GPU of more than 80 GiB
  step "memory plan vs measured process totals (per-GPU shares of 65B/30B/13B/7B at MP=2, cache filled)"
  for a in "llama-65b 40 int8 6 2048" "llama-30b 30 int8 20 2048" "llama-30b 30 none 10 2048" \
           "llama-13b 20 none 43 2048" "llama-7b 16 none 80 2048"; do
    timeout 240 python3 tools/memory_check.py $a 2>&1 | tail -1 | tee -a "$OUT/memory-check.txt"
  done
fi
if [[ $what == fill ]]; then  # not in all: about 3 minutes on an H200
  step "llamakit run at the max batch that inspect promises, KV cache filled to 2,000 of 2,048 tokens"
  [[ -f /tmp/tiny/tokenizer.model ]] || python3 -m llamakit make-tiny /tmp/tiny >/dev/null
  rm -rf /tmp/ck13f && python3 - <<'PY'
import shutil
from llamakit.checkpoint.params import PRESETS
from llamakit.checkpoint.synth import write_random_checkpoint
write_random_checkpoint("/tmp/ck13f", PRESETS["llama-13b"].with_vocab(512), mp=1, dtype="bf16", vocab=512,
                        device="cuda", checklist=False)
shutil.copy("/tmp/tiny/tokenizer.model", "/tmp/ck13f/tokenizer.model")
PY
  best=$(python3 -m llamakit inspect /tmp/ck13f --batch 1 --seq 2048 --json | python3 -c "import json,sys; print(json.load(sys.stdin)['memory']['max_batch_here'])")
  echo "inspect: max batch here at seq 2048 = $best"
  python3 - "$best" <<'PY'
import json, sys
src = [json.loads(l) for l in open("llamakit/assets/demo-prompts.jsonl", encoding="utf-8")]
with open("/tmp/p-fill.jsonl", "w", encoding="utf-8") as f:
    for i in range(int(sys.argv[1])):
        r = dict(src[i % len(src)]); r["id"] = f"f{i:03d}"; f.write(json.dumps(r, ensure_ascii=False) + "\n")
PY
  printf 'ckpt_dir: /tmp/ck13f\nprompt_path: /tmp/p-fill.jsonl\nout_path: /tmp/out-fill.jsonl\nmax_seq_len: 2048\nmax_gen_len: 1990\nmax_batch_size: %s\ntemperature: 0.8\non_long_prompt: truncate\n' "$best" > /tmp/r-fill.yaml
  rm -f /tmp/out-fill.jsonl*; nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader,nounits -lms 500 > /tmp/smi.csv & smi=$!
  timeout 400 python3 -m llamakit run /tmp/r-fill.yaml 2>&1 | tail -3; kill $smi
  grep -E "KV cache:|slots" /tmp/out-fill.log | head -3
  python3 -c "
rows=[l.strip().split(', ') for l in open('/tmp/smi.csv') if l.strip()]
print('nvidia-smi peak used %d MiB of %d MiB' % (max(int(r[0]) for r in rows), int(rows[0][1])))"
  cp /tmp/out-fill.log "$OUT/run-fill.log"; rm -rf /tmp/ck13f
fi
