// Convolution (and, as its 1x1 special case, the fully connected layer) forward and backward for
// ALL agents in one launch per pass; the CPU twin is src/backend/cpu/layers.rs (conv2d_* and
// linear_*), the composition is src/backend/cpu/net.rs.
//
// Shapes (row-major, PyTorch layouts), per agent a (grid z carries the agent):
//   x  [agents][N][Cin][H][H]        f32, or uint8 frames for conv1 (x = byte * (1/255), fused
//                                     into the tile loads: frames travel to the device as bytes)
//   w  params[a][w_off ..] [Cout][Cin][K][K],  b params[a][b_off ..] [Cout]
//   y  [agents][N][Cout][Ho][Ho]      Ho = (H - K)/stride + 1, no padding
// A fully connected layer is the same with K = stride = H = Ho = 1 (x [N][In], y [N][Out]).
// The conv kernels still run one correctly, but the backend runs fc with the fc_* GEMM kernels
// at the end of this file (loads along the contiguous dimension, deterministic split-K).
//
// Implicit GEMM, with column index j = n*P + p over the agent's samples n and output pixels
// p = oy*Ho + ox, and patch index r = (c*K + ky)*K + kx (R = Cin*K*K):
//   forward           y[o][j]     = relu( b[o] + sum_r w[o][r] * col[r][j] )
//   backward-filter   dw[o][r]    = sum_j g[o][j] * col[r][j],   db[o] = sum_j g[o][j]
//   backward-data     dx[c][iy][ix] = sum over the taps (ky, kx) that reach (iy, ix) and o of
//                     w[o][c][ky][kx] * g[o][(iy-ky)/s][(ix-kx)/s]   (a transposed conv, per
//                     sub-pixel phase; see its section below)
// with col[r][j] = x[n][c][oy*s+ky][ox*s+kx] (never materialised) and g = dy masked by y > 0
// when the layer has a ReLU. The backward kernels take g ALREADY masked: whoever produces a
// layer's gradient masks it (heads_backward for fc, fc_backward_data for conv3,
// conv_backward_data's epilogue with the ReLU of the layer underneath for conv2 and conv1), so no backward kernel loads y (16 loads and
// registers per thread fewer: what kept backward-data above the 64-register cap).
//
// Tiling: every GEMM kernel computes a CONV_TILE_M x CONV_TILE_N output tile per block of
// CONV_THREADS threads, each thread a 4x4 micro-tile of adjacent rows 4ty+i and columns 4tx+j (a
// float4 per row of shared memory on a GPU, SIMD-friendly on the simulator), stepping the reduction CONV_TILE_K at a time through
// static shared memory (two barriers per step). Out-of-range rows, columns and reduction
// indices load as 0, so any batch size and channel count works (ragged edges just idle).
//
// Shared-memory layout and load schedule (sm_90: 32 banks of 4 bytes):
//   * The tiles are stored K-major, As[k][m] and Bs[k][n], with rows padded to CONV_AS_STRIDE =
//     TILE_M + 4 and CONV_BS_STRIDE = TILE_N + 4 floats. The padding keeps every row 16-byte
//     aligned (the FMA loop's 4-wide reads stay LDS.128) and shifts row k by 4k banks. (The TF32
//     build pads by 8 and swaps 16-byte segments in half the rows of K-lane tiles: conv_klane_col.)
//   * An operand whose global layout is contiguous along the REDUCTION (the weights in forward,
//     g and the im2col gather in backward-filter, along j) is loaded "K-lane": lane l of a warp
//     takes reduction index k = l and four adjacent rows m..m+3 (four coalesced warp loads), and
//     stores them as one 16-byte row segment As[k][m..m+3]. Eight lanes of a quarter-warp then
//     hit rows k..k+7, i.e. banks 4k+m..: all 32 banks once, no conflict (unpadded, every lane
//     hit the same 4 banks: the 32-way conflict of the previous layout).
//   * An operand contiguous along the tile's ROWS (backward-data's per-tap weights and g) is
//     loaded "M-lane":
//     consecutive lanes take consecutive rows of one k, coalesced and conflict-free as is.
//   * Register double buffering: all of a K-step's global loads go into registers at once
//     (prefetch), the previous step's FMA loop runs while they are in flight, and only then are
//     they stored. (No kernel here masks a gradient by y: each receives it masked, see above.)
//
// Accumulation contract: outputs are WRITTEN, never accumulated into; no atomics anywhere.
// Each output element is one thread's sequential sum over the reduction in ascending order.
// backward-filter splits the batch into fixed chunks of `samples_per_chunk` samples (chosen by
// the launcher from the layer alone): block (tile, a, chunk) writes the chunk's partial dw/db
// to out[a*agent_stride + chunk*chunk_stride + out_off + (o*R + r)] (db after dw: o at
// out_off + Cout*R + o, the parameter layout's weight-then-bias order), and
// conv_grad_sum_chunks adds the chunks in chunk order. With one chunk the launcher points `out`
// straight at the gradient arena. So a gradient depends on the samples and the chunk size only,
// never on the grid, the number of agents or the GPU.
//
// Precision. This file is compiled twice. The plain build (the kernels' own names) computes every
// GEMM in FP32 FMAs as above. With GALA_TF32 defined (build.rs and the CUDA module store compile
// it again so, every kernel renamed <name>_tf32; opt-in `precision = "tf32"`), the tile product
// runs on tensor cores: mma.sync m16n8k8 with TF32 operands (each tile element rounded to TF32,
// 10 mantissa bits, round-to-nearest ties away (cvt.rna), as the fragment is read) and FP32
// accumulators, the way PyTorch runs a conv with TF32 allowed. The contract becomes: each output
// element sums its reduction in ascending groups of 8 (one mma each, the 8 products and the
// running sum combined inside the instruction in the hardware's fixed way), everything else as
// above (split-K slices, chunks, no atomics). So TF32 results are deterministic run to run and
// independent of the grid; they are not bit-equal between the simulator (which emulates an mma
// as the running sum plus the exact products in ascending k, each step rounded to FP32) and a
// GPU. Bias gradients (summed from the unrounded A tile) and every non-GEMM kernel stay FP32.

#include "prelude.cuh"

#define CONV_TILE_M 32
#define CONV_TILE_N 64
#define CONV_TILE_K 32
#define CONV_THREADS 128
#define CONV_REDUCE_BLOCK 256
// Row padding of the shared tiles (floats): 4 for the FP32 FMA loop (see the layout notes
// above), 8 for the TF32 tensor-core loop (see "Precision" below).
#ifdef GALA_TF32
#define CONV_TF32 1
#define CONV_TILE_PAD 8
#else
#define CONV_TF32 0
#define CONV_TILE_PAD 4
#endif
#define CONV_AS_STRIDE (CONV_TILE_M + CONV_TILE_PAD)
#define CONV_BS_STRIDE (CONV_TILE_N + CONV_TILE_PAD)
// K-lane loads: rows per thread of an A (TILE_M) and a B (TILE_N) tile; M-lane loads: elements
// per thread of an A and a B tile.
#define CONV_KLANE_A (CONV_TILE_M * CONV_TILE_K / CONV_THREADS)
#define CONV_KLANE_B (CONV_TILE_N * CONV_TILE_K / CONV_THREADS)
// Minimum resident blocks per SM asked of ptxas: 8 x 128 threads = 50% occupancy, i.e. at most
// 64 registers per thread.
#define CONV_MIN_BLOCKS 8

// The geometry every pass needs, derived once per thread from the launch arguments.
struct ConvGeom {
    unsigned int cin, cout, k, stride, in_hw, out_hw;
    unsigned int patch;    // R = cin*k*k
    unsigned int pixels;   // P = out_hw*out_hw
    unsigned int in_len;   // cin*in_hw*in_hw
    unsigned int out_len;  // cout*P
};

__device__ __forceinline__ ConvGeom conv_geom(unsigned int cin, unsigned int cout, unsigned int k,
                                              unsigned int stride, unsigned int in_hw, unsigned int out_hw) {
    ConvGeom g;
    g.cin = cin;
    g.cout = cout;
    g.k = k;
    g.stride = stride;
    g.in_hw = in_hw;
    g.out_hw = out_hw;
    g.patch = cin * k * k;
    g.pixels = out_hw * out_hw;
    g.in_len = cin * in_hw * in_hw;
    g.out_len = cout * out_hw * out_hw;
    return g;
}

__device__ __forceinline__ float conv_input_value(float v) { return v; }
// The CPU reference computes (float)byte * (float)(1.0/255.0).
__device__ __forceinline__ float conv_input_value(unsigned char v) { return (float)v * (1.0f / 255.0f); }
// Frame byte `byte` of a word of four (the word-load kernels): little-endian, so byte 0 is the
// lowest address, i.e. the lowest kx of the four patch rows the word holds.
__device__ __forceinline__ float conv_word_byte_value(unsigned int word, unsigned int byte) {
    return conv_input_value((unsigned char)((word >> (8u * byte)) & 0xffu));
}

// Offset of column j's patch origin in one agent's input: n*in_len + (oy*s)*H + ox*s.
__device__ __forceinline__ unsigned int conv_col_origin(const ConvGeom& g, unsigned int j) {
    const unsigned int n = j / g.pixels, p = j - n * g.pixels;
    const unsigned int oy = p / g.out_hw, ox = p - oy * g.out_hw;
    return n * g.in_len + (oy * g.in_hw + ox) * g.stride;
}
// Offset of column j's output element o = 0 in one agent's output: n*out_len + p.
__device__ __forceinline__ unsigned int conv_out_origin(const ConvGeom& g, unsigned int j) {
    const unsigned int n = j / g.pixels;
    return n * g.out_len + (j - n * g.pixels);
}
// Offset of patch row r = (c*K + ky)*K + kx relative to a column's origin: (c*H + ky)*H + kx.
__device__ __forceinline__ unsigned int conv_patch_offset(const ConvGeom& g, unsigned int r) {
    const unsigned int kk = g.k * g.k;
    const unsigned int c = r / kk, rk = r - c * kk;
    const unsigned int ky = rk / g.k, kx = rk - ky * g.k;
    return (c * g.in_hw + ky) * g.in_hw + kx;
}

// Walks patch rows r, r+d, r+2d, ... keeping (c, ky, kx) so that no division is needed per step
// (the tile loads of a thread visit rows at a fixed stride).
struct PatchCursor {
    unsigned int c, ky, kx;
};
__device__ __forceinline__ PatchCursor patch_cursor(const ConvGeom& g, unsigned int r) {
    const unsigned int kk = g.k * g.k;
    PatchCursor pc;
    pc.c = r / kk;
    const unsigned int rk = r - pc.c * kk;
    pc.ky = rk / g.k;
    pc.kx = rk - pc.ky * g.k;
    return pc;
}
__device__ __forceinline__ void patch_advance(const ConvGeom& g, PatchCursor& pc, unsigned int d) {
    pc.kx += d;
    while (pc.kx >= g.k) {
        pc.kx -= g.k;
        if (++pc.ky == g.k) {
            pc.ky = 0;
            ++pc.c;
        }
    }
}
__device__ __forceinline__ unsigned int patch_cursor_offset(const ConvGeom& g, const PatchCursor& pc) {
    return (pc.c * g.in_hw + pc.ky) * g.in_hw + pc.kx;
}

// Where element (k, m) (reduction index k, row m) of a K-LANE-stored tile sits in its shared row
// k: column m in FP32. In TF32 the 16-byte segments of rows with (k / 4) odd swap in pairs
// (column m ^ 4): with rows padded by 8 floats (bank 8k + m), the 16-byte stores of eight
// consecutive rows then fill the 32 banks once (2-way without the swap: rows k and k + 4 shared
// banks), while the fragment reads (rows tig | tig + 4 of a group of 8, columns grp | grp + 8)
// stay one bank per lane. M-lane tiles (a warp's scalar stores run along one row) are
// conflict-free unswapped and stay so; conv_tile_fma is told which tiles are swapped. The
// epilogue's staging of the output tile (conv_stage_tile) is a layout of its own.
__device__ __forceinline__ unsigned int conv_klane_col(unsigned int k, unsigned int m) {
    return CONV_TF32 ? m ^ (((k >> 2) & 1u) << 2) : m;
}

#ifndef GALA_TF32
// acc[i][j] += sum_kk As[kk][4ty+i] * Bs[kk][4tx+j]  (KLANE_A / KLANE_B: TF32's segment swap)
template <bool KLANE_A, bool KLANE_B>
__device__ __forceinline__ void conv_tile_fma(float (*As)[CONV_AS_STRIDE], float (*Bs)[CONV_BS_STRIDE],
                                              float acc[4][4], unsigned int tx, unsigned int ty) {
    // Unrolled 8x as before the 64-register cap (ptxas then chose 2x: 25% loop overhead).
#ifndef __CUDA_SIM__
#pragma unroll 8
#endif
    for (unsigned int kk = 0; kk < CONV_TILE_K; ++kk) {
        float a[4], b[4];
        for (int i = 0; i < 4; ++i) a[i] = As[kk][ty * 4 + i];
        for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx * 4 + j];
        for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
}
#else
// TF32 (see "Precision" at the top): warp w computes rows 16*(w % 2) .. +15 and columns
// 32*(w / 2) .. +31 of the tile as four m16n8 tensor-core tiles t = 0..3 (columns +8t), K-step
// by K-step, 8 reduction indices per mma. acc[t][0..3] is tile t's accumulator fragment: lane
// l = 4*grp + tig holds (row grp, column 2*tig), (grp, 2*tig + 1), (grp + 8, 2*tig),
// (grp + 8, 2*tig + 1) of it (PTX ISA, mma.m16n8k8 .f32 accumulators). Operand fragments come
// straight from the K-major tiles: A(row, k) = As[k][row] at (grp | grp + 8, tig | tig + 4),
// B(k, col) = Bs[k][col] at (tig | tig + 4, grp), each rounded to TF32 (cvt.rna) as it is read.
// With rows padded by 8 floats a fragment read hits bank 8*tig + grp (+ a constant): the 32
// lanes, 32 banks, no conflict. KLANE_A / KLANE_B: the tile was stored K-lane, with the segment
// swap of conv_klane_col.
//
// This thread's share of that: its warp's 16 x 32 quarter of the tile (rows row0 .., columns
// col0 ..) and its place in the fragments (grp = lane / 4, tig = lane % 4). (A function, not a
// constructor: the simulator's __device__ is `static inline`.)
struct ConvMmaLane {
    unsigned int row0, col0, grp, tig;
};
__device__ __forceinline__ ConvMmaLane conv_mma_lane() {
    const unsigned int lane = threadIdx.x % 32u, warp = threadIdx.x / 32u;
    ConvMmaLane q;
    q.row0 = 16u * (warp % 2u);
    q.col0 = 32u * (warp / 2u);
    q.grp = lane / 4u;
    q.tig = lane % 4u;
    return q;
}
template <bool KLANE_A, bool KLANE_B>
__device__ __forceinline__ void conv_tile_fma(float (*As)[CONV_AS_STRIDE], float (*Bs)[CONV_BS_STRIDE],
                                              float acc[4][4], unsigned int, unsigned int) {
    const ConvMmaLane q = conv_mma_lane();
    const unsigned int tig = q.tig, m0 = q.row0 + q.grp, n0 = q.col0 + q.grp;
    // In a K-lane tile rows k8 + tig keep their columns and rows k8 + tig + 4 have them swapped
    // (conv_klane_col): the swap flips bit 2, which is grp's, so column c + 8t of a swapped row
    // is (c ^ 4) + 8t and every read of the loop stays a constant offset from four addresses.
    const float* a_lo = &As[tig][m0];
    const float* a_hi = &As[tig + 4][KLANE_A ? m0 ^ 4u : m0];
    const float* b_lo = &Bs[tig][n0];
    const float* b_hi = &Bs[tig + 4][KLANE_B ? n0 ^ 4u : n0];
    GALA_UNROLL
    for (unsigned int k8 = 0; k8 < CONV_TILE_K; k8 += 8) {
        const unsigned int a[4] = {gala_tf32_round(a_lo[k8 * CONV_AS_STRIDE]), gala_tf32_round(a_lo[k8 * CONV_AS_STRIDE + 8]),
                                   gala_tf32_round(a_hi[k8 * CONV_AS_STRIDE]), gala_tf32_round(a_hi[k8 * CONV_AS_STRIDE + 8])};
        unsigned int b[4][2];
        GALA_UNROLL
        for (unsigned int t = 0; t < 4; ++t) {
            b[t][0] = gala_tf32_round(b_lo[k8 * CONV_BS_STRIDE + 8 * t]);
            b[t][1] = gala_tf32_round(b_hi[k8 * CONV_BS_STRIDE + 8 * t]);
        }
        gala_mma_m16n8k8_tf32_x4(acc, a, b);
    }
}
#endif

// Row (of a TILE_M or TILE_N tile) of K-lane load q = 4*quad + t of thread `tid`: quads of four
// adjacent rows, warp w owning rows 16*quad + 4w .. +3 (see the layout notes at the top).
__device__ __forceinline__ unsigned int klane_row(unsigned int tid, unsigned int q) {
    return (q >> 2) * 16u + (tid / 32u) * 4u + (q & 3u);
}

// Stores a thread's K-lane registers `v` (n of them) into row k = tid % 32 of a K-major tile;
// four adjacent columns per quad, which the compiler merges into one 16-byte store. (The TF32
// segment swap, conv_klane_col, flips bit 2 of the column: the warp's 4-column group, the same
// for every quad of the thread, so one base address serves them all.)
template <unsigned int STRIDE, unsigned int NREG>
__device__ __forceinline__ void klane_store(float (*T)[STRIDE], const float* v, unsigned int tid) {
    const unsigned int kk = tid % 32u;
    float* row = &T[kk][conv_klane_col(kk, klane_row(tid, 0))];
    for (unsigned int q = 0; q < NREG; ++q) row[klane_row(tid, q) - klane_row(tid, 0)] = v[q];
}

// Epilogue staging (backward-data and conv_forward_f32; the uint8 forward kernels store their 4x4
// directly in FP32: staging there costs conv_forward_u8_words a spill at the 64-register cap, while
// in TF32 it is the direct store that spills, so there they stage too): after a GEMM's last K-step (its
// final barrier passed, so the B tile is free) each thread parks its 4x4 outputs at
// Cs[4ty+i][4tx+j] and the block meets at a barrier; the stores then go out row by row: thread tid takes column jj = tid % TILE_N and rows
// tid / TILE_N + 2k, so a warp writes 32 adjacent columns of one output row (a row segment of
// the output, or every s-th pixel of one for backward-data's phases) instead of a 4x4 scatter
// over 16 columns and 2 rows (16-31 sectors per store request on the simulator profile). Values
// are unchanged: only where they are stored from.
#define CONV_STAGE_ROWS (CONV_TILE_M * CONV_TILE_N / CONV_THREADS)
// TF32: the thread's accumulators are mma fragments (see conv_tile_fma), parked at their own
// tile elements; the staged tile is the same.
static_assert(CONV_TILE_M <= CONV_TILE_K, "the epilogue stages a TILE_M x TILE_N tile in the TILE_K-row B tile");
__device__ __forceinline__ void conv_stage_tile(float (*Cs)[CONV_BS_STRIDE], const float acc[4][4], unsigned int tx,
                                                unsigned int ty) {
#if CONV_TF32
    const ConvMmaLane q = conv_mma_lane();
    const unsigned int m0 = q.row0 + q.grp, n0 = q.col0 + 2u * q.tig;
    for (unsigned int t = 0; t < 4; ++t)
        for (unsigned int r = 0; r < 4; ++r) Cs[m0 + 8u * (r / 2u)][n0 + 8u * t + r % 2u] = acc[t][r];
#else
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) Cs[ty * 4 + i][tx * 4 + j] = acc[i][j];
#endif
    __syncthreads();
}

// For the epilogues that store from registers (backward-filter, fc): after the K-loop (its last
// barrier passed: the B tile is free), acc in the 4x4 layout (acc[i][j] = tile element
// (4ty + i, 4tx + j)). The FMA loop accumulates so already; TF32 fragments are regrouped through
// the B tile. Values are unchanged.
__device__ __forceinline__ void conv_tile_result(float (*Cs)[CONV_BS_STRIDE], float acc[4][4], unsigned int tx,
                                                 unsigned int ty) {
#if CONV_TF32
    conv_stage_tile(Cs, acc, tx, ty);
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = Cs[ty * 4 + i][tx * 4 + j];
    // Nobody writes the tile again before everyone has read it back.
    __syncthreads();
#endif
}

// ---- forward -------------------------------------------------------------------------------
// Grid: (ceil(N*P / TILE_N), ceil(Cout / TILE_M), agents).
// A = w (contiguous along r: K-lane loads), B = the im2col gather (lanes along columns j).
//
// Index arithmetic is what bounds these kernels once the tiles are conflict-free (every load of
// a K-step was ~30 issued instructions of cursor walking, 64-bit address building and bounds
// tests, against 19 per FFMA-loop slot), so everything that does not change between K-steps is
// computed once per block:
//   * the patch offset (c*H + ky)*H + kx of every patch row r < R goes into a shared table
//     `ptab` (CONV_PTAB entries, filled by the block before its first K-step; a layer with
//     R > CONV_PTAB refills it every CONV_PTAB rows, between a K-step's stores and its first
//     barrier): a B load is then one shared read at a constant offset from the K-step's base,
//     one add and the load;
//   * a thread's weight rows and its column's origin become pointers, its rows' validity one
//     compare against rows_left;
//   * columns past the batch read the agent's first patch instead (always in bounds): their
//     accumulators are never stored, so no per-load column test is needed. Rows past R still
//     load 0 (a 0 weight times a non-finite input would be NaN, not 0).
//   * uint8 frames with K, stride and H multiples of 4 (conv1 of both presets: 8x8/4 on 84x84),
//     WORDS = true (kernel conv_forward_u8_words): four consecutive patch rows r = 4e..4e+3
//     share (c, ky) and are the bytes kx = 4t..4t+3 of one 4-byte-aligned word of every column's
//     patch (the column origins, the patch offsets and the agent bases are all multiples of 4),
//     so the table holds one offset per group of 4 rows and a thread loads its 16 rows (4 groups:
//     rows 16*half .. +15 of the K-step, half = tid / TILE_N) as 4 word loads, unpacked to
//     floats when stored. 16 byte loads in flight needed more than the 64 registers of the
//     occupancy floor; 4 words fit.
// Other uint8 layers (no preset has one) keep the previous body (conv_forward_body_cursor below:
// offsets walked with a cursor, addresses rebuilt per load); with the per-row table they spill.
#define CONV_PTAB 2048

// A forward block's coordinates and its agent's weight, bias and input (both forward bodies).
// (A function, not a constructor: the simulator's __device__ is `static inline`.)
template <class In>
struct ConvForwardBlock {
    unsigned int agent, row0, col0, tid, tx, ty, cols;
    const float *w, *b;
    const In* xa;
};
template <class In>
__device__ __forceinline__ ConvForwardBlock<In> conv_forward_block(const In* x, const float* params, const ConvGeom& g,
                                                                   unsigned int n, unsigned int param_count,
                                                                   unsigned int w_off, unsigned int b_off) {
    ConvForwardBlock<In> k;
    k.agent = blockIdx.z;
    k.row0 = blockIdx.y * CONV_TILE_M;
    k.col0 = blockIdx.x * CONV_TILE_N;
    k.tid = threadIdx.x;
    k.tx = threadIdx.x % 16;
    k.ty = threadIdx.x / 16;
    k.cols = n * g.pixels;
    k.w = params + (unsigned long long)k.agent * param_count + w_off;
    k.b = params + (unsigned long long)k.agent * param_count + b_off;
    k.xa = x + (unsigned long long)k.agent * n * g.in_len;
    return k;
}

// The forward epilogue: this thread's 4x4 outputs, bias added and ReLU'd, into ya (one agent's y).
__device__ __forceinline__ void conv_forward_store(float* __restrict__ ya, const float* __restrict__ b, const ConvGeom& g,
                                                   unsigned int cols, unsigned int row0, unsigned int col0,
                                                   unsigned int tx, unsigned int ty, const float acc[4][4],
                                                   unsigned int relu) {
    for (int i = 0; i < 4; ++i) {
        const unsigned int m = row0 + ty * 4 + i;
        if (m >= g.cout) continue;
        const float bias = b[m];
        for (int jx = 0; jx < 4; ++jx) {
            const unsigned int j = col0 + tx * 4 + jx;
            if (j >= cols) continue;
            float v = acc[i][jx] + bias;
            if (relu && !(v > 0.0f)) v = 0.0f;
            const unsigned int s = j / g.pixels, p = j - s * g.pixels;
            ya[(unsigned long long)s * g.out_len + m * g.pixels + p] = v;
        }
    }
}

// The same, staged through the free B tile (see conv_stage_tile) so that a warp stores 32
// adjacent columns of one output row; everything is rederived from the block's coordinates and
// the kernel's arguments, so nothing but the accumulators stays live across the K-loop for it.
// conv_forward_f32 (conv2, conv3) stores this way, and every forward kernel in TF32; the FP32
// uint8 kernels keep the direct stores (staged, conv_forward_u8_words spills 4 bytes at the
// 64-register cap).
__device__ __forceinline__ void conv_forward_store_staged(float* __restrict__ y, const float* __restrict__ params,
                                                          const ConvGeom& g, unsigned int n, unsigned int param_count,
                                                          unsigned int b_off, unsigned int relu, const float acc[4][4],
                                                          float (*Cs)[CONV_BS_STRIDE]) {
    conv_stage_tile(Cs, acc, threadIdx.x % 16, threadIdx.x / 16);
    const unsigned int row0 = blockIdx.y * CONV_TILE_M, jj = threadIdx.x % CONV_TILE_N, j = blockIdx.x * CONV_TILE_N + jj;
    if (j >= n * g.pixels) return;
    const float* b = params + (unsigned long long)blockIdx.z * param_count + b_off;
    const unsigned int s = j / g.pixels, p = j - s * g.pixels;
    float* yc = y + ((unsigned long long)blockIdx.z * n + s) * g.out_len + p;
    for (unsigned int k = 0; k < CONV_STAGE_ROWS; ++k) {
        const unsigned int mm = threadIdx.x / CONV_TILE_N + k * (CONV_THREADS / CONV_TILE_N), m = row0 + mm;
        if (m >= g.cout) break;
        float v = Cs[mm][jj] + b[m];
        if (relu && !(v > 0.0f)) v = 0.0f;
        yc[m * g.pixels] = v;
    }
}

template <class In, bool WORDS>
__device__ __forceinline__ void conv_forward_body(float (*As)[CONV_AS_STRIDE], float (*Bs)[CONV_BS_STRIDE],
                                                  unsigned int* ptab, const In* __restrict__ x,
                                                  const float* __restrict__ params, float* __restrict__ y,
                                                  const ConvGeom& g, unsigned int n, unsigned int param_count,
                                                  unsigned int w_off, unsigned int b_off, unsigned int relu) {
    const ConvForwardBlock<In> blk = conv_forward_block(x, params, g, n, param_count, w_off, b_off);
    const unsigned int agent = blk.agent, row0 = blk.row0, col0 = blk.col0, tid = blk.tid, tx = blk.tx, ty = blk.ty;
    const unsigned int cols = blk.cols;
    const float *w = blk.w, *b = blk.b;
    const In* xa = blk.xa;
    // Table entries: one per patch row, or per group of 4 rows (WORDS). Window at entry `base`
    // (a multiple of CONV_PTAB, itself a multiple of a K-step's entries): entries up to the
    // K-step boundary past R, since the last K-step reads its entries up to there (and ignores
    // those past R).
    const unsigned int UNIT = WORDS ? 4u : 1u;
    auto fill = [&](unsigned int base) {
        const unsigned int entries = (g.patch + CONV_TILE_K - 1) / CONV_TILE_K * (CONV_TILE_K / UNIT);
        const unsigned int end = entries - base < CONV_PTAB ? entries : base + CONV_PTAB;
        for (unsigned int e = base + tid; e < end; e += CONV_THREADS)
            ptab[e - base] = e * UNIT < g.patch ? conv_patch_offset(g, e * UNIT) : 0u;
    };
    fill(0);
    __syncthreads();
    // A (K-lane): load q of this thread reads w[m_first + delta(q)][k0 + lane], delta(q) =
    // 16*(q/4) + q%4 (klane_row).
    const unsigned int lane = tid % 32u;
    const unsigned int m_first = row0 + (tid / 32u) * 4u;
    const int rows_left = (int)g.cout - (int)m_first;  // load q's row is valid iff delta(q) < rows_left
    const float* wp = w + (unsigned long long)(m_first < g.cout ? m_first : 0u) * g.patch + lane;
    // B: this thread's loads hit column jj = tid % TILE_N and rows kk0 + i*ROW_STEP.
    const unsigned int ROW_STEP = CONV_THREADS / CONV_TILE_N;
    const unsigned int B_LOADS = CONV_TILE_K / ROW_STEP;
    const unsigned int my_jj = tid % CONV_TILE_N, my_j = col0 + my_jj, kk0 = tid / CONV_TILE_N;
    const In* xcol = xa + (my_j < cols ? conv_col_origin(g, my_j) : 0u);
    // WORDS: rows 16*kk0 + 4t + byte of the K-step, t < 4 (R is a multiple of 16 there, so a
    // thread's 16 rows are all inside the layer or all past it).
    const unsigned int WORD_LOADS = WORDS ? B_LOADS / 4 : 1;
    float a_reg[CONV_KLANE_A], b_reg[WORDS ? 1 : B_LOADS];
    unsigned int words[WORD_LOADS];
    // Issues every global load of the K-step at k0 into registers (no store in between).
    auto prefetch = [&](unsigned int k0) {
        const float* wk = wp + k0;
        const unsigned int* pt = ptab + (k0 / UNIT) % CONV_PTAB + (WORDS ? kk0 * WORD_LOADS : kk0);
        const bool k_ok = k0 + lane < g.patch;
        for (unsigned int q = 0; q < CONV_KLANE_A; ++q)
            a_reg[q] = (k_ok && (int)((q >> 2) * 16u + (q & 3u)) < rows_left) ? wk[((q >> 2) * 16u + (q & 3u)) * g.patch]
                                                                          : 0.0f;
        if (WORDS) {
            const bool ok = k0 + 16u * kk0 < g.patch;
            for (unsigned int t = 0; t < WORD_LOADS; ++t)
                words[t] = ok ? *reinterpret_cast<const unsigned int*>(xcol + pt[t]) : 0u;
            return;
        }
        // Rows r = k0 + kk0 + i*ROW_STEP: valid while i*ROW_STEP < left.
        const bool any = k0 + kk0 < g.patch;
        const unsigned int left = g.patch - k0 - kk0;  // wraps when !any: `any` decides then
        for (unsigned int i = 0; i < B_LOADS; ++i) {
            const bool ok = any && i * ROW_STEP < left;
            const unsigned int off = pt[i * ROW_STEP];
            b_reg[i] = ok ? conv_input_value(xcol[off]) : 0.0f;
        }
    };
    float acc[4][4] = {};
    prefetch(0);
    for (unsigned int k0 = 0; k0 < g.patch; k0 += CONV_TILE_K) {
        klane_store<CONV_AS_STRIDE, CONV_KLANE_A>(As, a_reg, tid);
        if (WORDS) {
            // Word t holds rows kx = 4t .. 4t+3.
            for (unsigned int t = 0; t < WORD_LOADS; ++t)
                for (unsigned int byte = 0; byte < 4; ++byte)
                    Bs[16u * kk0 + 4u * t + byte][my_jj] = conv_word_byte_value(words[t], byte);
        } else {
            for (unsigned int i = 0; i < B_LOADS; ++i) Bs[kk0 + i * ROW_STEP][my_jj] = b_reg[i];
        }
        // The next K-step opens a new table window: its last readers were the prefetch of this
        // K-step, before the previous barrier.
        // (A window is CONV_PTAB entries = CONV_PTAB * UNIT rows.)
        if ((k0 + CONV_TILE_K) % (CONV_PTAB * UNIT) == 0 && k0 + CONV_TILE_K < g.patch) fill((k0 + CONV_TILE_K) / UNIT);
        __syncthreads();
        if (k0 + CONV_TILE_K < g.patch) prefetch(k0 + CONV_TILE_K);
        conv_tile_fma<true, false>(As, Bs, acc, tx, ty);
        __syncthreads();
    }
    // Staged (conv2, conv3; and every layer in TF32, whose fragments go through the tile anyway:
    // the direct uint8 store spills there), else direct.
    if (WORDS && !CONV_TF32) conv_forward_store(y + (unsigned long long)agent * n * g.out_len, b, g, cols, row0, col0, tx, ty, acc, relu);
    else conv_forward_store_staged(y, params, g, n, param_count, b_off, relu, acc, Bs);
}

// uint8 layers whose patch rows do not pack into words (no preset has one): the body before the
// offset table (see CONV_PTAB).
template <class In>
__device__ __forceinline__ void conv_forward_body_cursor(float (*As)[CONV_AS_STRIDE], float (*Bs)[CONV_BS_STRIDE],
                                                         const In* __restrict__ x, const float* __restrict__ params,
                                                         float* __restrict__ y, const ConvGeom& g, unsigned int n,
                                                  unsigned int param_count, unsigned int w_off,
                                                  unsigned int b_off, unsigned int relu) {
    const ConvForwardBlock<In> blk = conv_forward_block(x, params, g, n, param_count, w_off, b_off);
    const unsigned int agent = blk.agent, row0 = blk.row0, col0 = blk.col0, tid = blk.tid, tx = blk.tx, ty = blk.ty;
    const unsigned int cols = blk.cols;
    const float *w = blk.w, *b = blk.b;
    const In* xa = blk.xa;
    // This thread's B-tile loads always hit column jj = tid % TILE_N (CONV_THREADS is a
    // multiple of TILE_N) and rows kk = tid / TILE_N + i * ROW_STEP: the column's origin is
    // computed once and the patch rows are walked with a cursor, so no division per element.
    const unsigned int my_jj = tid % CONV_TILE_N, my_j = col0 + my_jj;
    const bool my_col_ok = my_j < cols;
    const unsigned int origin = my_col_ok ? conv_col_origin(g, my_j) : 0u;
    const unsigned int ROW_STEP = CONV_THREADS / CONV_TILE_N;
    const unsigned int B_LOADS = CONV_TILE_K / ROW_STEP;
    const unsigned int my_kk = tid % CONV_TILE_K;
    PatchCursor pc = patch_cursor(g, tid / CONV_TILE_N);
    float a_reg[CONV_KLANE_A], b_reg[B_LOADS];
    // Issues every global load of the K-step at k0 into registers (no store in between).
    auto prefetch = [&](unsigned int k0) {
        const unsigned int r = k0 + my_kk;
        for (unsigned int q = 0; q < CONV_KLANE_A; ++q) {
            const unsigned int m = row0 + klane_row(tid, q);
            a_reg[q] = (m < g.cout && r < g.patch) ? w[m * g.patch + r] : 0.0f;
        }
        for (unsigned int i = 0; i < B_LOADS; ++i) {
            const unsigned int rb = k0 + tid / CONV_TILE_N + i * ROW_STEP;
            b_reg[i] = (rb < g.patch && my_col_ok)
                           ? conv_input_value(xa[(unsigned long long)origin + patch_cursor_offset(g, pc)])
                           : 0.0f;
            patch_advance(g, pc, ROW_STEP);
        }
    };
    float acc[4][4] = {};
    prefetch(0);
    for (unsigned int k0 = 0; k0 < g.patch; k0 += CONV_TILE_K) {
        klane_store<CONV_AS_STRIDE, CONV_KLANE_A>(As, a_reg, tid);
        for (unsigned int i = 0; i < B_LOADS; ++i) Bs[tid / CONV_TILE_N + i * ROW_STEP][my_jj] = b_reg[i];
        __syncthreads();
        if (k0 + CONV_TILE_K < g.patch) prefetch(k0 + CONV_TILE_K);
        conv_tile_fma<true, false>(As, Bs, acc, tx, ty);
        __syncthreads();
    }
    if (CONV_TF32) conv_forward_store_staged(y, params, g, n, param_count, b_off, relu, acc, Bs);
    else conv_forward_store(y + (unsigned long long)agent * n * g.out_len, b, g, cols, row0, col0, tx, ty, acc, relu);
}

// The kernels own the shared memory (static __shared__ in a template would be one copy per instantiation).
template <class In>
__device__ __forceinline__ void conv_forward_dispatch(const In* __restrict__ x, const float* __restrict__ params,
                                                      float* __restrict__ y, unsigned int cin, unsigned int cout,
                                                      unsigned int ksize, unsigned int stride, unsigned int in_hw,
                                                      unsigned int out_hw, unsigned int n, unsigned int param_count,
                                                      unsigned int w_off, unsigned int b_off, unsigned int relu,
                                                      float (*As)[CONV_AS_STRIDE], float (*Bs)[CONV_BS_STRIDE],
                                                      unsigned int* ptab) {
    const ConvGeom g = conv_geom(cin, cout, ksize, stride, in_hw, out_hw);
    conv_forward_body<In, sizeof(In) == 1>(As, Bs, ptab, x, params, y, g, n, param_count, w_off, b_off, relu);
}

// conv1: uint8 frames in.
extern "C" __global__ void __launch_bounds__(CONV_THREADS, CONV_MIN_BLOCKS) conv_forward_u8(
    const unsigned char* __restrict__ x, const float* __restrict__ params, float* __restrict__ y,
    unsigned int cin, unsigned int cout, unsigned int ksize, unsigned int stride, unsigned int in_hw,
    unsigned int out_hw, unsigned int n, unsigned int param_count, unsigned int w_off, unsigned int b_off,
    unsigned int relu) {
    __shared__ float As[CONV_TILE_K][CONV_AS_STRIDE];
    __shared__ float Bs[CONV_TILE_K][CONV_BS_STRIDE];
    const ConvGeom g = conv_geom(cin, cout, ksize, stride, in_hw, out_hw);
    conv_forward_body_cursor(As, Bs, x, params, y, g, n, param_count, w_off, b_off, relu);
}

// conv1 of the presets: uint8 frames with K, stride and H multiples of 4 (the launcher checks),
// loaded a word (4 patch rows) at a time; see WORDS above.
extern "C" __global__ void __launch_bounds__(CONV_THREADS, CONV_MIN_BLOCKS) conv_forward_u8_words(
    const unsigned char* __restrict__ x, const float* __restrict__ params, float* __restrict__ y,
    unsigned int cin, unsigned int cout, unsigned int ksize, unsigned int stride, unsigned int in_hw,
    unsigned int out_hw, unsigned int n, unsigned int param_count, unsigned int w_off, unsigned int b_off,
    unsigned int relu) {
    __shared__ float As[CONV_TILE_K][CONV_AS_STRIDE];
    __shared__ float Bs[CONV_TILE_K][CONV_BS_STRIDE];
    __shared__ unsigned int ptab[CONV_PTAB];
    conv_forward_dispatch(x, params, y, cin, cout, ksize, stride, in_hw, out_hw, n, param_count, w_off, b_off, relu,
                          As, Bs, ptab);
}

// conv2, conv3 (and a fully connected layer as a 1x1 conv; the backend runs fc with the fc_*
// kernels below): f32 activations in.
extern "C" __global__ void __launch_bounds__(CONV_THREADS, CONV_MIN_BLOCKS) conv_forward_f32(
    const float* __restrict__ x, const float* __restrict__ params, float* __restrict__ y, unsigned int cin,
    unsigned int cout, unsigned int ksize, unsigned int stride, unsigned int in_hw, unsigned int out_hw,
    unsigned int n, unsigned int param_count, unsigned int w_off, unsigned int b_off, unsigned int relu) {
    __shared__ float As[CONV_TILE_K][CONV_AS_STRIDE];
    __shared__ float Bs[CONV_TILE_K][CONV_BS_STRIDE];
    __shared__ unsigned int ptab[CONV_PTAB];
    conv_forward_dispatch(x, params, y, cin, cout, ksize, stride, in_hw, out_hw, n, param_count, w_off, b_off, relu,
                          As, Bs, ptab);
}

// ---- backward-data -------------------------------------------------------------------------
// The input gradient as a transposed-convolution implicit GEMM, straight into dx (no dcols
// [N][R][P] buffer and no col2im pass: that round trip was a third of an update's DRAM bytes).
//
// Sub-pixel phases: an input pixel (iy, ix) = (py + s*u, px + s*v) with phase (py, px) =
// (iy mod s, ix mod s) is reached by the taps ky = py + s*a, kx = px + s*b only (a < Ta =
// ceil((K - py)/s), b < Tb), each from the output pixel (oy, ox) = (u - a, v - b) when that lies
// inside the Ho x Ho output. So per phase it is a GEMM with
//   rows c < Cin,  columns j = (n*U + u)*U + v (U = ceil(H/s); pixels past H idle),
//   reduction over (tap t = a*Tb + b, o < Cout):
//   dx[n][c][iy][ix] = below(n, c, iy, ix) ? sum_t sum_o wt[t][o][c] * g[n][o][u-a][v-b] : 0
// with g = dL/d(pre-ReLU output), ALREADY MASKED by the layer's own ReLU where it was produced
// (fc_backward_data's or this kernel's epilogue for the layer above), a tap's out-of-range
// output pixels loading 0, and `below` the optional ReLU mask of the layer underneath
// (y_below > 0), fused here so the next layer's kernels read a masked gradient too. wt [agents][K*K][Cout][Cin] is
// the layer's weights regrouped per tap by conv_weight_taps (so the A loads run along c,
// coalesced; w itself is strided by K*K along c).
//
// Accumulation contract: one thread's running sum per dx element, taps in ascending (ky, kx)
// then o ascending, starting from 0 — one fixed order that depends on the shapes only. (The
// dcols + col2im path this replaces rounded each tap's sum over o before adding the taps, also
// in ascending (ky, kx): same terms, one rounding step fewer per tap.)
// Grid: (ceil(N*U*U / TILE_N), ceil(Cin / TILE_M), agents * s*s); z = agent * s*s + phase.
// Both operands are M-lane (wt along c, g along the columns), their stores conflict-free.

// Most taps per phase (ceil(K/s)^2) conv_backward_data takes; the launcher checks.
#define CONV_MAX_TAPS 256

// wt[a][t][o][c] = w[a][o][c][t] for t < K*K (the layer's weights, one row of Cin per (tap, o)).
// Grid: (ceil(Cout*Cin*K*K / CONV_REDUCE_BLOCK), agents).
extern "C" __global__ void __launch_bounds__(CONV_REDUCE_BLOCK) conv_weight_taps(
    const float* __restrict__ params, float* __restrict__ wt, unsigned int cin, unsigned int cout, unsigned int ksize,
    unsigned int param_count, unsigned int w_off) {
    const unsigned int agent = blockIdx.y;
    const unsigned int kk = ksize * ksize, len = cout * cin * kk;
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    const unsigned int t = i / (cout * cin), oc = i - t * (cout * cin);  // oc = o*Cin + c
    wt[(unsigned long long)agent * len + i] = params[(unsigned long long)agent * param_count + w_off + oc * kk + t];
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS, CONV_MIN_BLOCKS) conv_backward_data(
    const float* __restrict__ g, const float* __restrict__ wt, const float* __restrict__ below,
    float* __restrict__ dx, unsigned int cin, unsigned int cout, unsigned int ksize, unsigned int stride,
    unsigned int in_hw, unsigned int out_hw, unsigned int n, unsigned int has_below) {
    __shared__ float As[CONV_TILE_K][CONV_AS_STRIDE];
    __shared__ float Bs[CONV_TILE_K][CONV_BS_STRIDE];
    __shared__ unsigned int tap_w[CONV_MAX_TAPS], tap_ab[CONV_MAX_TAPS];
    const ConvGeom geo = conv_geom(cin, cout, ksize, stride, in_hw, out_hw);
    const unsigned int phases = stride * stride;
    const unsigned int agent = blockIdx.z / phases, phase = blockIdx.z - agent * phases;
    const unsigned int py = phase / stride, px = phase - py * stride;
    const unsigned int ta = py < ksize ? (ksize - py + stride - 1) / stride : 0u;
    const unsigned int tb = px < ksize ? (ksize - px + stride - 1) / stride : 0u;
    const unsigned int taps = ta * tb;
    const unsigned int U = (in_hw + stride - 1) / stride, UU = U * U;
    const unsigned int cols = n * UU;
    const unsigned int row0 = blockIdx.y * CONV_TILE_M, col0 = blockIdx.x * CONV_TILE_N;
    const unsigned int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const float* ga = g + (unsigned long long)agent * n * geo.out_len;
    const float* wa = wt + (unsigned long long)agent * cout * geo.patch;
    // A: thread loads wt[t][o0 + a_o + i*A_STEP][row0 + my_c].
    const unsigned int A_LOADS = CONV_TILE_K * CONV_TILE_M / CONV_THREADS, A_STEP = CONV_THREADS / CONV_TILE_M;
    const unsigned int my_cc = tid % CONV_TILE_M, a_o = tid / CONV_TILE_M;
    // B: thread loads column my_jj at reduction rows b_o + i*B_STEP.
    const unsigned int B_LOADS = CONV_TILE_K * CONV_TILE_N / CONV_THREADS, B_STEP = CONV_THREADS / CONV_TILE_N;
    const unsigned int my_jj = tid % CONV_TILE_N, b_o = tid / CONV_TILE_N;
    const unsigned int my_j = col0 + my_jj;
    const bool my_col_ok = my_j < cols;
    const unsigned int my_s = my_col_ok ? my_j / UU : 0u, my_uv = my_j - my_s * UU;
    const unsigned int my_u = my_col_ok ? my_uv / U : 0u, my_v = my_col_ok ? my_uv - my_u * U : 0u;
    // The phase's taps, filled once per block: tap_w = the tap's first wt element (its block of
    // Cout x Cin), tap_ab = (a << 16) | b. (A table rather than the arithmetic in the loop: fewer
    // registers live across it, 64 being the cap.)
    for (unsigned int e = tid; e < taps; e += CONV_THREADS) {
        const unsigned int a = e / tb, b = e - a * tb;
        tap_w[e] = ((py + stride * a) * ksize + (px + stride * b)) * cout * cin;
        tap_ab[e] = (a << 16) | b;
    }
    __syncthreads();
    float a_reg[A_LOADS], b_reg[B_LOADS];
    // The prefetch cursor: tap t, output channel o0, and this thread's A and B offsets at them.
    // A load's reduction row o is valid below a_limit (Cout, or 0 when the thread's row c is past
    // Cin), a B load's below b_limit (Cout, or 0 when the tap's output pixel for this column does
    // not exist): one compare per load.
    unsigned int t = 0, o0 = 0, b_limit = 0, w_at = 0, g_at = 0;
    const unsigned int a_limit = row0 + my_cc < cin ? cout : 0u;
    auto enter_tap = [&]() {
        const unsigned int a = tap_ab[t] >> 16, b = tap_ab[t] & 0xffffu;
        w_at = tap_w[t] + a_o * cin + row0 + my_cc;
        const bool ok = my_col_ok && my_u >= a && my_u - a < out_hw && my_v >= b && my_v - b < out_hw;
        b_limit = ok ? cout : 0u;
        g_at = ok ? my_s * geo.out_len + (my_u - a) * out_hw + (my_v - b) + b_o * geo.pixels : 0u;
    };
    auto prefetch = [&]() {
        for (unsigned int i = 0; i < A_LOADS; ++i)
            a_reg[i] = o0 + a_o + i * A_STEP < a_limit ? wa[w_at + i * A_STEP * cin] : 0.0f;
        for (unsigned int i = 0; i < B_LOADS; ++i)
            b_reg[i] = o0 + b_o + i * B_STEP < b_limit ? ga[g_at + i * B_STEP * geo.pixels] : 0.0f;
        o0 += CONV_TILE_K;
        w_at += CONV_TILE_K * cin;
        g_at += CONV_TILE_K * geo.pixels;
        if (o0 >= cout) {
            o0 = 0;
            if (++t < taps) enter_tap();
        }
    };
    const unsigned int steps = taps * ((cout + CONV_TILE_K - 1) / CONV_TILE_K);
    float acc[4][4] = {};
    if (steps > 0) {
        enter_tap();
        prefetch();
    }
    for (unsigned int step = 0; step < steps; ++step) {
        for (unsigned int i = 0; i < A_LOADS; ++i) As[a_o + i * A_STEP][my_cc] = a_reg[i];
        for (unsigned int i = 0; i < B_LOADS; ++i) Bs[b_o + i * B_STEP][my_jj] = b_reg[i];
        __syncthreads();
        if (step + 1 < steps) prefetch();
        conv_tile_fma<false, false>(As, Bs, acc, tx, ty);
        __syncthreads();
    }
    // Staged through the free B tile: a warp stores 32 adjacent phase columns of one channel.
    conv_stage_tile(Bs, acc, tx, ty);
    const unsigned int jj = tid % CONV_TILE_N, j = col0 + jj;
    if (j >= cols) return;
    const unsigned int sn = j / UU, uv = j - sn * UU, u = uv / U, v = uv - u * U;
    const unsigned int iy = py + stride * u, ix = px + stride * v;
    if (iy >= in_hw || ix >= in_hw) return;
    const unsigned long long base = ((unsigned long long)agent * n + sn) * geo.in_len + iy * in_hw + ix;
    for (unsigned int k = 0; k < CONV_STAGE_ROWS; ++k) {
        const unsigned int cc = tid / CONV_TILE_N + k * (CONV_THREADS / CONV_TILE_N), c = row0 + cc;
        if (c >= cin) break;
        const unsigned long long at = base + (unsigned long long)c * in_hw * in_hw;
        // Read before the select: every lane reads its tile element (no divergent shared reads).
        const float v = Bs[cc][jj];
        dx[at] = (has_below && !(below[at] > 0.0f)) ? 0.0f : v;
    }
}

// ---- backward-filter -----------------------------------------------------------------------
// Grid: (ceil(R / TILE_N), ceil(Cout / TILE_M), agents * chunks); z = agent * chunks + chunk.
// The reduction runs over sample columns j; both operands are contiguous along j within a
// sample (g[o][j], and the im2col gather), so both are K-lane: lane l takes column j0 + l, and
// the conflict-free 16-byte row stores of the layout notes apply to both tiles.
//
// How a thread's 16 x values (its B-tile rows of the K-step) travel, by kernel:
//   X_PREFETCH (f32): loaded as floats for the next K-step while this one's FMA loop runs;
//   X_WORDS (uint8 with K, stride and H multiples of 4: conv1 of the presets): a quad of adjacent
//     patch rows 4m..4m+3 (klane_row) is kx = 4t..4t+3 of one (c, ky): four bytes of one aligned
//     word of the column's patch (as in conv_forward_u8_words), so 4 word loads are in flight;
//   X_LATE (other uint8 layers, no preset has one): loaded right before they are stored, a quad
//     (4 loads) at a time. 16 byte loads in flight, beside the 8 of g, spill at the 64-register
//     cap (so do 16 late loads issued together).
// The g loads are always prefetched (g arrives masked: no y to load, see the top of this file).
#define X_PREFETCH 0
#define X_WORDS 1
#define X_LATE 2
template <class In, int XMODE>
__device__ __forceinline__ void conv_backward_filter_body(
    const In* __restrict__ x, const float* __restrict__ gr, float* __restrict__ out, const ConvGeom& g, unsigned int n,
    unsigned int samples_per_chunk, unsigned int chunks, unsigned long long agent_stride, unsigned int chunk_stride,
    unsigned int out_off) {
    __shared__ float As[CONV_TILE_K][CONV_AS_STRIDE];
    __shared__ float Bs[CONV_TILE_K][CONV_BS_STRIDE];
    // Patch offsets of this block's TILE_N patch rows (0xffffffff past R), computed once.
    __shared__ unsigned int row_off[CONV_TILE_N];
    const unsigned int agent = blockIdx.z / chunks, chunk = blockIdx.z % chunks;
    const unsigned int row0 = blockIdx.y * CONV_TILE_M, col0 = blockIdx.x * CONV_TILE_N;
    const unsigned int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const unsigned int first = chunk * samples_per_chunk;
    const unsigned int last = first + samples_per_chunk < n ? first + samples_per_chunk : n;
    const unsigned int j_begin = first * g.pixels, j_end = last * g.pixels;
    const In* xa = x + (unsigned long long)agent * n * g.in_len;
    const float* ga = gr + (unsigned long long)agent * n * g.out_len;
    // The bias gradient rides along in the blocks of the first column tile: thread t < TILE_M
    // sums row t of each g tile it has already loaded, in ascending j.
    const bool bias_block = blockIdx.x == 0;
    float bias_acc = 0.0f;
    for (unsigned int i = tid; i < CONV_TILE_N; i += CONV_THREADS) {
        const unsigned int r = col0 + i;
        row_off[i] = r < g.patch ? conv_patch_offset(g, r) : 0xffffffffu;
    }
    __syncthreads();
    const unsigned int my_jj = tid % CONV_TILE_K;
    const unsigned int WORDS_N = XMODE == X_WORDS ? CONV_KLANE_B / 4 : 1;
    float g_reg[CONV_KLANE_A], x_reg[XMODE == X_PREFETCH ? CONV_KLANE_B : 1];
    unsigned int words[WORDS_N];
    // Column j0 + lane's validity and origins in x and g (one division chain per K-step).
    auto column = [&](unsigned int j0, bool& col_ok, unsigned int& in_origin, unsigned int& out_origin) {
        const unsigned int j = j0 + my_jj;
        col_ok = j < j_end;
        in_origin = col_ok ? conv_col_origin(g, j) : 0u;
        out_origin = col_ok ? conv_out_origin(g, j) : 0u;
    };
    // x value of the thread's load q at a column (0 past R or past the chunk).
    auto x_at = [&](bool col_ok, unsigned int in_origin, unsigned int q) {
        const unsigned int off = row_off[klane_row(tid, q)];
        return (off != 0xffffffffu && col_ok) ? conv_input_value(xa[(unsigned long long)in_origin + off]) : 0.0f;
    };
    // The K-step's prefetched loads: g, and x unless X_LATE.
    auto prefetch = [&](unsigned int j0) {
        bool col_ok;
        unsigned int in_origin, out_origin;
        column(j0, col_ok, in_origin, out_origin);
        if (XMODE == X_WORDS) {
            // Quad m's rows share validity (R is a multiple of 4 there).
            for (unsigned int m = 0; m < WORDS_N; ++m) {
                const unsigned int off = row_off[klane_row(tid, 4 * m)];
                words[m] = (off != 0xffffffffu && col_ok)
                               ? *reinterpret_cast<const unsigned int*>(xa + (unsigned long long)in_origin + off)
                               : 0u;
            }
        } else if (XMODE == X_PREFETCH) {
            for (unsigned int q = 0; q < CONV_KLANE_B; ++q) x_reg[q] = x_at(col_ok, in_origin, q);
        }
        for (unsigned int q = 0; q < CONV_KLANE_A; ++q) {
            const unsigned int o = row0 + klane_row(tid, q);
            g_reg[q] = (o < g.cout && col_ok) ? ga[out_origin + o * g.pixels] : 0.0f;
        }
    };
    float acc[4][4] = {};
    if (j_begin < j_end) prefetch(j_begin);
    for (unsigned int j0 = j_begin; j0 < j_end; j0 += CONV_TILE_K) {
        // A = g^T: As[jj][oo] = g[o][j]; B = col^T: Bs[jj][rr] = col[r][j].
        klane_store<CONV_AS_STRIDE, CONV_KLANE_A>(As, g_reg, tid);
        if (XMODE == X_WORDS) {
            float xv[CONV_KLANE_B];
            // Word m holds the quad of rows 4m .. 4m+3 (klane_row).
            for (unsigned int q = 0; q < CONV_KLANE_B; ++q) xv[q] = conv_word_byte_value(words[q / 4], q % 4);
            klane_store<CONV_BS_STRIDE, CONV_KLANE_B>(Bs, xv, tid);
        } else if (XMODE == X_PREFETCH) {
            klane_store<CONV_BS_STRIDE, CONV_KLANE_B>(Bs, x_reg, tid);
        } else {
            bool col_ok;
            unsigned int in_origin, out_origin;
            column(j0, col_ok, in_origin, out_origin);
            for (unsigned int m = 0; m < CONV_KLANE_B / 4; ++m) {
                float v[4];
                for (unsigned int t = 0; t < 4; ++t) v[t] = x_at(col_ok, in_origin, 4 * m + t);
                for (unsigned int t = 0; t < 4; ++t) Bs[tid % 32u][conv_klane_col(tid % 32u, klane_row(tid, 4 * m + t))] = v[t];
            }
        }
        __syncthreads();
        if (j0 + CONV_TILE_K < j_end) prefetch(j0 + CONV_TILE_K);
        if (bias_block && tid < CONV_TILE_M)
            for (unsigned int jj = 0; jj < CONV_TILE_K; ++jj) bias_acc += As[jj][conv_klane_col(jj, tid)];
        conv_tile_fma<true, true>(As, Bs, acc, tx, ty);
        __syncthreads();
    }
    conv_tile_result(Bs, acc, tx, ty);
    float* o_base = out + (unsigned long long)agent * agent_stride + (unsigned long long)chunk * chunk_stride + out_off;
    for (int i = 0; i < 4; ++i) {
        const unsigned int o = row0 + ty * 4 + i;
        if (o >= g.cout) continue;
        for (int jx = 0; jx < 4; ++jx) {
            const unsigned int r = col0 + tx * 4 + jx;
            if (r < g.patch) o_base[o * g.patch + r] = acc[i][jx];
        }
    }
    if (bias_block && tid < CONV_TILE_M && row0 + tid < g.cout) o_base[g.cout * g.patch + row0 + tid] = bias_acc;
}

// g: the layer's output gradient, masked by its ReLU already (see the top of this file).
extern "C" __global__ void __launch_bounds__(CONV_THREADS, CONV_MIN_BLOCKS) conv_backward_filter_u8(
    const unsigned char* __restrict__ x, const float* __restrict__ g, float* __restrict__ out, unsigned int cin,
    unsigned int cout, unsigned int ksize, unsigned int stride, unsigned int in_hw, unsigned int out_hw,
    unsigned int n, unsigned int samples_per_chunk, unsigned int chunks, unsigned long long agent_stride,
    unsigned int chunk_stride, unsigned int out_off) {
    const ConvGeom geo = conv_geom(cin, cout, ksize, stride, in_hw, out_hw);
    conv_backward_filter_body<unsigned char, X_LATE>(x, g, out, geo, n, samples_per_chunk, chunks, agent_stride,
                                      chunk_stride, out_off);
}

// uint8 with K, stride and H multiples of 4 (the launcher checks, with the buffer's address).
extern "C" __global__ void __launch_bounds__(CONV_THREADS, CONV_MIN_BLOCKS) conv_backward_filter_u8_words(
    const unsigned char* __restrict__ x, const float* __restrict__ g, float* __restrict__ out, unsigned int cin,
    unsigned int cout, unsigned int ksize, unsigned int stride, unsigned int in_hw, unsigned int out_hw,
    unsigned int n, unsigned int samples_per_chunk, unsigned int chunks, unsigned long long agent_stride,
    unsigned int chunk_stride, unsigned int out_off) {
    const ConvGeom geo = conv_geom(cin, cout, ksize, stride, in_hw, out_hw);
    conv_backward_filter_body<unsigned char, X_WORDS>(x, g, out, geo, n, samples_per_chunk, chunks, agent_stride,
                                      chunk_stride, out_off);
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS, CONV_MIN_BLOCKS) conv_backward_filter_f32(
    const float* __restrict__ x, const float* __restrict__ g, float* __restrict__ out, unsigned int cin,
    unsigned int cout, unsigned int ksize, unsigned int stride, unsigned int in_hw, unsigned int out_hw,
    unsigned int n, unsigned int samples_per_chunk, unsigned int chunks, unsigned long long agent_stride,
    unsigned int chunk_stride, unsigned int out_off) {
    const ConvGeom geo = conv_geom(cin, cout, ksize, stride, in_hw, out_hw);
    conv_backward_filter_body<float, X_PREFETCH>(x, g, out, geo, n, samples_per_chunk, chunks, agent_stride,
                                      chunk_stride, out_off);
}

// Second pass of backward-filter: grads[a][grad_off + i] = sum over chunks c, in order, of
// partials[a][c][i] for i < len (len = Cout*R + Cout).
// Grid: (ceil(len / CONV_REDUCE_BLOCK), agents).
extern "C" __global__ void __launch_bounds__(CONV_REDUCE_BLOCK) conv_grad_sum_chunks(
    const float* __restrict__ partials, float* __restrict__ grads, unsigned int len, unsigned int chunks,
    unsigned int param_count, unsigned int grad_off) {
    const unsigned int agent = blockIdx.y;
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    const float* p = partials + (unsigned long long)agent * chunks * len + i;
    float sum = 0.0f;
    for (unsigned int c = 0; c < chunks; ++c) sum += p[(unsigned long long)c * len];
    grads[(unsigned long long)agent * param_count + grad_off + i] = sum;
}

// ---- the fully connected layer as a real GEMM ----------------------------------------------
// x [agents][N][In], w params[a][w_off ..] [Out][In], b [Out], y [agents][N][Out]:
//   fc_forward          y[n][o]  = relu( b[o] + sum_k w[o][k] x[n][k] )      M = Out, N = n, K = In
//   fc_backward_data    dx[n][r] = sum_o w[o][r] g[n][o]                     M = In,  N = n, K = Out
//   fc_backward_filter  dw[o][r] = sum_s g[s][o] x[s][r], db[o] = sum_s g[s][o]  M = Out, N = In, K = n
// with g the output gradient masked by the fc layer's ReLU already (heads_backward writes it so,
// see the top of this file: no fc kernel loads y). Run as a 1x1 conv, the batch was the column index and
// the lanes of a warp stepped across samples (one cache line per lane). Here every operand is
// loaded along its contiguous dimension: w and x along k (K-lane) in the forward pass, w along r
// (M-lane) and g along o (K-lane) in backward-data, g along o and x along r (M-lane) in
// backward-filter; the tiles and the FMA loop are the conv kernels'.
//
// Deterministic split-K (forward and backward-data): the reduction is cut into fixed slices of
// k_split elements (the launcher derives k_split and the split count from the layer's shape
// alone, never from the batch or the agents); block z = agent * splits + split sums its slice
// in ascending k into partials[agent][split][..], and fc_sum_splits adds the slices in split
// order (then the bias and the ReLU). With one split the GEMM writes the output itself. So an
// output element's summation order depends on the shapes only: the contract of this file.
// Backward-filter reduces over the batch in one slice (the gradient arena is written directly,
// like the conv kernels' one-chunk case); its grid is large already (Out x In tiles).
// Grid: (ceil(N / TILE_N), ceil(M / TILE_M), agents * splits).

// Row and reduction index of load q of thread `tid` into a ROWS-row tile: K-lane (lanes along
// k, quads of adjacent rows) or M-lane (lanes along the rows).
template <unsigned int ROWS, bool KLANE>
__device__ __forceinline__ unsigned int fc_row(unsigned int tid, unsigned int q) {
    return KLANE ? klane_row(tid, q) : tid % ROWS;
}
template <unsigned int ROWS, bool KLANE>
__device__ __forceinline__ unsigned int fc_k(unsigned int tid, unsigned int q) {
    return KLANE ? tid % CONV_TILE_K : tid / ROWS + q * (CONV_THREADS / ROWS);
}

// One operand's loads for the K-step at k0 into registers: v[q] = src[m*ms + k*ks] for this
// thread's (m, k) of load q (0 outside rows [row0, rows) or past k_end).
template <unsigned int ROWS, bool KLANE>
__device__ __forceinline__ void fc_load(const float* __restrict__ src, unsigned int ms, unsigned int ks,
                                        unsigned int row0, unsigned int rows, unsigned int k0, unsigned int k_end,
                                        float* v) {
    const unsigned int tid = threadIdx.x;
    for (unsigned int q = 0; q < ROWS * CONV_TILE_K / CONV_THREADS; ++q) {
        const unsigned int m = row0 + fc_row<ROWS, KLANE>(tid, q), k = k0 + fc_k<ROWS, KLANE>(tid, q);
        const bool ok = m < rows && k < k_end;
        const unsigned int at = m * ms + k * ks;
        v[q] = ok ? src[at] : 0.0f;
    }
}

// acc = this thread's 4x4 of C(m, n) = sum_{k in [k_begin, k_end)} A(m, k) B(n, k), where
// A(m, k) = a[m*a_ms + k*a_ks] and B(n, k) = b[n*b_ms + k*b_ks]; AK / BK: K-lane loads for A / B.
// bias_acc (thread t < TILE_M of the blocks with blockIdx.x == 0, when `bias_rows`): sum over k
// of A(row0 + t, k), ascending.
template <bool AK, bool BK>
__device__ __forceinline__ void fc_gemm(const float* __restrict__ a, unsigned int a_ms, unsigned int a_ks,
                                        const float* __restrict__ b, unsigned int b_ms, unsigned int b_ks,
                                        unsigned int M, unsigned int N, unsigned int k_begin, unsigned int k_end,
                                        float acc[4][4], bool bias_rows, float& bias_acc) {
    __shared__ float As[CONV_TILE_K][CONV_AS_STRIDE];
    __shared__ float Bs[CONV_TILE_K][CONV_BS_STRIDE];
    const unsigned int row0 = blockIdx.y * CONV_TILE_M, col0 = blockIdx.x * CONV_TILE_N;
    const unsigned int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    float av[CONV_KLANE_A], bv[CONV_KLANE_B];
    auto load_a = [&](unsigned int k0) { fc_load<CONV_TILE_M, AK>(a, a_ms, a_ks, row0, M, k0, k_end, av); };
    auto load_b = [&](unsigned int k0) { fc_load<CONV_TILE_N, BK>(b, b_ms, b_ks, col0, N, k0, k_end, bv); };
    // Both operands' loads go out together and stay in flight across the FMA loop.
    auto prefetch = [&](unsigned int k0) {
        load_a(k0);
        load_b(k0);
    };
    if (k_begin < k_end) prefetch(k_begin);
    for (unsigned int k0 = k_begin; k0 < k_end; k0 += CONV_TILE_K) {
        // K-lane operands through klane_store (TF32's segment swap included), M-lane ones as is.
        if (AK) {
            klane_store<CONV_AS_STRIDE, CONV_KLANE_A>(As, av, tid);
        } else {
            for (unsigned int q = 0; q < CONV_KLANE_A; ++q) As[fc_k<CONV_TILE_M, false>(tid, q)][fc_row<CONV_TILE_M, false>(tid, q)] = av[q];
        }
        if (BK) {
            klane_store<CONV_BS_STRIDE, CONV_KLANE_B>(Bs, bv, tid);
        } else {
            for (unsigned int q = 0; q < CONV_KLANE_B; ++q) Bs[fc_k<CONV_TILE_N, false>(tid, q)][fc_row<CONV_TILE_N, false>(tid, q)] = bv[q];
        }
        __syncthreads();
        if (k0 + CONV_TILE_K < k_end) prefetch(k0 + CONV_TILE_K);
        if (bias_rows && tid < CONV_TILE_M)
            for (unsigned int kk = 0; kk < CONV_TILE_K; ++kk) bias_acc += As[kk][AK ? conv_klane_col(kk, tid) : tid];
        conv_tile_fma<AK, BK>(As, Bs, acc, tx, ty);
        __syncthreads();
    }
    conv_tile_result(Bs, acc, tx, ty);
}

// Writes this thread's 4x4 of C(m, n) to c[m*c_ms + n*c_ns] (+ bias[m], then the ReLU when
// `relu`; then 0 where mask[same index] > 0 fails, when `mask` is given).
__device__ __forceinline__ void fc_write(float* __restrict__ c, unsigned int c_ms, unsigned int c_ns, unsigned int M,
                                         unsigned int N, const float acc[4][4], const float* __restrict__ bias,
                                         unsigned int relu, const float* __restrict__ mask) {
    const unsigned int row0 = blockIdx.y * CONV_TILE_M, col0 = blockIdx.x * CONV_TILE_N;
    const unsigned int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    for (int i = 0; i < 4; ++i) {
        const unsigned int m = row0 + ty * 4 + i;
        if (m >= M) continue;
        for (int j = 0; j < 4; ++j) {
            const unsigned int nn = col0 + tx * 4 + j;
            if (nn >= N) continue;
            float v = acc[i][j];
            if (bias) v += bias[m];
            if (relu && !(v > 0.0f)) v = 0.0f;
            const unsigned int at = m * c_ms + nn * c_ns;
            if (mask && !(mask[at] > 0.0f)) v = 0.0f;
            c[at] = v;
        }
    }
}

// out: y [agents][n][Out] when splits == 1, else partials [agents][splits][n][Out].
extern "C" __global__ void __launch_bounds__(CONV_THREADS, CONV_MIN_BLOCKS) fc_forward(
    const float* __restrict__ x, const float* __restrict__ params, float* __restrict__ out, unsigned int in_f,
    unsigned int out_f, unsigned int n, unsigned int param_count, unsigned int w_off, unsigned int b_off,
    unsigned int relu, unsigned int k_split, unsigned int splits) {
    const unsigned int agent = blockIdx.z / splits, split = blockIdx.z % splits;
    const float* th = params + (unsigned long long)agent * param_count;
    const unsigned int k_begin = split * k_split;
    const unsigned int k_end = k_begin + k_split < in_f ? k_begin + k_split : in_f;
    float acc[4][4] = {};
    float unused = 0.0f;
    fc_gemm<true, true>(th + w_off, in_f, 1u, x + (unsigned long long)agent * n * in_f, in_f, 1u, out_f, n, k_begin,
                        k_end, acc, false, unused);
    float* c = out + ((unsigned long long)agent * splits + split) * n * out_f;
    if (splits == 1) fc_write(c, 1u, out_f, out_f, n, acc, th + b_off, relu, nullptr);
    else fc_write(c, 1u, out_f, out_f, n, acc, nullptr, 0u, nullptr);
}

// g: the output gradient, masked (see above). out: dx [agents][n][In] when splits == 1 (masked
// by below > 0 when has_below: the ReLU of the layer underneath, as conv_backward_data does),
// else partials [agents][splits][n][In] (the mask is then fc_sum_splits').
extern "C" __global__ void __launch_bounds__(CONV_THREADS, CONV_MIN_BLOCKS) fc_backward_data(
    const float* __restrict__ g, const float* __restrict__ params, const float* __restrict__ below,
    float* __restrict__ out, unsigned int in_f, unsigned int out_f, unsigned int n, unsigned int param_count,
    unsigned int w_off, unsigned int has_below, unsigned int k_split, unsigned int splits) {
    const unsigned int agent = blockIdx.z / splits, split = blockIdx.z % splits;
    const float* w = params + (unsigned long long)agent * param_count + w_off;
    const unsigned long long act = (unsigned long long)agent * n * out_f;
    const unsigned int k_begin = split * k_split;
    const unsigned int k_end = k_begin + k_split < out_f ? k_begin + k_split : out_f;
    float acc[4][4] = {};
    float unused = 0.0f;
    fc_gemm<false, true>(w, 1u, in_f, g + act, out_f, 1u, in_f, n, k_begin, k_end, acc, false, unused);
    const float* mask = (has_below && splits == 1) ? below + (unsigned long long)agent * n * in_f : nullptr;
    fc_write(out + ((unsigned long long)agent * splits + split) * n * in_f, 1u, in_f, in_f, n, acc, nullptr, 0u, mask);
}

// dw, db straight into grads [agents][param_count] at w_off (and b_off for db); g masked.
extern "C" __global__ void __launch_bounds__(CONV_THREADS, CONV_MIN_BLOCKS) fc_backward_filter(
    const float* __restrict__ x, const float* __restrict__ g, float* __restrict__ grads, unsigned int in_f,
    unsigned int out_f, unsigned int n, unsigned int param_count, unsigned int w_off, unsigned int b_off) {
    const unsigned int agent = blockIdx.z;
    const unsigned long long act = (unsigned long long)agent * n * out_f;
    const bool bias_rows = blockIdx.x == 0;
    float acc[4][4] = {};
    float bias_acc = 0.0f;
    fc_gemm<false, false>(g + act, 1u, out_f, x + (unsigned long long)agent * n * in_f, 1u, in_f, out_f, in_f, 0u, n,
                          acc, bias_rows, bias_acc);
    float* gr = grads + (unsigned long long)agent * param_count;
    fc_write(gr + w_off, in_f, 1u, out_f, in_f, acc, nullptr, 0u, nullptr);
    const unsigned int o = blockIdx.y * CONV_TILE_M + threadIdx.x;
    if (bias_rows && threadIdx.x < CONV_TILE_M && o < out_f) gr[b_off + o] = bias_acc;
}

// Second pass of the split-K launches: out[a][i] = sum over splits s, in order, of
// partials[a][s][i] (then + b[i % width] when has_bias, then the ReLU when relu, then 0 where
// below[a][i] > 0 fails when has_below), i < len.
// Grid: (ceil(len / CONV_REDUCE_BLOCK), agents).
extern "C" __global__ void __launch_bounds__(CONV_REDUCE_BLOCK) fc_sum_splits(
    const float* __restrict__ partials, const float* __restrict__ params, const float* __restrict__ below,
    float* __restrict__ out, unsigned int len, unsigned int width, unsigned int splits, unsigned int param_count,
    unsigned int b_off, unsigned int has_bias, unsigned int relu, unsigned int has_below) {
    const unsigned int agent = blockIdx.y;
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    const float* p = partials + (unsigned long long)agent * splits * len + i;
    float v = 0.0f;
    for (unsigned int s = 0; s < splits; ++s) v += p[(unsigned long long)s * len];
    if (has_bias) v += params[(unsigned long long)agent * param_count + b_off + i % width];
    if (relu && !(v > 0.0f)) v = 0.0f;
    const unsigned long long at = (unsigned long long)agent * len + i;
    if (has_below && !(below[at] > 0.0f)) v = 0.0f;
    out[at] = v;
}
