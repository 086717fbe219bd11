#!/usr/bin/env bash
# The OpenAI-compatible server against llama.cpp's llama-server on the same chat traffic, in one
# run: builds llama-server once (from the llama.cpp that the PyPI sdist llama-cpp-python==0.3.36
# vendors, as ../shared/bench/llamacpp.sh builds its benchmarks), starts it on the default GGUF
# with --parallel 8 and 2 threads, then runs serve_bench with --external pointing at it.
# Usage: benches/serve_vs_llamacpp.sh [serve_bench flags, e.g. --clients 8 --rounds 3]
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${ANCHOR_CACHE:-$HOME/.cache/agentos-anchors}
mkdir -p "$cache"
model=${AGENTOS_HOME:-$HOME/.cache/agentos}/models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$model" ]; then
  # agentos fetches and verifies the default model on first use.
  cargo run --release --example quickstart >/dev/null
fi
src=$cache/llama_cpp_python-0.3.36/vendor/llama.cpp
server=$src/build-server/bin/llama-server
if [ ! -x "$server" ]; then
  command -v cmake >/dev/null || python3 -m pip install -q cmake
  python3 -c 'import scikit_build_core' 2>/dev/null || python3 -m pip install -q scikit-build-core
  if [ ! -d "$src" ]; then
    (cd "$cache" && python3 -m pip download -q --no-deps --no-binary :all: --no-build-isolation llama-cpp-python==0.3.36 -d sdist >/dev/null 2>&1 || true
     ls sdist/*.tar.gz >/dev/null && tar xzf sdist/*.tar.gz)
  fi
  (cd "$src" && cmake -B build-server -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=ON >/dev/null && cmake --build build-server -j2 --target llama-server >/dev/null)
fi
port=${LLAMA_SERVER_PORT:-8099}
log=$(mktemp)
"$server" -m "$model" --host 127.0.0.1 --port "$port" --parallel 8 -c 16384 -t 2 >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.5
done
cargo run --release --example serve_bench -- --json --external "http://127.0.0.1:$port/v1" --external-model smollm2 "$@"
