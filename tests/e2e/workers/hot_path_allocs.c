/* Counts the heap allocations the gpuspan agent makes on an application thread in its hot
 * path (issue 14, item 5): NVTX push / pop through NVIDIA's own NVTX v3 loader (the wheel's
 * header-only nvtx3, which injects libgpuspan.so through NVTX_INJECTION64_PATH) and the C-ABI
 * scopes of include/gpuspan.h.
 *
 * malloc & co. are interposed (exported with -rdynamic). An allocation is counted when it is
 * made on the main thread while counting is on and its caller lies in libgpuspan.so: a Rust
 * cdylib links its own std, so the return address of malloc is inside the object that
 * allocated (dladdr names it). The simulated driver's and CUPTI's own allocations (its event
 * records, its external-correlation stacks) are the driver's, and not counted.
 *
 * Usage: hot_path_allocs PAIRS   (LD_PRELOAD=libgpuspan.so, the simulator on the library path)
 * Prints `probe allocations <n>` (an NVTX string registration, which allocates: the counter
 * works),
 * `warm-up allocations <n>` and `hot allocations <n> in <PAIRS> pairs`.
 */
#define _GNU_SOURCE
#include "sim_driver.h"
#include <nvtx3/nvToolsExt.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile int counting;
static unsigned long counted;
static int in_dladdr; /* dladdr itself may allocate: do not recurse */

static void note(void *caller) {
    if (!counting || in_dladdr || gettid() != getpid()) return;
    in_dladdr = 1;
    Dl_info info;
    if (dladdr(caller, &info) && info.dli_fname && strstr(info.dli_fname, "libgpuspan.so")) counted++;
    in_dladdr = 0;
}

void *malloc(size_t n) {
    note(__builtin_return_address(0));
    return __libc_malloc(n);
}
void free(void *p) { __libc_free(p); }
void *calloc(size_t n, size_t m) {
    note(__builtin_return_address(0));
    return __libc_calloc(n, m);
}
void *realloc(void *q, size_t n) {
    note(__builtin_return_address(0));
    return __libc_realloc(q, n);
}
void *memalign(size_t a, size_t n) {
    note(__builtin_return_address(0));
    return __libc_memalign(a, n);
}
void *aligned_alloc(size_t a, size_t n) {
    note(__builtin_return_address(0));
    return __libc_memalign(a, n);
}
int posix_memalign(void **out, size_t a, size_t n) {
    note(__builtin_return_address(0));
    void *p = __libc_memalign(a, n);
    if (!p) return 12; /* ENOMEM */
    *out = p;
    return 0;
}

typedef int (*begin_stage_t)(const char *);
typedef int (*end_t)(void);
typedef int (*use_streams_t)(void *const *, size_t);

/* One pair of each: an NVTX range and a C-ABI stage scope, nested. */
static void pair(begin_stage_t stage_begin, end_t end) {
    nvtxRangePushA("attention.spatial");
    stage_begin("ffn");
    end();
    nvtxRangePop();
}

int main(int argc, char **argv) {
    long pairs = argc > 1 ? atol(argv[1]) : 1000000;
    /* With BATCH and PAUSE_US: a pause of PAUSE_US µs after the warm-up and after every BATCH
     * pairs, so the collector hands the CUDA events back between batches and every boundary
     * takes the event path (back to back, the pool runs dry and boundaries take the CPU
     * fallback or are dropped: other paths, also counted). */
    long batch = argc > 3 ? atol(argv[2]) : 0;
    long pause_us = argc > 3 ? atol(argv[3]) : 0;
    struct timespec pause = {pause_us / 1000000, (pause_us % 1000000) * 1000};
    struct sim_driver d = sim_driver_open();
    void *stream;
    SIM_CHECK(d.stream_create(&stream, 1));
    begin_stage_t stage_begin = (begin_stage_t)dlsym(RTLD_DEFAULT, "gpuspan_stage_begin");
    end_t end = (end_t)dlsym(RTLD_DEFAULT, "gpuspan_end");
    use_streams_t use_streams = (use_streams_t)dlsym(RTLD_DEFAULT, "gpuspan_use_streams");
    if (!stage_begin || !end || !use_streams) { fprintf(stderr, "libgpuspan.so is not preloaded\n"); return 1; }
    use_streams(&stream, 1);
    /* The probe: registering an NVTX string copies it once (the agent keeps the copy for the
     * life of the process), an allocation the counter must see, or it would see none. */
    counting = 1;
    nvtxDomainRegisterStringA(nvtxDomainCreateA("gpuspan"), "registered once");
    counting = 0;
    printf("probe allocations %lu\n", counted);
    counted = 0;
    /* Warm-up: the thread's first calls set up its thread-local state. */
    counting = 1;
    for (int i = 0; i < 1000; i++) pair(stage_begin, end);
    counting = 0;
    printf("warm-up allocations %lu\n", counted);
    counted = 0;
    if (batch > 0) nanosleep(&pause, NULL);
    counting = 1;
    for (long i = 0; i < pairs; i++) {
        pair(stage_begin, end);
        if (batch > 0 && (i + 1) % batch == 0) nanosleep(&pause, NULL);
    }
    counting = 0;
    printf("hot allocations %lu in %ld pairs\n", counted, pairs);
    return 0;
}
