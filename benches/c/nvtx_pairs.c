/* The application thread of issue 14 item 5's bench: PAIRS nested NVTX push / pop pairs
 * (NVIDIA's header-only NVTX v3 loader, which injects libgpuspan.so when
 * NVTX_INJECTION64_PATH names it), after 1000 warm-up pairs, with a current context of the
 * no-op driver (benches/c/noop_driver.c). Prints `{"pairs":N,"thread_cpu_ns":T}`: this
 * thread's CPU time (CLOCK_THREAD_CPUTIME_ID) over the timed pairs only.
 *
 * Usage: nvtx_pairs PAIRS [BATCH PAUSE_US]   (environment: NVTX_PAIRS_OUTER=NAME, below)
 *
 * With BATCH and PAUSE_US, the thread sleeps PAUSE_US µs after every BATCH pairs, so the
 * agent's collector (which drains every 5 ms) hands the CUDA events back to the pool and
 * empties the thread's ring between batches, as it does in a worker that opens a few
 * thousand scopes per second: without pauses, 2 M boundaries per second exhaust a
 * 4096-event pool within milliseconds, and the rest are timed by the CPU fallback. Sleeping
 * and its system calls are not counted.
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
    long batch = argc > 3 ? atol(argv[2]) : 0;
    long pause_us = argc > 3 ? atol(argv[3]) : 0;
    struct timespec pause = {pause_us / 1000000, (pause_us % 1000000) * 1000};
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
    /* NVTX_PAIRS_OUTER=NAME: every pair runs inside one enclosing range NAME (a request), so
     * no timed scope is a root. */
    const char *outer = getenv("NVTX_PAIRS_OUTER");
    if (outer) nvtxRangePushA(outer);
    for (int i = 0; i < 1000; i++) { nvtxRangePushA("dit.step 0/1"); nvtxRangePushA("attention"); nvtxRangePop(); nvtxRangePop(); }
    if (batch > 0) nanosleep(&pause, NULL); /* the warm-up's 4000 events back in the pool */
    /* The pauses' own CPU time (the sleep's system calls) is not counted. */
    unsigned long long t = 0, t0 = thread_ns();
    for (long i = 0; i < pairs / 2; i++) {
        nvtxRangePushA("dit.step 0/1");
        nvtxRangePushA("attention");
        nvtxRangePop();
        nvtxRangePop();
        if (batch > 1 && (2 * (i + 1)) % batch == 0) { /* two pairs a round */
            t += thread_ns() - t0;
            nanosleep(&pause, NULL);
            t0 = thread_ns();
        }
    }
    t += thread_ns() - t0;
    if (outer) nvtxRangePop();
    printf("{\"pairs\":%ld,\"thread_cpu_ns\":%llu}\n", (pairs / 2) * 2, t);
    return 0;
}
