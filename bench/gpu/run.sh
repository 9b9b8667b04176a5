#!/usr/bin/env bash
# Runs on the lent GPU machine (see prepare.sh): the GPU tests, then the benchmarks, then one
# Nsight Compute pass over one learner update (fp32, then tf32). Output: $OUT/gpu-session.txt (the
# log), $OUT/benches.jsonl (one JSON object per benchmark, tagged), $OUT/ncu.csv and
# $OUT/ncu_tf32.csv — few files, because the device tool brings back at most 8. Never changes the
# card's clocks or settings (ncu runs with --clock-control none).
#
# The whole lease is 15 minutes of device time, start-up included, so every step has its own
# time box and the script keeps to an overall budget (GALA_GPU_BUDGET_S, default 450 s): a step
# that would start past it is skipped and says so. STEPS (default "all") picks steps by name:
# machine tests learner pytorch e2e async ncu sanitize.
set -u
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/gpu-out}"; mkdir -p "$OUT"
log="$OUT/gpu-session.txt"; jsonl="$OUT/benches.jsonl"
exec > >(tee -a "$log") 2>&1
G=.gpu
BUDGET="${GALA_GPU_BUDGET_S:-450}"
STEPS="${STEPS:-all}"
export GALA_ROM_DIR="$PWD/$G/roms" GALA_REQUIRE_GPU=1
# libnvrtc: the CUDA toolkit's, else the nvidia-cuda-nvrtc wheel beside PyTorch.
nvrtc="$(ls /usr/local/cuda/lib64/libnvrtc.so* 2>/dev/null | head -1)"
[ -z "$nvrtc" ] && nvrtc="$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null)/libnvrtc.so.13"
export LD_LIBRARY_PATH="$(dirname "$nvrtc"):${LD_LIBRARY_PATH:-}"

# want STEP: is this step selected and is there budget left to start it?
want() {
    case " $STEPS " in *" all "*|*" $1 "*) ;; *) return 1 ;; esac
    if [ "$SECONDS" -ge "$BUDGET" ]; then echo "=== $1 skipped: ${SECONDS}s used of the ${BUDGET}s budget"; return 1; fi
    echo; echo "=== $1 ($(date -u +%H:%M:%S), ${SECONDS}s in)"
}
# box SECONDS CMD...: run CMD under a time box no longer than the budget left.
box() {
    local t="$1"; shift
    local left=$((BUDGET - SECONDS)); [ "$left" -lt "$t" ] && t="$left"; [ "$t" -lt 5 ] && t=5
    timeout "$t" "$@"; local rc=$?
    [ "$rc" -eq 124 ] && echo "(timed out after ${t}s: $*)"
    return "$rc"
}
# bench TAG CMD...: run a benchmark that prints one JSON object; log it and append it tagged.
bench() {
    local tag="$1"; shift
    local j; j="$(box 90 "$@")" || { echo "$tag failed (rc=$?): $j"; return; }
    echo "$tag $j"
    printf '{"tag":"%s","result":%s}\n' "$tag" "$j" >>"$jsonl"
}

if want machine; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv; nproc
    echo "nvrtc: $nvrtc"
    box 30 "$G/gala-gpu" info
fi
if want tests; then
    # The three binaries' CUDA cases in parallel (each compiles its modules with NVRTC on the CPU).
    # `wait` on the PIDs: a bare `wait` also waits for the log's `tee` process substitution,
    # which never ends (that cost the first GPU session 500 s of its lease).
    pids=()
    for t in kernels net_kernels gpu_backend; do
        box 150 "$G/$t" cuda --include-ignored --test-threads 1 >"/tmp/test_$t.log" 2>&1 &
        pids+=($!)
    done
    wait "${pids[@]}"
    for t in kernels net_kernels gpu_backend; do echo "--- $t"; tail -30 "/tmp/test_$t.log"; done
fi
if want learner; then
    for agents in 1 4 8 16; do
        bench "learner_cuda_$agents" "$G/gala-gpu" bench learner --backend cuda --agents "$agents" --updates 50 --json
    done
    # Issue 12 "frames stay on the device": the same update uploading its 18 MB of frames from
    # pinned memory every time (the path before; still the fallback), for the PCIe time it costs.
    bench learner_cuda_8_host_frames "$G/gala-gpu" bench learner --backend cuda --agents 8 --updates 50 --host-frames --json
    # Issue 12 item 3: the update replayed from a CUDA graph (the default) against launch by
    # launch, same shape.
    bench learner_cuda_8_no_graphs env GALA_CUDA_GRAPHS=0 "$G/gala-gpu" bench learner --backend cuda --agents 8 --updates 50 --json
    # The opt-in TF32 tensor-core GEMMs (precision = "tf32"), same shape: against learner_cuda_8
    # and against PyTorch with TF32 convolutions (its default).
    bench learner_cuda_8_tf32 "$G/gala-gpu" bench learner --backend cuda --agents 8 --updates 50 --precision tf32 --json
    # TF32 convs, FP32 fc: PyTorch's default arithmetic (the peer's "tf32-conv" rows).
    bench learner_cuda_8_tf32_conv "$G/gala-gpu" bench learner --backend cuda --agents 8 --updates 50 --precision tf32-conv --json
fi
if want pytorch; then
    j="$(cd "$G" && box 120 python3 pytorch_gpu_update.py --agents 8 --json)" && {
        echo "learner_pytorch_8 $j"; printf '{"tag":"learner_pytorch_8","result":%s}\n' "$j" >>"$jsonl"; } ||
        echo "pytorch peer failed: $j"
fi
if want e2e; then
    bench e2e_cuda "$G/gala-gpu" bench e2e --game pong --backend cuda --agents 4 --envs-per-agent 16 --updates 40 --json
    bench e2e_cuda_pipelined "$G/gala-gpu" bench e2e --game pong --backend cuda --agents 4 --envs-per-agent 16 --updates 40 --pipeline --json
    # Issue 12: the same plain run uploading whole stacks and every segment again (the path before).
    bench e2e_cuda_host_frames "$G/gala-gpu" bench e2e --game pong --backend cuda --agents 4 --envs-per-agent 16 --updates 40 --host-frames --json
fi
if want async; then
    box 90 "$G/gala-gpu" train -q --game pong --backend cuda --agents 4 --envs-per-agent 16 --sync-freq 4 --frames 400000 --out /tmp/gpu-runs
    tail -3 /tmp/gpu-runs/*/metrics.csv 2>/dev/null
fi
if want ncu; then
    # Per-kernel device time and memory behaviour of one learner update (8 agents x 16 envs x 5
    # steps), hardware counters, clocks left alone: the measurement the static model predicts.
    # Then the same for the TF32 GEMMs (ncu_tf32.csv). Compare either with the model's forecast:
    # python3 bench/gpu-model/forecast.py MODEL.json CALIBRATION.json ncu.csv (BENCHMARKS.md).
    ncu_bin="$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)"
    if [ -n "$ncu_bin" ]; then
        for precision in fp32 tf32; do
            csv="$OUT/ncu.csv"; [ "$precision" = fp32 ] || csv="$OUT/ncu_$precision.csv"
            box 120 "$ncu_bin" --clock-control none --csv --page raw --metrics \
gpu__time_duration.sum,launch__registers_per_thread,launch__grid_size,launch__block_size,\
sm__warps_active.avg.pct_of_peak_sustained_active,dram__bytes_read.sum,dram__bytes_write.sum,\
l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum,l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum,\
l1tex__t_requests_pipe_lsu_mem_global_op_st.sum,l1tex__t_sectors_pipe_lsu_mem_global_op_st.sum,\
l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,smsp__inst_executed_op_shared_ld.sum,\
l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum,smsp__inst_executed_op_shared_st.sum \
                "$G/gala-gpu" bench learner --backend cuda --agents 8 --updates 1 --precision "$precision" \
                >"$csv" 2>"/tmp/ncu.err"
            echo "ncu $precision rc=$? lines=$(wc -l <"$csv")"; tail -5 /tmp/ncu.err
        done
    else
        echo "no ncu on this machine"
    fi
fi
if want sanitize; then
    # compute-sanitizer (works on the Firecracker machines, KINDS.md): out-of-bounds and
    # misaligned accesses (memcheck) and shared-memory races (racecheck) in the network kernels'
    # CUDA comparison, which launches every conv/fc/heads kernel on ragged shapes.
    cs="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)"
    if [ -n "$cs" ]; then
        for tool in memcheck racecheck; do
            box 120 "$cs" --tool "$tool" --error-exitcode 3 "$G/net_kernels" cuda --test-threads 1 2>&1 | tail -15
            echo "compute-sanitizer $tool rc=${PIPESTATUS[0]}"
        done
    else
        echo "no compute-sanitizer on this machine"
    fi
fi
echo; echo "=== done (${SECONDS}s)"
