/* More threads opening scopes at once than the agent has rings for (issue 14, item 5: 16
 * rings; the rest use the shared boundary queue): THREADS threads, all alive together
 * (a barrier before and after), each runs REQUESTS requests of one kernel in coarse mode.
 * The main thread then synchronizes, prints "ready" and sleeps until killed, so the test can
 * read `gpuspan status`.
 *
 * Usage: many_threads THREADS REQUESTS   (LD_PRELOAD=libgpuspan.so, the simulator on the
 * library path, GPUSPAN_MODE=coarse)
 */
#define _GNU_SOURCE
#include "sim_driver.h"
#include <pthread.h>
#include <unistd.h>

typedef int (*request_begin_t)(const char *, const char *);
typedef int (*end_t)(void);

static struct sim_driver d;
static void *fn;
static request_begin_t request_begin;
static end_t end;
static pthread_barrier_t started, finished;
static int requests;

static void *worker(void *arg) {
    (void)arg;
    d.set_current(d.ctx);
    pthread_barrier_wait(&started); /* every thread alive before any opens a scope */
    for (int i = 0; i < requests; i++) {
        request_begin(NULL, "model=many");
        sim_launch(&d, fn, NULL, 20000);
        end();
    }
    pthread_barrier_wait(&finished); /* and none exits before all are done */
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 20;
    requests = argc > 2 ? atoi(argv[2]) : 2;
    d = sim_driver_open();
    SIM_CHECK(d.get_function(&fn, d.module, "flash_fwd_kernel"));
    request_begin = (request_begin_t)dlsym(RTLD_DEFAULT, "gpuspan_request_begin");
    end = (end_t)dlsym(RTLD_DEFAULT, "gpuspan_end");
    if (!request_begin || !end) { fprintf(stderr, "libgpuspan.so is not preloaded\n"); return 1; }
    pthread_barrier_init(&started, NULL, (unsigned)threads);
    pthread_barrier_init(&finished, NULL, (unsigned)threads);
    pthread_t t[256];
    if (threads > 256) threads = 256;
    for (int i = 0; i < threads; i++)
        if (pthread_create(&t[i], NULL, worker, NULL) != 0) return 1;
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    SIM_CHECK(d.synchronize());
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
