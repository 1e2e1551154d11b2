/* Request scopes that never end (issue 13, item 2): THREADS worker threads each begin a
 * request (gpuspan_request_begin), launch one kernel and exit without ending it, as a
 * request whose thread died on an error would. The main thread then waits WAIT_MS, runs
 * two requests that do end (one kernel each), prints "ready" and sleeps until killed, so
 * the test can read `gpuspan status`.
 *
 * With a third argument `step`, each of those requests also opens a step that never ends
 * (a child scope whose end mark never comes: the agent must give its events back with its
 * request's).
 *
 * Usage: unended_requests THREADS WAIT_MS [step]   (LD_PRELOAD=libgpuspan.so, the simulator
 * on the library path, GPUSPAN_MODE=coarse)
 */
#define _GNU_SOURCE
#include "sim_driver.h"
#include <pthread.h>
#include <unistd.h>
#include <string.h>

typedef int (*request_begin_t)(const char *, const char *);
typedef int (*end_t)(void);
typedef int (*step_begin_t)(unsigned, unsigned);

static struct sim_driver d;
static void *fn;
static request_begin_t request_begin;
static end_t end;
static step_begin_t step_begin; /* NULL: no step */

static void kernel(void) { sim_launch(&d, fn, NULL, 50000); }

static void *leaky(void *arg) {
    (void)arg;
    d.set_current(d.ctx);
    request_begin(NULL, "model=leaky");
    if (step_begin) step_begin(0, 1);
    kernel();
    return NULL; /* the request never ends */
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 6;
    int wait_ms = argc > 2 ? atoi(argv[2]) : 1500;
    d = sim_driver_open();
    SIM_CHECK(d.get_function(&fn, d.module, "flash_fwd_kernel"));
    request_begin = (request_begin_t)dlsym(RTLD_DEFAULT, "gpuspan_request_begin");
    end = (end_t)dlsym(RTLD_DEFAULT, "gpuspan_end");
    if (!request_begin || !end) { fprintf(stderr, "libgpuspan.so is not preloaded\n"); return 1; }
    if (argc > 3 && strcmp(argv[3], "step") == 0) {
        step_begin = (step_begin_t)dlsym(RTLD_DEFAULT, "gpuspan_step_begin");
        if (!step_begin) { fprintf(stderr, "no gpuspan_step_begin\n"); return 1; }
    }
    for (int i = 0; i < threads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, leaky, NULL) != 0) return 1;
        pthread_join(t, NULL);
    }
    SIM_CHECK(d.synchronize());
    usleep(wait_ms * 1000);
    for (int i = 0; i < 2; i++) {
        request_begin(NULL, "model=tidy");
        kernel();
        end();
    }
    SIM_CHECK(d.synchronize());
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
