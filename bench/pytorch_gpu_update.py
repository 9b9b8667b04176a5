#!/usr/bin/env python3
"""Times the batched GALA learner update that `gala-gpu bench learner` measures, in PyTorch on a GPU.

Same sizes and arithmetic: AGENTS agents (default 8), each with its own parameters and RMSprop
state, each learning from ENVS x STEPS (16 x 5) synthetic uint8 frames 4x84x84: forward of
GALA's network (conv 32-64-32 or nature 32-64-64, fc 512, 6 actions), n-step returns, the A2C
loss (value 0.5, entropy 0.01), backward, per-agent clip_grad_norm(0.5) and RMSprop (lr 7e-4,
alpha 0.99, eps 1e-5). Two implementations of the batch over agents:
  * vmap:  torch.func.vmap(grad(loss)) over stacked parameters (one batched kernel per layer, as
           gala-gpu does), clipping and RMSprop as whole-arena tensor ops;
  * loop:  one nn.Module + torch.optim.RMSprop per agent, updated one after another.
Each is timed eagerly and captured in a CUDA graph (torch.cuda.graphs) and replayed, in each of
gala-gpu's `--precision` modes (`precision` in each result):
  * "fp32":      no TF32 anywhere (gala-gpu's default arithmetic);
  * "tf32-conv": TF32 convolutions, FP32 matmuls (torch.backends.cudnn.allow_tf32 = True,
                 torch.backends.cuda.matmul.allow_tf32 = False): PyTorch's default, what users run;
  * "tf32":      TF32 convolutions and matmuls.

    python3 bench/pytorch_gpu_update.py [--agents 8] [--envs-per-agent 16] [--n-steps 5]
                                        [--net gala|nature] [--iters 100] [--json]
Reports updates/s and learner raw frames/s (agent steps x 4), like `gala-gpu bench learner`.
"""
import argparse
import copy
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, stack_module_state, vmap

# The module with gala-gpu's parameter names and layouts, shared with the CPU bench.
from pytorch_cpu_update import Policy


def nstep_returns(rewards, dones, bootstrap, gamma=0.99):
    """rewards, dones [..., steps, envs]; bootstrap [..., envs] -> returns [..., steps, envs]."""
    out = torch.empty_like(rewards)
    r = bootstrap
    for t in range(rewards.shape[-2] - 1, -1, -1):
        r = rewards[..., t, :] + gamma * (1.0 - dones[..., t, :]) * r
        out[..., t, :] = r
    return out


def a2c_loss(logits, values, actions, returns, value_coef=0.5, entropy_coef=0.01):
    logp = F.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    adv = returns - values
    logp_a = logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    return value_coef * adv.pow(2).mean() - (adv.detach() * logp_a).mean() - entropy_coef * entropy.mean()


def synthetic(agents, envs, steps, actions, device):
    g = torch.Generator(device="cpu").manual_seed(1)
    n = steps * envs
    frames = (torch.rand(agents, n, 4, 84, 84, generator=g) < 0.125) * torch.randint(0, 256, (agents, n, 4, 84, 84), generator=g)
    return dict(
        frames=frames.to(torch.uint8).to(device),
        actions=torch.randint(0, actions, (agents, n), generator=g).to(device),
        rewards=torch.randint(-1, 2, (agents, steps, envs), generator=g).float().to(device),
        dones=(torch.rand(agents, steps, envs, generator=g) < 0.02).float().to(device),
        bootstrap=(torch.randn(agents, envs, generator=g) * 0.1).to(device),
    )


def make_vmap_update(models, data, lr=7e-4, alpha=0.99, eps=1e-5, max_norm=0.5):
    base = copy.deepcopy(models[0]).to("meta")
    params, _ = stack_module_state(models)
    params = {k: v.detach().clone() for k, v in params.items()}
    square_avg = {k: torch.zeros_like(v) for k, v in params.items()}

    def loss_fn(p, frames, actions, returns):
        logits, values = functional_call(base, p, (frames,))
        return a2c_loss(logits, values, actions, returns)

    grads_fn = vmap(grad(loss_fn))

    def update():
        returns = nstep_returns(data["rewards"], data["dones"], data["bootstrap"]).flatten(1)
        g = grads_fn(params, data["frames"], data["actions"], returns)
        sq = torch.stack([x.pow(2).flatten(1).sum(1) for x in g.values()]).sum(0)  # [agents]
        coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for k, x in g.items():
            x = x * coef.view(-1, *([1] * (x.dim() - 1)))
            v = square_avg[k]
            v.mul_(alpha).addcmul_(x, x, value=1 - alpha)
            params[k].addcdiv_(x, v.sqrt().add_(eps), value=-lr)

    return update


def make_loop_update(models, data, lr=7e-4):
    # capturable: the step count stays on the device, so the step can be graph-captured.
    opts = [torch.optim.RMSprop(m.parameters(), lr=lr, alpha=0.99, eps=1e-5, capturable=True) for m in models]

    def update():
        returns = nstep_returns(data["rewards"], data["dones"], data["bootstrap"]).flatten(1)
        for r, (m, o) in enumerate(zip(models, opts)):
            logits, values = m(data["frames"][r])
            loss = a2c_loss(logits, values, data["actions"][r], returns[r])
            o.zero_grad(set_to_none=False)
            loss.backward()
            nn.utils.clip_grad_norm_(m.parameters(), 0.5)
            o.step()

    return update


def time_it(fn, iters):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def graphed(update):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            update()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        update()
    return g.replay


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--envs-per-agent", type=int, default=16)
    ap.add_argument("--n-steps", type=int, default=5)
    ap.add_argument("--net", choices=["gala", "nature"], default="gala")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("pytorch_gpu_update.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    c3 = 32 if a.net == "gala" else 64
    torch.manual_seed(0)
    data = synthetic(a.agents, a.envs_per_agent, a.n_steps, 6, dev)
    steps = a.agents * a.envs_per_agent * a.n_steps
    results = []
    for precision in ["fp32", "tf32-conv", "tf32"]:
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision != "fp32"
        for name, make in [("vmap", make_vmap_update), ("loop", make_loop_update)]:
            models = [Policy(6, c3).to(dev) for _ in range(a.agents)]
            for m in models[1:]:
                m.load_state_dict(models[0].state_dict())
            update = make(models, data)
            for mode in ["eager", "cuda_graph"]:
                r = dict(impl=name, mode=mode, precision=precision)
                try:
                    fn = update if mode == "eager" else graphed(update)
                    sec = time_it(fn, a.iters)
                    r.update(updates_per_s=a.iters / sec, raw_frames_per_s=4 * steps * a.iters / sec)
                except Exception as e:  # a capture can fail (e.g. an op that syncs); report, go on
                    r.update(error=str(e).splitlines()[0])
                results.append(r)
    out = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, agents=a.agents,
               envs_per_agent=a.envs_per_agent, n_steps=a.n_steps, net=a.net, results=results)
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{out['device']}, torch {out['torch']}: {a.agents} agents x {a.envs_per_agent} envs x {a.n_steps} steps, net {a.net}")
        for r in results:
            if "error" in r:
                print(f"  {r['precision']:9s} {r['impl']:5s} {r['mode']:10s} failed: {r['error']}")
            else:
                print(f"  {r['precision']:9s} {r['impl']:5s} {r['mode']:10s} {r['updates_per_s']:8.1f} updates/s  {r['raw_frames_per_s']:10.0f} raw frames/s")


if __name__ == "__main__":
    main()
