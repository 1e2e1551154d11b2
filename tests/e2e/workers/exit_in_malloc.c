/* A worker whose SIGTERM handler calls exit(0) while the signalled thread is inside malloc,
 * holding its arena's lock: the case where exit handlers that allocate on that thread wait
 * for themselves forever (issue 11, item 3; glibc's malloc takes a non-recursive arena lock,
 * malloc/arena.c).
 *
 * The program interposes malloc & co. (exported with -rdynamic, so they win over libc's for
 * every library, libgpuspan.so included) with glibc's own __libc_* functions, allocations
 * behind one non-recursive lock for the main thread, its "arena"; other threads allocate
 * unhindered, as threads on their own glibc arenas do. It initialises the (simulated) CUDA driver, which
 * activates the preloaded agent, launches kernels and synchronises, prints "in malloc" and
 * waits inside a malloc call, holding the lock, for the SIGTERM whose handler calls exit(0).
 *
 * Usage: exit_in_malloc KERNELS   (LD_PRELOAD=libgpuspan.so, libcuda.so.1 on the library path)
 */
#define _GNU_SOURCE
#include "sim_driver.h"
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

static pthread_mutex_t main_arena = PTHREAD_MUTEX_INITIALIZER; /* PTHREAD_MUTEX_NORMAL */
static volatile int hold_in_malloc;

static int on_main_thread(void) { return gettid() == getpid(); }

static void arena_lock(void) {
    if (on_main_thread()) pthread_mutex_lock(&main_arena);
}
static void arena_unlock(void) {
    if (on_main_thread()) pthread_mutex_unlock(&main_arena);
}

void *malloc(size_t n) {
    arena_lock();
    void *p = __libc_malloc(n);
    if (hold_in_malloc && on_main_thread()) {
        static const char line[] = "in malloc\n";
        if (write(1, line, sizeof line - 1) < 0) abort();
        for (;;) pause(); /* the SIGTERM handler exits from here */
    }
    arena_unlock();
    return p;
}
/* free takes no lock: glibc returns small chunks to the thread's tcache without the arena
 * lock (malloc.c, tcache_put), and exit() itself frees glibc's list of thread-local
 * destructors on the exiting thread (stdlib/cxa_thread_atexit_impl.c) before any atexit
 * handler runs. */
void free(void *p) { __libc_free(p); }
void *calloc(size_t n, size_t m) {
    arena_lock();
    void *p = __libc_calloc(n, m);
    arena_unlock();
    return p;
}
void *realloc(void *q, size_t n) {
    arena_lock();
    void *p = __libc_realloc(q, n);
    arena_unlock();
    return p;
}
void *memalign(size_t a, size_t n) {
    arena_lock();
    void *p = __libc_memalign(a, n);
    arena_unlock();
    return p;
}
void *aligned_alloc(size_t a, size_t n) { return memalign(a, n); }
int posix_memalign(void **out, size_t a, size_t n) {
    void *p = memalign(a, n);
    if (!p) return 12; /* ENOMEM */
    *out = p;
    return 0;
}

static void exit_in_handler(int sig) {
    (void)sig;
    exit(0);
}

int main(int argc, char **argv) {
    int kernels = argc > 1 ? atoi(argv[1]) : 100;
    struct sim_driver d = sim_driver_open();
    void *f;
    SIM_CHECK(d.get_function(&f, d.module, "flash_fwd_kernel"));
    for (int i = 0; i < kernels; i++) sim_launch(&d, f, NULL, 20000);
    SIM_CHECK(d.synchronize());
    printf("launched %d kernels\n", kernels);
    fflush(stdout);
    signal(SIGTERM, exit_in_handler);
    hold_in_malloc = 1;
    void *volatile p = malloc(64); /* volatile: gcc may drop a malloc / free pair */
    free(p);
    return 0;
}
