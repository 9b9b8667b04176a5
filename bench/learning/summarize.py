#!/usr/bin/env python3
"""Summarize training runs for LEARNING.md from their run folders (metrics.csv + config.toml).

usage: bench/learning/summarize.py RUN_DIR [RUN_DIR ...]

Prints one markdown table row per run: game, algo, frames reached, wall time, frames/s
(frames / wall seconds over the whole run, resumes included), the first frame count at which
mean_return_100 (the mean of the last 100 finished episodes over all agents) reached each
threshold, and the final mean_return_100. Standard library only, so it runs anywhere.
"""
import csv
import sys
import tomllib  # Python >= 3.11
from pathlib import Path

THRESHOLDS = {"pong": (0.0, 10.0, 18.0), "breakout": (10.0, 50.0, 100.0)}


def first_reaching(rows, threshold):
    for row in rows:
        value = row["mean_return_100"]
        if value and float(value) >= threshold:
            return int(row["frames"])
    return None


def millions(frames):
    return "—" if frames is None else f"{frames / 1e6:.1f}M"


def summarize(run_dir: Path) -> str:
    config = tomllib.loads((run_dir / "config.toml").read_text())
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{run_dir}: metrics.csv has no rows yet")
    last = rows[-1]
    frames = int(last["frames"])
    wall = float(last["wall_seconds"])
    thresholds = THRESHOLDS.get(config["game"], ())
    reached = ", ".join(
        f"{t:g}: {millions(first_reaching(rows, t))}" for t in thresholds
    )
    final = f"{float(last['mean_return_100']):.2f}" if last["mean_return_100"] else "—"
    mode = config["algo"]
    if config.get("sync_freq", 0):
        mode += f" sync-freq {config['sync_freq']}"
    if config.get("pipeline"):
        mode += " pipeline"
    return (
        f"| {config['game']} | {mode} | {config['agents']}×{config['envs_per_agent']} "
        f"| {config['lr']:g} {config.get('rms_form', 'torch')} | {config['seed']} | {millions(frames)} | {wall / 3600:.2f} h "
        f"| {frames / wall:,.0f} | {reached} | {final} |"
    )


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print("| game | algo | agents×envs | lr, RMSprop form | seed | frames | wall | frames/s | first frame at mean_return_100 ≥ | final mean_return_100 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for arg in sys.argv[1:]:
        print(summarize(Path(arg)))
