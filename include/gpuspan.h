/*
 * gpuspan.h -- C ABI of libgpuspan.so, the gpuspan GPU profiling agent.
 *
 * A worker tells the agent where its requests, denoising steps and stages begin and end
 * ("scopes"); the agent attributes every GPU kernel launched inside a scope to it, so each
 * kernel gets the request's trace id, its step and its stage.
 *
 *   gpuspan_request_begin("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
 *                         "model=wan2.1 tenant=gold");
 *   for (uint32_t i = 0; i < 50; i++) {
 *       gpuspan_step_begin(i, 50);
 *       gpuspan_stage_begin("attention.spatial"); launch(...); gpuspan_end();
 *       gpuspan_stage_begin("ffn");               launch(...); gpuspan_end();
 *       gpuspan_end();                                    // the step
 *   }
 *   gpuspan_stage_begin("vae.decode"); launch(...); gpuspan_end();
 *   gpuspan_end();                                        // the request
 *
 * Loading: the functions live in libgpuspan.so. Link with `-lgpuspan` (the library then also
 * starts the agent when it loads), or run the program under `gpuspan run -- PROG` /
 * LD_PRELOAD=libgpuspan.so and find the symbols with dlsym(RTLD_DEFAULT, ...).
 *
 * Return values: the begin functions return the 0-based nesting level of the scope they
 * opened, gpuspan_end() the level of the scope it closed. All of them return
 * GPUSPAN_NOT_COLLECTING (-2) when the agent is not collecting (not started, or inactive
 * because CUPTI is missing or held by another tool, ...): the call is then a no-op costing
 * one atomic load, and the program runs exactly as without the agent. gpuspan_end() also
 * returns -2 when the thread has no open scope. Strictly, only a begin that returned >= 0
 * needs its end; pairing every begin with an end regardless is fine as long as the agent's
 * state does not change in between (the unmatched end then returns -2 and does nothing).
 *
 * Threads: scopes are per calling thread (a stack of up to 64 tracked levels). A scope must
 * be closed on the thread that opened it. Requests running concurrently on different threads
 * keep their own scopes, so their kernels keep their own trace ids. The functions never
 * block, never allocate and never call back into the program.
 *
 * Names: a scope name is stored in a fixed buffer (gpuspan-core's INLINE_NAME_CAP bytes,
 * 256 in this version); longer names are cut, so put the traceparent first (as the request
 * name does) and keep attributes short. The request name is
 * `gpuspan.request <traceparent> <attrs>`, the step name `dit.step <index>/<count>`.
 */
#ifndef GPUSPAN_H
#define GPUSPAN_H

#include <stdint.h>

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Returned by every call when the agent is not collecting (NVTX_NO_PUSH_POP_TRACKING). */
#define GPUSPAN_NOT_COLLECTING (-2)

/*
 * Opens a request scope on the calling thread.
 *
 * traceparent: the W3C traceparent of the caller's span,
 *   "00-<32 hex trace id>-<16 hex span id>-<2 hex flags>"; the request's GPU spans become
 *   children of that span and its kernels carry that trace id. NULL or "" starts a new
 *   trace (the agent makes the trace id).
 * attrs: NULL, or a space-separated list of `key=value` attributes, e.g.
 *   "model=wan2.1 tenant=gold". Keys and values must not contain spaces: percent-encode them
 *   ("a%20b"). Reserved keys: `tracestate=<W3C tracestate header value>` and
 *   `baggage=<W3C baggage header value>` carry the caller's tracestate and baggage (without
 *   the optional whitespace around ',' / ';'); the agent reads capture rules from them.
 *
 * Returns the nesting level of the new scope (0 when it is the thread's outermost), or -2.
 */
int gpuspan_request_begin(const char *traceparent, const char *attrs);

/*
 * Opens a denoising-step scope `dit.step <index>/<count>` on the calling thread (index is
 * 0-based, count the number of steps of the request).
 *
 * Returns the nesting level of the new scope, or -2.
 */
int gpuspan_step_begin(uint32_t index, uint32_t count);

/*
 * Opens a stage scope named `name` on the calling thread. The names "attention.spatial",
 * "attention.temporal", "attention.cross", "ffn", "norm" and "vae.decode" decide the stage
 * of the kernels launched inside; other names are recorded as plain scopes (the kernels'
 * stage then comes from the kernel-name rules). NULL opens an unnamed scope.
 *
 * Returns the nesting level of the new scope, or -2.
 */
int gpuspan_stage_begin(const char *name);

/*
 * Closes the innermost open scope of the calling thread, whichever kind (request, step or
 * stage).
 *
 * Returns the nesting level of the closed scope, or -2 (not collecting, or no open scope).
 */
int gpuspan_end(void);

/*
 * Names the CUDA streams (CUstream / cudaStream_t; at most 4 are kept) on which the scopes
 * the calling thread opens from now on are timed in coarse mode, like PyTorch's "current
 * stream". n = 0 (or streams = NULL) goes back to the default: the legacy default stream,
 * which orders with blocking streams but never sees work on non-blocking ones (spans then
 * say gpuspan.timing=legacy_stream). Call it after creating your streams, and again when
 * the thread switches streams. No allocation, no lock.
 *
 * Returns how many streams were kept, or -2 when the agent is not loaded.
 */
int gpuspan_use_streams(void *const *streams, size_t n);

/*
 * Returns 1 when the agent is loaded and collecting, 0 otherwise (the other calls are then
 * no-ops returning -2).
 */
int gpuspan_is_active(void);

/*
 * Returns the version of libgpuspan.so, e.g. "0.1.0": a static NUL-terminated string, never
 * NULL; do not free it.
 */
const char *gpuspan_version(void);

#ifdef __cplusplus
}
#endif

#endif /* GPUSPAN_H */
