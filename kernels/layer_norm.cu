// Layer norm y = (x - mean) * rsqrt(var + eps) * gamma + beta per row; x, y [rows, cols]
// bf16, gamma / beta [cols] bf16; f32 two-pass mean / variance. Grid rows, block 256.
// CPU reference and tolerance: crates/gpuspan-kernels/src/layer_norm.rs.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
layer_norm_bf16(const bf16_t* __restrict__ x, const bf16_t* __restrict__ gamma,
                const bf16_t* __restrict__ beta, bf16_t* __restrict__ y, int cols, float eps) {
    __shared__ float scratch[32];
    const bf16_t* xr = x + (u64)blockIdx.x * cols;
    bf16_t* yr = y + (u64)blockIdx.x * cols;
    float s = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) s += bf16_to_f32(xr[j]);
    const float mean = block_sum(s, scratch) / (float)cols;
    float q = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        const float d = bf16_to_f32(xr[j]) - mean;
        q = fmaf(d, d, q);
    }
    const float var = block_sum(q, scratch) / (float)cols;
    const float inv = rsqrtf(var + eps);
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        const float v = (bf16_to_f32(xr[j]) - mean) * inv;
        yr[j] = f32_to_bf16(fmaf(v, bf16_to_f32(gamma[j]), bf16_to_f32(beta[j])));
    }
}
