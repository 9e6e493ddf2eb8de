#!/usr/bin/env bash
# Two-GPU evidence (issue 8) on a 2-GPU machine, from a checkout with PYTHONPATH set. NVLink multicast stays off
# (NCCL_NVLS_ENABLE=0 is exported here too). Writes logs and JSON into $OUT (or ./gpu2-out).
# Usage: bash tools/gpu2_evidence.sh A|B    (A: doctor, MP=2 NCCL vs CPU, 13B MP=2 run + kill/resume, 13B bench
#                                            B: 7B DP=2 vs one GPU through `llamakit run`, 30B-shaped reshard 4->2
#                                               run at MP=2, 7B bench at MP=2; each step under a timeout)
set -u
OUT=${OUT:-$PWD/gpu2-out}; mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-}:$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
step() { echo; echo "=== $* ($(date +%T))"; }
lk() { python3 -m llamakit "$@"; }
write_ckpt() {  # write_ckpt DIR PRESET MP [n_layers]: random weights on the GPU, vocab of the tiny tokenizer
  python3 - "$@" <<'PY'
import sys, time, shutil
from dataclasses import replace
from llamakit.checkpoint.params import PRESETS
from llamakit.checkpoint.synth import write_random_checkpoint
out, preset, mp = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = PRESETS[preset].with_vocab(512)
if len(sys.argv) > 4:
    cfg = replace(cfg, n_layers=int(sys.argv[4]))
t = time.time()
write_random_checkpoint(out, cfg, mp=mp, dtype="bf16", vocab=512, device="cuda", checklist=False)
shutil.copy("/tmp/tiny/tokenizer.model", f"{out}/tokenizer.model")
print(f"wrote {out}: {preset} shape, {cfg.n_layers} layers, MP={mp}, in {time.time() - t:.1f} s")
PY
}
prompts() {  # prompts N FILE
  python3 - "$@" <<'PY'
import json, sys
n, path = int(sys.argv[1]), sys.argv[2]
src = [json.loads(l) for l in open("llamakit/assets/demo-prompts.jsonl", encoding="utf-8")]
with open(path, "w", encoding="utf-8") as f:
    for i in range(n):
        r = dict(src[i % len(src)]); r["id"] = f"p{i:05d}"
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
PY
}
check() {  # check OUT.jsonl N
  python3 - "$@" <<'PY'
import json, sys, collections
rows = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
c = collections.Counter(r["id"] for r in rows)
n = int(sys.argv[2])
print(f"{sys.argv[1]}: rows {len(rows)}, unique ids {len(c)}, duplicates {sum(v > 1 for v in c.values())}, "
      f"missing {n - len(c)}")
PY
}
recipe() {  # recipe FILE CKPT PROMPTS OUTJSONL BATCH GEN
  cat > "$1" <<Y
ckpt_dir: $2
prompt_path: $3
out_path: $4
logging_path: $4.log
max_seq_len: 384
max_gen_len: $6
max_batch_size: $5
temperature: 0.8
top_p: 0.95
Y
}
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
[[ -f /tmp/tiny/tokenizer.model ]] || lk make-tiny /tmp/tiny >/dev/null
if [[ ${1:-A} == C ]]; then  # the short version that fits a nearly spent device budget
  step "MP=2 over NCCL with CUDA graphs (fp32) vs MP=1 on CPU, same weights"
  lk make-tiny /tmp/t2 --mp 2 >/dev/null
  timeout 120 python3 -m llamakit run demo --set ckpt_dir=/tmp/t2 --set dtype=fp32 --set device=cuda --out /tmp/mp2-gpu.jsonl | tail -2
  lk run demo --set ckpt_dir=/tmp/tiny --set device=cpu --out /tmp/mp1-cpu.jsonl | tail -1
  python3 -c "
import json
a=[json.loads(l) for l in open('/tmp/mp2-gpu.jsonl')]; b=[json.loads(l) for l in open('/tmp/mp1-cpu.jsonl')]
print('MP=2 NCCL fp32 == MP=1 CPU fp32 (greedy):', [x['completion'] for x in a]==[y['completion'] for y in b], len(a))"
  step "DP=2 (tiny MP=1 on 2 GPUs): every prompt once"
  prompts 400 /tmp/p400.jsonl; recipe /tmp/rdp.yaml /tmp/tiny /tmp/p400.jsonl /tmp/outdp.jsonl 32 32
  timeout 120 python3 -m llamakit run /tmp/rdp.yaml 2>&1 | tail -2; grep -m1 "parallelism" /tmp/outdp.jsonl.log; check /tmp/outdp.jsonl 400
  step "bench 13B at MP=2 (2 GPUs)"
  timeout 150 python3 -m llamakit bench --preset 13b --mp 2 --json | tee "$OUT/bench-13b-mp2.json"
  step "13B-shaped MP=2 checkpoint on disk, run, kill -9, resume"
  write_ckpt /tmp/ck13 llama-13b 2
  prompts 600 /tmp/p600.jsonl; recipe /tmp/r13.yaml /tmp/ck13 /tmp/p600.jsonl /tmp/out13.jsonl 64 128
  setsid python3 -m llamakit run /tmp/r13.yaml > "$OUT/run13-first.txt" 2>&1 & pid=$!
  for i in $(seq 1 90); do sleep 1; n=$(cat /tmp/out13.jsonl 2>/dev/null | wc -l); [[ $n -ge 150 ]] && break; done
  kill -9 -- -$pid 2>/dev/null; sleep 2; pkill -9 -f llamakit.run.worker; sleep 2
  echo "killed after $(cat /tmp/out13.jsonl | wc -l) rows"
  timeout 150 python3 -m llamakit run /tmp/r13.yaml > "$OUT/run13-resume.txt" 2>&1; echo "resume rc=$?"; tail -4 "$OUT/run13-resume.txt"
  check /tmp/out13.jsonl 600; cp /tmp/out13.jsonl.log "$OUT/run13.log"
elif [[ ${1:-A} == A ]]; then
  step "doctor on 2 GPUs"; lk doctor --ckpt-dir /tmp/tiny --json > "$OUT/doctor2.json"; lk doctor --ckpt-dir /tmp/tiny > "$OUT/doctor2.txt" 2>&1; echo rc=$?; cat "$OUT/doctor2.txt"
  step "MP=2 over NCCL (fp32) vs MP=1 on CPU, same weights"
  lk make-tiny /tmp/t2 --mp 2 >/dev/null
  lk run demo --set ckpt_dir=/tmp/t2 --set dtype=fp32 --set device=cuda --out /tmp/mp2-gpu.jsonl | tail -3
  lk run demo --set ckpt_dir=/tmp/tiny --set device=cpu --out /tmp/mp1-cpu.jsonl | tail -2
  python3 -c "
import json
a=[json.loads(l) for l in open('/tmp/mp2-gpu.jsonl')]; b=[json.loads(l) for l in open('/tmp/mp1-cpu.jsonl')]
print('MP=2 NCCL fp32 == MP=1 CPU fp32 (greedy):', [x['completion'] for x in a]==[y['completion'] for y in b], len(a))"
  step "13B-shaped MP=2 checkpoint on disk, run, kill -9, resume"
  write_ckpt /tmp/ck13 llama-13b 2; du -sh /tmp/ck13
  prompts 600 /tmp/p600.jsonl; recipe /tmp/r13.yaml /tmp/ck13 /tmp/p600.jsonl /tmp/out13.jsonl 64 128
  lk run /tmp/r13.yaml --dry-run | grep -E "parallelism|devices|memory"
  setsid python3 -m llamakit run /tmp/r13.yaml > "$OUT/run13-first.txt" 2>&1 & pid=$!
  for i in $(seq 1 150); do sleep 1; n=$(cat /tmp/out13.jsonl 2>/dev/null | wc -l); [[ $n -ge 150 ]] && break; done
  kill -9 -- -$pid 2>/dev/null; sleep 2; pkill -9 -f llamakit.run.worker; sleep 2
  echo "killed after $(cat /tmp/out13.jsonl | wc -l) rows"
  lk run /tmp/r13.yaml > "$OUT/run13-resume.txt" 2>&1; echo "resume rc=$?"; tail -4 "$OUT/run13-resume.txt"
  check /tmp/out13.jsonl 600; cp /tmp/out13.jsonl.log "$OUT/run13.log"; rm -rf /tmp/ck13
  step "bench 13B: MP=2 (2 GPUs) and MP=1 (1 GPU)"
  lk bench --preset 13b --mp 2 --json | tee "$OUT/bench-13b-mp2.json"
  lk bench --preset 13b --mp 1 --json | tee "$OUT/bench-13b-mp1.json"
else
  step "7B-shaped MP=1: DP=2 on 2 GPUs vs 1 GPU"
  write_ckpt /tmp/ck7 llama-7b 1
  prompts 1024 /tmp/p1024.jsonl
  recipe /tmp/r7.yaml /tmp/ck7 /tmp/p1024.jsonl /tmp/out7-dp2.jsonl 128 128
  lk run /tmp/r7.yaml --dry-run | grep -E "parallelism|devices"
  timeout 150 python3 -m llamakit run /tmp/r7.yaml > "$OUT/run7-dp2.txt" 2>&1; tail -3 "$OUT/run7-dp2.txt"; check /tmp/out7-dp2.jsonl 1024
  timeout 200 python3 -m llamakit run /tmp/r7.yaml --nproc 1 --out /tmp/out7-dp1.jsonl > "$OUT/run7-dp1.txt" 2>&1; tail -3 "$OUT/run7-dp1.txt"; check /tmp/out7-dp1.jsonl 1024
  python3 -c "
import json
a={json.loads(l)['id']: json.loads(l)['completion'] for l in open('/tmp/out7-dp2.jsonl')}
b={json.loads(l)['id']: json.loads(l)['completion'] for l in open('/tmp/out7-dp1.jsonl')}
print('DP=2 and DP=1 completions identical (seeded per prompt):', sum(a[k]==b[k] for k in a), 'of', len(a))"
  rm -rf /tmp/ck7
  step "30B-shaped (width of 30B, 12 of 60 layers to fit the disk) MP=4 -> reshard to MP=2 -> run at MP=2"
  write_ckpt /tmp/ck30 llama-30b 4 12
  /usr/bin/time -f "reshard wall %e s, max RSS %M KB" python3 -m llamakit reshard /tmp/ck30 /tmp/ck30-mp2 --mp 2 2>&1 | tail -3
  lk inspect /tmp/ck30-mp2 | grep -E "Shards|agree|parameters"
  prompts 64 /tmp/p64.jsonl; recipe /tmp/r30.yaml /tmp/ck30-mp2 /tmp/p64.jsonl /tmp/out30.jsonl 32 64
  timeout 150 python3 -m llamakit run /tmp/r30.yaml > "$OUT/run30.txt" 2>&1; tail -3 "$OUT/run30.txt"; check /tmp/out30.jsonl 64
  step "bench 7B at MP=2 (DP=2 and MP=1 on this machine type are in docs/BENCHMARKS.md already)"
  timeout 150 python3 -m llamakit bench --preset 7b --mp 2 --json | tee "$OUT/bench-7b-mp2.json"
fi
