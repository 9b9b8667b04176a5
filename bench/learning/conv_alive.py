#!/usr/bin/env python3
"""Dead ReLU units in a gala-gpu checkpoint, measured on the observations it carries.

A checkpoint of an Atari run stores the 64 (agents x envs) current observations
(`env.observations`, uint8 [N, 4, 84, 84]). For each checkpoint given, this runs agent 0's
network (GALA's conv 32-64-32, fc 512; PyTorch's conv2d/linear, the arithmetic gala-gpu
matches) on them and prints, per layer, the fraction of units (channels for the convs) that
are active (pre-activation > 0) somewhere in the batch and the fraction of all activations that
are positive, then the spread of the policy logits across the batch (0: the policy ignores the
screen). Needs numpy and torch (the same as bench/pytorch_cpu_update.py).

    python3 bench/learning/conv_alive.py RUN/checkpoint.safetensors [MORE.safetensors ...]
"""
import json
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

DTYPES = {"F32": np.float32, "F64": np.float64, "U8": np.uint8}


def load_safetensors(path):
    raw = open(path, "rb").read()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        tensors[name] = np.frombuffer(raw[base + start : base + end], dtype=DTYPES[entry["dtype"]]).reshape(entry["shape"])
    return tensors


def alive(path, agent=0):
    t = load_safetensors(path)
    if "env.observations" not in t:
        raise SystemExit(f"{path}: no env.observations (not an Atari run's checkpoint)")
    param = lambda name: torch.tensor(t[f"agent{agent}.{name}"].copy())
    x = torch.tensor(t["env.observations"].astype(np.float32) / 255.0)
    row = []
    for layer, stride in (("conv1", 4), ("conv2", 2), ("conv3", 1)):
        pre = F.conv2d(x, param(layer + ".weight"), param(layer + ".bias"), stride=stride)
        units = (pre > 0).transpose(0, 1).flatten(1).any(1).float().mean().item()
        row.append((layer, units, (pre > 0).float().mean().item()))
        x = F.relu(pre)
    pre = F.linear(x.flatten(1), param("fc.weight"), param("fc.bias"))
    row.append(("fc", (pre > 0).any(0).float().mean().item(), (pre > 0).float().mean().item()))
    logits = F.linear(F.relu(pre), param("actor.weight"), param("actor.bias"))
    return row, logits.std(0).mean().item()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print("checkpoint | " + " | ".join(f"{l} units/acts" for l in ("conv1", "conv2", "conv3", "fc")) + " | logit std")
    for path in sys.argv[1:]:
        row, spread = alive(path)
        print(f"{path} | " + " | ".join(f"{u:.2f}/{a:.3f}" for _, u, a in row) + f" | {spread:.3g}")
