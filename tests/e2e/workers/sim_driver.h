/* What the C test workers share: the CUDA driver entry points they call (cuda.h prototypes,
 * CUresult as int, handles as void *), resolved from libcuda.so.1 at run time (the simulated
 * H100 on the test's library path), and glibc's own allocator entry points for the workers
 * that interpose malloc. */
#ifndef GPUSPAN_TEST_SIM_DRIVER_H
#define GPUSPAN_TEST_SIM_DRIVER_H

#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

typedef int (*cuInit_t)(unsigned);
typedef int (*cuDeviceGet_t)(int *, int);
typedef int (*cuDevicePrimaryCtxRetain_t)(void **, int);
typedef int (*cuCtxSetCurrent_t)(void *);
typedef int (*cuModuleLoadData_t)(void **, const void *);
typedef int (*cuModuleGetFunction_t)(void **, void *, const char *);
typedef int (*cuStreamCreate_t)(void **, unsigned);
typedef int (*cuLaunchKernel_t)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                unsigned, void *, void **, void **);
typedef int (*cuCtxSynchronize_t)(void);

/* The driver, device 0's primary context (current on the calling thread) and a module. */
struct sim_driver {
    void *ctx;
    void *module;
    cuCtxSetCurrent_t set_current;
    cuModuleGetFunction_t get_function;
    cuStreamCreate_t stream_create;
    cuLaunchKernel_t launch;
    cuCtxSynchronize_t synchronize;
};

static inline void *sim_sym(void *h, const char *name) {
    void *p = dlsym(h, name);
    if (!p) { fprintf(stderr, "libcuda.so.1 has no %s\n", name); exit(1); }
    return p;
}

#define SIM_CHECK(call) do { int rc_ = (call); if (rc_ != 0) { fprintf(stderr, "%s: %d\n", #call, rc_); exit(1); } } while (0)

/* Opens libcuda.so.1 and initialises CUDA (where CUDA_INJECTION64_PATH activates the
 * agent), or exits 1 saying why. */
static inline struct sim_driver sim_driver_open(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!h) { fprintf(stderr, "dlopen libcuda.so.1: %s\n", dlerror()); exit(1); }
    struct sim_driver d;
    int dev;
    SIM_CHECK(((cuInit_t)sim_sym(h, "cuInit"))(0));
    SIM_CHECK(((cuDeviceGet_t)sim_sym(h, "cuDeviceGet"))(&dev, 0));
    SIM_CHECK(((cuDevicePrimaryCtxRetain_t)sim_sym(h, "cuDevicePrimaryCtxRetain"))(&d.ctx, dev));
    d.set_current = (cuCtxSetCurrent_t)sim_sym(h, "cuCtxSetCurrent");
    SIM_CHECK(d.set_current(d.ctx));
    SIM_CHECK(((cuModuleLoadData_t)sim_sym(h, "cuModuleLoadData"))(&d.module, "sim image"));
    d.get_function = (cuModuleGetFunction_t)sim_sym(h, "cuModuleGetFunction");
    d.stream_create = (cuStreamCreate_t)sim_sym(h, "cuStreamCreate");
    d.launch = (cuLaunchKernel_t)sim_sym(h, "cuLaunchKernel");
    d.synchronize = (cuCtxSynchronize_t)sim_sym(h, "cuCtxSynchronize");
    return d;
}

/* Launches `f` on `stream` (NULL: the legacy stream) with the simulator's one parameter, the
 * kernel's duration in ns; exits 1 when the launch fails. */
static inline void sim_launch(const struct sim_driver *d, void *f, void *stream, unsigned long long dur_ns) {
    void *params[1] = { &dur_ns };
    SIM_CHECK(d->launch(f, 132, 1, 1, 128, 1, 1, 0, stream, params, NULL));
}

#endif
