// 3x3x3 convolution, stride 1, zero padding 1, bias: the VAE decoder's layer.
// x [cin, depth, height, width], w [cout, cin, 3, 3, 3], bias [cout], y [cout, depth,
// height, width]; bf16, f32 accumulation over cin, then dz, dr, dc. One thread per output:
// grid (ceil(height * width / 128), depth, cout), block 128.
// CPU reference and tolerance: crates/gpuspan-kernels/src/conv3d.rs.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(128)
vae_conv3d_k3_bf16(const bf16_t* __restrict__ x, const bf16_t* __restrict__ w,
                   const bf16_t* __restrict__ bias, bf16_t* __restrict__ y,
                   int cin, int depth, int height, int width) {
    const int hw = height * width;
    const int pos = blockIdx.x * blockDim.x + threadIdx.x;
    if (pos >= hw) return;
    const int z = blockIdx.y, o = blockIdx.z;
    const int r = pos / width, c = pos % width;
    float acc = 0.0f;
    for (int i = 0; i < cin; ++i) {
        const bf16_t* wp = w + ((u64)o * cin + i) * 27;
        const bf16_t* xp = x + (u64)i * depth * hw;
#pragma unroll
        for (int dz = 0; dz < 3; ++dz) {
            const int zz = z + dz - 1;
            if (zz < 0 || zz >= depth) continue;
#pragma unroll
            for (int dr = 0; dr < 3; ++dr) {
                const int rr = r + dr - 1;
                if (rr < 0 || rr >= height) continue;
#pragma unroll
                for (int dc = 0; dc < 3; ++dc) {
                    const int cc = c + dc - 1;
                    if (cc < 0 || cc >= width) continue;
                    acc = fmaf(bf16_to_f32(wp[dz * 9 + dr * 3 + dc]),
                               bf16_to_f32(xp[((u64)zz * height + rr) * width + cc]), acc);
                }
            }
        }
    }
    y[((u64)o * depth + z) * hw + pos] = f32_to_bf16(acc + bf16_to_f32(bias[o]));
}
