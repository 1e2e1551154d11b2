// spin_ns: busy-waits `dur_ns` nanoseconds of the GPU's %globaltimer, so a recorded kernel
// duration can be replayed on a real GPU (dit_worker --replay). Launch <<<1, 1>>>.
// CPU side: crates/gpuspan-kernels/src/spin.rs (measured-duration tolerance).
#include "common.cuh"

extern "C" __global__ void spin_ns(u64 dur_ns) {
    u64 start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < dur_ns);
}
