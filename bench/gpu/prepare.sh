#!/usr/bin/env bash
# Builds what a session with a lent GPU runs there, into .gpu/ (git-ignored), because the GPU
# machine has no Rust toolchain and cannot reach a registry: the release binary, the test
# binaries that exercise the CUDA device, the Pong and Breakout ROMs, stripped to fit the
# device tool's 64 MiB carry limit. Then, in one device call:
#
#   run(carry=[".gpu"], command="bash bench/gpu/run.sh", timeout_s=600)
#
# and read $OUT/gpu-session.txt (and the JSON files beside it). See BENCHMARKS.md for what to
# record. Usage: bash bench/gpu/prepare.sh   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .gpu && mkdir -p .gpu/roms
# Test binaries: cargo prints one JSON line per artifact; keep the executables of the tests
# that have GPU cases (they skip or fail clearly without one).
cargo build --release --quiet
cargo test --release --no-run --message-format=json \
    --test kernels --test net_kernels --test gpu_backend --test async_gossip --test pipeline 2>/dev/null |
    python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], ".gpu/" + m["target"]["name"])
'
cp target/release/gala-gpu .gpu/
strip .gpu/* 2>/dev/null || true
rom_dir="${GALA_ROM_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/gala-gpu/roms}"
for game in pong breakout; do
    if [ -f "$rom_dir/$game.bin" ]; then cp "$rom_dir/$game.bin" .gpu/roms/; else
        echo "no $game.bin in $rom_dir: run 'cargo run --release -- roms install' first" >&2; exit 1; fi
done
cp bench/pytorch_gpu_update.py bench/pytorch_cpu_update.py .gpu/
du -sh .gpu && ls -la .gpu
