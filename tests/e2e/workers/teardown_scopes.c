/* Scopes ended in a thread's teardown (issue 14, item 5): THREADS worker threads, one after
 * the other (WAIT_MS apart, so the collector frees each exited thread's ring slot for the
 * next), each begins a request and a step, launches one kernel and returns; a pthread_key
 * destructor, which glibc runs after the thread-local destructors (the agent's among them),
 * ends the step and the request, as a C++ RAII range held by a thread-local would. The main
 * thread then synchronizes, prints "ready" and sleeps until killed, so the test can read
 * `gpuspan status`.
 *
 * Usage: teardown_scopes THREADS WAIT_MS   (LD_PRELOAD=libgpuspan.so, the simulator on the
 * library path, GPUSPAN_MODE=coarse)
 */
#define _GNU_SOURCE
#include "sim_driver.h"
#include <pthread.h>
#include <unistd.h>

typedef int (*request_begin_t)(const char *, const char *);
typedef int (*step_begin_t)(unsigned, unsigned);
typedef int (*end_t)(void);

static struct sim_driver d;
static void *fn;
static request_begin_t request_begin;
static step_begin_t step_begin;
static end_t end;
static pthread_key_t key;

/* Runs after the thread's thread-local destructors. */
static void end_in_teardown(void *value) {
    (void)value;
    end(); /* the step */
    end(); /* the request */
}

static void *worker(void *arg) {
    (void)arg;
    d.set_current(d.ctx);
    pthread_setspecific(key, (void *)1);
    request_begin(NULL, "model=teardown");
    step_begin(0, 1);
    sim_launch(&d, fn, NULL, 50000);
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 20;
    int wait_ms = argc > 2 ? atoi(argv[2]) : 20;
    d = sim_driver_open();
    SIM_CHECK(d.get_function(&fn, d.module, "flash_fwd_kernel"));
    request_begin = (request_begin_t)dlsym(RTLD_DEFAULT, "gpuspan_request_begin");
    step_begin = (step_begin_t)dlsym(RTLD_DEFAULT, "gpuspan_step_begin");
    end = (end_t)dlsym(RTLD_DEFAULT, "gpuspan_end");
    if (!request_begin || !step_begin || !end) { fprintf(stderr, "libgpuspan.so is not preloaded\n"); return 1; }
    if (pthread_key_create(&key, end_in_teardown) != 0) return 1;
    for (int i = 0; i < threads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker, NULL) != 0) return 1;
        pthread_join(t, NULL);
        usleep(wait_ms * 1000);
    }
    SIM_CHECK(d.synchronize());
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
