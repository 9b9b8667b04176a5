//! The network kernels (kernels/conv.cu, kernels/heads.cu) against their CPU references
//! (src/backend/cpu/layers.rs, heads.rs), each launch on its own, on random inputs: always under
//! the CUDA simulator, and on a real GPU when one is present (otherwise skipped with the reason
//! printed; GALA_REQUIRE_GPU=1 makes a missing GPU a failure).
//!
//! Shapes: both presets' conv1-3 and fc layers, plus ragged ones (channel counts, batch sizes
//! and patch lengths that are not multiples of the 32x64 tile or the 4-sample gradient chunk),
//! several agents per launch, each agent with its own weights. Every output buffer is poisoned
//! with NaN first; the parameter/gradient arena's padding must still be NaN afterwards (nothing
//! written outside the layer).
//!
//! Tolerances (fp32, summation order differs from the CPU's GEMM):
//!   relative error ‖out − ref‖/‖ref‖ ≤ 1e-5 and max |out − ref| ≤ 1e-5 · max |ref|, per tensor;
//!   the TF32 GEMMs (`Precision::Tf32`, tensor cores) meet the same bound against the CPU reference
//!   run on the operands rounded to TF32 as the kernels round them (`tf32_round`: the products are
//!   then exact, only the summation order differs), and ‖out − ref‖/‖ref‖ ≤ TF32_REL against the
//!   plain FP32 reference (the price of 10-bit operands). On a GPU the TF32 bound is 1e-4 instead
//!   of 1e-5: how a tensor core rounds inside an mma is the hardware's (the simulator rounds each
//!   step to nearest);
//!   the fused loss part of the heads is compared on identical logits/values: bit-exact under the
//!   simulator (same libm, same operation order, no FMA contraction), 1e-5 relative on a GPU.

use gala_gpu::backend::cpu::heads::{a2c_loss_backward, LossCoefs};
use gala_gpu::backend::cpu::layers::{conv2d_backward, conv2d_forward, linear_backward, linear_forward};
use gala_gpu::backend::gpu::launch::{self, ConvInput, FilterTarget, HeadsLossBuffers, HeadsParams, LayerParams};
use gala_gpu::backend::{tf32_round, Precision};
use gala_gpu::device::cuda::CudaDevice;
use gala_gpu::device::sim::SimDevice;
use gala_gpu::device::{Device, DeviceBuffer, DeviceElem};
use gala_gpu::model::ConvShape;
use gala_gpu::rng::{PhiloxStream, Purpose};

fn normals(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = PhiloxStream::new(seed, 0, Purpose::Init);
    (0..n).map(|_| s.next_normal() as f32 * scale).collect()
}

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = PhiloxStream::new(seed, 1, Purpose::Init);
    (0..n).map(|_| s.below(256) as u8).collect()
}

fn upload<D: Device, T: DeviceElem>(dev: &D, host: &[T]) -> DeviceBuffer<T> {
    let mut b = dev.alloc_zeros(host.len()).unwrap();
    dev.upload(dev.default_stream(), host, &mut b, 0).unwrap();
    b
}

fn poisoned<D: Device>(dev: &D, len: usize) -> DeviceBuffer<f32> {
    upload(dev, &vec![f32::NAN; len])
}

fn download<D: Device, T: DeviceElem + Default>(dev: &D, b: &DeviceBuffer<T>) -> Vec<T> {
    let mut out = vec![T::default(); b.len()];
    dev.download(dev.default_stream(), b, 0, &mut out).unwrap();
    out
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_close_within(what, got, want, 1e-5, 1e-5);
}

/// The TF32 GEMMs against the plain FP32 reference: ‖out − ref‖/‖ref‖ at most this (measured on
/// these layers: 6.3e-4 at worst (the sim test prints it); a TF32 rounding is at most 2^-11 = 4.9e-4).
const TF32_REL: f64 = 2e-3;

/// ‖got − want‖/‖want‖ ≤ `rel` and max |got − want| ≤ `max_rel` · max |want|.
#[track_caller]
fn assert_close_within(what: &str, got: &[f32], want: &[f32], rel_tol: f64, max_rel: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");

    let (mut d2, mut r2, mut max_abs, mut max_ref) = (0f64, 0f64, 0f64, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}[{i}] = {g} (not written, or non-finite)");
        let d = (g as f64 - w as f64).abs();
        d2 += d * d;
        r2 += (w as f64) * (w as f64);
        max_abs = max_abs.max(d);
        max_ref = max_ref.max((w as f64).abs());
    }
    let rel = if r2 > 0.0 { (d2 / r2).sqrt() } else { d2.sqrt() };
    assert!(rel <= rel_tol, "{what}: relative error {rel:.3e} > {rel_tol:e} (max abs {max_abs:.3e})");
    assert!(max_abs <= max_rel * max_ref.max(1e-30), "{what}: max abs error {max_abs:.3e} > {max_rel:e} * {max_ref:.3e}");
    rel
}

/// A layer's place in a synthetic parameter arena: padding before, between and after, so a
/// kernel writing outside the layer is caught.
/// `dy` masked by the ReLU whose output is `y` (0 where y is not > 0): the gradient the backward
/// kernels take, as the backend hands it over.
fn masked_by_relu(dy: &[f32], y: &[f32]) -> Vec<f32> {
    dy.iter().zip(y).map(|(&d, &v)| if v > 0.0 { d } else { 0.0 }).collect()
}

fn layer_params(shape: &ConvShape) -> LayerParams {
    let w_len = shape.out_channels * shape.patch_len();
    LayerParams { param_count: 3 + w_len + shape.out_channels + 5, w_off: 3, b_off: 3 + w_len }
}

fn is_linear(s: &ConvShape) -> bool {
    s.kernel == 1 && s.in_hw == 1
}

/// Input values as the CPU reference sees them (bytes ÷ 255 for uint8 frames).
trait TestInput: ConvInput + Copy {
    fn random(n: usize, seed: u64) -> Vec<Self>;
    fn to_f32(v: &[Self]) -> Vec<f32>;
}
impl TestInput for u8 {
    fn random(n: usize, seed: u64) -> Vec<u8> {
        bytes(n, seed)
    }
    fn to_f32(v: &[u8]) -> Vec<f32> {
        let scale = (1.0f64 / 255.0) as f32;
        v.iter().map(|&b| b as f32 * scale).collect()
    }
}
impl TestInput for f32 {
    fn random(n: usize, seed: u64) -> Vec<f32> {
        normals(n, seed, 1.0)
    }
    fn to_f32(v: &[f32]) -> Vec<f32> {
        v.to_vec()
    }
}

struct LayerRun {
    y: Vec<f32>,
    grads: Vec<f32>,
    dx: Option<Vec<f32>>,
}

/// How a layer is run: the conv kernels with chunked or direct weight gradients, or (fully
/// connected layers) the fc GEMM kernels with their split-K, as the backend runs fc.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    ConvChunks,
    ConvDirect,
    Fc,
}

/// The fc kernels (forward with split-K, backward-filter straight into the arena, backward-data
/// with split-K, its output masked by `below` > 0 when given) on `dev`; the partial buffers are
/// poisoned so an unsummed slice shows.
#[allow(clippy::too_many_arguments)]
fn run_fc<D: Device>(
    dev: &D, shape: &ConvShape, lp: LayerParams, x: &[f32], params: &[f32], dy: &[f32], below: Option<&[f32]>,
    agents: usize, n: usize, precision: Precision,
) -> LayerRun {
    let s = dev.default_stream();
    let (i, o) = (shape.in_channels, shape.out_channels);
    let x_dev = upload(dev, x);
    let params_dev = upload(dev, params);
    let mut y_dev = poisoned(dev, agents * n * o);
    let mut part = poisoned(dev, launch::fc_partials_len(agents, n, i, o));
    launch::fc_forward(dev, s, shape, &x_dev, &params_dev, &mut part, &mut y_dev, agents, n, lp, true, precision).unwrap();
    // The fc backward kernels take the gradient masked by the layer's ReLU (heads_backward's
    // dhidden): dy masked by this forward's y.
    let y = download(dev, &y_dev);
    let g_dev = upload(dev, &masked_by_relu(dy, &y));
    let mut grads_dev = poisoned(dev, agents * lp.param_count);
    launch::fc_backward_filter(dev, s, shape, &x_dev, &g_dev, &mut grads_dev, agents, n, lp, precision).unwrap();
    let mut part = poisoned(dev, launch::fc_partials_len(agents, n, o, i));
    let mut dx_dev = poisoned(dev, agents * n * i);
    let below_dev = below.map(|b| upload(dev, b));
    launch::fc_backward_data(dev, s, shape, &g_dev, &params_dev, &mut part, below_dev.as_ref(), &mut dx_dev, agents, n, lp, precision).unwrap();
    LayerRun { y, grads: download(dev, &grads_dev), dx: Some(download(dev, &dx_dev)) }
}

/// Forward, backward-filter (+ chunk sum) and backward-data of one layer on `dev`; dx is masked
/// by `below` > 0 when given (the ReLU of the layer underneath, fused into backward-data).
#[allow(clippy::too_many_arguments)]
fn run_layer<D: Device, In: TestInput>(
    dev: &D, shape: &ConvShape, lp: LayerParams, x: &[In], params: &[f32], dy: &[f32], below: Option<&[f32]>,
    agents: usize, n: usize, path: Path, precision: Precision,
) -> LayerRun {
    if path == Path::Fc {
        let xf = In::to_f32(x);
        return run_fc(dev, shape, lp, &xf, params, dy, below, agents, n, precision);
    }
    let direct_filter = path == Path::ConvDirect;
    let s = dev.default_stream();
    let x_dev = upload(dev, x);
    let params_dev = upload(dev, params);
    let mut y_dev = poisoned(dev, agents * n * shape.out_len());
    launch::conv_forward(dev, s, shape, &x_dev, &params_dev, &mut y_dev, agents, n, lp, true, precision).unwrap();
    // The gradient masked by the layer's own ReLU, as the backend hands it to both backward
    // kernels: dy masked by this forward's y.
    let y = download(dev, &y_dev);
    let g_dev = upload(dev, &masked_by_relu(dy, &y));
    let mut grads_dev = poisoned(dev, agents * lp.param_count);
    if direct_filter {
        launch::conv_backward_filter(dev, s, shape, &x_dev, &g_dev, &mut grads_dev, agents, n, n, FilterTarget::Grads(lp), precision).unwrap();
    } else {
        let per = launch::CONV_FILTER_SAMPLES_PER_CHUNK;
        let chunks = launch::filter_chunks(n, per);
        let mut partials = poisoned(dev, agents * chunks * launch::filter_grad_len(shape));
        launch::conv_backward_filter(dev, s, shape, &x_dev, &g_dev, &mut partials, agents, n, per, FilterTarget::Partials, precision).unwrap();
        launch::conv_grad_sum_chunks(dev, s, shape, &partials, &mut grads_dev, agents, chunks, lp).unwrap();
    }
    let mut taps = poisoned(dev, launch::weight_taps_len(shape, agents));
    let below_dev = below.map(|b| upload(dev, b));
    let mut dx_dev = poisoned(dev, agents * n * shape.in_len());
    launch::conv_backward_data(dev, s, shape, &g_dev, &params_dev, &mut taps, below_dev.as_ref(), &mut dx_dev, agents, n, lp, precision)
        .unwrap();
    LayerRun { y, grads: download(dev, &grads_dev), dx: Some(download(dev, &dx_dev)) }
}

/// The CPU reference of one agent's layer: (y, dw, db, dx) for input xs, weight w, bias b and
/// output gradient dy, masked inside by the ReLU of `mask_y` (default: this y).
fn reference(
    shape: &ConvShape, xs: &[f32], w: &[f32], b: &[f32], dy: &[f32], mask_y: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut y = vec![0f32; dy.len()];
    let mut dya = dy.to_vec();
    let (mut dw, mut db, mut dx) = (vec![0f32; w.len()], vec![0f32; b.len()], vec![0f32; xs.len()]);
    if is_linear(shape) {
        linear_forward(xs, w, b, &mut y, true);
        linear_backward(xs, w, mask_y.unwrap_or(&y), &mut dya, true, &mut dw, &mut db, Some(&mut dx));
    } else {
        conv2d_forward(shape, xs, w, b, &mut y, true);
        conv2d_backward(shape, xs, w, mask_y.unwrap_or(&y), &mut dya, true, &mut dw, &mut db, Some(&mut dx));
    }
    (y, dw, db, dx)
}

fn tf32_rounded(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| tf32_round(x)).collect()
}

/// The worst ‖out − ref‖/‖ref‖ of the TF32 kernels against the plain FP32 reference.
fn check_layer<D: Device, In: TestInput>(
    dev: &D, name: &str, shape: ConvShape, agents: usize, n: usize, seed: u64, precision: Precision,
) -> f64 {
    let mut worst_vs_fp32 = 0f64;
    let lp = layer_params(&shape);
    let p = lp.param_count;
    let x: Vec<In> = In::random(agents * n * shape.in_len(), seed);
    // Every agent its own weights; a positive bias mean so that some ReLUs are on, some off.
    let mut params = vec![f32::NAN; agents * p];
    let fan_in = shape.patch_len() as f32;
    for a in 0..agents {
        let w = normals(shape.out_channels * shape.patch_len(), seed * 31 + a as u64, 1.0 / fan_in.sqrt());
        params[a * p + lp.w_off..a * p + lp.b_off].copy_from_slice(&w);
        let b = normals(shape.out_channels, seed * 37 + a as u64, 0.1);
        params[a * p + lp.b_off..a * p + lp.b_off + shape.out_channels].copy_from_slice(&b);
    }
    let dy = normals(agents * n * shape.out_len(), seed + 7, 1.0);
    // The output of the layer underneath, whose ReLU masks dx (about half the elements > 0).
    let below_all = normals(agents * n * shape.in_len(), seed + 11, 1.0);
    let linear = is_linear(&shape);
    for path in if linear { vec![Path::ConvChunks, Path::ConvDirect, Path::Fc] } else { vec![Path::ConvChunks, Path::ConvDirect] } {
        // Backward-data with the mask on the chunked and fc paths, without it on the direct one.
        let below = (path != Path::ConvDirect).then_some(&below_all[..]);
        let got = run_layer(dev, &shape, lp, &x, &params, &dy, below, agents, n, path, precision);
        let xf = In::to_f32(&x);
        let ctx = format!("{name} {shape:?} agents={agents} n={n} path={path:?} {precision:?} on {}", dev.kind());
        for a in 0..agents {
            let th = &params[a * p..(a + 1) * p];
            let (w, b) = (&th[lp.w_off..lp.b_off], &th[lp.b_off..lp.b_off + shape.out_channels]);
            let xs = &xf[a * n * shape.in_len()..(a + 1) * n * shape.in_len()];
            let dya = &dy[a * n * shape.out_len()..(a + 1) * n * shape.out_len()];
            let (y, dw, db, mut dx) = match precision.of_layer(path == Path::Fc) {
                Precision::Fp32 => reference(&shape, xs, w, b, dya, None),
                _ => {
                    // The operands as the tensor cores read them: x, w and the masked gradient
                    // rounded to TF32; the bias gradient is summed from the unrounded gradient.
                    let (xr, wr) = (tf32_rounded(xs), tf32_rounded(w));
                    let (y, _, db, _) = reference(&shape, &xr, &wr, b, dya, None);
                    let g = tf32_rounded(&masked_by_relu(dya, &y));
                    let (_, dw, _, dx) = reference(&shape, &xr, &wr, b, &g, None);
                    // And against plain FP32: the forward, and the backward through the same ReLU
                    // mask (an output within TF32 noise of 0 may switch its ReLU: that changes a
                    // gradient by whole terms, not by the rounding this bounds).
                    let y32 = reference(&shape, xs, w, b, dya, None).0;
                    let (_, dw32, db32, mut dx32) = reference(&shape, xs, w, b, dya, Some(&y));
                    if let Some(bl) = below {
                        dx32 = masked_by_relu(&dx32, &bl[a * xs.len()..(a + 1) * xs.len()]);
                    }
                    let g = &got.grads[a * p..(a + 1) * p];
                    for (what, out, want) in [
                        ("y", &got.y[a * y32.len()..(a + 1) * y32.len()], &y32),
                        ("dw", &g[lp.w_off..lp.b_off], &dw32),
                        ("db", &g[lp.b_off..lp.b_off + b.len()], &db32),
                        ("dx", &got.dx.as_ref().unwrap()[a * dx32.len()..(a + 1) * dx32.len()], &dx32),
                    ] {
                        let rel = assert_close_within(&format!("{ctx} agent {a} {what} vs fp32"), out, want, TF32_REL, f64::INFINITY);
                        worst_vs_fp32 = worst_vs_fp32.max(rel);
                    }
                    (y, dw, db, dx)
                }
            };
            let on = y.iter().filter(|&&v| v > 0.0).count();
            assert!(on > 0 && on < y.len(), "{ctx}: the test needs both active and inactive ReLUs");
            let tol = if precision.of_layer(path == Path::Fc) == Precision::Tf32 && dev.kind() == "cuda" { 1e-4 } else { 1e-5 };
            let assert_close = |what: &str, got: &[f32], want: &[f32]| {
                assert_close_within(what, got, want, tol, tol);
            };
            assert_close(&format!("{ctx} agent {a} y"), &got.y[a * y.len()..(a + 1) * y.len()], &y);
            let g = &got.grads[a * p..(a + 1) * p];
            assert_close(&format!("{ctx} agent {a} dw"), &g[lp.w_off..lp.b_off], &dw);
            assert_close(&format!("{ctx} agent {a} db"), &g[lp.b_off..lp.b_off + b.len()], &db);
            let outside = g[..lp.w_off].iter().chain(&g[lp.b_off + b.len()..]).filter(|v| !v.is_nan()).count();
            assert_eq!(outside, 0, "{ctx}: agent {a}: {outside} gradient elements outside the layer were written");
            if let Some(b) = below {
                dx = masked_by_relu(&dx, &b[a * xs.len()..(a + 1) * xs.len()]);
            }
            if let Some(gdx) = &got.dx {
                assert_close(&format!("{ctx} agent {a} dx"), &gdx[a * dx.len()..(a + 1) * dx.len()], &dx);
            }
        }
        // Batch composition: agent 0 alone gives bit-identical results to agent 0 in the batch.
        if agents > 1 {
            let below0 = below.map(|b| &b[..n * shape.in_len()]);
            let alone =
                run_layer(dev, &shape, lp, &x[..n * shape.in_len()], &params[..p], &dy[..n * shape.out_len()], below0, 1, n, path, precision);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&alone.y), bits(&got.y[..alone.y.len()]), "{ctx}: forward depends on the other agents");
            assert_eq!(bits(&alone.grads), bits(&got.grads[..p]), "{ctx}: gradients depend on the other agents");
            let (gdx, adx) = (got.dx.as_ref().unwrap(), alone.dx.as_ref().unwrap());
            assert_eq!(bits(adx), bits(&gdx[..adx.len()]), "{ctx}: dx depends on the other agents");
        }
    }
    worst_vs_fp32
}

/// Every layer shape in `precision`; returns the worst TF32-vs-FP32 relative error seen.
fn check_all_layers<D: Device>(dev: &D, precision: Precision) -> f64 {
    let mut worst = 0f64;
    let lin = launch::linear_shape;
    // Both presets' layers (conv1 reads uint8 frames).
    worst = worst.max(check_layer::<D, u8>(dev, "conv1", ConvShape::new(4, 32, 8, 4, 84), 2, 3, 1, precision));
    worst = worst.max(check_layer::<D, f32>(dev, "conv2", ConvShape::new(32, 64, 4, 2, 20), 2, 5, 2, precision));
    worst = worst.max(check_layer::<D, f32>(dev, "gala conv3", ConvShape::new(64, 32, 3, 1, 9), 3, 2, 3, precision));
    worst = worst.max(check_layer::<D, f32>(dev, "nature conv3", ConvShape::new(64, 64, 3, 1, 9), 1, 6, 4, precision));
    worst = worst.max(check_layer::<D, f32>(dev, "gala fc", lin(32 * 49, 512), 2, 5, 5, precision));
    worst = worst.max(check_layer::<D, f32>(dev, "nature fc", lin(64 * 49, 512), 1, 3, 6, precision));
    // Ragged: nothing a multiple of the tiles or of the 4-sample chunk.
    worst = worst.max(check_layer::<D, f32>(dev, "ragged conv", ConvShape::new(3, 5, 3, 2, 11), 3, 7, 7, precision));
    worst = worst.max(check_layer::<D, f32>(dev, "ragged conv", ConvShape::new(7, 33, 2, 1, 6), 2, 1, 8, precision));
    worst = worst.max(check_layer::<D, u8>(dev, "ragged u8 conv", ConvShape::new(2, 9, 5, 3, 17), 2, 9, 9, precision));
    // Kernel narrower than the stride: backward-data's phase py = 2 has no tap (dx exactly 0
    // there), and 11 = 3*3 + 2 leaves ragged phases.
    worst = worst.max(check_layer::<D, f32>(dev, "gapped conv", ConvShape::new(3, 4, 2, 3, 11), 2, 3, 16, precision));
    // R = 43*49 = 2107 > CONV_PTAB (2048): the forward kernel's patch-offset table is refilled
    // once, and the last K-step is ragged.
    worst = worst.max(check_layer::<D, f32>(dev, "wide-patch conv", ConvShape::new(43, 6, 7, 3, 13), 2, 3, 13, precision));
    // uint8 layers with K, stride and H multiples of 4 (like conv1) run conv_forward_u8_words:
    // R = 48 ends in half a K-step, Cout and the columns (5 x 16) are ragged; then R = 8256 >
    // 4 x CONV_PTAB, so its table of 4-row groups is refilled.
    worst = worst.max(check_layer::<D, u8>(dev, "ragged u8 words conv", ConvShape::new(3, 5, 4, 4, 16), 2, 5, 14, precision));
    worst = worst.max(check_layer::<D, u8>(dev, "wide-patch u8 words conv", ConvShape::new(129, 3, 8, 4, 8), 2, 6, 15, precision));
    worst = worst.max(check_layer::<D, f32>(dev, "ragged fc", lin(37, 45), 3, 9, 10, precision));
    worst = worst.max(check_layer::<D, f32>(dev, "ragged fc", lin(65, 97), 1, 70, 11, precision));
    // fc split-K: In = 601 → 3 forward slices (the last ragged), Out = 300 → 2 backward-data
    // slices; batch 67 is two column tiles, one of them ragged.
    worst = worst.max(check_layer::<D, f32>(dev, "ragged split-K fc", lin(601, 300), 2, 67, 12, precision));
    worst
}

/// The fused heads: forward + loss, then backward, against linear_forward, a2c_loss_backward and
/// linear_backward.
fn check_heads<D: Device>(dev: &D, exact_loss: bool) {
    let s = dev.default_stream();
    for (case, &(agents, n, num_actions, hidden, behaviour)) in
        [(1usize, 1usize, 1usize, 512usize, false), (2, 5, 6, 512, true), (3, 40, 18, 512, false), (2, 9, 31, 70, true), (1, 80, 4, 129, false)]
            .iter()
            .enumerate()
    {
        let seed = 100 + case as u64;
        let hp = HeadsParams {
            param_count: 2 + num_actions * hidden + num_actions + hidden + 1 + 3,
            hidden,
            actions: num_actions,
            actor_w: 2,
            actor_b: 2 + num_actions * hidden,
            critic_w: 2 + num_actions * hidden + num_actions,
            critic_b: 2 + num_actions * hidden + num_actions + hidden,
        };
        let p = hp.param_count;
        let mut params = vec![f32::NAN; agents * p];
        for a in 0..agents {
            let th = &mut params[a * p..(a + 1) * p];
            th[hp.actor_w..hp.critic_b + 1].copy_from_slice(&normals(hp.critic_b + 1 - hp.actor_w, seed * 7 + a as u64, 0.1));
        }
        let rows = agents * n;
        let h: Vec<f32> = normals(rows * hidden, seed, 1.0).into_iter().map(|v| v.max(0.0)).collect();
        let mut rng = PhiloxStream::new(seed, 2, Purpose::EnvStep);
        let actions: Vec<u32> = (0..rows).map(|_| rng.below(num_actions as u32)).collect();
        let returns = normals(rows, seed + 1, 1.0);
        let mu: Vec<f32> = normals(rows, seed + 2, 0.5).iter().map(|v| v - (num_actions as f32).ln()).collect();
        let coefs = LossCoefs { value: 0.5, entropy: 0.01 };
        let ctx = format!("heads agents={agents} n={n} A={num_actions} H={hidden} behaviour={behaviour} on {}", dev.kind());

        let (h_dev, params_dev) = (upload(dev, &h), upload(dev, &params));
        let (act_dev, ret_dev, mu_dev) = (upload(dev, &actions), upload(dev, &returns), upload(dev, &mu));
        // Acting path first: logits and values only.
        let (mut logits_dev, mut values_dev) = (poisoned(dev, rows * num_actions), poisoned(dev, rows));
        launch::heads_forward(dev, s, &h_dev, &params_dev, &mut logits_dev, &mut values_dev, agents, n, hp).unwrap();
        let (act_logits, act_values) = (download(dev, &logits_dev), download(dev, &values_dev));
        let (mut logits_dev, mut values_dev) = (poisoned(dev, rows * num_actions), poisoned(dev, rows));
        let (mut dl_dev, mut dv_dev, mut terms_dev) = (poisoned(dev, rows * num_actions), poisoned(dev, rows), poisoned(dev, rows * 3));
        let loss = HeadsLossBuffers {
            actions: &act_dev,
            returns: &ret_dev,
            behaviour_log_probs: if behaviour { Some(&mu_dev) } else { None },
            dlogits: &mut dl_dev,
            dvalues: &mut dv_dev,
            terms: &mut terms_dev,
        };
        launch::heads_forward_loss(dev, s, &h_dev, &params_dev, &mut logits_dev, &mut values_dev, loss, agents, n, hp, 0.5, 0.01)
            .unwrap();
        let (logits, values) = (download(dev, &logits_dev), download(dev, &values_dev));
        assert_eq!(act_logits, logits, "{ctx}: acting and learning logits differ");
        assert_eq!(act_values, values, "{ctx}: acting and learning values differ");
        let (dl, dv, terms) = (download(dev, &dl_dev), download(dev, &dv_dev), download(dev, &terms_dev));
        let mut dh_dev = poisoned(dev, rows * hidden);
        let mut grads_dev = poisoned(dev, agents * p);
        let mut stats_dev = upload(dev, &vec![f64::NAN; agents * 3]);
        launch::heads_backward(dev, s, &h_dev, &params_dev, &dl_dev, &dv_dev, &terms_dev, &mut dh_dev, &mut grads_dev, &mut stats_dev, agents, n, hp)
            .unwrap();
        let (dh, grads, stats) = (download(dev, &dh_dev), download(dev, &grads_dev), download(dev, &stats_dev));

        for a in 0..agents {
            let th = &params[a * p..(a + 1) * p];
            let (aw, ab) = (&th[hp.actor_w..hp.actor_b], &th[hp.actor_b..hp.critic_w]);
            let (cw, cb) = (&th[hp.critic_w..hp.critic_b], &th[hp.critic_b..hp.critic_b + 1]);
            let ha = &h[a * n * hidden..(a + 1) * n * hidden];
            let (mut z, mut v) = (vec![0f32; n * num_actions], vec![0f32; n]);
            linear_forward(ha, aw, ab, &mut z, false);
            linear_forward(ha, cw, cb, &mut v, false);
            let rng_a = a * n..(a + 1) * n;
            assert_close(&format!("{ctx} agent {a} logits"), &logits[a * n * num_actions..(a + 1) * n * num_actions], &z);
            assert_close(&format!("{ctx} agent {a} values"), &values[rng_a.clone()], &v);
            // The loss on the kernel's own logits/values: the same arithmetic as heads.rs.
            let (gz, gv) = (&logits[a * n * num_actions..(a + 1) * n * num_actions], &values[rng_a.clone()]);
            let (mut want_dl, mut want_dv) = (vec![0f32; n * num_actions], vec![0f32; n]);
            let t = a2c_loss_backward(
                gz, gv, &actions[rng_a.clone()], &returns[rng_a.clone()],
                if behaviour { Some(&mu[rng_a.clone()]) } else { None }, coefs, &mut want_dl, &mut want_dv,
            );
            let got_dl = &dl[a * n * num_actions..(a + 1) * n * num_actions];
            if exact_loss {
                assert_eq!(got_dl, &want_dl[..], "{ctx} agent {a}: dlogits must match heads.rs bit for bit");
                assert_eq!(&dv[rng_a.clone()], &want_dv[..], "{ctx} agent {a}: dvalues must match bit for bit");
            } else {
                assert_close(&format!("{ctx} agent {a} dlogits"), got_dl, &want_dl);
                assert_close(&format!("{ctx} agent {a} dvalues"), &dv[rng_a.clone()], &want_dv);
            }
            let st = &stats[a * 3..a * 3 + 3];
            let nf = n as f64;
            for (what, got, want) in [("value loss", st[0] / nf, t.value_loss), ("policy loss", -st[1] / nf, t.policy_loss), ("entropy", st[2] / nf, t.entropy)] {
                let tol = if exact_loss { 1e-12 } else { 1e-5 };
                assert!((got - want).abs() <= tol * want.abs().max(1e-3), "{ctx} agent {a} {what}: got {got}, want {want}");
            }
            assert!(terms[a * n * 3..(a + 1) * n * 3].iter().all(|x| x.is_finite()), "{ctx}: every loss term written");
            // Backward of both heads on the kernel's dlogits/dvalues.
            let (mut gaw, mut gab, mut dh_a) = (vec![0f32; aw.len()], vec![0f32; num_actions], vec![0f32; n * hidden]);
            let (mut gcw, mut gcb, mut dh_c) = (vec![0f32; hidden], vec![0f32; 1], vec![0f32; n * hidden]);
            let mut dlc = got_dl.to_vec();
            linear_backward(ha, aw, &z, &mut dlc, false, &mut gaw, &mut gab, Some(&mut dh_a));
            let mut dvc = dv[rng_a.clone()].to_vec();
            linear_backward(ha, cw, &v, &mut dvc, false, &mut gcw, &mut gcb, Some(&mut dh_c));
            // Masked by the fc layer's ReLU (hidden > 0), as the kernel writes it.
            let sum: Vec<f32> = dh_a.iter().zip(&dh_c).map(|(x, y)| x + y).collect();
            let want_dh = masked_by_relu(&sum, ha);
            let g = &grads[a * p..(a + 1) * p];
            assert_close(&format!("{ctx} agent {a} d actor.weight"), &g[hp.actor_w..hp.actor_b], &gaw);
            assert_close(&format!("{ctx} agent {a} d actor.bias"), &g[hp.actor_b..hp.critic_w], &gab);
            assert_close(&format!("{ctx} agent {a} d critic.weight"), &g[hp.critic_w..hp.critic_b], &gcw);
            assert_close(&format!("{ctx} agent {a} d critic.bias"), &g[hp.critic_b..hp.critic_b + 1], &gcb);
            assert!(g[..hp.actor_w].iter().chain(&g[hp.critic_b + 1..]).all(|v| v.is_nan()), "{ctx}: wrote outside the heads");
            assert_close(&format!("{ctx} agent {a} d hidden"), &dh[a * n * hidden..(a + 1) * n * hidden], &want_dh);
        }
    }
}

#[test]
fn sim_conv_and_fc_kernels_match_cpu() {
    check_all_layers(&SimDevice::new(), Precision::Fp32);
}

/// The `_tf32` tensor-core GEMMs (kernels/conv.cu built with GALA_TF32) on every layer shape.
#[test]
fn sim_tf32_conv_and_fc_kernels_match_cpu_on_tf32_operands() {
    let worst = check_all_layers(&SimDevice::new(), Precision::Tf32);
    println!("tf32 kernels vs the plain fp32 reference: worst relative error {worst:.3e} (bound {TF32_REL:e})");
}

#[test]
fn sim_heads_kernels_match_cpu() {
    check_heads(&SimDevice::new(), true);
}

#[test]
fn launchers_reject_bad_sizes() {
    let dev = SimDevice::new();
    let s = dev.default_stream();
    let shape = ConvShape::new(3, 5, 3, 2, 11);
    let lp = layer_params(&shape);
    let x = dev.alloc_zeros::<f32>(2 * shape.in_len()).unwrap();
    let params = dev.alloc_zeros::<f32>(lp.param_count).unwrap();
    let mut y = dev.alloc_zeros::<f32>(2 * shape.out_len() - 1).unwrap();
    let err = launch::conv_forward(&dev, s, &shape, &x, &params, &mut y, 1, 2, lp, true, Precision::Fp32).unwrap_err();
    assert!(err.to_string().contains("`y`"), "{err}");
    // Writing straight into the gradients needs a single chunk.
    let dy = dev.alloc_zeros::<f32>(4 * shape.out_len()).unwrap();
    let x4 = dev.alloc_zeros::<f32>(4 * shape.in_len()).unwrap();
    let mut grads = dev.alloc_zeros::<f32>(lp.param_count).unwrap();
    let err = launch::conv_backward_filter(&dev, s, &shape, &x4, &dy, &mut grads, 1, 4, 2, FilterTarget::Grads(lp), Precision::Fp32).unwrap_err();
    assert!(err.to_string().contains("one chunk"), "{err}");
    // Backward-data's tap table: a 17x17 kernel at stride 1 has 289 taps in its one phase.
    let wide = ConvShape::new(1, 1, 17, 1, 17);
    let lpw = layer_params(&wide);
    let (g, pw) = (dev.alloc_zeros::<f32>(1).unwrap(), dev.alloc_zeros::<f32>(lpw.param_count).unwrap());
    let mut taps = dev.alloc_zeros::<f32>(launch::weight_taps_len(&wide, 1)).unwrap();
    let mut dx = dev.alloc_zeros::<f32>(wide.in_len()).unwrap();
    let err = launch::conv_backward_data(&dev, s, &wide, &g, &pw, &mut taps, None, &mut dx, 1, 1, lpw, Precision::Tf32).unwrap_err();
    assert!(err.to_string().contains("289 taps"), "{err}");
}

#[test]
fn cuda_network_kernels_match_cpu_when_a_gpu_is_present() {
    let dev = match CudaDevice::new(0) {
        Ok(d) => d,
        Err(e) => {
            if std::env::var_os("GALA_REQUIRE_GPU").is_some() {
                panic!("GALA_REQUIRE_GPU is set but no CUDA device could be opened: {e}");
            }
            println!("SKIPPED cuda_network_kernels_match_cpu_when_a_gpu_is_present: {e}");
            return;
        }
    };
    println!("running the network kernel comparisons on {}", dev.describe());
    check_all_layers(&dev, Precision::Fp32);
    if dev.has_kernel("conv_forward_f32_tf32") {
        let worst = check_all_layers(&dev, Precision::Tf32);
        println!("tf32 kernels vs the plain fp32 reference: worst relative error {worst:.3e} (bound {TF32_REL:e})");
    } else {
        println!("SKIPPED the tf32 kernels: {} is older than sm_80", dev.describe());
    }
    check_heads(&dev, false);
}
