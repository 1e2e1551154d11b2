/* Request scopes that never end (issue 13, item 2): THREADS worker threads each begin a
 * request (gpuspan_request_begin), launch one kernel and exit without ending it, as a
 * request whose thread died on an error would. The main thread then waits WAIT_MS, runs
 * two requests that do end (one kernel each), prints "ready" and sleeps until killed, so
 * the test can read `gpuspan status`.
 *
 * Usage: unended_requests THREADS WAIT_MS   (LD_PRELOAD=libgpuspan.so, the simulator on the
 * library path, GPUSPAN_MODE=coarse)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

typedef int (*cuInit_t)(unsigned);
typedef int (*cuDeviceGet_t)(int *, int);
typedef int (*cuDevicePrimaryCtxRetain_t)(void **, int);
typedef int (*cuCtxSetCurrent_t)(void *);
typedef int (*cuModuleLoadData_t)(void **, const void *);
typedef int (*cuModuleGetFunction_t)(void **, void *, const char *);
typedef int (*cuLaunchKernel_t)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                unsigned, void *, void **, void **);
typedef int (*cuCtxSynchronize_t)(void);
typedef int (*request_begin_t)(const char *, const char *);
typedef int (*end_t)(void);

static void *ctx, *fn;
static cuCtxSetCurrent_t set_current;
static cuLaunchKernel_t launch;
static request_begin_t request_begin;
static end_t end;

static void kernel(void) {
    unsigned long long ns = 50000;
    void *params[1] = { &ns };
    if (launch(fn, 132, 1, 1, 128, 1, 1, 0, NULL, params, NULL) != 0) { fprintf(stderr, "launch failed\n"); exit(1); }
}

static void *leaky(void *arg) {
    (void)arg;
    set_current(ctx);
    request_begin(NULL, "model=leaky");
    kernel();
    return NULL; /* the request never ends */
}

#define CHECK(call) do { int rc_ = (call); if (rc_ != 0) { fprintf(stderr, "%s: %d\n", #call, rc_); return 1; } } while (0)

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 6;
    int wait_ms = argc > 2 ? atoi(argv[2]) : 1500;
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!h) { fprintf(stderr, "dlopen libcuda.so.1: %s\n", dlerror()); return 1; }
    int dev;
    void *module;
    CHECK(((cuInit_t)dlsym(h, "cuInit"))(0));
    CHECK(((cuDeviceGet_t)dlsym(h, "cuDeviceGet"))(&dev, 0));
    CHECK(((cuDevicePrimaryCtxRetain_t)dlsym(h, "cuDevicePrimaryCtxRetain"))(&ctx, dev));
    set_current = (cuCtxSetCurrent_t)dlsym(h, "cuCtxSetCurrent");
    CHECK(set_current(ctx));
    CHECK(((cuModuleLoadData_t)dlsym(h, "cuModuleLoadData"))(&module, "sim image"));
    CHECK(((cuModuleGetFunction_t)dlsym(h, "cuModuleGetFunction"))(&fn, module, "flash_fwd_kernel"));
    launch = (cuLaunchKernel_t)dlsym(h, "cuLaunchKernel");
    request_begin = (request_begin_t)dlsym(RTLD_DEFAULT, "gpuspan_request_begin");
    end = (end_t)dlsym(RTLD_DEFAULT, "gpuspan_end");
    if (!request_begin || !end) { fprintf(stderr, "libgpuspan.so is not preloaded\n"); return 1; }
    for (int i = 0; i < threads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, leaky, NULL) != 0) return 1;
        pthread_join(t, NULL);
    }
    CHECK(((cuCtxSynchronize_t)dlsym(h, "cuCtxSynchronize"))());
    usleep(wait_ms * 1000);
    for (int i = 0; i < 2; i++) {
        request_begin(NULL, "model=tidy");
        kernel();
        end();
    }
    CHECK(((cuCtxSynchronize_t)dlsym(h, "cuCtxSynchronize"))());
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
