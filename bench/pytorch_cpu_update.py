#!/usr/bin/env python3
"""Times the update `benches/cpu_update.rs` measures, in PyTorch on the same machine.

One learner update of GALA's network (conv 32-64-32, fc 512, 6 actions) on A agents x 16 envs x
5 steps of synthetic uint8 frames: forward, the A2C loss (value 0.5, entropy 0.01), backward,
clip_grad_norm_(0.5) and RMSprop(lr 7e-4, alpha 0.99, eps 1e-5), for each agent's own model
(A = 1 and A = 4, the training default). Also one act forward for 16 observations per agent.
Threads default to the machine's cores, like the Rust bench. Reports wall time and process CPU
time (all threads), like the Rust bench's GALA_BENCH_CPU_TIME=1, for a machine shared with
other work.

    python3 bench/pytorch_cpu_update.py [--threads N] [--iters N] [--json]
"""
import argparse
import json
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Policy(nn.Module):
    """Same names and layouts as gala-gpu's parameter arena."""

    def __init__(self, actions=6, c3=32):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 32, 8, stride=4)
        self.conv2 = nn.Conv2d(32, 64, 4, stride=2)
        self.conv3 = nn.Conv2d(64, c3, 3, stride=1)
        self.fc = nn.Linear(c3 * 7 * 7, 512)
        self.actor = nn.Linear(512, actions)
        self.critic = nn.Linear(512, 1)

    def forward(self, frames):
        x = frames.float() / 255.0
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        h = F.relu(self.fc(x.flatten(1)))
        return self.actor(h), self.critic(h).squeeze(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    envs, steps, actions = 16, 5, 6
    n = envs * steps
    results = {}
    for agents in (1, 4):
        models = [Policy(actions) for _ in range(agents)]
        opts = [torch.optim.RMSprop(m.parameters(), lr=7e-4, alpha=0.99, eps=1e-5) for m in models]
        obs = torch.randint(0, 256, (agents, n, 4, 84, 84), dtype=torch.uint8)
        acts = torch.randint(0, actions, (agents, n))
        returns = torch.randn(agents, n)

        def update():
            for r, (model, opt) in enumerate(zip(models, opts)):
                logits, values = model(obs[r])
                logp = F.log_softmax(logits, dim=1)
                adv = returns[r] - values
                entropy = -(logp.exp() * logp).sum(1).mean()
                pg = -(adv.detach() * logp.gather(1, acts[r][:, None]).squeeze(1)).mean()
                loss = 0.5 * adv.pow(2).mean() + pg - 0.01 * entropy
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 0.5)
                opt.step()

        def act():
            with torch.no_grad():
                for r, model in enumerate(models):
                    logits, _ = model(obs[r, :envs])
                    torch.distributions.Categorical(logits=logits).sample()

        tag = "" if agents == 1 else f"{agents}x"
        for name, fn, samples in ((f"update_gala_{agents}x16x5", update, agents * n), (f"act_gala_{tag}16", act, agents * envs)):
            for _ in range(3):
                fn()
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.iters):
                fn()
            dt = (time.perf_counter() - t0) / args.iters
            dc = (time.process_time() - c0) / args.iters
            results[name] = {"seconds": dt, "cpu_seconds": dc, "samples_per_second": samples / dt}
    meta = {"torch": torch.__version__, "threads": args.threads}
    if args.json:
        print(json.dumps({"meta": meta, "results": results}))
    else:
        print(f"PyTorch {torch.__version__}, {args.threads} threads")
        for name, r in results.items():
            print(f"{name}: {r['seconds'] * 1e3:.1f} ms wall, {r['cpu_seconds'] * 1e3:.1f} ms CPU ({r['samples_per_second']:.0f} samples/s)")


if __name__ == "__main__":
    main()
