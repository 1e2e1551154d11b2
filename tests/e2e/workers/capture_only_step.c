/* A step that only captures (issue 11 item 1): one request of two steps in fine mode. Step 0
 * launches KERNELS kernels that run. Step 1 captures KERNELS launches into a CUDA graph
 * (cuStreamBeginCapture_v2 in GLOBAL mode on a non-blocking stream, cuStreamEndCapture) and
 * launches no graph, as a warm-up that records a graph for later would: its launches become
 * graph nodes and make no GPU record. The worker prints "ready" after the request and
 * sleeps until killed, so the test can watch the request's spans being finalized.
 *
 * With MODE "inside", step 1 begins and ends inside the capture (a step recorded into a
 * graph, not run) instead of around it.
 *
 * Usage: capture_only_step KERNELS [around|inside]   (LD_PRELOAD=libgpuspan.so, the simulator
 * on the library path, GPUSPAN_MODE=fine)
 */
#define _GNU_SOURCE
#include "sim_driver.h"
#include <stdint.h>
#include <string.h>
#include <unistd.h>

typedef int (*request_begin_t)(const char *, const char *);
typedef int (*step_begin_t)(uint32_t, uint32_t);
typedef int (*end_t)(void);
typedef int (*begin_capture_t)(void *, unsigned);
typedef int (*end_capture_t)(void *, void **);
typedef int (*graph_destroy_t)(void *);

int main(int argc, char **argv) {
    int kernels = argc > 1 ? atoi(argv[1]) : 3;
    int inside = argc > 2 && strcmp(argv[2], "inside") == 0;
    struct sim_driver d = sim_driver_open();
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    begin_capture_t begin_capture = (begin_capture_t)sim_sym(h, "cuStreamBeginCapture_v2");
    end_capture_t end_capture = (end_capture_t)sim_sym(h, "cuStreamEndCapture");
    graph_destroy_t graph_destroy = (graph_destroy_t)sim_sym(h, "cuGraphDestroy");
    void *fn, *stream, *graph = NULL;
    SIM_CHECK(d.get_function(&fn, d.module, "flash_fwd_kernel"));
    SIM_CHECK(d.stream_create(&stream, 1 /* CU_STREAM_NON_BLOCKING */));
    request_begin_t request_begin = (request_begin_t)dlsym(RTLD_DEFAULT, "gpuspan_request_begin");
    step_begin_t step_begin = (step_begin_t)dlsym(RTLD_DEFAULT, "gpuspan_step_begin");
    end_t end = (end_t)dlsym(RTLD_DEFAULT, "gpuspan_end");
    if (!request_begin || !step_begin || !end) { fprintf(stderr, "libgpuspan.so is not preloaded\n"); return 1; }

    request_begin(NULL, "model=capture-only");
    step_begin(0, 2);
    for (int i = 0; i < kernels; i++) sim_launch(&d, fn, stream, 40000);
    end();
    if (!inside) step_begin(1, 2);
    SIM_CHECK(begin_capture(stream, 0 /* CU_STREAM_CAPTURE_MODE_GLOBAL */));
    if (inside) step_begin(1, 2);
    for (int i = 0; i < kernels; i++) sim_launch(&d, fn, stream, 40000);
    if (inside) end();
    SIM_CHECK(end_capture(stream, &graph));
    if (!inside) end();
    end();
    SIM_CHECK(d.synchronize());
    SIM_CHECK(graph_destroy(graph));
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
