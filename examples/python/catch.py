"""Trains GALA-A2C agents on catch through the C ABI from Python (ctypes, standard library only).

    cargo build --release
    python3 examples/python/catch.py [--lib target/release/libgala_gpu.so] [--frames N] [--threshold X]

The game is re-implemented below (rules as src/env/catch.rs): a 10x5 board, the ball falls one
row per step, the paddle moves 0 stay / 1 left / 2 right, +1 or -1 when the ball reaches the
bottom row; cells are 8x16-pixel blocks in an 84x84 frame; 4-frame stacks, zeroed when a game
ends. Exits 0 when the mean return of the last 100 games reaches the threshold.
"""
import argparse
import ctypes as C
import os
import random
import sys
from collections import deque

ROWS, COLS, CELL_H, CELL_W, HW, STACK = 10, 5, 8, 16, 84, 4
FRAME = HW * HW
MARGIN = (HW - ROWS * CELL_H) // 2
ZERO_FRAME = bytes(FRAME)
GALA_OK = 0


class EngineInfo(C.Structure):
    _fields_ = [("agents", C.c_size_t), ("envs_per_agent", C.c_size_t), ("n_steps", C.c_size_t),
                ("actions", C.c_size_t), ("param_count", C.c_size_t), ("obs_bytes", C.c_size_t),
                ("round", C.c_uint64)]


class LearnStats(C.Structure):
    _fields_ = [("value_loss", C.c_double), ("policy_loss", C.c_double), ("entropy", C.c_double),
                ("grad_norm", C.c_double)]


def load(path):
    lib = C.CDLL(path)
    p = C.c_void_p
    sig = {
        "gala_last_error": (C.c_char_p, []),
        "gala_engine_create": (C.c_int, [C.c_char_p, C.c_uint32, C.POINTER(p)]),
        "gala_engine_free": (C.c_int, [p]),
        "gala_engine_info": (C.c_int, [p, C.POINTER(EngineInfo)]),
        "gala_engine_act": (C.c_int, [p, p, C.c_size_t, C.c_uint64, C.c_int, p, C.c_size_t, p, C.c_size_t, p, C.c_size_t]),
        "gala_engine_learn": (C.c_int, [p] + [p, C.c_size_t] * 7),
        "gala_engine_gossip": (C.c_int, [p]),
        "gala_engine_consensus_distance": (C.c_int, [p, C.POINTER(C.c_double)]),
    }
    for name, (res, args) in sig.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
    return lib


def check(lib, status, what):
    if status != GALA_OK:
        sys.exit(f"{what} failed (status {status}): {lib.gala_last_error().decode()}")


class Catch:
    """One game and its frame stack, a STACK*FRAME slice of the shared observation buffer."""

    def __init__(self, obs, offset, rng):
        self.obs, self.base, self.rng = obs, offset, rng
        self.reset()

    def render(self):
        last = self.base + (STACK - 1) * FRAME
        self.obs[last:last + FRAME] = ZERO_FRAME
        for row, col, value in ((ROWS - 1, self.paddle, 160), (self.row, self.col, 255)):
            block = bytes([value]) * CELL_W
            for y in range(CELL_H):
                at = last + (MARGIN + row * CELL_H + y) * HW + MARGIN + col * CELL_W
                self.obs[at:at + CELL_W] = block

    def reset(self):
        self.row, self.col, self.paddle = 0, self.rng.randrange(COLS), self.rng.randrange(COLS)
        self.obs[self.base:self.base + (STACK - 1) * FRAME] = bytes((STACK - 1) * FRAME)
        self.render()

    def step(self, action):
        """Returns (reward, done); on done the stack already shows the next game."""
        if action == 1:
            self.paddle = max(self.paddle - 1, 0)
        elif action == 2:
            self.paddle = min(self.paddle + 1, COLS - 1)
        self.row += 1
        if self.row == ROWS - 1:
            reward = 1.0 if self.col == self.paddle else -1.0
            self.reset()
            return reward, 1.0
        b = self.base
        self.obs[b:b + (STACK - 1) * FRAME] = self.obs[b + FRAME:b + STACK * FRAME]
        self.render()
        return 0.0, 0.0


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", default=os.path.join(here, "..", "..", "target", "release", "libgala_gpu.so"))
    ap.add_argument("--frames", type=int, default=24000, help="agent steps over all environments")
    ap.add_argument("--threshold", type=float, default=0.5, help="mean return of the last 100 games to reach")
    args = ap.parse_args()
    lib = load(args.lib)

    config = b'agents = 4\nenvs_per_agent = 4\nn_steps = 5\nlr = 1.4e-3\nbackend = "cpu"\nseed = 1\n'
    engine = C.c_void_p()
    check(lib, lib.gala_engine_create(config, 3, C.byref(engine)), "gala_engine_create")
    info = EngineInfo()
    check(lib, lib.gala_engine_info(engine, C.byref(info)), "gala_engine_info")
    agents, envs, steps, ob = info.agents, info.envs_per_agent, info.n_steps, info.obs_bytes
    n, s = agents * envs, agents * steps * envs

    obs = bytearray(n * ob)
    rng = random.Random(1)
    games = [Catch(obs, i * ob, rng) for i in range(n)]
    seg_obs = bytearray(s * ob)
    obs_c = (C.c_uint8 * len(obs)).from_buffer(obs)
    seg_obs_c = (C.c_uint8 * len(seg_obs)).from_buffer(seg_obs)
    actions = (C.c_uint32 * n)()
    seg_actions, rewards, dones = (C.c_uint32 * s)(), (C.c_float * s)(), (C.c_float * s)()
    bootstrap, stats = (C.c_float * n)(), (LearnStats * agents)()
    recent, finished, t_step, mean = deque(maxlen=100), 0, 0, -1.0

    updates = args.frames // s
    for u in range(updates):
        for t in range(steps):
            check(lib, lib.gala_engine_act(engine, obs_c, len(obs), t_step, 0, actions, n, None, 0, None, 0), "act")
            for a in range(agents):
                for e in range(envs):
                    i, row = a * envs + e, (a * steps + t) * envs + e  # segment is [agents][steps][envs]
                    seg_obs[row * ob:(row + 1) * ob] = obs[i * ob:(i + 1) * ob]
                    seg_actions[row] = actions[i]
                    rewards[row], dones[row] = games[i].step(actions[i])
                    if dones[row]:
                        recent.append(rewards[row])
                        finished += 1
            t_step += 1
        # V(s_T) for the bootstrap, at the step the next segment starts with.
        check(lib, lib.gala_engine_act(engine, obs_c, len(obs), t_step, 0, actions, n, bootstrap, n, None, 0), "act")
        check(lib, lib.gala_engine_learn(engine, seg_obs_c, len(seg_obs), seg_actions, s, rewards, s, dones, s,
                                         bootstrap, n, None, 0, stats, agents), "learn")
        check(lib, lib.gala_engine_gossip(engine), "gossip")
        mean = sum(recent) / len(recent) if recent else -1.0
        if (u + 1) % 50 == 0 or u + 1 == updates:
            consensus = C.c_double()
            check(lib, lib.gala_engine_consensus_distance(engine, C.byref(consensus)), "consensus")
            print(f"frames {t_step * n:6d}  games {finished:5d}  mean return (last 100) {mean:+.2f}  "
                  f"entropy {stats[0].entropy:.3f}  consensus {consensus.value:.2e}", flush=True)
    check(lib, lib.gala_engine_free(engine), "gala_engine_free")
    del obs_c, seg_obs_c  # release the exported buffers
    if mean < args.threshold:
        sys.exit(f"did not learn: mean return {mean:.2f} < {args.threshold:.2f} after {args.frames} frames")
    print(f"learned: mean return {mean:.2f} >= {args.threshold:.2f}")


if __name__ == "__main__":
    main()
