//! conv1 and conv2 on Intel AMX tiles, with exact products in bfloat16: every f32 is exactly
//! the sum of three bf16 numbers, and the frames' bytes are exact in one.
//!
//! Math. Split w = hi + mid + lo with hi, mid, lo bfloat16 (`split3`; exact: each step takes the
//! top 8 significant bits of what is left, and 24 = 3 × 8). The product of two bf16 numbers is
//! exact in f32 (8 × 8 significant bits), and `TDPBF16PS` adds 32 such products to an f32
//! accumulator per instruction with the error of a few roundings (measured in the tests; the
//! hardware's internal order is not documented), where the AVX-512 path rounds once per FMA.
//!
//! - conv1 reads x = b / 255 for pixel bytes b. Folded space-to-depth (as `fast.rs` does) it is
//!   a stride-1 2×2 conv on 64 channels, computed as y = max(0, s · Σ_k b_k (hi_k + mid_k +
//!   lo_k) + bias) with s = 1/255 applied once (`Input::Exact`): 3 products per term.
//! - conv2 reads conv1's f32 output. conv1's epilogue writes it a second time, folded by 2 and
//!   split x = x_h + x_m + x_l (`NextSplit`), so the 4×4 stride-2 conv is a 2×2 stride-1 conv on
//!   128 channels, summed over the six split products whose size is at least 2⁻¹⁶ of x·w
//!   (`Input::Split`; the three dropped ones are below 2⁻²⁴ of it, f32's own rounding).
//!
//! Both are as accurate as the f32 path (tested against a float64 network in `fast.rs`, and
//! against float64 direct sums here), not bit-equal to it. A receptive field that is all zero
//! gives exactly 0 and the output is exactly the bias, so ReLU masks at 0 agree with the other
//! paths and with the GPU kernels.
//!
//! Shapes. Per observation, the input is NHWC bf16 [Wf·Wf (+ padding)][Cin], Cin % 32 == 0; a
//! 16-row A tile is 16 consecutive flat positions p = oy·Wf + ox of the *input* width Wf (one
//! strided load, no unfold); positions with ox ≥ Wo, or past the last output row, are computed
//! and discarded (conv1 448 for 400 outputs, conv2 96 for 81). Weights: per N pair (32 outputs),
//! per K step (32 patch elements), per split, two VNNI-packed 16×16 B tiles [k/2][n][k%2].
//!
//! Accumulation contract: each output's sum runs over the K steps in patch order, within one
//! over the products in a fixed order (hi, mid, lo of the weights; for split inputs hh, hm, hl,
//! lh, mh, mm), each instruction over its 32 products in hardware order: a function of the shapes
//! only (not of threads, batch or chunking), so results are bit-identical for any thread count
//! and any slicing of the batch, like the other paths.
//!
//! Why: conv1 and conv2 are 78% of the gala net's multiply-adds, and the AVX-512 path runs them
//! near the FMA units' peak; one `TDPBF16PS` does 16×16×32 multiply-adds in ~16 cycles (measured
//! 5.4 ns here, vs 0.16 ns for a 16-lane FMA: 15× the rate), so even 3 or 6 of them per product
//! leave both convs 2–3× faster.
//!
//! Availability: x86-64 with AMX-TILE, AMX-BF16 and AVX-512F (Sapphire Rapids and later), and a
//! Linux kernel that grants the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`). `GALA_CPU_AMX=0`
//! turns it off (the AVX-512 / portable f32 path then runs, e.g. to compare runs bit for bit
//! with a machine without AMX).

/// Rows and f32 columns of every tile the kernel uses (16 × 64 bytes: the AMX maximum).
const TILE: usize = 16;
/// bf16 elements of K per tile step (64 bytes of a row).
pub const KSTEP: usize = 32;
/// Output channels per kernel call: two N tiles.
pub const NPAIR: usize = 2 * TILE;
/// Flat positions per kernel call: two M tiles.
pub const MPAIR: usize = 2 * TILE;
/// The exact bfloat16 split of an f32: w = hi + mid + lo.
const SPLITS: usize = 3;
/// u16 elements of one B tile (16 rows × 32 bf16).
const BTILE: usize = TILE * KSTEP;

/// 64 bytes, 64-byte aligned: tile rows that straddle two cache lines load at half speed.
#[repr(C, align(64))]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Line([u16; 32]);

/// A growable bf16 buffer whose data starts on a cache line (inputs and packed weights).
#[derive(Default)]
pub struct AlignedBf16(Vec<Line>);

impl AlignedBf16 {
    /// The first `len` elements (grown with zeros as needed; contents otherwise kept).
    pub fn slice_mut(&mut self, len: usize) -> &mut [u16] {
        let lines = len.div_ceil(32);
        if self.0.len() < lines {
            self.0.resize(lines, Line([0; 32]));
        }
        &mut bytemuck::cast_slice_mut(&mut self.0)[..len]
    }
    pub fn slice(&self, len: usize) -> &[u16] {
        &bytemuck::cast_slice(&self.0)[..len]
    }
}

/// The kernel's two sets of four C tiles (double-buffered so the epilogue of one M pair reads
/// its tiles while the next pair's products run), on cache lines.
#[repr(C, align(64))]
pub struct CTiles([[f32; 4 * TILE * TILE]; 2]);

impl Default for CTiles {
    fn default() -> Self {
        CTiles([[0.0; 4 * TILE * TILE]; 2])
    }
}

/// Whether conv1 and conv2 run on AMX on this machine (checked once: CPUID, the kernel's
/// permission, and `GALA_CPU_AMX` not `0`).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("GALA_CPU_AMX").map_or(true, |v| v != "0") && imp::request())
}

/// Elements `pack_weights` writes for a Cout × Kp conv.
pub fn packed_len(cout: usize, kp: usize) -> usize {
    cout * kp * SPLITS
}

/// The conv shape the kernel supports: stride 1 after folding, Cin a multiple of 32, Cout of 32.
pub fn supports(cin: usize, cout: usize, stride: usize) -> bool {
    stride == 1 && cin % KSTEP == 0 && cout % NPAIR == 0 && cin > 0 && cout > 0
}

/// Round an f32 to the nearest bfloat16 (ties to even); NaN stays NaN.
pub fn bf16(x: f32) -> u16 {
    if x.is_nan() {
        return ((x.to_bits() >> 16) | 0x40) as u16;
    }
    rne(x)
}

/// Round to nearest even on the bits: `bf16` for non-NaN values, branch-free (vectorises).
#[inline(always)]
fn rne(x: f32) -> u16 {
    let b = x.to_bits();
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The f32 value of a bfloat16.
pub fn f32_of(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// w = hi + mid + lo exactly (for finite w away from the bottom of the exponent range).
pub fn split3(w: f32) -> [u16; SPLITS] {
    split3_by(w, bf16)
}

/// `split3` for values known not to be NaN (the epilogue's have passed max(0, ·)): branch-free,
/// so the epilogue's loop vectorises.
#[inline(always)]
fn split3_finite(w: f32) -> [u16; SPLITS] {
    split3_by(w, rne)
}

/// Each part the rounding of what the parts before it left.
#[inline(always)]
fn split3_by(w: f32, round: impl Fn(f32) -> u16) -> [u16; SPLITS] {
    let hi = round(w);
    let r1 = w - f32_of(hi);
    let mid = round(r1);
    [hi, mid, round(r1 - f32_of(mid))]
}

/// Pack permuted weights wperm [Cout, Kp] (Kp = taps · Cin, patch order) into the kernel's B
/// tiles: [n pair][k step][split][n tile of 2][k/2 (16)][n (16)][k % 2], as bf16 bits.
pub fn pack_weights(wperm: &[f32], cout: usize, kp: usize, out: &mut AlignedBf16) {
    assert!(cout % NPAIR == 0 && kp % KSTEP == 0, "amx::pack_weights: {cout}×{kp} not whole tiles");
    assert_eq!(wperm.len(), cout * kp, "amx::pack_weights: weight count");
    let ksteps = kp / KSTEP;
    let out = out.slice_mut(packed_len(cout, kp));
    for np in 0..cout / NPAIR {
        for ks in 0..ksteps {
            for s in 0..SPLITS {
                for nt in 0..2 {
                    let tile = &mut out[(((np * ksteps + ks) * SPLITS + s) * 2 + nt) * BTILE..][..BTILE];
                    for kk in 0..KSTEP {
                        for n in 0..TILE {
                            let o = np * NPAIR + nt * TILE + n;
                            let w = wperm[o * kp + ks * KSTEP + kk];
                            tile[(kk / 2) * KSTEP + n * 2 + kk % 2] = split3(w)[s];
                        }
                    }
                }
            }
        }
    }
}

/// Flat positions (rows of bf16 input, Cin each) the kernel may read for one observation of a
/// Kf×Kf conv on Wf×Wf folded pixels with Wo×Wo outputs: the computed positions rounded up to
/// whole M pairs, plus the farthest tap. Positions past Wf² are zero padding.
pub fn input_rows(wf: usize, wo: usize, kf: usize) -> usize {
    (wo * wf).div_ceil(MPAIR) * MPAIR + (kf - 1) * (wf + 1)
}

/// The input of `conv_forward`: bf16 rows (`input_rows` positions × Cin each, padding zero),
/// 64-byte aligned (`AlignedBf16`).
pub enum Input<'a> {
    /// Values exact in bf16 (conv1's bytes): one product per weight split.
    Exact(&'a [u16]),
    /// f32 activations as their exact split x = hi + mid + lo (`split3`): per weight split w the
    /// products x_h·w_h, x_h·w_m, x_h·w_l, x_l·w_h, x_m·w_h, x_m·w_m (all but the three below
    /// 2⁻²⁴ of the product), each exact in f32.
    Split([&'a [u16]; SPLITS]),
}

/// Where `conv_forward` also writes its output, as the next conv's `Input::Split`: folded by 2
/// (pixel (oy, ox) → (oy/2, ox/2), channel ((oy%2)·2 + ox%2)·Cout + o, the order
/// `pack_weights_folded` packs), `input_rows` of the next conv per buffer. The caller zeroes
/// the padding rows past the image.
pub struct NextSplit<'a>(pub [&'a mut [u16]; SPLITS]);

/// y [Wo·Wo, Cout] = max(0, scale · (x ⋆ w) + bias) for one observation of a stride-1 Kf×Kf
/// conv on Wf×Wf pixels, `wpack` from `pack_weights` (64-byte aligned); with `next`, the output
/// also goes there as the next conv's folded split input. Panics unless `enabled()` and the
/// shapes fit (a caller's bug).
#[allow(clippy::too_many_arguments)]
pub fn conv_forward(
    x: Input, wpack: &[u16], cin: usize, cout: usize, wf: usize, wo: usize, kf: usize,
    scale: f32, bias: &[f32], y: &mut [f32], next: Option<NextSplit>, ctiles: &mut CTiles,
) {
    assert!(enabled(), "amx::conv_forward without AMX");
    assert!(supports(cin, cout, 1), "amx::conv_forward: Cin {cin}, Cout {cout}");
    let (rows, kp) = (input_rows(wf, wo, kf), kf * kf * cin);
    let xs: &[&[u16]] = match &x {
        Input::Exact(x) => std::slice::from_ref(x),
        Input::Split(xs) => xs,
    };
    for x in xs {
        assert!(x.len() >= rows * cin, "amx::conv_forward: input {} < {} rows × {cin}", x.len(), rows);
        assert!(x.as_ptr() as usize % 64 == 0, "amx::conv_forward: unaligned input");
    }
    assert_eq!(wpack.len(), packed_len(cout, kp), "amx::conv_forward: packed weights");
    assert!(wpack.as_ptr() as usize % 64 == 0, "amx::conv_forward: unaligned weights");
    assert_eq!(bias.len(), cout, "amx::conv_forward: bias");
    assert_eq!(y.len(), wo * wo * cout, "amx::conv_forward: output");
    if let Some(NextSplit(n)) = &next {
        assert!(wo % 2 == 0, "amx::conv_forward: folding an odd output {wo}");
        for b in n.iter() {
            assert!(b.len() >= wo * wo * cout, "amx::conv_forward: next input {} < {}", b.len(), wo * wo * cout);
        }
    }
    // The K steps' byte offsets from a tile's first position: tap (dy, dx), half h.
    let per_tap = cin / KSTEP;
    let mut offs = [0usize; 64];
    let ksteps = kf * kf * per_tap;
    assert!(ksteps <= offs.len(), "amx::conv_forward: {ksteps} K steps");
    for (ks, o) in offs[..ksteps].iter_mut().enumerate() {
        let (tap, h) = (ks / per_tap, ks % per_tap);
        *o = (((tap / kf) * wf + tap % kf) * cin + h * KSTEP) * 2;
    }
    let shape = Shape { cin, cout, wf, wo, scale };
    let mut next = next;
    // SAFETY: enabled() implies AVX-512F and the tile permission; the pointers handed to the
    // kernels stay inside the inputs and wpack (checked above, see `tiles`).
    imp::with_tiles(|| unsafe { tiles(xs, wpack, &offs[..ksteps], &shape, bias, y, next.as_mut(), ctiles) });
}

struct Shape {
    cin: usize,
    cout: usize,
    wf: usize,
    wo: usize,
    scale: f32,
}

/// The M-pair loop of `conv_forward`: kernel for pair i, then the epilogue of pair i − 1 from the
/// other C buffer (it overlaps the tile unit's work on pair i). AVX-512 for the epilogue.
///
/// # Safety
/// AMX configured (`with_tiles`), AVX-512F present, shapes checked by `conv_forward`.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
unsafe fn tiles(xs: &[&[u16]], wpack: &[u16], offs: &[usize], s: &Shape, bias: &[f32], y: &mut [f32], mut next: Option<&mut NextSplit>, ct: &mut CTiles) {
    let computed = s.wo * s.wf;
    let per_np = offs.len() * SPLITS * 2 * BTILE;
    for np in 0..s.cout / NPAIR {
        let b = &wpack[np * per_np..][..per_np];
        let pairs = computed.div_ceil(MPAIR);
        for i in 0..=pairs {
            if i < pairs {
                // The kernels read 2 × 16 rows of 32 bf16 at x[(p0 + r)·cin + offs[ks]/2 ..] of
                // each input, all below input_rows·cin (p0 + 31 + the farthest tap <
                // input_rows), the whole of `b`, and write one C buffer.
                let at = |x: &[u16]| x[i * MPAIR * s.cin..].as_ptr();
                let c = ct.0[i % 2].as_mut_ptr();
                match xs {
                    [x] => imp::kernel(at(x), s.cin * 2, offs, b.as_ptr(), c),
                    [h, m, l] => imp::kernel6([at(h), at(m), at(l)], s.cin * 2, offs, b.as_ptr(), c),
                    _ => unreachable!("1 or 3 inputs"),
                }
            }
            if i > 0 {
                epilogue(&ct.0[(i - 1) % 2], (i - 1) * MPAIR, np * NPAIR, s, bias, y, next.as_deref_mut());
            }
        }
    }
}

/// y = max(0, scale · C + bias) for the valid positions of one M pair's four C tiles (and its
/// split into `next`).
#[inline(always)]
fn epilogue(c: &[f32; 4 * TILE * TILE], p0: usize, n0: usize, s: &Shape, bias: &[f32], y: &mut [f32], next: Option<&mut NextSplit>) {
    let computed = s.wo * s.wf;
    let mut next = next;
    for (t, c) in c.chunks_exact(TILE * TILE).enumerate() {
        let (mt, nt) = (t / 2, t % 2);
        let o0 = n0 + nt * TILE;
        let bias: &[f32; TILE] = bias[o0..][..TILE].try_into().expect("16 biases");
        for (r, acc) in c.chunks_exact(TILE).enumerate() {
            let p = p0 + mt * TILE + r;
            let (oy, ox) = (p / s.wf, p % s.wf);
            if p >= computed || ox >= s.wo {
                continue;
            }
            // Fixed-size rows: one vector each for scale, bias and ReLU, and for the split.
            let acc: &[f32; TILE] = acc.try_into().expect("a tile row");
            let dst: &mut [f32; TILE] = (&mut y[(oy * s.wo + ox) * s.cout + o0..][..TILE]).try_into().expect("16 outputs");
            for j in 0..TILE {
                dst[j] = (s.scale * acc[j] + bias[j]).max(0.0);
            }
            if let Some(NextSplit(bufs)) = next.as_deref_mut() {
                let wn = s.wo / 2;
                let at = ((oy / 2) * wn + ox / 2) * 4 * s.cout + ((oy % 2) * 2 + ox % 2) * s.cout + o0;
                let (mut hi, mut mid, mut lo) = ([0u16; TILE], [0u16; TILE], [0u16; TILE]);
                for j in 0..TILE {
                    [hi[j], mid[j], lo[j]] = split3_finite(dst[j]);
                }
                for (buf, part) in bufs.iter_mut().zip([hi, mid, lo]) {
                    buf[at..at + TILE].copy_from_slice(&part);
                }
            }
        }
    }
}

/// `pack_weights` for a conv whose input arrives folded by 2 (`NextSplit`): w in PyTorch's
/// layout [Cout, Cin, K, K] (K even), packed in the folded conv's patch order
/// (by, bx, iy, ix, c) with ky = 2·by + iy, kx = 2·bx + ix. `tmp` is scratch.
pub fn pack_weights_folded(w: &[f32], cout: usize, cin: usize, k: usize, tmp: &mut Vec<f32>, out: &mut AlignedBf16) {
    assert!(k % 2 == 0, "amx::pack_weights_folded: odd kernel {k}");
    assert_eq!(w.len(), cout * cin * k * k, "amx::pack_weights_folded: weight count");
    let (kb, kp) = (k / 2, cin * k * k);
    tmp.clear();
    tmp.resize(cout * kp, 0.0);
    for o in 0..cout {
        for c in 0..cin {
            for ky in 0..k {
                for kx in 0..k {
                    let (by, bx, iy, ix) = (ky / 2, kx / 2, ky % 2, kx % 2);
                    let kidx = ((by * kb + bx) * 4 + iy * 2 + ix) * cin + c;
                    tmp[o * kp + kidx] = w[((o * cin + c) * k + ky) * k + kx];
                }
            }
        }
    }
    pack_weights(tmp, cout, kp, out);
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::asm;

    /// The four accumulators: C(m, n) += A(m) · B(n) for A tiles tmm4, tmm5 and B tiles tmm6, tmm7.
    macro_rules! tdp_2x2 {
        () => {
            "tdpbf16ps tmm0, tmm4, tmm6\ntdpbf16ps tmm1, tmm4, tmm7\ntdpbf16ps tmm2, tmm5, tmm6\ntdpbf16ps tmm3, tmm5, tmm7"
        };
    }
    macro_rules! zero_c {
        () => {
            "tilezero tmm0\ntilezero tmm1\ntilezero tmm2\ntilezero tmm3"
        };
    }
    /// C tiles (m0,n0), (m0,n1), (m1,n0), (m1,n1) to {c} as 4 × [16][16] f32 ({s64} = 64).
    macro_rules! store_c {
        () => {
            "tilestored [{c} + {s64}*1], tmm0\ntilestored [{c} + {s64}*1 + 1024], tmm1\ntilestored [{c} + {s64}*1 + 2048], tmm2\ntilestored [{c} + {s64}*1 + 3072], tmm3"
        };
    }

    /// The 64-byte tile configuration (palette 1): tiles 0–7 all 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
        reserved2: [u8; 16],
    }

    /// CPUID says AMX-TILE and AMX-BF16, and Linux grants this process the tile data state.
    pub fn request() -> bool {
        // CPUID leaf 7 exists on every x86-64 CPU with AMX; on older ones the bits read 0.
        let l7 = std::arch::x86_64::__cpuid_count(7, 0);
        let (amx_bf16, amx_tile) = (l7.edx & (1 << 22) != 0, l7.edx & (1 << 24) != 0);
        // The epilogue is AVX-512 (every AMX CPU has it).
        if !(amx_bf16 && amx_tile && std::arch::is_x86_feature_detected!("avx512f")) {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain syscall with integer arguments; it fails cleanly where unsupported.
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    }

    /// Run `f` with the tiles configured on this thread, releasing them after.
    pub fn with_tiles<R>(f: impl FnOnce() -> R) -> R {
        let mut cfg = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16], reserved2: [0; 16] };
        for t in 0..8 {
            cfg.colsb[t] = 64;
            cfg.rows[t] = 16;
        }
        // SAFETY: only called after `enabled()` (the kernel granted the state); the config is
        // valid for palette 1.
        unsafe { asm!("ldtilecfg [{0}]", in(reg) &cfg as *const TileConfig, options(nostack, readonly)) };
        let r = f();
        // SAFETY: returns the tiles to their initial state; always valid once configured.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
        r
    }

    /// Two M tiles × two N tiles of f32 accumulators over all K steps: for each step ks, A rows
    /// at a + offs[ks] bytes (+ 16 rows for the second M tile, `lda` bytes apart), then for each
    /// split the two B tiles that follow in `b`, four TDPBF16PS each. Stores C as 4 × [16][16]
    /// f32 (tiles (m0,n0), (m0,n1), (m1,n0), (m1,n1)).
    ///
    /// # Safety
    /// Tiles configured by `with_tiles`; every row named above readable, c writable (4 KB).
    pub unsafe fn kernel(a: *const u16, lda: usize, offs: &[usize], b: *const u16, c: *mut f32) {
        if offs.is_empty() {
            return;
        }
        // One asm block for the whole K loop: the accumulators live in tmm0–3 from the
        // tilezero to the tilestored, which nothing outside an asm block could keep.
        asm!(
            zero_c!(),
            "2:",
            "mov {t}, [{offs}]",
            "add {t}, {a}",
            "tileloadd tmm4, [{t} + {lda}*1]",
            "add {t}, {a16}",
            "tileloadd tmm5, [{t} + {lda}*1]",
            "tileloadd tmm6, [{b} + {s64}*1]",
            "tileloadd tmm7, [{b} + {s64}*1 + 1024]",
            tdp_2x2!(),
            "tileloadd tmm6, [{b} + {s64}*1 + 2048]",
            "tileloadd tmm7, [{b} + {s64}*1 + 3072]",
            tdp_2x2!(),
            "tileloadd tmm6, [{b} + {s64}*1 + 4096]",
            "tileloadd tmm7, [{b} + {s64}*1 + 5120]",
            tdp_2x2!(),
            "add {b}, 6144",
            "add {offs}, 8",
            "dec {n}",
            "jnz 2b",
            store_c!(),
            a = in(reg) a,
            a16 = in(reg) 16 * lda,
            lda = in(reg) lda,
            offs = inout(reg) offs.as_ptr() => _,
            n = inout(reg) offs.len() => _,
            b = inout(reg) b => _,
            c = in(reg) c,
            s64 = in(reg) 64usize,
            t = out(reg) _,
            out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
            out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
            options(nostack),
        );
    }

    /// `kernel` for split inputs a = [hi, mid, lo]: per K step the six products (see
    /// `Input::Split`) in the order hh, hm, hl, lh, mh, mm — 24 TDPBF16PS on 16 tile loads.
    ///
    /// # Safety
    /// As `kernel`, for each of the three inputs.
    pub unsafe fn kernel6(a: [*const u16; 3], lda: usize, offs: &[usize], b: *const u16, c: *mut f32) {
        if offs.is_empty() {
            return;
        }
        let dm = (a[1] as isize).wrapping_sub(a[0] as isize);
        let dl = (a[2] as isize).wrapping_sub(a[0] as isize);
        asm!(
            zero_c!(),
            "2:",
            "mov {t}, [{offs}]",
            "add {t}, {a}",
            // A hi × B hi, mid, lo
            "tileloadd tmm4, [{t} + {lda}*1]",
            "add {t}, {a16}",
            "tileloadd tmm5, [{t} + {lda}*1]",
            "sub {t}, {a16}",
            "tileloadd tmm6, [{b} + {s64}*1]",
            "tileloadd tmm7, [{b} + {s64}*1 + 1024]",
            tdp_2x2!(),
            "tileloadd tmm6, [{b} + {s64}*1 + 2048]",
            "tileloadd tmm7, [{b} + {s64}*1 + 3072]",
            tdp_2x2!(),
            "tileloadd tmm6, [{b} + {s64}*1 + 4096]",
            "tileloadd tmm7, [{b} + {s64}*1 + 5120]",
            tdp_2x2!(),
            // A lo × B hi
            "add {t}, {dl}",
            "tileloadd tmm4, [{t} + {lda}*1]",
            "add {t}, {a16}",
            "tileloadd tmm5, [{t} + {lda}*1]",
            "sub {t}, {a16}",
            "sub {t}, {dl}",
            "tileloadd tmm6, [{b} + {s64}*1]",
            "tileloadd tmm7, [{b} + {s64}*1 + 1024]",
            tdp_2x2!(),
            // A mid × B hi, mid
            "add {t}, {dm}",
            "tileloadd tmm4, [{t} + {lda}*1]",
            "add {t}, {a16}",
            "tileloadd tmm5, [{t} + {lda}*1]",
            tdp_2x2!(),
            "tileloadd tmm6, [{b} + {s64}*1 + 2048]",
            "tileloadd tmm7, [{b} + {s64}*1 + 3072]",
            tdp_2x2!(),
            "add {b}, 6144",
            "add {offs}, 8",
            "dec {n}",
            "jnz 2b",
            store_c!(),
            a = in(reg) a[0],
            dm = in(reg) dm,
            dl = in(reg) dl,
            a16 = in(reg) 16 * lda,
            lda = in(reg) lda,
            offs = inout(reg) offs.as_ptr() => _,
            n = inout(reg) offs.len() => _,
            b = inout(reg) b => _,
            c = in(reg) c,
            s64 = in(reg) 64usize,
            t = out(reg) _,
            out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
            out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
            options(nostack),
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    pub fn request() -> bool {
        false
    }
    pub fn with_tiles<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
    pub unsafe fn kernel(_: *const u16, _: usize, _: &[usize], _: *const u16, _: *mut f32) {
        unreachable!("AMX is x86-64 only")
    }
    pub unsafe fn kernel6(_: [*const u16; 3], _: usize, _: &[usize], _: *const u16, _: *mut f32) {
        unreachable!("AMX is x86-64 only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{PhiloxStream, Purpose};

    fn normals(r: &mut PhiloxStream, n: usize, scale: f64) -> Vec<f32> {
        (0..n).map(|_| (r.next_normal() * scale) as f32).collect()
    }

    #[test]
    fn the_bf16_split_is_exact() {
        let mut r = PhiloxStream::new(5, 0, Purpose::Init);
        let mut ws = normals(&mut r, 20_000, 0.1);
        ws.extend([0.0, -0.0, 1.0, 1.999_999_9, -1.0e38, 1.17e-30, f32::MIN_POSITIVE * 65536.0]);
        for w in ws {
            let [hi, mid, lo] = split3(w);
            let sum = f32_of(hi) as f64 + f32_of(mid) as f64 + f32_of(lo) as f64;
            assert_eq!(sum, w as f64, "{w:e} = {hi:#x} + {mid:#x} + {lo:#x}");
        }
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 0x3f80, "a tie rounds to even");
        assert_eq!(bf16(1.0 + 3.0 / 256.0), 0x3f82, "a tie rounds to even");
        assert!(f32_of(bf16(f32::NAN)).is_nan());
    }

    /// What the accuracy claim rests on: one TDPBF16PS adds its 32 exact products to the
    /// accumulator with an error of a few roundings, not the up to 31 of a sequential f32 sum
    /// (the hardware's internal order and rounding points are not documented exactly: measured
    /// here, it is neither the sequential f32 sum nor the f64 sum rounded once).
    #[test]
    fn one_tile_step_rounds_a_few_times_at_most() {
        if !enabled() {
            eprintln!("skipped: no AMX on this machine");
            return;
        }
        let mut r = PhiloxStream::new(6, 0, Purpose::Init);
        // A: 32 rows × 32 bf16 (lda 64 bytes); B: the 6 tiles of one K step, only split 0 non-zero.
        let a: Vec<u16> = normals(&mut r, 32 * KSTEP, 1.0).into_iter().map(bf16).collect();
        let mut b = vec![0u16; 6 * BTILE];
        for v in &mut b[..2 * BTILE] {
            *v = bf16((r.next_normal() * 1e-2) as f32);
        }
        let mut c = vec![0.0f32; 4 * TILE * TILE];
        // SAFETY: AMX enabled; a has 32 rows of 64 bytes, b 6 tiles, c 4 tiles.
        imp::with_tiles(|| unsafe { imp::kernel(a.as_ptr(), 64, &[0], b.as_ptr(), c.as_mut_ptr()) });
        let mut worst = 0.0f64;
        for t in 0..4 {
            let (mt, nt) = (t / 2, t % 2);
            for m in 0..TILE {
                for n in 0..TILE {
                    let products: Vec<f64> = (0..KSTEP)
                        .map(|k| f32_of(a[(mt * TILE + m) * KSTEP + k]) as f64 * f32_of(b[nt * BTILE + (k / 2) * KSTEP + n * 2 + k % 2]) as f64)
                        .collect();
                    let exact: f64 = products.iter().sum();
                    let mass: f64 = products.iter().map(|p| p.abs()).sum();
                    let got = c[(t * TILE + m) * TILE + n] as f64;
                    worst = worst.max((got - exact).abs() / (mass * f32::EPSILON as f64 / 2.0));
                }
            }
        }
        eprintln!("one TDPBF16PS: worst error {worst:.2} u·Σ|p| (a sequential f32 sum may reach 31)");
        assert!(worst <= 4.0, "TDPBF16PS error {worst} u·Σ|p|");
    }

    /// y [Wo, Wo, Cout] against max(0, scale · Σ x(st·oy + ky, st·ox + kx, c) · w(o, c, ky, kx) +
    /// bias) in float64 (shape = (Wo, Cout, Cin, K, st)); with `zero_row0`, output row 0 reads
    /// only zeros and must be exactly max(0, bias).
    #[allow(clippy::too_many_arguments)]
    fn assert_conv(
        what: &str, y: &[f32], shape: (usize, usize, usize, usize, usize), scale: f32, bias: &[f32], zero_row0: bool,
        x: impl Fn(usize, usize, usize) -> f64, w: impl Fn(usize, usize, usize, usize) -> f64,
    ) {
        let (wo, cout, cin, k, st) = shape;
        for oy in 0..wo {
            for ox in 0..wo {
                for o in 0..cout {
                    let mut acc = 0.0f64;
                    for ky in 0..k {
                        for kx in 0..k {
                            for c in 0..cin {
                                acc += x(st * oy + ky, st * ox + kx, c) * w(o, c, ky, kx);
                            }
                        }
                    }
                    let want = (scale as f64 * acc + bias[o] as f64).max(0.0);
                    let got = y[(oy * wo + ox) * cout + o];
                    if zero_row0 && oy == 0 {
                        assert_eq!(got, bias[o].max(0.0), "{what}: zero window ({oy}, {ox}, {o})");
                    }
                    assert!((got as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "{what}: ({oy}, {ox}, {o}) {got} vs {want}");
                }
            }
        }
    }

    /// conv_forward against a float64 direct convolution on ragged shapes (positions that do not
    /// fill the tiles, widths that are not multiples of 16, 1–3 taps, 1–2 N pairs, 1–2 K
    /// steps per tap), with some all-zero receptive fields, which must give exactly the bias.
    #[test]
    fn conv_matches_a_float64_direct_sum() {
        if !enabled() {
            eprintln!("skipped: no AMX on this machine");
            return;
        }
        let mut r = PhiloxStream::new(7, 0, Purpose::Init);
        for (cin, cout, wf, kf) in [(64, 32, 21, 2), (32, 32, 5, 1), (32, 64, 7, 3), (64, 32, 9, 2), (96, 32, 4, 2)] {
            let wo = wf - kf + 1;
            let rows = input_rows(wf, wo, kf);
            let mut xbuf = AlignedBf16::default();
            let x = xbuf.slice_mut(rows * cin);
            x.iter_mut().for_each(|v| *v = 0);
            let mut bytes = vec![0u8; wf * wf * cin];
            for (p, px) in bytes.chunks_exact_mut(cin).enumerate() {
                // Rows 0..kf of the image stay black: outputs of row 0 read only zeros.
                if p / wf >= kf {
                    px.iter_mut().for_each(|b| *b = r.below(256) as u8);
                }
            }
            for (d, &b) in x.iter_mut().zip(&bytes) {
                *d = bf16(b as f32);
            }
            let kp = kf * kf * cin;
            let w = normals(&mut r, cout * kp, 0.05);
            let bias = normals(&mut r, cout, 0.1);
            let mut pbuf = AlignedBf16::default();
            pack_weights(&w, cout, kp, &mut pbuf);
            let packed = pbuf.slice(packed_len(cout, kp));
            let scale = (1.0f64 / 255.0) as f32;
            let mut y = vec![f32::NAN; wo * wo * cout];
            conv_forward(Input::Exact(x), packed, cin, cout, wf, wo, kf, scale, &bias, &mut y, None, &mut CTiles::default());
            let x_at = |r: usize, c: usize, ch: usize| bytes[(r * wf + c) * cin + ch] as f64;
            let w_at = |o: usize, c: usize, ky: usize, kx: usize| w[o * kp + (ky * kf + kx) * cin + c] as f64;
            let what = format!("{cin}/{cout}/{wf}/{kf}");
            assert_conv(&what, &y, (wo, cout, cin, kf, 1), scale, &bias, true, x_at, w_at);
        }
    }

    /// The split path end to end: a conv whose epilogue writes the next conv's folded split
    /// input (`NextSplit`), then that conv (`Input::Split`, `pack_weights_folded`) — against a
    /// float64 stride-2 conv of the first one's f32 outputs; ragged sizes (a 6×6 output
    /// folding to 3×3, one M pair partly used), and zero windows giving exactly the bias.
    #[test]
    fn split_inputs_match_a_float64_strided_conv() {
        if !enabled() {
            eprintln!("skipped: no AMX on this machine");
            return;
        }
        let mut r = PhiloxStream::new(8, 0, Purpose::Init);
        // First conv: 1×1 on 6×6×32 bytes → 6×6×32 (ReLU makes some outputs 0: negative weights).
        // Second: 4×4 stride 2 on that 6×6×32, so 2×2 stride 1 on 3×3×128 → 2×2×64.
        for (wf1, c1, k2, c2) in [(6, 32, 4, 64), (8, 32, 2, 32)] {
            let rows1 = input_rows(wf1, wf1, 1);
            let mut xbuf = AlignedBf16::default();
            let x = xbuf.slice_mut(rows1 * 32);
            x.iter_mut().for_each(|v| *v = 0);
            let mut bytes = vec![0u8; wf1 * wf1 * 32];
            for (p, px) in bytes.chunks_exact_mut(32).enumerate() {
                // The first two rows stay black: the second conv's first output row reads zeros.
                if p / wf1 >= 2 {
                    px.iter_mut().for_each(|b| *b = r.below(256) as u8);
                }
            }
            for (d, &b) in x.iter_mut().zip(&bytes) {
                *d = bf16(b as f32);
            }
            let w1 = normals(&mut r, c1 * 32, 0.1);
            let b1 = vec![0.0f32; c1];
            let mut p1 = AlignedBf16::default();
            pack_weights(&w1, c1, 32, &mut p1);
            let (wf2, kf2) = (wf1 / 2, k2 / 2);
            let wo2 = wf2 - kf2 + 1;
            let len2 = input_rows(wf2, wo2, kf2) * 4 * c1;
            let (mut h, mut m, mut l) = (AlignedBf16::default(), AlignedBf16::default(), AlignedBf16::default());
            let mut y1 = vec![f32::NAN; wf1 * wf1 * c1];
            {
                let mut parts = [h.slice_mut(len2), m.slice_mut(len2), l.slice_mut(len2)];
                parts.iter_mut().for_each(|p| p.iter_mut().for_each(|v| *v = 0));
                let next = Some(NextSplit(parts));
                let x = xbuf.slice(rows1 * 32);
                conv_forward(Input::Exact(x), p1.slice(packed_len(c1, 32)), 32, c1, wf1, wf1, 1, 0.01, &b1, &mut y1, next, &mut CTiles::default());
            }
            assert!(y1.iter().any(|v| *v == 0.0) && y1.iter().any(|v| *v > 0.0), "ReLU left both zeros and positives");
            let w2 = normals(&mut r, c2 * c1 * k2 * k2, 0.05);
            let b2 = normals(&mut r, c2, 0.1);
            let mut p2 = AlignedBf16::default();
            pack_weights_folded(&w2, c2, c1, k2, &mut Vec::new(), &mut p2);
            let mut y2 = vec![f32::NAN; wo2 * wo2 * c2];
            let parts = [h.slice(len2), m.slice(len2), l.slice(len2)];
            conv_forward(Input::Split(parts), p2.slice(packed_len(c2, 4 * c1 * kf2 * kf2)), 4 * c1, c2, wf2, wo2, kf2, 1.0, &b2, &mut y2, None, &mut CTiles::default());
            let x_at = |r: usize, c: usize, ch: usize| y1[(r * wf1 + c) * c1 + ch] as f64;
            let w_at = |o: usize, c: usize, ky: usize, kx: usize| w2[((o * c1 + c) * k2 + ky) * k2 + kx] as f64;
            assert_conv(&format!("k{k2}"), &y2, (wo2, c2, c1, k2, 2), 1.0, &b2, k2 == 2, x_at, w_at);
        }
    }
}
