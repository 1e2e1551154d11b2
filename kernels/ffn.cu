// Tiled GEMM C[m, n] = epilogue(sum_k A[m, k] B[k, n] + bias[n]), bf16 in, f32 accumulate,
// bf16 out, row-major. The FFN is gemm_bf16_bias_gelu then gemm_bf16_bias; the worker also
// uses gemm_bf16_bias for the attention projections.
// Grid (ceil(n / 64), ceil(m / 64)), block 256 (16 x 16 threads, each 4 x 4 outputs at
// rows ty + 16 i, columns tx + 16 j of the 64 x 64 tile); k in slices of 16.
// CPU references and tolerances: crates/gpuspan-kernels/src/ffn.rs.
#include "common.cuh"

#define TILE_M 64
#define TILE_N 64
#define TILE_K 16
#define GEMM_THREADS 256

__device__ __forceinline__ float gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanhf(0.7978846f * (x + 0.044715f * x * x * x)));
}

__device__ __forceinline__ void gemm_tile(const bf16_t* __restrict__ a, const bf16_t* __restrict__ b,
                                          const bf16_t* __restrict__ bias, bf16_t* __restrict__ c,
                                          int m, int n, int k, bool gelu) {
    __shared__ float as[TILE_K][TILE_M + 1];  // A slice, transposed: as[kk][row]
    __shared__ float bs[TILE_K][TILE_N];
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int row0 = blockIdx.y * TILE_M, col0 = blockIdx.x * TILE_N;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < k; k0 += TILE_K) {
        for (int e = threadIdx.x; e < TILE_M * TILE_K; e += GEMM_THREADS) {
            const int r = e / TILE_K, kk = e % TILE_K;
            const int gr = row0 + r, gk = k0 + kk;
            as[kk][r] = (gr < m && gk < k) ? bf16_to_f32(a[(u64)gr * k + gk]) : 0.0f;
        }
        for (int e = threadIdx.x; e < TILE_K * TILE_N; e += GEMM_THREADS) {
            const int kk = e / TILE_N, cc = e % TILE_N;
            const int gk = k0 + kk, gc = col0 + cc;
            bs[kk][cc] = (gk < k && gc < n) ? bf16_to_f32(b[(u64)gk * n + gc]) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TILE_K; ++kk) {
            float av[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) av[i] = as[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) bv[j] = bs[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = row0 + ty + 16 * i;
        if (r >= m) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int cc = col0 + tx + 16 * j;
            if (cc >= n) continue;
            float x = acc[i][j] + bf16_to_f32(bias[cc]);
            if (gelu) x = gelu_tanh(x);
            c[(u64)r * n + cc] = f32_to_bf16(x);
        }
    }
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
gemm_bf16_bias(const bf16_t* __restrict__ a, const bf16_t* __restrict__ b,
               const bf16_t* __restrict__ bias, bf16_t* __restrict__ c, int m, int n, int k) {
    gemm_tile(a, b, bias, c, m, n, k, false);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
gemm_bf16_bias_gelu(const bf16_t* __restrict__ a, const bf16_t* __restrict__ b,
                    const bf16_t* __restrict__ bias, bf16_t* __restrict__ c, int m, int n, int k) {
    gemm_tile(a, b, bias, c, m, n, k, true);
}
