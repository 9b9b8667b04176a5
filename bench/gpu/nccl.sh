#!/usr/bin/env bash
# GPU to GPU with NCCL, on a machine with 2 GPUs or more, Open MPI and a gala-gpu built with
# `cargo build --release --features nccl` (the same check as the ignored test in tests/mpi.rs,
# for a machine without a Rust toolchain):
#
#   bash bench/gpu/nccl.sh [path/to/gala-gpu]      (default target/release/gala-gpu)
#
# Lock-step catch runs of 4 agents: 2 processes over NCCL (one GPU each) and 2 processes
# host-staged (GALA_GPU_NCCL=0) must both give the params_sha256 of one process on one GPU, for
# ring, exp and all; rank 0 must say it took the NCCL path. Exit 0 when all hold, 1 when one
# does not, 2 when the machine cannot run it (fewer than 2 GPUs, no mpirun, no libnccl).
set -u
cd "$(dirname "$0")/../.."
bin="${1:-target/release/gala-gpu}"
gpus="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')"
if [ "${gpus:-0}" -lt 2 ]; then echo "skipped: ${gpus:-0} GPU(s) visible; NCCL between processes needs 2"; exit 2; fi
command -v mpirun >/dev/null || { echo "skipped: no mpirun (apt-get install openmpi-bin)"; exit 2; }
. bench/gpu/nccl-env.sh || { echo "skipped: no libnccl"; exit 2; }
out="$(mktemp -d)"; trap 'rm -rf "$out"' EXIT
frames=240  # 6 rounds of 4 agents x 2 envs x 5 steps
sha() { python3 -c 'import json,sys,glob; print(json.load(open(glob.glob(sys.argv[1] + "/*/summary.json")[0]))["params_sha256"])' "$1"; }
train() {  # NP TOPOLOGY FOLDER [ENV=VALUE]
    local np="$1" topo="$2" dir="$out/$3"; shift 3
    local launcher=(); [ "$np" -gt 1 ] && launcher=(mpirun --allow-run-as-root --oversubscribe -np "$np" -x LD_LIBRARY_PATH)
    env "$@" "${launcher[@]}" "$bin" train --game catch --agents 4 --envs-per-agent 2 --n-steps 5 --backend cuda --seed 7 \
        --topology "$topo" --frames "$frames" --metrics-every 2 --out "$dir" 2>"$dir.log" >/dev/null
}
fail=0
for topo in ring exp all; do
    train 1 "$topo" "$topo-1" || { echo "FAIL $topo: one process: $(tail -3 "$out/$topo-1.log")"; fail=1; continue; }
    want="$(sha "$out/$topo-1")"
    for mode in nccl staged; do
        if [ "$mode" = staged ]; then set -- GALA_GPU_NCCL=0; else set -- GALA_GPU_NCCL=1; fi
        if ! train 2 "$topo" "$topo-$mode" "$@"; then echo "FAIL $topo $mode: $(tail -3 "$out/$topo-$mode.log")"; fail=1; continue; fi
        line="$(grep -m1 'cross-rank gossip:' "$out/$topo-$mode.log")"
        got="$(sha "$out/$topo-$mode")"
        if [ "$mode" = nccl ] && [[ "$line" != *"NCCL device to device"* ]]; then echo "FAIL $topo: not over NCCL: $line"; fail=1
        elif [ "$got" != "$want" ]; then echo "FAIL $topo $mode: params_sha256 $got, one process $want ($line)"; fail=1
        else echo "ok   $topo $mode: $got ($line)"; fi
    done
done
exit $fail
