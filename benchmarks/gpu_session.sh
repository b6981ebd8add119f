#!/usr/bin/env bash
# The ONE command of a GPU session (device tool, carry [".whl"], timeout_s ~560):
#   bash benchmarks/gpu_session.sh
# Correctness on CUDA first (kernel tests compile and run the Triton kernels for real), then
# timings; everything is printed and copied to $OUT. Prepare the wheels here first:
#   bash benchmarks/gpu_prepare.sh
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
else
  export PYTHONPATH=$PWD
fi
python3 - <<'PY' | tee "$OUT/env.txt"
import torch, triton, datetime
print(datetime.date.today(), torch.__version__, triton.__version__, torch.cuda.get_device_name(0))
PY
echo "== correctness on CUDA (kernels, dispatch)"
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/kernels tests/ops 2>&1 | tail -15 | tee "$OUT/tests.txt"
echo "== ditaccel demo on the trained fidelity model (issue 12 target: 'all' >= 2x torch.compile at >= 30 dB)"
timeout 150 python3 -m ditcompile demo --device cuda --variants compile,cache,all --out "$OUT/demo" 2>&1 \
  | grep -v Warning | tail -22 | tee "$OUT/demo.txt"
echo "== dense overhead vs torch.compile (issue 15 target: ditaccel >= 0.99x), then with CUDA graphs"
timeout 110 python3 benchmarks/overhead.py --device cuda --rounds 5 --out "$OUT/overhead.json" 2>&1 | grep -v Warning \
  | tail -22 | tee "$OUT/overhead.txt"
timeout 90 python3 benchmarks/overhead.py --device cuda --rounds 3 --mode reduce-overhead --no-profile \
  --models fidelity,flux-tiny --out "$OUT/overhead_cudagraphs.json" 2>&1 | grep -v Warning | tail -10 \
  | tee "$OUT/overhead_cudagraphs.txt"
echo "== attention kernels vs cuDNN / FA2 / FlexAttention (Wan2.1-1.3B shape)"
timeout 170 python3 benchmarks/attention.py --quick --out "$OUT/attention.json" 2>&1 | tail -25 | tee "$OUT/attention.txt"
echo "== ditaccel autotune, Wan2.1 preset at 480p (issue 14 target: under 3 minutes; tuned never slower than fixed)"
( time timeout 200 python3 -m ditcompile autotune --preset wan2.1 --resolution 480x832x81 --budget-s 170 \
    --cache-dir "$OUT/autotune" ) 2>&1 | grep -v Warning | tail -12 | tee "$OUT/autotune.txt"
echo "== masked joint attention, HunyuanVideo 720p padded prompt (issue 13: ours >= SDPA with its mask)"
timeout 120 python3 benchmarks/masked_attention.py --reps 3 --out "$OUT/masked_attention.json" 2>&1 | tail -10 \
  | tee "$OUT/masked_attention.txt"
echo "== end to end (Wan2.1-1.3B 480p, quick subset)"
timeout 220 python3 benchmarks/e2e.py --quick --budget-s 200 --out "$OUT/e2e.json" 2>&1 | tail -30 | tee "$OUT/e2e.txt"
echo "== Mochi 1 480p (issue 16 target: the preset's sparse plan below torch.compile's step time)"
timeout 240 python3 benchmarks/e2e.py --models mochi-1 --quick --variants compile,ditaccel-dense,ditaccel-sparse-radial \
  --budget-s 220 --out "$OUT/e2e_mochi.json" 2>&1 | tail -12 | tee "$OUT/e2e_mochi.txt"
