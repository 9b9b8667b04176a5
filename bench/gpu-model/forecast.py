"""The model's update time corrected by what a GPU measured: a forecast, not a measurement.

usage: python3 forecast.py MODEL.json CALIBRATION.json [NCU.csv]
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

With NCU.csv (bench/gpu/run.sh's `ncu --csv --page raw` of `bench learner --updates 1`), a column
of what the card measured per launch: the update's launches are those from the last
`nstep_returns` on, matched to the model's rows in order by kernel name (a `_tf32` suffix
ignored); a model row with no such launch is shown as "-", a launch no row matched is listed.
"""
import csv, json, statistics, sys


def measured_update(ncu_path):
    """[(kernel, grid, us)] of the last update in an Nsight Compute raw CSV."""
    rows = list(csv.reader(line for line in open(ncu_path) if line.startswith('"')))
    head, data = rows[0], rows[2:]   # rows[1] holds the units
    k, g, t = head.index("Kernel Name"), head.index("Grid Size"), head.index("gpu__time_duration.sum")
    if rows[1][t] != "ns":
        sys.exit(f"forecast.py: {ncu_path}: gpu__time_duration.sum in {rows[1][t]!r}, expected ns")
    launches = [(r[k], r[g], float(r[t].replace(",", "")) / 1000) for r in data]
    starts = [i for i, l in enumerate(launches) if l[0] == "nstep_returns"]
    if not starts:
        sys.exit(f"forecast.py: {ncu_path}: no nstep_returns launch (not a learner update?)")
    return launches[starts[-1]:]


def match(rows, launches):
    """measured us per model row (None where the update had no such launch), and the leftovers."""
    out, used, i = [], set(), 0
    for r in rows:
        found = next((j for j in range(i, len(launches)) if launches[j][0].removesuffix("_tf32") == r["kernel"]), None)
        out.append(None if found is None else launches[found][2])
        if found is not None:
            used.add(found)
            i = found + 1
    return out, [l for j, l in enumerate(launches) if j not in used]


def main(model_path, cal_path, ncu_path=None):
    rows = [r for r in json.load(open(model_path))["learn"]["rows"] if r["kernel"] is not None]
    measured, leftover = match(rows, measured_update(ncu_path)) if ncu_path else ([None] * len(rows), [])
    cal = json.load(open(cal_path))
    meas, changed = cal["launches"], set(cal["changed_since"])
    gemm = [m / p for n, (m, p) in meas.items() if p > 20 and n not in changed]
    med, lo, hi = statistics.median(gemm), min(gemm), max(gemm)
    total = {"model": 0.0, "forecast": 0.0, "best": 0.0, "worst": 0.0}
    ncu_col = f" {'measured us':>12s}" if ncu_path else ""
    print(f"{'launch':22s} {'model us':>9s} {'forecast us':>12s}{ncu_col}  rule")
    measured_total = 0.0
    for r, got in zip(rows, measured):
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
        cell = "" if not ncu_path else f" {got:12.1f}" if got is not None else f" {'-':>12s}"
        measured_total += got or 0.0
        print(f"{name:22s} {t:9.1f} {f:12.1f}{cell}  {rule}")
    print(f"GEMM measured/model in the calibration: median {med:.2f}, best {lo:.2f}, worst {hi:.2f}")
    frames = json.load(open(model_path))["learn"]["samples"] * 4
    for key, v in total.items():
        print(f"{key:9s} {v:7.0f} us + 24 us launches -> {frames / (v + 24):.2f} M learner frames/s")
    if ncu_path:
        print(f"measured  {measured_total:7.0f} us of the matched launches (Nsight Compute: serialised, caches flushed)")
        for kernel, grid, us in leftover:
            print(f"  launch with no model row: {kernel} {grid} {us:.1f} us")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    main(*sys.argv[1:])
