/* A CUDA driver that does nothing (issue 14, item 5's bench): the entry points the gpuspan
 * agent's coarse mode calls on the application thread (cuEventRecord, cuCtxGetCurrent,
 * cuStreamIsCapturing, ...) and those a worker needs to get a current context, each
 * returning CUDA_SUCCESS at once with made-up handles. Built as libcuda.so.1 by
 * benches/nvtx_push_pop.rs, so what the bench measures is the agent's own code, not a
 * driver's event call. cuda.h prototypes, with CUresult as int and handles as void *.
 */
#include <stddef.h>
#include <stdint.h>

static char context_object;
static void *current;
static uintptr_t next_event = 0x10000;

int cuInit(unsigned flags) { (void)flags; return 0; }
int cuDriverGetVersion(int *v) { *v = 12090; return 0; }
int cuDeviceGet(int *dev, int ordinal) { *dev = ordinal; return 0; }
int cuDeviceGetCount(int *n) { *n = 1; return 0; }
int cuDevicePrimaryCtxRetain(void **ctx, int dev) { (void)dev; *ctx = &context_object; return 0; }
int cuCtxSetCurrent(void *ctx) { current = ctx; return 0; }
int cuCtxGetCurrent(void **ctx) { *ctx = current; return 0; }
/* Distinct handles, as a real driver's (the agent's pool tells events apart by handle). */
int cuEventCreate(void **ev, unsigned flags) { (void)flags; *ev = (void *)__atomic_add_fetch(&next_event, 16, __ATOMIC_RELAXED); return 0; }
int cuEventDestroy_v2(void *ev) { (void)ev; return 0; }
int cuEventRecord(void *ev, void *stream) { (void)ev; (void)stream; return 0; }
int cuEventQuery(void *ev) { (void)ev; return 0; }
int cuEventElapsedTime(float *ms, void *a, void *b) { (void)a; (void)b; *ms = 0.001f; return 0; }
int cuStreamIsCapturing(void *stream, int *status) { (void)stream; *status = 0; return 0; }
int cuThreadExchangeStreamCaptureMode(int *mode) { *mode = 0; return 0; }
int cuGetErrorName(int e, const char **s) { (void)e; *s = "CUDA_SUCCESS"; return 0; }
int cuGetErrorString(int e, const char **s) { (void)e; *s = "no error"; return 0; }
