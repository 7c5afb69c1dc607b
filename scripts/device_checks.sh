#!/usr/bin/env bash
# latprune's GPU checks in one run on a lent CUDA machine, the most wanted first, each step under its
# own time limit (about 9 minutes in all): the `gpu`-marked tests (CUDA training, AMP, the AOTInductor
# CUDA bundle, torch-cuda units), CUDA training throughput, the zoo's torch-cuda LUT fidelity at
# batch 1 and 32 (issue #36), and the low-rank pairs on torch-cuda. Every step's log and result file
# land in $OUT (default device_out/); a step that fails or runs out of time leaves its log and the
# next one runs. Run it from the repository root:
#
#   bash scripts/device_checks.sh                    # ZOO_MODELS=resnet18,mobilenet_v2 by default
#   ZOO_MODELS=convnext_tiny,vit_b_32 bash scripts/device_checks.sh
#
# The machine needs latprune's dependencies; wheels of those it lacks (torch-pruning) in .whl/ are
# installed to /tmp/site first.
set -u
OUT=${OUT:-device_out}
ZOO_MODELS=${ZOO_MODELS:-resnet18,mobilenet_v2}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

step() {  # step NAME SECONDS COMMAND...: run COMMAND under a time limit, its output in $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - t0)) s (limit $limit s)" | tee -a "$OUT/steps.txt"
}

python3 - >"$OUT/environment.txt" 2>&1 <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
EOF
step gpu_tests 150 python3 -m pytest -q -p no:cacheprovider -m gpu -o addopts="" tests
step train_throughput 90 python3 benchmarks/train_throughput.py --devices cuda --out "$OUT" --tag cuda
for batch in 1 32; do
    step "zoo_fidelity_b$batch" 120 python3 benchmarks/lut_fidelity.py --zoo --backend torch-cuda --batch "$batch" \
        --sizes 160 --models "$ZOO_MODELS" --timeout-s 100
done
cp benchmarks/results/lut_fidelity_zoo_torch-cuda*.json "$OUT/" 2>/dev/null
step lowrank_units 60 python3 benchmarks/lowrank_units.py --backend torch-cuda --tag cuda
cp benchmarks/results/lowrank_units*cuda*.json "$OUT/" 2>/dev/null
