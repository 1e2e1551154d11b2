/* The application thread of issue 14 item 5's bench: PAIRS nested NVTX push / pop pairs
 * (NVIDIA's header-only NVTX v3 loader, which injects libgpuspan.so when
 * NVTX_INJECTION64_PATH names it), after 1000 warm-up pairs, with a current context of the
 * no-op driver (benches/c/noop_driver.c). Prints `{"pairs":N,"thread_cpu_ns":T}`: this
 * thread's CPU time (CLOCK_THREAD_CPUTIME_ID) over the timed pairs only.
 *
 * Usage: nvtx_pairs PAIRS
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <nvtx3/nvToolsExt.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static unsigned long long thread_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (unsigned long long)t.tv_sec * 1000000000ull + (unsigned long long)t.tv_nsec;
}

int main(int argc, char **argv) {
    long pairs = argc > 1 ? atol(argv[1]) : 1000000;
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!h) { fprintf(stderr, "dlopen libcuda.so.1: %s\n", dlerror()); return 1; }
    int (*init)(unsigned) = (int (*)(unsigned))dlsym(h, "cuInit");
    int (*retain)(void **, int) = (int (*)(void **, int))dlsym(h, "cuDevicePrimaryCtxRetain");
    int (*set_current)(void *) = (int (*)(void *))dlsym(h, "cuCtxSetCurrent");
    void *ctx = NULL;
    if (!init || !retain || !set_current || init(0) || retain(&ctx, 0) || set_current(ctx)) {
        fprintf(stderr, "no-op driver setup failed\n");
        return 1;
    }
    for (int i = 0; i < 1000; i++) { nvtxRangePushA("dit.step 0/1"); nvtxRangePushA("attention"); nvtxRangePop(); nvtxRangePop(); }
    unsigned long long t0 = thread_ns();
    for (long i = 0; i < pairs / 2; i++) {
        nvtxRangePushA("dit.step 0/1");
        nvtxRangePushA("attention");
        nvtxRangePop();
        nvtxRangePop();
    }
    unsigned long long t = thread_ns() - t0;
    printf("{\"pairs\":%ld,\"thread_cpu_ns\":%llu}\n", (pairs / 2) * 2, t);
    return 0;
}
