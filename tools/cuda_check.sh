#!/usr/bin/env bash
# The cuda profile end to end on a machine with an NVIDIA GPU and onnxruntime-gpu: the CUDA tests, a student
# distilled on the GPU, the teacher and the student exported as fp16 artifacts (fusion, parity and the dev-score
# check run as in any export), their latency ratio by `compare`, one pair through `predict` and one request
# through `serve`.
# CI has no GPU, so this is run by hand where one is lent; what it measured goes to benchmarks/records.
#
#   tools/cuda_check.sh TEACHER_DIR TASK DATA_DIR OUT [STUDENT_ARCH]
#
# Environment: HW (profile, default cuda; HW=cpu runs the same steps on a CPU to try the script),
# TRAIN_SAMPLES (rows the student is distilled on, default all), SESSIONS (compare's sessions, default 4).
# Every step runs even when an earlier one failed; OUT/steps.txt has one line per step with its exit status.
set -u
if [ $# -lt 4 ]; then echo "usage: tools/cuda_check.sh TEACHER_DIR TASK DATA_DIR OUT [STUDENT_ARCH]" >&2; exit 2; fi
teacher=$1 task=$2 data=$3 out=$4 arch=${5:-L3-H384-A12-I1536}
hw=${HW:-cuda} sessions=${SESSIONS:-4}
work=$(mktemp -d)
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
server=
export py=${PYTHON:-python3}
kd() { "$py" -m kdnas_deploy.cli "$@"; }
mkdir -p "$out"
: > "$out/steps.txt"; : > "$out/all.log"

step() {  # step NAME COMMAND...: runs it, appends its output to all.log and a status line to steps.txt
    local name=$1 t0 rc; shift
    t0=$EPOCHREALTIME
    echo "===== $name: $*" >> "$out/all.log"
    "$@" >> "$out/all.log" 2>&1; rc=$?
    printf '%s rc=%s %.1fs\n' "$name" "$rc" "$(awk "BEGIN{print $EPOCHREALTIME - $t0}")" | tee -a "$out/steps.txt"
}

step env bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1;
    "$py" -c "import onnxruntime as o, torch, transformers; print(\"onnxruntime\", o.__version__, o.get_available_providers()); print(\"torch\", torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0)); print(\"transformers\", transformers.__version__)"'
[ "$hw" = cuda ] && step tests "$py" -m pytest -m cuda tests/test_cuda.py -p no:cacheprovider -q -rs

distill_args=(--teacher "$teacher" --arch "$arch" --init ranked --task "$task" --data-dir "$data" --out "$work/student" --epochs 1)
[ -n "${TRAIN_SAMPLES:-}" ] && distill_args+=(--train-samples "$TRAIN_SAMPLES")
step distill kd distill "${distill_args[@]}"
cp "$work/student/kdnas.json" "$out/student-kdnas.json" 2>/dev/null

for who in teacher student; do
    src=$teacher; [ $who = student ] && src=$work/student
    step "export-$who" kd export "$src" --hw "$hw" --task "$task" --data-dir "$data" --out "$work/$who-art" \
        --table "$work/latency.sqlite"
    cp "$work/$who-art/kdnas_card.json" "$out/$who-card.json" 2>/dev/null
done

step compare kd compare "$work/student-art" "$work/teacher-art" --hw "$hw" --sessions "$sessions" --every 0 \
    --min-hours 0 --record "$out/compare.json"

step predict kd predict "$work/student-art" "A man is playing a guitar." --pair "A person plays music." --json

serve_once() {  # one pair request through the HTTP server, answer kept in serve.json
    "$py" -m kdnas_deploy.cli serve "$work/student-art" --host 127.0.0.1 --port 8765 >> "$out/all.log" 2>&1 &  # not kd: $! must be the server
    server=$!
    "$py" - "$out/serve.json" <<'PY'
import json, sys, time, urllib.request
base = "http://127.0.0.1:8765"
for _ in range(240):
    try:
        health = json.load(urllib.request.urlopen(base + "/health", timeout=2))
        break
    except OSError:
        time.sleep(0.5)
else:
    sys.exit("the server did not answer /health within 2 minutes")
body = {"inputs": [["A man is playing a guitar.", "A person plays music."], ["The cat sleeps.", "The cat is running."]]}
request = urllib.request.Request(base + "/v1/predict", json.dumps(body).encode(), {"content-type": "application/json"})
answer = json.load(urllib.request.urlopen(request, timeout=30))
json.dump({"health": health, "request": body, "answer": answer}, open(sys.argv[1], "w"), indent=1)
print(json.dumps(answer))
PY
}
step serve serve_once
! grep -q ' rc=[1-9]' "$out/steps.txt"
