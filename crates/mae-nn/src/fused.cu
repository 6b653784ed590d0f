// CUDA kernels of mae-nn's fused ops (src/fused/; glue in src/fused_cuda.rs): LayerNorm
// forward and backward, softmax forward and backward, exact GELU forward and backward, the bias
// add and the column sums of its gradient. f32, contiguous rows of length d.
//
// Row ops run one warp per row (rows are 64 to 1,024 long in MAE's models: LayerNorm over the
// width, softmax over the tokens), so their reductions are warp shuffles with no shared memory
// and no block barrier. Column sums (dweight, dbias) are coalesced: a block of 32 columns x 8
// rows walks a fixed chunk of rows, and a second kernel adds the chunks' partial sums in order,
// so results are the same bits on every run (no atomics).
//
// Compiled to PTX at build time by build.rs (nvcc --ptx, CUDA_COMPUTE_CAP); no headers.

#define WARP 32
#define ROWS_PER_BLOCK 8  // warps per block for the row kernels (256 threads)
#define COL_TILE 32       // columns per block of the column-sum kernels
#define COL_ROWS 8        // threads along the rows in those blocks

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The row this warp owns, or -1 past the last.
__device__ __forceinline__ long long warp_row(unsigned int rows) {
    long long row = (long long)blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / WARP;
    return row < rows ? row : -1;
}

// Mean and 1/sqrt(var + eps) of one row, two passes (the centred sum of squares, as the CPU
// kernel and torch compute it).
__device__ __forceinline__ void row_stats(const float* xr, unsigned int d, float eps, float* mean, float* rstd) {
    const int lane = threadIdx.x % WARP;
    float s = 0.f;
    for (unsigned int i = lane; i < d; i += WARP) s += xr[i];
    const float m = warp_sum(s) / (float)d;
    float q = 0.f;
    for (unsigned int i = lane; i < d; i += WARP) {
        const float c = xr[i] - m;
        q += c * c;
    }
    *mean = m;
    *rstd = rsqrtf(warp_sum(q) / (float)d + eps);
}

extern "C" __global__ void mae_layer_norm_fwd(const float* x, const float* w, const float* b, float* y,
                                              unsigned int rows, unsigned int d, float eps) {
    const long long row = warp_row(rows);
    if (row < 0) return;
    const float* xr = x + row * d;
    float* yr = y + row * d;
    float mean, rstd;
    row_stats(xr, d, eps, &mean, &rstd);
    for (unsigned int i = threadIdx.x % WARP; i < d; i += WARP) yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
}

// dx = rstd * (g*w - mean(g*w) - xhat * mean(g*w * xhat)) per row.
extern "C" __global__ void mae_layer_norm_bwd_input(const float* x, const float* w, const float* g, float* dx,
                                                    unsigned int rows, unsigned int d, float eps) {
    const long long row = warp_row(rows);
    if (row < 0) return;
    const int lane = threadIdx.x % WARP;
    const float* xr = x + row * d;
    const float* gr = g + row * d;
    float* dr = dx + row * d;
    float mean, rstd;
    row_stats(xr, d, eps, &mean, &rstd);
    float s1 = 0.f, s2 = 0.f;
    for (unsigned int i = lane; i < d; i += WARP) {
        const float gw = gr[i] * w[i];
        s1 += gw;
        s2 += gw * (xr[i] - mean) * rstd;
    }
    const float m1 = warp_sum(s1) / (float)d;
    const float m2 = warp_sum(s2) / (float)d;
    for (unsigned int i = lane; i < d; i += WARP) {
        const float xhat = (xr[i] - mean) * rstd;
        dr[i] = rstd * (gr[i] * w[i] - m1 - xhat * m2);
    }
}

// stats[2r] = mean, stats[2r + 1] = rstd of row r (for the parameter gradients' column sums).
extern "C" __global__ void mae_row_stats(const float* x, float* stats, unsigned int rows, unsigned int d, float eps) {
    const long long row = warp_row(rows);
    if (row < 0) return;
    float mean, rstd;
    row_stats(x + row * d, d, eps, &mean, &rstd);
    if (threadIdx.x % WARP == 0) {
        stats[2 * row] = mean;
        stats[2 * row + 1] = rstd;
    }
}

// Adds the block's 8 row-partials of one column in a fixed order; thread (tx, 0) gets the sum.
__device__ __forceinline__ float column_tile_sum(float v, float tile[COL_ROWS][COL_TILE]) {
    tile[threadIdx.y][threadIdx.x] = v;
    __syncthreads();
    float s = 0.f;
    if (threadIdx.y == 0) {
#pragma unroll
        for (int k = 0; k < COL_ROWS; ++k) s += tile[k][threadIdx.x];
    }
    __syncthreads();
    return s;
}

// Partial sums over rows [chunk * rows_per_chunk, ...) of g * xhat (dweight) and g (dbias):
// partial[chunk][c] and partial[chunk][d + c]. Grid: (ceil(d / 32), chunks), block (32, 8).
extern "C" __global__ void mae_layer_norm_param_partials(const float* x, const float* g, const float* stats,
                                                         float* partial, unsigned int rows, unsigned int d,
                                                         unsigned int rows_per_chunk) {
    __shared__ float tile[COL_ROWS][COL_TILE];
    const unsigned int c = blockIdx.x * COL_TILE + threadIdx.x;
    const unsigned long long first = (unsigned long long)blockIdx.y * rows_per_chunk;
    const unsigned long long last = min((unsigned long long)rows, first + rows_per_chunk);
    float dw = 0.f, db = 0.f;
    if (c < d) {
        for (unsigned long long r = first + threadIdx.y; r < last; r += COL_ROWS) {
            const float gv = g[r * d + c];
            dw += gv * (x[r * d + c] - stats[2 * r]) * stats[2 * r + 1];
            db += gv;
        }
    }
    dw = column_tile_sum(dw, tile);
    db = column_tile_sum(db, tile);
    if (threadIdx.y == 0 && c < d) {
        partial[(unsigned long long)blockIdx.y * 2 * d + c] = dw;
        partial[(unsigned long long)blockIdx.y * 2 * d + d + c] = db;
    }
}

// Partial column sums of g over a chunk of rows: partial[chunk][c]. Grid and block as above.
extern "C" __global__ void mae_column_partials(const float* g, float* partial, unsigned int rows, unsigned int d,
                                               unsigned int rows_per_chunk) {
    __shared__ float tile[COL_ROWS][COL_TILE];
    const unsigned int c = blockIdx.x * COL_TILE + threadIdx.x;
    const unsigned long long first = (unsigned long long)blockIdx.y * rows_per_chunk;
    const unsigned long long last = min((unsigned long long)rows, first + rows_per_chunk);
    float s = 0.f;
    if (c < d) {
        for (unsigned long long r = first + threadIdx.y; r < last; r += COL_ROWS) s += g[r * d + c];
    }
    s = column_tile_sum(s, tile);
    if (threadIdx.y == 0 && c < d) partial[(unsigned long long)blockIdx.y * d + c] = s;
}

// out[c] = sum over chunks, in order, of partial[chunk][c], for c < width.
extern "C" __global__ void mae_sum_partials(const float* partial, float* out, unsigned int chunks,
                                            unsigned int width) {
    const unsigned int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= width) return;
    float s = 0.f;
    for (unsigned int k = 0; k < chunks; ++k) s += partial[(unsigned long long)k * width + c];
    out[c] = s;
}

extern "C" __global__ void mae_softmax_fwd(const float* x, float* y, unsigned int rows, unsigned int d) {
    const long long row = warp_row(rows);
    if (row < 0) return;
    const int lane = threadIdx.x % WARP;
    const float* xr = x + row * d;
    float* yr = y + row * d;
    float m = __int_as_float(0xff800000);  // -inf
    for (unsigned int i = lane; i < d; i += WARP) m = fmaxf(m, xr[i]);
    m = warp_max(m);
    float s = 0.f;
    for (unsigned int i = lane; i < d; i += WARP) {
        const float e = expf(xr[i] - m);
        yr[i] = e;
        s += e;
    }
    const float inv = 1.f / warp_sum(s);
    for (unsigned int i = lane; i < d; i += WARP) yr[i] *= inv;
}

// dx = y * (g - sum(g * y)) per row.
extern "C" __global__ void mae_softmax_bwd(const float* y, const float* g, float* dx, unsigned int rows,
                                           unsigned int d) {
    const long long row = warp_row(rows);
    if (row < 0) return;
    const int lane = threadIdx.x % WARP;
    const float* yr = y + row * d;
    const float* gr = g + row * d;
    float* dr = dx + row * d;
    float dot = 0.f;
    for (unsigned int i = lane; i < d; i += WARP) dot += yr[i] * gr[i];
    dot = warp_sum(dot);
    for (unsigned int i = lane; i < d; i += WARP) dr[i] = yr[i] * (gr[i] - dot);
}

#define SQRT1_2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

extern "C" __global__ void mae_gelu_fwd(const float* x, float* y, unsigned long long n) {
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const float v = x[i];
        y[i] = 0.5f * v * (1.f + erff(v * SQRT1_2));
    }
}

// dx = g * (Phi(x) + x * phi(x)).
extern "C" __global__ void mae_gelu_bwd(const float* x, const float* g, float* dx, unsigned long long n) {
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const float v = x[i];
        const float cdf = 0.5f * (1.f + erff(v * SQRT1_2));
        const float pdf = INV_SQRT_2PI * expf(-0.5f * v * v);
        dx[i] = g[i] * (cdf + v * pdf);
    }
}

extern "C" __global__ void mae_add_bias(const float* y, const float* b, float* out, unsigned long long n,
                                        unsigned int d) {
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        out[i] = y[i] + b[i % d];
    }
}
