"""The model's update time corrected by what a GPU measured: a forecast, not a measurement.

usage: python3 forecast.py MODEL.json CALIBRATION.json
  MODEL.json        model_after.py ... --json MODEL.json (the kernels of this tree; give the same
                    --hbm as the calibrating card)
  CALIBRATION.json  per launch name: [measured us, the model's us of that day] for the same
                    kernels, and the launches whose kernels changed since
                    (bench/gpu/results/2026-12-04-h200/calibration.json: the first lease's Nsight
                    Compute against the model of that day)

Rules, per launch of the learner update (the act rows are not forecast):
  * tiny kernels (the model said < 1 us) whose code did not change: the measured time itself
    (the model's latency floor is far too low for them: 4-8 us measured against 0.4);
  * GEMM launches: the model's time now x measured/model of the same launch then (the kernel
    changed, its bounds may not have: a guess, hence also the band below), or x the median GEMM
    ratio when the launch is new or its kernel was replaced (backward-data);
  * other changed or new small kernels (heads, weight taps): max(model, 4 us), the floor the
    measured small kernels show; the optimizer passes: model x the median GEMM ratio.
The band: every GEMM at the best and at the worst measured/model ratio of the calibration.
Launch overheads: 24 launches x 1 us (a CUDA graph replay; measured 2% of the update on the H200).
"""
import json, statistics, sys

def main(model_path, cal_path):
    rows = json.load(open(model_path))["learn"]["rows"]
    cal = json.load(open(cal_path))
    meas, changed = cal["launches"], set(cal["changed_since"])
    gemm = [m / p for n, (m, p) in meas.items() if p > 20 and n not in changed]
    med, lo, hi = statistics.median(gemm), min(gemm), max(gemm)
    total = {"model": 0.0, "forecast": 0.0, "best": 0.0, "worst": 0.0}
    print(f"{'launch':22s} {'model us':>9s} {'forecast us':>12s}  rule")
    for r in rows:
        if r["kernel"] is None:   # the host-sync row: not a kernel
            continue
        name, t = r["name"], r["time_us"]
        then = meas.get(name)
        if then and then[1] < 1 and name not in changed:
            f = b = w = then[0]; rule = "measured (tiny, unchanged)"
        elif r["model"]["type"] == "gemm":
            k = then[0] / then[1] if then and name not in changed else med
            f, b, w = t * k, t * lo, t * hi
            rule = f"x {k:.2f}" + ("" if then and name not in changed else " (median: new or replaced)")
        elif name.startswith("optim"):
            f, b, w = t * med, t, t * hi; rule = f"x {med:.2f} (median)"
        else:
            f = b = w = max(t, 4.0); rule = "max(model, 4 us)"
        for key, v in zip(total, (t, f, b, w)):
            total[key] += v
        print(f"{name:22s} {t:9.1f} {f:12.1f}  {rule}")
    print(f"GEMM measured/model in the calibration: median {med:.2f}, best {lo:.2f}, worst {hi:.2f}")
    for key, v in total.items():
        frames = json.load(open(model_path))["learn"]["samples"] * 4
        print(f"{key:9s} {v:7.0f} us + 24 us launches -> {frames / (v + 24):.2f} M learner frames/s")

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
