#!/usr/bin/env bash
# The kernel against llama.cpp on the same GGUF and the same CPU, in one run: builds llama.cpp's
# llama-bench and llama-batched-bench once (from the llama.cpp that the PyPI sdist
# llama-cpp-python==0.3.36 vendors, as ../shared/bench/llamacpp.sh does, native CPU features),
# runs them (pp512, tg128, 2 threads, 3 repetitions; 1, 8 and 16 sequences), runs kernel_bench,
# and prints one JSON object: {"llama_cpp": ..., "agentos": ..., "ratios": ...}, each ratio
# agentos / llama.cpp (peak RSS: lower is better). served_aggregate_N compares the Batcher's
# generation phase (sampled, see kernel_bench) with llama-batched-bench's at N sequences.
# Usage: benches/vs_llamacpp.sh [kernel_bench flags, e.g. --dtype f16]
# PROFILE=dev runs kernel_bench from the dev profile (dependencies and the kernel optimised,
# debug assertions on) where a release build of burn is not at hand.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${ANCHOR_CACHE:-$HOME/.cache/agentos-anchors}
mkdir -p "$cache"
profile=${PROFILE:-release}
model=${AGENTOS_HOME:-$HOME/.cache/agentos}/models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$model" ]; then
  # agentos fetches and verifies the default model on first use.
  cargo run --profile "$profile" --example quickstart >/dev/null
fi
src=$cache/llama_cpp_python-0.3.36/vendor/llama.cpp
bin=$src/build/bin
if [ ! -x "$bin/llama-bench" ] || [ ! -x "$bin/llama-batched-bench" ]; then
  command -v cmake >/dev/null || python3 -m pip install -q cmake
  python3 -c 'import scikit_build_core' 2>/dev/null || python3 -m pip install -q scikit-build-core
  if [ ! -d "$src" ]; then
    (cd "$cache" && python3 -m pip download -q --no-deps --no-binary :all: --no-build-isolation llama-cpp-python==0.3.36 -d sdist >/dev/null 2>&1 || true
     ls sdist/*.tar.gz >/dev/null && tar xzf sdist/*.tar.gz)
  fi
  (cd "$src" && cmake -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null \
    && cmake --build build -j2 --target llama-bench llama-batched-bench >/dev/null)
fi
cargo build -q --profile "$profile" --example kernel_bench
case $profile in dev) dir=debug ;; *) dir=$profile ;; esac
kernel_bench=target/$dir/examples/kernel_bench
python3 - "$bin" "$model" "$kernel_bench" "$@" <<'PY'
import json, resource, subprocess, sys

bin_dir, model, kernel_bench, extra = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]

def run(cmd):
    """Output of cmd and the peak RSS (bytes) of that child alone."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest of any child so far (KiB); llama-bench runs first.
    return out, after * 1024 if after > before else None

bench, rss = run([f"{bin_dir}/llama-bench", "-m", model, "-p", "512", "-n", "128", "-t", "2", "-r", "3", "-o", "json"])
llama = {"peak_rss_bytes": rss}
for r in json.loads(bench):
    if r.get("n_prompt", 0) > 0 and r.get("n_gen", 0) == 0:
        llama["prefill_tps"] = round(r["avg_ts"], 1)
    if r.get("n_gen", 0) > 0 and r.get("n_prompt", 0) == 0:
        llama["decode_tps"] = round(r["avg_ts"], 1)
batched, _ = run([f"{bin_dir}/llama-batched-bench", "-m", model, "-c", "8192", "-b", "2048", "-ub", "512",
                  "-npp", "128", "-ntg", "128", "-npl", "1,8,16", "-t", "2", "--output-format", "jsonl"])
llama["aggregate_decode_tps"] = {
    str(d["pl"]): round(d["speed_tg"], 1) for d in map(json.loads, (l for l in batched.splitlines() if l.startswith("{")))
}
ours = json.loads(subprocess.run([kernel_bench, "--json", *extra], check=True, capture_output=True, text=True).stdout)

def ratio(a, b):
    return round(a / b, 2) if a and b else None

ratios = {
    "prefill": ratio(ours["prefill_tps"], llama.get("prefill_tps")),
    "decode": ratio(ours["decode_tps"], llama.get("decode_tps")),
    # llama-bench's peak (pp512 + tg128) beside ours after the same work; ours for the whole run,
    # with 16 sequences and the grammar engine, is agentos.peak_rss_bytes.
    "peak_rss": ratio(ours["single_sequence_peak_rss_bytes"], llama["peak_rss_bytes"]),
}
for n in ("1", "8", "16"):
    ratios[f"aggregate_decode_{n}"] = ratio(ours["aggregate_decode_tps"].get(n), llama["aggregate_decode_tps"].get(n))
    ratios[f"served_aggregate_{n}"] = ratio(ours["served_aggregate_tps"].get(n), llama["aggregate_decode_tps"].get(n))
print(json.dumps({"llama_cpp": llama, "agentos": ours, "ratios": ratios}))
PY
