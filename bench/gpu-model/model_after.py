"""The update/act time model of ../shared/tools/gpu-model/model_update.py, applied to the kernels
of this branch (issue 12, items 1 and 3). It imports that model unchanged and edits only what
the kernels changed, each edit with where its number comes from:

  * tile stores conflict-free (FIX_BANKS of the model): both tiles of every GEMM are K-major with
    rows padded to TILE+4 floats; K-lane operands store 16-byte row segments (STS.128, checked in
    the SASS: fwd 2, backward-filter 6, fc_forward 6 per K-step), M-lane operands 32-bit stores
    along a row -> 8 + 16 wavefronts per warp per K-step, the model's FIX_BANKS value;
  * fc as a real GEMM (FIX_FC of the model: loads coalesced along the contiguous dimension) with
    the branch's FIXED split-K (FC_SPLIT_K = 256: forward 1568 -> 7 slices, backward-data 512 -> 2)
    instead of the model's fill-the-GPU split, plus the two fc_sum_splits launches;
  * loads: every K-step's loads are issued as one batch into registers (the chain / 8 of the
    model's FIX_LOADS), but NOT its instruction cut: the issued instructions per warp per K-step
    are the ones measured in this branch's SASS (sass_loops.py on the NVRTC->ptxas cubin):
      I_FWD  conv_forward_u8 (the cursor body; no preset layer runs it since the word-load kernel):
             outer body 776 - 157 (FMA loop) + 4 x 157 + 16 x 9 (patch_advance) = 1391
      conv_forward_f32 with the patch-offset table (conv2, conv3): outer body 500 - 68 (the
             table refill, skipped but in a layer with R > 2048) - 157 + 4 x 157 = 903
      conv_forward_u8_words (conv1: 4 word loads instead of 16 byte loads): 443 - 66 - 151
             + 4 x 151 = 830 (its latency chain is still modelled with 16 B loads, and its L1
             line-wavefronts G with the byte loads' addresses: both overestimates, neither binds)
      I_BWD  conv_backward_data: 756 - 152 + 4 x 152 = 1212
      I_BWF  conv_backward_filter: 721 - 152 + 4 x 152 = 1177
      fc_forward 417 - 152 + 608 = 873; fc_backward_data 804 - 152 + 608 = 1260;
      fc_backward_filter 680 - 152 + 608 = 1136
    (the index arithmetic of the batched loads costs about what the serial loads did);
  * conv1 runs conv_forward_u8_words (the launcher's choice for K, stride and H multiples of 4);
  * col2im specialised per stride: per element the 3 divisions of the decomposition stay
    (75 instructions, 9 slow ops), per tap only VALID taps are visited, ~12.5 instructions each
    and no slow op (SASS: 50 instructions for 4 taps in the stride-2 inner loop), per valid ky 27;
  * backward-data of conv2/conv3 is the transposed-conv GEMM straight into dx (session 12): per
    sub-pixel phase, rows c < Cin, columns n*U*U (U = ceil(H/s)), K-steps taps x ceil(Cout/32)
    with taps = ceil(K/s)^2 (4 for conv2, 9 for conv3: out-of-range taps at the image edges are
    multiplied as zeros and counted as FLOPs); no dcols and no col2im launch; one small
    conv_weight_taps launch regroups the weights per tap; the gradient arrives masked, so the B
    loads are 16 (no y) and dx's mask reads y of the layer below in the epilogue. Issued
    instructions per K-step from the SASS: outer body 498 - 152 + 4 x 152 = 954 (the per-tap
    setup, run once per ceil(Cout/32) K-steps, is counted in every one: an overestimate). Its L1
    line-wavefronts are emulated from its index formulas (bwd_t_lines below). backward-filter
    reads the masked gradient too (no y loads: DRAM bytes lose the y read), and conv1's runs
    conv_backward_filter_u8_words (4 word loads for its 16 frame bytes, like the forward);
    SASS per K-step: f32 540 - 152 + 608 = 996 (was 1177), u8 words 518 - 152 + 608 = 974;
    their load chains are left as before (an overestimate: the select that waited for dy and y
    before the FMA loop is gone). Likewise the fc backward kernels read heads_backward's masked
    dhidden: fc_backward_data 434 - 152 + 608 = 890 (was 1260), fc_backward_filter 507 - 152 +
    608 = 963 (was 1136);
  * act: one more launch packs its outputs, which then come down in ONE pinned copy (the
    model never counted act's downloads, so that saving is not in its figure);
  * the update's mid-way stats download is gone (heads_loss_guard on the device, one launch);
    the stats and norms come down together at the end: one host sync instead of two.

  * --precision tf32 (session 13): the `_tf32` GEMMs (conv.cu built with GALA_TF32; give the
    resources.json of that build). Per warp per K-step, from its SASS (sass_loops.py, the tile
    product fully unrolled into the K-step body; the patch-table refill subtracted as above:
    for conv1 the whole region the refill's branch skips, BSSY..BSYNC, 505 instructions with its
    peeled iterations): conv_forward_u8_words 833 - 508 = 325, conv_forward_f32 537 - 54 = 483,
    conv_backward_data 490, conv_backward_filter_f32 554, _u8_words 514, fc_forward 433,
    fc_backward_data 447, fc_backward_filter 513 issued instructions (16 HMMA.1688.F32.TF32, 48
    LDS of fragments, 48 FSETP + up to 48 predicated IADD for the cvt.rna rounding: ptxas drops
    the mask, the tensor core ignores the low bits). Shared wavefronts: the 96 of the FMA loop's
    LDS.128 become 48 conflict-free fragment LDS (rows padded by 8: bank 8*tig + grp); the tile
    stores stay at the model's conflict-free 24 (K-lane tiles swap 16-byte segments in half their
    rows, conv_klane_col; the simulator profile measures every tf32 GEMM at its ideal). The tensor pipe is not a bound: 16 mma x 8 cycles (assumed: mma.sync at 512
    TF32 FMA/clk/SM, A100's rate per SM; wgmma's H100 peak is twice that) = 128 cycles per warp
    per K-step, under every kernel's issue count. The fragment regrouping of the epilogues (one
    more shared-memory pass per block) is inside the model's epilogue allowance.

  * optim_sumsq_partials (session 14) issues its strided loads in groups of 8 (kernels/optim.cu
    OPTIM_LOADS_IN_FLIGHT; same order, same bits): its serial round trips per thread drop from
    ceil(P / (64 x 256)) = 53 to 53 // 8 + 53 % 8 = 11 for the gala net, so it is DRAM-bound.

usage: [GPU_MODEL_DIR=...] python3 model_after.py RESOURCES.json [--agents A --envs E --steps T --net gala|nature]
       [--precision fp32|tf32|tf32-conv]
"""
import os, sys
HERE = os.path.dirname(os.path.abspath(__file__))
# The model lives beside the project (`<project root>/../shared/tools/gpu-model`, as in main's
# checkout); GPU_MODEL_DIR overrides it (e.g. from a worktree elsewhere).
MODEL_DIR = os.environ.get("GPU_MODEL_DIR", os.path.join(HERE, "..", "..", "..", "shared", "tools", "gpu-model"))
if not os.path.exists(os.path.join(MODEL_DIR, "model_update.py")):
    sys.exit(f"model_after.py: no model_update.py in {MODEL_DIR}; set GPU_MODEL_DIR")
sys.path.insert(0, MODEL_DIR)
import model_update as M  # noqa: E402

M.KN["FIX_BANKS"] = True
M.KN["FIX_FC"] = True
M.KN["FIX_LOADS"] = False   # instructions measured below; the chain division applied by hand
I_MEASURED = {"conv_forward_u8": 1391, "conv_forward_f32": 903, "conv_forward_u8_words": 830, "conv_backward_data": 1212,
              "conv_backward_filter_f32": 996, "conv_backward_filter_u8": 1177, "conv_backward_filter_u8_words": 974,
              "fc_forward": 873, "fc_backward_data": 890, "fc_backward_filter": 963}
I_MEASURED_TF32 = {"conv_forward_u8_words": 325, "conv_forward_f32": 483, "conv_backward_data": 490,
                   "conv_backward_filter_f32": 554, "conv_backward_filter_u8_words": 514,
                   "fc_forward": 433, "fc_backward_data": 447, "fc_backward_filter": 513}
TF32_FRAGMENT_LDS = 48
PRECISION = "fp32"
if "--precision" in sys.argv:
    _i = sys.argv.index("--precision")
    PRECISION = sys.argv[_i + 1]
    del sys.argv[_i:_i + 2]
    if PRECISION not in ("fp32", "tf32", "tf32-conv"):
        sys.exit("model_after.py: --precision fp32|tf32|tf32-conv")


def tf32_kernel(kernel):
    """Whether `kernel` runs its _tf32 build: every GEMM under tf32, the conv ones under tf32-conv
    (PyTorch's default; give the tf32 build's resources.json: the fc kernels' registers and
    occupancy are the same in both builds, 64 / 50%)."""
    return PRECISION == "tf32" or (PRECISION == "tf32-conv" and not kernel.startswith("fc_"))
FC_SPLIT_K = 256
C2I_TAP, C2I_KY = 12.5, 27


def col2im_cost(g, n, agents, lat):
    tot_i = tot_s = tot_rt = 0; nw = 0
    total = n * g.in_len
    for w0 in range(0, total, max(32, (total // 64) // 32 * 32)):
        lanes = [w0 + l for l in range(32) if w0 + l < total]
        dec = []
        for i in lanes:
            s, rest = divmod(i, g.in_len); c, pix = divmod(rest, g.in_hw ** 2); iy, ix = divmod(pix, g.in_hw)
            dec.append((iy, ix))
        # a warp walks the union of its lanes' valid taps (lanes differ in iy % s, ix % s)
        kys = {ky for iy, _ in dec for ky in range(iy % g.stride, min(g.k, iy + 1), g.stride) if (iy - ky) // g.stride < g.out_hw}
        kxs = {kx for _, ix in dec for kx in range(ix % g.stride, min(g.k, ix + 1), g.stride) if (ix - kx) // g.stride < g.out_hw}
        i_cnt = M.C2I_ELEM + C2I_KY * len(kys) + C2I_TAP * len(kys) * len(kxs)
        tot_i += i_cnt; tot_s += 9; tot_rt += len(kys) * len(kxs); nw += 1
    return tot_i / nw, tot_s / nw, tot_rt / nw


M.col2im_cost = col2im_cost
_build = M.build

I_BWD_T = 954   # conv_backward_data, transposed-conv GEMM (SASS, see the docstring)


def phase_taps(g):
    """(taps, columns per sample) of each sub-pixel phase of conv_backward_data."""
    U = M.ceil_div(g.in_hw, g.stride)
    out = []
    for py in range(g.stride):
        for px in range(g.stride):
            ta = M.ceil_div(g.k - py, g.stride) if py < g.k else 0
            tb = M.ceil_div(g.k - px, g.stride) if px < g.k else 0
            out.append((ta, tb, U * U))
    return out


def bwd_t_lines(g, n, col0, row0, phase, t, o0, warp):
    """L1 line-wavefronts of one warp's global loads in one K-step of conv_backward_data, from
    its index formulas: A = wt[(tap*Cout + o)*Cin + c] (lanes along c), B = g[s][o][u-a][v-b]
    (lanes along the phase's columns j = (s*U + u)*U + v, 0 outside the output)."""
    U = M.ceil_div(g.in_hw, g.stride)
    py, px = divmod(phase, g.stride)
    ta, tb, _ = phase_taps(g)[phase]
    a, b = divmod(t, tb)
    tap = (py + g.stride * a) * g.k + (px + g.stride * b)
    tids = [warp * 32 + l for l in range(32)]
    gl = 0
    for i in range(8):
        es = [tt + 128 * i for tt in tids]
        gl += M.lines([((tap * g.cout + o0 + e // 32) * g.cin + row0 + e % 32) * 4 for e in es
                       if o0 + e // 32 < g.cout and row0 + e % 32 < g.cin])
    for i in range(16):
        ad = []
        for tt in tids:
            oo, jj = tt // 64 + 2 * i, tt % 64
            j, o = col0 + jj, o0 + oo
            sn, uv = divmod(j, U * U); u, v = divmod(uv, U)
            if sn < n and o < g.cout and 0 <= u - a < g.out_hw and 0 <= v - b < g.out_hw:
                ad.append((sn * g.out_len + o * g.pixels + (u - a) * g.out_hw + (v - b)) * 4)
        gl += M.lines(ad)
    return gl


def bwd_t_launch(name, g, n, agents):
    """conv_backward_data's launch entry (see the docstring)."""
    U = M.ceil_div(g.in_hw, g.stride)
    phases = phase_taps(g)
    grid = (M.ceil_div(n * U * U, 64), M.ceil_div(g.cin, 32), agents * len(phases))
    ostep = M.ceil_div(g.cout, 32)
    ks = M.ceil_div(sum(ta * tb for ta, tb, _ in phases) * ostep, len(phases))   # exact for the presets' layers
    flops = 2 * g.cin * g.cout * sum(ta * tb * cols for ta, tb, cols in phases) * n * agents
    byts = (n * g.out_len * 4 + g.cout * g.patch * 4 + 2 * n * g.in_len * 4) * agents
    samples = []
    for bx in sorted({0, grid[0] // 2, grid[0] - 1}):
        for by in sorted({0, grid[1] - 1}):
            for ph, (ta, tb, _) in enumerate(phases):
                for t in sorted({0, ta * tb - 1}):
                    for w in range(4):
                        samples.append(bwd_t_lines(g, n, bx * 64, by * 32, ph, t, 0, w))
    gl = sum(samples) / len(samples)
    chain = (2 * 60 + 16 * M.LAT["l2"]) / 8
    return dict(name=name, kernel="conv_backward_data", grid=grid, block=128, flops=flops, bytes=byts,
                model=dict(type="gemm", ksteps=ks, I=I_MEASURED_TF32["conv_backward_data"] if tf32_kernel("conv_backward_data") else I_BWD_T,
                           smem=24 + (TF32_FRAGMENT_LDS if tf32_kernel("conv_backward_data") else M.fma_lds_wavefronts()), gl=gl, chain=chain))


def build(res, net="gala", agents=8, envs=16, steps=5, act=False):
    L, P, n = _build(res, net, agents, envs, steps, act)
    c3 = 32 if net == "gala" else 64
    convs = {"conv2": M.Geom(32, 64, 4, 2, 20), "conv3": M.Geom(64, c3, 3, 1, 9)}
    out = []
    for l in L:
        m = l["model"]
        kernel = l["kernel"] or ""
        if kernel == "conv_col2im":
            continue   # gone: backward-data writes dx itself
        layer = l["name"].split(" ")[0]
        if kernel == "conv_backward_data" and layer in convs:
            g = convs[layer]
            out.append(dict(name=f"{layer} weight taps", kernel="conv_weight_taps",
                            grid=(M.ceil_div(g.cout * g.patch, 256), agents, 1), block=256, flops=0,
                            bytes=2 * g.cout * g.patch * 4 * agents,
                            model=dict(type="latency", cycles=2 * M.LAT["l2"] + 300)))
            out.append(bwd_t_launch(l["name"], g, n, agents))
            continue
        if kernel.startswith("conv_backward_filter") and layer != "fc":
            gi = {"conv1": M.Geom(4, 32, 8, 4, 84), **convs}[layer]
            l["bytes"] -= n * gi.out_len * 4 * agents   # the pre-masked dy: no y read
        if l["name"] == "(sync: stats download)":
            out.append(dict(name="loss guard", kernel="heads_loss_guard", grid=(1, 1, 1), block=1, flops=0,
                            bytes=agents * 24, model=dict(type="latency", cycles=M.LAT["l2"] + 40 * agents)))
            continue
        if kernel == "optim_sumsq_partials":
            # session 14: the loads go in groups of OPTIM_LOADS_IN_FLIGHT = 8 (SASS: 8 LDG before
            # the first DFMA), then the tail one at a time: per//8 + per%8 round trips, not per.
            m["serial"] = m["serial"] // 8 + m["serial"] % 8
        if m["type"] == "gemm":
            fc = l["name"].startswith("fc ")
            if l["kernel"] in ("conv_forward_u8", "conv_backward_filter_u8") and (net in ("gala", "nature")):
                # conv1 (8x8/4 on 84x84): the launcher picks the word-load kernels
                l["kernel"] += "_words"
            if fc:
                l["kernel"] = {"fc fwd": "fc_forward", "fc bwd-filter": "fc_backward_filter",
                               "fc bwd-data": "fc_backward_data"}[l["name"]]
                gx, gy, gz = l["grid"]
                c3 = 32 if net == "gala" else 64
                k = {"fc_forward": c3 * 49, "fc_backward_data": 512, "fc_backward_filter": n}[l["kernel"]]
                splits = 1 if l["kernel"] == "fc_backward_filter" else M.ceil_div(k, FC_SPLIT_K)
                if l["kernel"] == "fc_forward":
                    l["grid"] = (M.ceil_div(n, 64), M.ceil_div(512, 32), agents * splits)
                elif l["kernel"] == "fc_backward_data":
                    l["grid"] = (M.ceil_div(n, 64), M.ceil_div(c3 * 49, 32), agents * splits)
                else:
                    l["grid"] = (M.ceil_div(c3 * 49, 64), M.ceil_div(512, 32), agents)
                m["ksteps"] = M.ceil_div(min(k, FC_SPLIT_K) if splits > 1 else k, 32)
            m["I"] = I_MEASURED[l["kernel"]]
            if tf32_kernel(l["kernel"]):
                m["I"] = I_MEASURED_TF32[l["kernel"]]
                m["smem"] += TF32_FRAGMENT_LDS - M.fma_lds_wavefronts()
            if not fc:   # FIX_FC already set the fc chain to one coalesced batch
                m["chain"] /= 8
            out.append(l)
            if fc and splits > 1:
                width = 512 if l["kernel"] == "fc_forward" else c3 * 49
                ln = n * width
                out.append(dict(name=l["name"] + " sum", kernel="fc_sum_splits", grid=(M.ceil_div(ln, 256), agents, 1),
                                block=256, flops=splits * ln * agents, bytes=(splits + 1) * ln * agents * 4,
                                model=dict(type="latency", cycles=2 * M.LAT["l2"] + 300)))
            continue
        out.append(l)
    if act:   # act's outputs packed for one pinned download (act_pack_outputs)
        rows = agents * envs
        out.append(dict(name="act pack", kernel="act_pack_outputs", grid=(M.ceil_div(rows, 128), 1, 1), block=128,
                        flops=0, bytes=rows * 24, model=dict(type="latency", cycles=M.LAT["l2"] + 300)))
    return out, P, n


M.build = build
if __name__ == "__main__":
    M.main()
