#!/usr/bin/env python3
"""Throughput of ale-py's AtariVectorEnv (C++ threads, preprocessing in C++), the reference that
`gala-gpu bench env` is compared with.

    python3 -m pip install ale-py==0.12.1 gymnasium numpy
    python3 bench/ale_py_vector_env.py --game pong --envs 16 --threads 2 [--json]

Settings match `gala-gpu bench env --preset gala`: frameskip 4 with max-pooling, 84x84 grey,
4-frame stack, 1-30 no-ops, FIRE reset, no sticky actions, episodic life, random actions drawn
for all envs each step. (The frame caps differ, 400k vs 108k frames, which a random Pong agent
never reaches.) Synchronous stepping (batch_size = num_envs), as gala-gpu's VecEnv steps.
"""
import argparse
import json
import time

import numpy as np
from ale_py.vector_env import AtariVectorEnv


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--game", default="pong")
    p.add_argument("--envs", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=2000, help="vector steps timed")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    envs = AtariVectorEnv(
        game=a.game,
        num_envs=a.envs,
        batch_size=a.envs,
        num_threads=a.threads,
        frameskip=4,
        maxpool=True,
        grayscale=True,
        img_height=84,
        img_width=84,
        stack_num=4,
        noop_max=30,
        repeat_action_probability=0.0,
        episodic_life=True,
        use_fire_reset=True,
        reward_clipping=False,
    )
    envs.reset(seed=a.seed)
    rng = np.random.default_rng(a.seed)
    n_actions = envs.single_action_space.n
    for _ in range(a.warmup):
        envs.step(rng.integers(0, n_actions, a.envs))
    actions = [rng.integers(0, n_actions, a.envs) for _ in range(a.steps)]
    cpu0 = time.process_time()  # all threads of the process, user + system
    start = time.perf_counter()
    for act in actions:
        envs.step(act)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    envs.close()
    sps = a.steps * a.envs / wall
    report = {
        "impl": "ale-py AtariVectorEnv 0.12.1",
        "game": a.game,
        "envs": a.envs,
        "threads": a.threads,
        "agent_steps_per_sec": sps,
        "frames_per_sec": sps * 4,
        "agent_steps": a.steps * a.envs,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "frames_per_cpu_sec": a.steps * a.envs * 4 / cpu,
    }
    if a.json:
        print(json.dumps(report))
    else:
        print(
            f"ale-py AtariVectorEnv: {a.game}, {a.envs} envs on {a.threads} threads: "
            f"{sps:.0f} agent steps/s, {sps * 4:.0f} frames/s ({a.steps * a.envs} steps in {wall:.2f} s)\n"
            f"CPU time {cpu:.2f} s: {report['frames_per_cpu_sec']:.0f} frames per CPU-second"
        )


if __name__ == "__main__":
    main()
