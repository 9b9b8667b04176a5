#!/usr/bin/env python3
"""Times the update `benches/cpu_update.rs` measures, in PyTorch on the same machine.

One learner update of GALA's network (conv 32-64-32, fc 512, 6 actions) on 1 agent x 16 envs x
5 steps of synthetic uint8 frames: forward, the A2C loss (value 0.5, entropy 0.01), backward,
clip_grad_norm_(0.5) and RMSprop(lr 7e-4, alpha 0.99, eps 1e-5). Also one act forward for 16
observations. Threads default to the machine's cores, like the Rust bench.

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
    model = Policy(actions)
    opt = torch.optim.RMSprop(model.parameters(), lr=7e-4, alpha=0.99, eps=1e-5)
    obs = torch.randint(0, 256, (n, 4, 84, 84), dtype=torch.uint8)
    acts = torch.randint(0, actions, (n,))
    returns = torch.randn(n)

    def update():
        logits, values = model(obs)
        logp = F.log_softmax(logits, dim=1)
        adv = returns - values
        entropy = -(logp.exp() * logp).sum(1).mean()
        pg = -(adv.detach() * logp.gather(1, acts[:, None]).squeeze(1)).mean()
        loss = 0.5 * adv.pow(2).mean() + pg - 0.01 * entropy
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()

    def act():
        with torch.no_grad():
            logits, _ = model(obs[:envs])
            torch.distributions.Categorical(logits=logits).sample()

    results = {}
    for name, fn, samples in (("update_gala_1x16x5", update, n), ("act_gala_16", act, envs)):
        for _ in range(3):
            fn()
        t0 = time.perf_counter()
        for _ in range(args.iters):
            fn()
        dt = (time.perf_counter() - t0) / args.iters
        results[name] = {"seconds": dt, "samples_per_second": samples / dt}
    meta = {"torch": torch.__version__, "threads": args.threads}
    if args.json:
        print(json.dumps({"meta": meta, "results": results}))
    else:
        print(f"PyTorch {torch.__version__}, {args.threads} threads")
        for name, r in results.items():
            print(f"{name}: {r['seconds'] * 1e3:.1f} ms ({r['samples_per_second']:.0f} samples/s)")


if __name__ == "__main__":
    main()
