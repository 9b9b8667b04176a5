#!/usr/bin/env bash
# Runs on the lent GPU machine (see prepare.sh): the GPU test suite, then the benchmarks, all
# output to $OUT/gpu-session.txt plus one JSON file per benchmark. Never changes the card's
# clocks or settings. Each step is time-boxed so one slow step cannot eat the whole call.
set -u
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/gpu-out}"; mkdir -p "$OUT"
log="$OUT/gpu-session.txt"
exec > >(tee -a "$log") 2>&1
G=.gpu
export GALA_ROM_DIR="$PWD/$G/roms" GALA_REQUIRE_GPU=1
# libnvrtc: the CUDA toolkit's, else the nvidia-cuda-nvrtc wheel beside PyTorch.
nvrtc="$(ls /usr/local/cuda/lib64/libnvrtc.so* 2>/dev/null | head -1)"
[ -z "$nvrtc" ] && nvrtc="$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null)/libnvrtc.so.13"
export LD_LIBRARY_PATH="$(dirname "$nvrtc"):${LD_LIBRARY_PATH:-}"
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
step "machine"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv; nproc
"$G/gala-gpu" info
step "GPU tests"
for t in kernels net_kernels gpu_backend; do timeout 240 "$G/$t" --include-ignored --test-threads 1 2>&1 | tail -25; done
for t in async_gossip pipeline; do timeout 120 "$G/$t" cuda 2>&1 | tail -8; done
step "bench learner (gala-gpu, cuda)"
for agents in 1 4 8 16; do
    timeout 120 "$G/gala-gpu" bench learner --backend cuda --agents "$agents" --updates 50 --json | tee "$OUT/learner_cuda_$agents.json"
done
# Issue 12 "frames stay on the device": the same update uploading its 18 MB of frames from
# pinned memory every time (the path before; still the fallback), for the PCIe time it costs.
timeout 120 "$G/gala-gpu" bench learner --backend cuda --agents 8 --updates 50 --host-frames --json | tee "$OUT/learner_cuda_8_host_frames.json"
step "bench learner (PyTorch peer)"
(cd "$G" && timeout 300 python3 pytorch_gpu_update.py --agents 8 --json | tee "$OUT/learner_pytorch_8.json")
step "bench e2e pong (cuda), plain and pipelined, all cores"
for p in "" "--pipeline"; do
    timeout 180 "$G/gala-gpu" bench e2e --game pong --backend cuda --agents 4 --envs-per-agent 16 --updates 40 $p --json |
        tee "$OUT/e2e_cuda${p:+_pipelined}.json"
done
# Issue 12: the same plain run uploading whole stacks and every segment again (the path before).
timeout 180 "$G/gala-gpu" bench e2e --game pong --backend cuda --agents 4 --envs-per-agent 16 --updates 40 --host-frames --json |
    tee "$OUT/e2e_cuda_host_frames.json"
step "asynchronous gossip on cuda (sync_freq 4), 4 agents"
timeout 180 "$G/gala-gpu" train -q --game pong --backend cuda --agents 4 --envs-per-agent 16 --sync-freq 4 --frames 400000 --out /tmp/gpu-runs
step "done"
