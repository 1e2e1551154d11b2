// Attention O = softmax(scale * Q K^T) V for head dimension 64, bf16 in / out, f32 math.
// Layouts: Q, O [bh, q_len, 64]; K, V [bh, kv_len, 64]; row-major, contiguous.
// CPU references and tolerances: crates/gpuspan-kernels/src/attention.rs.
#include "common.cuh"

#define HEAD_DIM 64
#define FLASH_BLOCK_M 64   // query rows per block = threads per block
#define FLASH_BLOCK_N 64   // keys per shared-memory tile
#define QK_TILE 16
#define PV_ROWS 4

// Fused, FlashAttention-style: one thread per query row, K/V streamed through shared memory,
// online softmax (running max m, running sum l; the accumulator is rescaled by
// exp(m_old - m_new) when the max grows). Grid (ceil(q_len / 64), bh), block 64.
extern "C" __global__ void __launch_bounds__(FLASH_BLOCK_M)
flash_attn_fwd_d64(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                   const bf16_t* __restrict__ v, bf16_t* __restrict__ o,
                   int q_len, int kv_len, float scale) {
    __shared__ float ks[FLASH_BLOCK_N][HEAD_DIM];
    __shared__ float vs[FLASH_BLOCK_N][HEAD_DIM];
    const int bh = blockIdx.y;
    const int row = blockIdx.x * FLASH_BLOCK_M + threadIdx.x;
    const bool active = row < q_len;
    const u64 qbase = ((u64)bh * q_len + (active ? row : 0)) * HEAD_DIM;
    const u64 kvbase = (u64)bh * kv_len * HEAD_DIM;

    float qr[HEAD_DIM];
    float acc[HEAD_DIM];
#pragma unroll
    for (int d = 0; d < HEAD_DIM; ++d) {
        qr[d] = active ? bf16_to_f32(q[qbase + d]) : 0.0f;
        acc[d] = 0.0f;
    }
    float m = neg_infinity();
    float l = 0.0f;

    for (int t0 = 0; t0 < kv_len; t0 += FLASH_BLOCK_N) {
        const int n = min(FLASH_BLOCK_N, kv_len - t0);
        __syncthreads();  // previous tile fully consumed
        for (int e = threadIdx.x; e < FLASH_BLOCK_N * HEAD_DIM; e += FLASH_BLOCK_M) {
            const int j = e / HEAD_DIM, d = e % HEAD_DIM;
            float kv = 0.0f, vv = 0.0f;
            if (j < n) {
                const u64 at = kvbase + (u64)(t0 + j) * HEAD_DIM + d;
                kv = bf16_to_f32(k[at]);
                vv = bf16_to_f32(v[at]);
            }
            ks[j][d] = kv;
            vs[j][d] = vv;
        }
        __syncthreads();
        for (int j = 0; j < n; ++j) {
            float s = 0.0f;
#pragma unroll
            for (int d = 0; d < HEAD_DIM; ++d) s = fmaf(qr[d], ks[j][d], s);
            s *= scale;
            if (s > m) {
                const float corr = expf(m - s);
                l *= corr;
#pragma unroll
                for (int d = 0; d < HEAD_DIM; ++d) acc[d] *= corr;
                m = s;
            }
            const float p = expf(s - m);
            l += p;
#pragma unroll
            for (int d = 0; d < HEAD_DIM; ++d) acc[d] = fmaf(p, vs[j][d], acc[d]);
        }
    }
    if (active) {
        const float inv = 1.0f / l;
#pragma unroll
        for (int d = 0; d < HEAD_DIM; ++d) o[qbase + d] = f32_to_bf16(acc[d] * inv);
    }
}

// Unfused step 1: S[bh, i, j] = scale * Q[bh, i, :] . K[bh, j, :] (f32 out).
// Grid (ceil(kv_len / 16), ceil(q_len / 16), bh), block (16, 16).
extern "C" __global__ void __launch_bounds__(QK_TILE * QK_TILE)
sdpa_qk_scores_d64(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                   float* __restrict__ s, int q_len, int kv_len, float scale) {
    __shared__ float qs[QK_TILE][HEAD_DIM + 1];
    __shared__ float kt[QK_TILE][HEAD_DIM + 1];
    const int bh = blockIdx.z;
    const int i0 = blockIdx.y * QK_TILE, j0 = blockIdx.x * QK_TILE;
    const int tid = threadIdx.y * QK_TILE + threadIdx.x;
    for (int e = tid; e < QK_TILE * HEAD_DIM; e += QK_TILE * QK_TILE) {
        const int r = e / HEAD_DIM, d = e % HEAD_DIM;
        const int qi = i0 + r, kj = j0 + r;
        qs[r][d] = qi < q_len ? bf16_to_f32(q[((u64)bh * q_len + qi) * HEAD_DIM + d]) : 0.0f;
        kt[r][d] = kj < kv_len ? bf16_to_f32(k[((u64)bh * kv_len + kj) * HEAD_DIM + d]) : 0.0f;
    }
    __syncthreads();
    const int i = i0 + threadIdx.y, j = j0 + threadIdx.x;
    float acc = 0.0f;
#pragma unroll
    for (int d = 0; d < HEAD_DIM; ++d) acc = fmaf(qs[threadIdx.y][d], kt[threadIdx.x][d], acc);
    if (i < q_len && j < kv_len) s[((u64)bh * q_len + i) * kv_len + j] = acc * scale;
}

// Unfused step 2: softmax of each row of S in place. Grid rows, block 256.
extern "C" __global__ void __launch_bounds__(256)
softmax_rows_f32(float* __restrict__ s, int cols) {
    __shared__ float scratch[32];
    float* row = s + (u64)blockIdx.x * cols;
    float mx = neg_infinity();
    for (int j = threadIdx.x; j < cols; j += blockDim.x) mx = fmaxf(mx, row[j]);
    mx = block_max(mx, scratch);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        const float e = expf(row[j] - mx);
        row[j] = e;
        sum += e;
    }
    sum = block_sum(sum, scratch);
    const float inv = 1.0f / sum;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) row[j] *= inv;
}

// Unfused step 3: O[bh, i, :] = P[bh, i, :] V[bh] (P f32, V and O bf16).
// Grid (ceil(q_len / 4), bh), block (64, 4): x = head-dim lane, y = row of the block.
extern "C" __global__ void __launch_bounds__(HEAD_DIM * PV_ROWS)
sdpa_pv_d64(const float* __restrict__ p, const bf16_t* __restrict__ v,
            bf16_t* __restrict__ o, int q_len, int kv_len) {
    const int bh = blockIdx.y;
    const int i = blockIdx.x * PV_ROWS + threadIdx.y;
    const int d = threadIdx.x;
    if (i >= q_len) return;
    const float* prow = p + ((u64)bh * q_len + i) * kv_len;
    const bf16_t* vb = v + (u64)bh * kv_len * HEAD_DIM + d;
    float acc = 0.0f;
    for (int j = 0; j < kv_len; ++j) acc = fmaf(prow[j], bf16_to_f32(vb[(u64)j * HEAD_DIM]), acc);
    o[((u64)bh * q_len + i) * HEAD_DIM + d] = f32_to_bf16(acc);
}
