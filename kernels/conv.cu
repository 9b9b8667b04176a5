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
//
// Implicit GEMM, with column index j = n*P + p over the agent's samples n and output pixels
// p = oy*Ho + ox, and patch index r = (c*K + ky)*K + kx (R = Cin*K*K):
//   forward           y[o][j]     = relu( b[o] + sum_r w[o][r] * col[r][j] )
//   backward-data     dcols[r][j] = sum_o w[o][r] * g[o][j]          (then col2im below)
//   col2im            dx[c][iy][ix] = sum over (ky, kx) in that order, where iy = oy*s + ky and
//                     ix = ox*s + kx, of dcols[(c*K+ky)*K+kx][oy*Ho+ox]
//   backward-filter   dw[o][r]    = sum_j g[o][j] * col[r][j],   db[o] = sum_j g[o][j]
// with col[r][j] = x[n][c][oy*s+ky][ox*s+kx] (never materialised) and g = dy masked by y > 0
// when the layer has a ReLU (the mask is fused into the loads of dy, like the CPU reference's
// relu_backward_inplace before its GEMMs). For a 1x1 layer dcols IS dx, so no col2im runs.
//
// Tiling: every GEMM kernel computes a CONV_TILE_M x CONV_TILE_N output tile per block of
// CONV_THREADS threads, each thread a 4x4 micro-tile of adjacent rows 4ty+i and columns 4tx+j (a
// float4 per row of shared memory on a GPU, SIMD-friendly on the simulator), stepping the reduction CONV_TILE_K at a time through
// static shared memory (two barriers per step). Out-of-range rows, columns and reduction
// indices load as 0, so any batch size and channel count works (ragged edges just idle).
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

#define CONV_TILE_M 32
#define CONV_TILE_N 64
#define CONV_TILE_K 32
#define CONV_THREADS 128
#define CONV_REDUCE_BLOCK 256

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

// acc[i][j] += sum_kk As[kk][4ty+i] * Bs[kk][4tx+j]
__device__ __forceinline__ void conv_tile_fma(float (*As)[CONV_TILE_M], float (*Bs)[CONV_TILE_N],
                                              float acc[4][4], unsigned int tx, unsigned int ty) {
    for (unsigned int kk = 0; kk < CONV_TILE_K; ++kk) {
        float a[4], b[4];
        for (int i = 0; i < 4; ++i) a[i] = As[kk][ty * 4 + i];
        for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx * 4 + j];
        for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
}

// ---- forward -------------------------------------------------------------------------------
// Grid: (ceil(N*P / TILE_N), ceil(Cout / TILE_M), agents).
template <class In>
__device__ __forceinline__ void conv_forward_body(const In* __restrict__ x, const float* __restrict__ params,
                                                  float* __restrict__ y, const ConvGeom& g, unsigned int n,
                                                  unsigned int param_count, unsigned int w_off,
                                                  unsigned int b_off, unsigned int relu) {
    __shared__ float As[CONV_TILE_K][CONV_TILE_M];
    __shared__ float Bs[CONV_TILE_K][CONV_TILE_N];
    const unsigned int agent = blockIdx.z;
    const unsigned int row0 = blockIdx.y * CONV_TILE_M, col0 = blockIdx.x * CONV_TILE_N;
    const unsigned int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const unsigned int cols = n * g.pixels;
    const float* w = params + (unsigned long long)agent * param_count + w_off;
    const float* b = params + (unsigned long long)agent * param_count + b_off;
    const In* xa = x + (unsigned long long)agent * n * g.in_len;
    // This thread's B-tile loads always hit column jj = tid % TILE_N (CONV_THREADS is a
    // multiple of TILE_N) and rows kk = tid / TILE_N + i * ROW_STEP: the column's origin is
    // computed once and the patch rows are walked with a cursor, so no division per element.
    const unsigned int my_jj = tid % CONV_TILE_N, my_j = col0 + my_jj;
    const bool my_col_ok = my_j < cols;
    const unsigned int origin = my_col_ok ? conv_col_origin(g, my_j) : 0u;
    const unsigned int ROW_STEP = CONV_THREADS / CONV_TILE_N;
    PatchCursor pc = patch_cursor(g, tid / CONV_TILE_N);
    float acc[4][4] = {};
    for (unsigned int k0 = 0; k0 < g.patch; k0 += CONV_TILE_K) {
        for (unsigned int e = tid; e < CONV_TILE_M * CONV_TILE_K; e += CONV_THREADS) {
            const unsigned int mm = e / CONV_TILE_K, kk = e % CONV_TILE_K;
            const unsigned int m = row0 + mm, r = k0 + kk;
            As[kk][mm] = (m < g.cout && r < g.patch) ? w[m * g.patch + r] : 0.0f;
        }
        for (unsigned int kk = tid / CONV_TILE_N; kk < CONV_TILE_K; kk += ROW_STEP) {
            const unsigned int r = k0 + kk;
            Bs[kk][my_jj] = (r < g.patch && my_col_ok)
                                ? conv_input_value(xa[(unsigned long long)origin + patch_cursor_offset(g, pc)])
                                : 0.0f;
            patch_advance(g, pc, ROW_STEP);
        }
        __syncthreads();
        conv_tile_fma(As, Bs, acc, tx, ty);
        __syncthreads();
    }
    float* ya = y + (unsigned long long)agent * n * g.out_len;
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

// conv1: uint8 frames in.
extern "C" __global__ void __launch_bounds__(CONV_THREADS) conv_forward_u8(
    const unsigned char* __restrict__ x, const float* __restrict__ params, float* __restrict__ y,
    unsigned int cin, unsigned int cout, unsigned int ksize, unsigned int stride, unsigned int in_hw,
    unsigned int out_hw, unsigned int n, unsigned int param_count, unsigned int w_off, unsigned int b_off,
    unsigned int relu) {
    const ConvGeom g = conv_geom(cin, cout, ksize, stride, in_hw, out_hw);
    conv_forward_body(x, params, y, g, n, param_count, w_off, b_off, relu);
}

// conv2, conv3 and the fully connected layer: f32 activations in.
extern "C" __global__ void __launch_bounds__(CONV_THREADS) conv_forward_f32(
    const float* __restrict__ x, const float* __restrict__ params, float* __restrict__ y, unsigned int cin,
    unsigned int cout, unsigned int ksize, unsigned int stride, unsigned int in_hw, unsigned int out_hw,
    unsigned int n, unsigned int param_count, unsigned int w_off, unsigned int b_off, unsigned int relu) {
    const ConvGeom g = conv_geom(cin, cout, ksize, stride, in_hw, out_hw);
    conv_forward_body(x, params, y, g, n, param_count, w_off, b_off, relu);
}

// ---- backward-data -------------------------------------------------------------------------
// dcols [agents][N][R][P] (for a 1x1 layer: dx [agents][N][Cin]).
// Grid: (ceil(N*P / TILE_N), ceil(R / TILE_M), agents).
extern "C" __global__ void __launch_bounds__(CONV_THREADS) conv_backward_data(
    const float* __restrict__ dy, const float* __restrict__ y, const float* __restrict__ params,
    float* __restrict__ dcols, unsigned int cin, unsigned int cout, unsigned int ksize, unsigned int stride,
    unsigned int in_hw, unsigned int out_hw, unsigned int n, unsigned int param_count, unsigned int w_off,
    unsigned int relu) {
    __shared__ float As[CONV_TILE_K][CONV_TILE_M];
    __shared__ float Bs[CONV_TILE_K][CONV_TILE_N];
    const ConvGeom g = conv_geom(cin, cout, ksize, stride, in_hw, out_hw);
    const unsigned int agent = blockIdx.z;
    const unsigned int row0 = blockIdx.y * CONV_TILE_M, col0 = blockIdx.x * CONV_TILE_N;
    const unsigned int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const unsigned int cols = n * g.pixels;
    const float* w = params + (unsigned long long)agent * param_count + w_off;
    const unsigned long long act_base = (unsigned long long)agent * n * g.out_len;
    const float* dya = dy + act_base;
    const float* ya = y + act_base;
    // As in the forward pass, this thread's B-tile loads stay in one column.
    const unsigned int my_jj = tid % CONV_TILE_N, my_j = col0 + my_jj;
    const bool my_col_ok = my_j < cols;
    const unsigned int out_origin = my_col_ok ? conv_out_origin(g, my_j) : 0u;
    float acc[4][4] = {};
    for (unsigned int o0 = 0; o0 < g.cout; o0 += CONV_TILE_K) {
        // A = w^T: As[oo][rr] = w[o][r] (consecutive threads read consecutive r).
        for (unsigned int e = tid; e < CONV_TILE_K * CONV_TILE_M; e += CONV_THREADS) {
            const unsigned int oo = e / CONV_TILE_M, rr = e % CONV_TILE_M;
            const unsigned int o = o0 + oo, r = row0 + rr;
            As[oo][rr] = (o < g.cout && r < g.patch) ? w[o * g.patch + r] : 0.0f;
        }
        for (unsigned int oo = tid / CONV_TILE_N; oo < CONV_TILE_K; oo += CONV_THREADS / CONV_TILE_N) {
            const unsigned int o = o0 + oo;
            float v = 0.0f;
            if (o < g.cout && my_col_ok) {
                const unsigned int i = out_origin + o * g.pixels;
                v = (relu && !(ya[i] > 0.0f)) ? 0.0f : dya[i];
            }
            Bs[oo][my_jj] = v;
        }
        __syncthreads();
        conv_tile_fma(As, Bs, acc, tx, ty);
        __syncthreads();
    }
    float* da = dcols + (unsigned long long)agent * n * g.patch * g.pixels;
    for (int i = 0; i < 4; ++i) {
        const unsigned int r = row0 + ty * 4 + i;
        if (r >= g.patch) continue;
        for (int jx = 0; jx < 4; ++jx) {
            const unsigned int j = col0 + tx * 4 + jx;
            if (j >= cols) continue;
            const unsigned int s = j / g.pixels, p = j - s * g.pixels;
            da[((unsigned long long)s * g.patch + r) * g.pixels + p] = acc[i][jx];
        }
    }
}

// dx [agents][N][Cin][H][H] from dcols [agents][N][R][P]; one thread per dx element, its
// contributions summed in (ky, kx) order like the CPU's col2im.
// Grid: (ceil(N*Cin*H*H / CONV_REDUCE_BLOCK), agents).
extern "C" __global__ void __launch_bounds__(CONV_REDUCE_BLOCK) conv_col2im(
    const float* __restrict__ dcols, float* __restrict__ dx, unsigned int cin, unsigned int ksize,
    unsigned int stride, unsigned int in_hw, unsigned int out_hw, unsigned int n) {
    const unsigned int agent = blockIdx.y;
    const unsigned int in_len = cin * in_hw * in_hw;
    const unsigned int patch = cin * ksize * ksize, pixels = out_hw * out_hw;
    // Grid-stride: the launcher gives each thread a few elements (fewer, longer threads).
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n * in_len; i += gridDim.x * blockDim.x) {
        const unsigned int s = i / in_len, rest = i - s * in_len;
        const unsigned int c = rest / (in_hw * in_hw), pix = rest - c * in_hw * in_hw;
        const unsigned int iy = pix / in_hw, ix = pix - iy * in_hw;
        const float* d = dcols + ((unsigned long long)agent * n + s) * patch * pixels;
        float acc = 0.0f;
        for (unsigned int ky = 0; ky < ksize; ++ky) {
            if (iy < ky || (iy - ky) % stride != 0) continue;
            const unsigned int oy = (iy - ky) / stride;
            if (oy >= out_hw) continue;
            for (unsigned int kx = 0; kx < ksize; ++kx) {
                if (ix < kx || (ix - kx) % stride != 0) continue;
                const unsigned int ox = (ix - kx) / stride;
                if (ox >= out_hw) continue;
                acc += d[((c * ksize + ky) * ksize + kx) * pixels + oy * out_hw + ox];
            }
        }
        dx[(unsigned long long)agent * n * in_len + i] = acc;
    }
}

// ---- backward-filter -----------------------------------------------------------------------
// Grid: (ceil(R / TILE_N), ceil(Cout / TILE_M), agents * chunks); z = agent * chunks + chunk.
template <class In>
__device__ __forceinline__ void conv_backward_filter_body(
    const In* __restrict__ x, const float* __restrict__ dy, const float* __restrict__ y, float* __restrict__ out,
    const ConvGeom& g, unsigned int n, unsigned int samples_per_chunk, unsigned int chunks,
    unsigned long long agent_stride, unsigned int chunk_stride, unsigned int out_off, unsigned int relu) {
    __shared__ float As[CONV_TILE_K][CONV_TILE_M];
    __shared__ float Bs[CONV_TILE_K][CONV_TILE_N];
    const unsigned int agent = blockIdx.z / chunks, chunk = blockIdx.z % chunks;
    const unsigned int row0 = blockIdx.y * CONV_TILE_M, col0 = blockIdx.x * CONV_TILE_N;
    const unsigned int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const unsigned int first = chunk * samples_per_chunk;
    const unsigned int last = first + samples_per_chunk < n ? first + samples_per_chunk : n;
    const unsigned int j_begin = first * g.pixels, j_end = last * g.pixels;
    const In* xa = x + (unsigned long long)agent * n * g.in_len;
    const unsigned long long act_base = (unsigned long long)agent * n * g.out_len;
    const float* dya = dy + act_base;
    const float* ya = y + act_base;
    // The bias gradient rides along in the blocks of the first column tile: thread t < TILE_M
    // sums row t of each g tile it has already loaded, in ascending j.
    const bool bias_block = blockIdx.x == 0;
    float bias_acc = 0.0f;
    // Every load of this thread is in sample column jj = tid % TILE_K of the step (one division
    // per step for its origins) and, for B, in the fixed patch rows rr = tid / TILE_K + i*STEP
    // of this block's column tile (their offsets computed once).
    const unsigned int my_jj = tid % CONV_TILE_K, STEP = CONV_THREADS / CONV_TILE_K;
    const unsigned int B_ROWS = CONV_TILE_N / STEP;
    unsigned int row_off[B_ROWS];
    for (unsigned int i = 0; i < B_ROWS; ++i) {
        const unsigned int r = col0 + tid / CONV_TILE_K + i * STEP;
        row_off[i] = r < g.patch ? conv_patch_offset(g, r) : 0xffffffffu;
    }
    float acc[4][4] = {};
    for (unsigned int j0 = j_begin; j0 < j_end; j0 += CONV_TILE_K) {
        const unsigned int j = j0 + my_jj;
        const bool col_ok = j < j_end;
        const unsigned int in_origin = col_ok ? conv_col_origin(g, j) : 0u;
        const unsigned int out_origin = col_ok ? conv_out_origin(g, j) : 0u;
        // A = g^T: As[jj][oo] = g[o][j] (consecutive threads read consecutive j).
        for (unsigned int oo = tid / CONV_TILE_K; oo < CONV_TILE_M; oo += STEP) {
            const unsigned int o = row0 + oo;
            float v = 0.0f;
            if (o < g.cout && col_ok) {
                const unsigned int i = out_origin + o * g.pixels;
                v = (relu && !(ya[i] > 0.0f)) ? 0.0f : dya[i];
            }
            As[my_jj][oo] = v;
        }
        // B = col^T: Bs[jj][rr] = col[r][j].
        for (unsigned int i = 0; i < B_ROWS; ++i) {
            const unsigned int rr = tid / CONV_TILE_K + i * STEP;
            Bs[my_jj][rr] = (row_off[i] != 0xffffffffu && col_ok)
                                ? conv_input_value(xa[(unsigned long long)in_origin + row_off[i]])
                                : 0.0f;
        }
        __syncthreads();
        if (bias_block && tid < CONV_TILE_M)
            for (unsigned int jj = 0; jj < CONV_TILE_K; ++jj) bias_acc += As[jj][tid];
        conv_tile_fma(As, Bs, acc, tx, ty);
        __syncthreads();
    }
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

extern "C" __global__ void __launch_bounds__(CONV_THREADS) conv_backward_filter_u8(
    const unsigned char* __restrict__ x, const float* __restrict__ dy, const float* __restrict__ y,
    float* __restrict__ out, unsigned int cin, unsigned int cout, unsigned int ksize, unsigned int stride,
    unsigned int in_hw, unsigned int out_hw, unsigned int n, unsigned int samples_per_chunk, unsigned int chunks,
    unsigned long long agent_stride, unsigned int chunk_stride, unsigned int out_off, unsigned int relu) {
    const ConvGeom g = conv_geom(cin, cout, ksize, stride, in_hw, out_hw);
    conv_backward_filter_body(x, dy, y, out, g, n, samples_per_chunk, chunks, agent_stride, chunk_stride, out_off,
                              relu);
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS) conv_backward_filter_f32(
    const float* __restrict__ x, const float* __restrict__ dy, const float* __restrict__ y, float* __restrict__ out,
    unsigned int cin, unsigned int cout, unsigned int ksize, unsigned int stride, unsigned int in_hw,
    unsigned int out_hw, unsigned int n, unsigned int samples_per_chunk, unsigned int chunks,
    unsigned long long agent_stride, unsigned int chunk_stride, unsigned int out_off, unsigned int relu) {
    const ConvGeom g = conv_geom(cin, cout, ksize, stride, in_hw, out_hw);
    conv_backward_filter_body(x, dy, y, out, g, n, samples_per_chunk, chunks, agent_stride, chunk_stride, out_off,
                              relu);
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
