//! The hot path: NVTX range push / pop on application threads.
//!
//! Rules (DESIGN.md "Hot-path rules"): no allocation, no lock, no syscall besides the first
//! `gettid` of a thread, no logging, no panic across FFI; one atomic load when the agent is
//! not collecting. The one exception is a thread's first boundary, which takes a ring
//! (allocating one unless its registry slot kept an exited thread's) under a `try_lock` that
//! never waits ([`crate::thread_ring`]) and arms the thread's exit guard (`ThreadExit`). Each push and pop makes a 40-byte scope event that names its scope by a
//! key, the name itself crossing once per thread ([`crate::scope_names`]); in coarse mode it
//! also records a pooled CUDA event on each of the thread's streams ([`use_streams`]; the
//! legacy default stream when none were named) and makes a mark ([`crate::coarse::mark`]);
//! both go in one entry on the thread's own ring ([`crate::thread_ring`]; a full ring drops
//! the entry and counts it); while CUPTI collects
//! it pushes the scope id as a CUPTI external correlation id (kind CUSTOM2), and pops it
//! at the end only if it pushed it.
//!
//! NVTX nesting is per thread *per domain*: each domain keeps its own count of open ranges,
//! only scope domains ([`crate::nvtx_domains`]: the default one, `gpuspan`,
//! `GPUSPAN_NVTX_DOMAINS`) open scopes, and a pop closes the innermost range of its own
//! domain, so NCCL's ranges can neither open nor close ours. ASCII, wide (`W`) and
//! registered-string messages all name scopes.

use crate::coarse::mark::{drop_mark, record_boundary, Recorded, MAX_SCOPE_STREAMS};
use crate::coarse::pool::EventStash;
use crate::thread_ring::{Boundary, Pushed, RingSide};
use crate::shared::{shared, Shared};
use gpuspan_core::activity::GPUSPAN_EXTERNAL_KIND;
use gpuspan_cupti::events::Stream;
use crate::nvtx_domains::{self, is_scope_domain, DOMAIN_SLOTS};
use crate::scope_names::{QueuedScope, ThreadNames, NAME_DROPPED};
use gpuspan_core::scope::{ScopeId, INLINE_NAME_CAP};
use gpuspan_core::spans::TimingSource;
use gpuspan_cupti::nvtx::{message_text, wide_to_utf8, EventAttributes, WChar};
use std::cell::Cell;
use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicU64, Ordering};

/// Deepest nesting of scopes tracked per thread (all scope domains together); deeper ranges
/// are counted (`nvtx_ranges_too_deep`) and keep NVTX's return values right, but open no
/// scope.
pub const MAX_DEPTH: usize = 64;

/// Value NVTX returns for push/pop when not tracked (`NVTX_NO_PUSH_POP_TRACKING`, nvtxImplCore.h).
pub const NO_PUSH_POP_TRACKING: i32 = -2;

struct ThreadScopes {
    /// Entries on the scope stack (at most [`MAX_DEPTH`]).
    depth: Cell<usize>,
    ids: [Cell<ScopeId>; MAX_DEPTH],
    /// NVTX domain slot of each entry ([`crate::nvtx_domains`]).
    domains: [Cell<u8>; MAX_DEPTH],
    /// `launches` when each open scope began.
    launch_base: [Cell<u64>; MAX_DEPTH],
    /// Open ranges per NVTX domain slot (NVTX push / pop nesting is per thread per domain,
    /// `nvToolsExt.h`), scopes or not: the push / pop return values.
    open: [Cell<u32>; DOMAIN_SLOTS],
    /// Of a scope domain's open ranges, those pushed beyond [`MAX_DEPTH`] (no scope).
    too_deep: [Cell<u32>; DOMAIN_SLOTS],
    tid: Cell<u32>,
    /// Successful calls of this thread that make one GPU record each (counted on EXIT by
    /// [`api_callback`]).
    launches: Cell<u64>,
    /// Successful graph launches of this thread (each makes one record per graph node).
    graph_launches: Cell<u64>,
    /// `graph_launches` when each open scope began.
    graph_base: [Cell<u64>; MAX_DEPTH],
    /// Whether this thread had a stream capture open when each open scope began.
    began_in_capture: [Cell<bool>; MAX_DEPTH],
    /// Runtime API calls in progress: a driver call inside one is the runtime's own
    /// and is not counted again.
    runtime_depth: Cell<u32>,
    /// Stream captures this thread has begun and not ended (driver begin / end capture
    /// callbacks). While one is open, this thread's launches are taken as captured: they
    /// become graph nodes and make no GPU record now.
    capturing: Cell<u32>,
    /// Whether the scope at each level pushed an external correlation id.
    pushed: [Cell<bool>; MAX_DEPTH],
    /// Streams scopes of this thread are timed on in coarse mode ([`use_streams`]).
    streams: [Cell<usize>; MAX_SCOPE_STREAMS],
    /// How many of `streams` are set (0: the legacy default stream).
    n_streams: Cell<u8>,
    /// Scope names this thread has sent ([`crate::scope_names`]).
    names: ThreadNames,
    /// This thread's ring ([`crate::thread_ring`]), here so that a boundary takes one
    /// thread-local access; retired at the thread's exit by [`ThreadExit`].
    ring: RingSide,
    /// This thread's block of scope ids ([`next_scope_id`]): the next and the end.
    id_next: Cell<u64>,
    id_end: Cell<u64>,
    /// The address of the counter the block came from (an agent generation's).
    id_counter: Cell<usize>,
    /// `fine_on` when the block was taken.
    id_fine_on: Cell<bool>,
    /// Coarse mode: this thread's free CUDA events at hand ([`crate::coarse::pool`]), given
    /// back to the pool when the thread exits ([`ThreadExit`]).
    stash: EventStash,
}

// The scope state has no destructor, so it stays readable through the thread's whole
// teardown: a range popped by a thread-local's or a `pthread_key` destructor that runs
// after [`ThreadExit`] still finds its scope, and the boundary takes the shared queue. With a
// destructor, such a pop found the state gone and its scope stayed open until the collector
// gave it up. It also spares every boundary the thread-local's "alive?" check.
const _: () = assert!(!std::mem::needs_drop::<ThreadScopes>());

/// The thread's exit, for the scope state (which has no destructor of its own): its ring is
/// abandoned and its stash of events given back (`crate::thread_ring`,
/// [`crate::coarse::pool::EventPool::retire_stash`]); a boundary made later in the thread's
/// teardown takes the shared queue and one event at a time. Armed at the thread's first
/// scope ([`thread_id`]).
struct ThreadExit;

impl Drop for ThreadExit {
    fn drop(&mut self) {
        let _ = SCOPES.try_with(retire_thread);
    }
}

/// What [`ThreadExit`] does, also done at once when it cannot be armed (a first scope opened
/// in the thread's teardown, after the destructors already ran).
fn retire_thread(t: &ThreadScopes) {
    t.ring.retire();
    if let Some(c) = shared().and_then(|a| a.coarse.as_ref()) {
        c.pool.retire_stash(&t.stash);
    }
}

thread_local! {
    static SCOPES: ThreadScopes = const {
        ThreadScopes {
            depth: Cell::new(0),
            ids: [const { Cell::new(0) }; MAX_DEPTH],
            domains: [const { Cell::new(0) }; MAX_DEPTH],
            launch_base: [const { Cell::new(0) }; MAX_DEPTH],
            open: [const { Cell::new(0) }; DOMAIN_SLOTS],
            too_deep: [const { Cell::new(0) }; DOMAIN_SLOTS],
            tid: Cell::new(0),
            launches: Cell::new(0),
            graph_launches: Cell::new(0),
            graph_base: [const { Cell::new(0) }; MAX_DEPTH],
            began_in_capture: [const { Cell::new(false) }; MAX_DEPTH],
            runtime_depth: Cell::new(0),
            capturing: Cell::new(0),
            pushed: [const { Cell::new(false) }; MAX_DEPTH],
            streams: [const { Cell::new(0) }; MAX_SCOPE_STREAMS],
            n_streams: Cell::new(0),
            names: ThreadNames::new(),
            ring: RingSide::new(),
            id_next: Cell::new(0),
            id_end: Cell::new(0),
            id_counter: Cell::new(0),
            id_fine_on: Cell::new(false),
            stash: EventStash::new(),
        }
    };
    static THREAD_EXIT: ThreadExit = const { ThreadExit };
}

/// The CUPTI subscriber callback: counts this thread's successful launch / copy / set calls
/// (only those callback ids are enabled, `ActivityApi::enable_launch_callbacks`), so a
/// scope's end can say how many GPU records to expect. Thread-local counters only: no
/// lock, no allocation.
///
/// # Safety
/// Called by CUPTI with its callback arguments (`data` a `CUpti_CallbackData*` for the API
/// domains).
pub unsafe extern "C" fn api_callback(_userdata: *mut c_void, domain: u32, cbid: u32, data: *const c_void) {
    use gpuspan_cupti::activity::{API_ENTER, API_EXIT, DOMAIN_DRIVER_API, DOMAIN_RUNTIME_API};
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: CUPTI's callback data for an API domain (contract).
        let Some((site, ret)) = (unsafe { gpuspan_cupti::activity::callback_site_and_result(data) }) else {
            return;
        };
        // Code about to be unloaded: its kernels' names are read first (crate::unload).
        if gpuspan_cupti::activity::is_unload_callback(domain, cbid) {
            if site == API_ENTER {
                crate::unload::before_unload();
            }
            return;
        }
        // A stream capture begun / ended by this thread (driver level: the runtime's
        // cudaStreamBeginCapture reaches the driver's). An ended capture is over whatever
        // EndCapture returns (INVALIDATED included).
        if gpuspan_cupti::activity::is_capture_begin_callback(domain, cbid) {
            if site == API_EXIT && ret == Some(0) {
                let _ = SCOPES.try_with(|t| t.capturing.set(t.capturing.get() + 1));
            }
            return;
        }
        if gpuspan_cupti::activity::is_capture_end_callback(domain, cbid) {
            if site == API_EXIT {
                let _ = SCOPES.try_with(|t| t.capturing.set(t.capturing.get().saturating_sub(1)));
            }
            return;
        }
        // Allocation calls (enabled for the OOM rule) make no GPU record: errors only. A
        // graph launch makes one record per node: the scope's count becomes unknown.
        let alloc = gpuspan_cupti::activity::is_alloc_callback(domain, cbid);
        let graph = gpuspan_cupti::activity::is_graph_launch_callback(domain, cbid);
        let succeeded = |t: &ThreadScopes| {
            if t.capturing.get() > 0 {
                // Into a capture: a graph node, no GPU record until the graph launches, so
                // not counted.
            } else if graph {
                t.graph_launches.set(t.graph_launches.get() + 1);
            } else if !alloc {
                t.launches.set(t.launches.get() + 1);
            }
        };
        let _ = SCOPES.try_with(|t| match (domain, site) {
            (DOMAIN_RUNTIME_API, API_ENTER) => t.runtime_depth.set(t.runtime_depth.get() + 1),
            (DOMAIN_RUNTIME_API, API_EXIT) => {
                t.runtime_depth.set(t.runtime_depth.get().saturating_sub(1));
                match ret {
                    Some(0) => succeeded(t),
                    None => {}
                    Some(code) => count_api_error(code),
                }
            }
            (DOMAIN_DRIVER_API, API_EXIT) if t.runtime_depth.get() == 0 => match ret {
                Some(0) => succeeded(t),
                None => {}
                Some(code) => count_api_error(code),
            },
            _ => {}
        });
    });
}

/// A failed GPU-work call (the anomaly rules' `cuda_error` / `oom`): two relaxed atomic adds.
fn count_api_error(code: i32) {
    if let Some(a) = shared() {
        a.counters.api_errors.fetch_add(1, Ordering::Relaxed);
        // CUDA_ERROR_OUT_OF_MEMORY (cuda.h) = cudaErrorMemoryAllocation (driver_types.h) = 2.
        if code == 2 {
            let scope = SCOPES.try_with(|t| t.depth.get().checked_sub(1).map_or(0, |d| t.ids[d].get())).unwrap_or(0);
            a.counters.last_oom_scope.store(scope, Ordering::Relaxed);
            a.counters.api_ooms.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// This thread's id, asked of the kernel at its first scope, which also arms [`ThreadExit`].
fn thread_id(t: &ThreadScopes) -> u32 {
    let v = t.tid.get();
    if v != 0 {
        return v;
    }
    first_scope_of_thread(t)
}

#[cold]
#[inline(never)]
fn first_scope_of_thread(t: &ThreadScopes) -> u32 {
    if THREAD_EXIT.try_with(|_| ()).is_err() {
        retire_thread(t);
    }
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
    t.tid.set(tid);
    tid
}

/// Sets the CUDA streams (`CUstream` / `cudaStream_t` handles as addresses) that scopes
/// opened afterwards on this thread are timed on in coarse mode, like PyTorch's "current
/// stream"; the first [`MAX_SCOPE_STREAMS`] are kept, and an empty slice goes back to the
/// legacy default stream. Returns how many were kept. No allocation, no lock.
pub fn use_streams(streams: &[usize]) -> usize {
    let n = streams.len().min(MAX_SCOPE_STREAMS);
    let _ = SCOPES.try_with(|t| {
        for (i, s) in streams[..n].iter().enumerate() {
            t.streams[i].set(*s);
        }
        t.n_streams.set(n as u8);
    });
    n
}

/// This thread's streams, copied out (no allocation).
fn thread_streams(t: &ThreadScopes) -> ([Stream; MAX_SCOPE_STREAMS], usize) {
    let mut out = [Stream::LEGACY; MAX_SCOPE_STREAMS];
    let n = t.n_streams.get() as usize;
    for (i, s) in out.iter_mut().enumerate().take(n) {
        *s = Stream::from_raw(t.streams[i].get());
    }
    (out, n)
}

/// Opens a scope named `name` on this thread, in the default NVTX domain (the C / Rust /
/// Python API and `nvtxRangePush*`). Returns the 0-based nesting level of the new range
/// (NVTX's `nvtxRangePush*` contract), or [`NO_PUSH_POP_TRACKING`] when inactive.
pub fn scope_begin(name: &[u8]) -> i32 {
    range_begin(0, name)
}

/// A range push in NVTX domain `slot` ([`crate::nvtx_domains`]): a scope when the domain is a
/// scope domain and the stack has room, otherwise only counted for the return value. Returns
/// the range's 0-based level within its domain, or [`NO_PUSH_POP_TRACKING`] when inactive.
pub fn range_begin(slot: usize, name: &[u8]) -> i32 {
    let Some(a) = shared() else { return NO_PUSH_POP_TRACKING };
    if !a.collecting.load(Ordering::Relaxed) {
        return NO_PUSH_POP_TRACKING;
    }
    let slot = slot.min(DOMAIN_SLOTS - 1);
    SCOPES.try_with(|t| {
        let level = t.open[slot].get();
        t.open[slot].set(level.saturating_add(1));
        if !is_scope_domain(slot) {
            return level as i32;
        }
        let depth = t.depth.get();
        if depth >= MAX_DEPTH {
            t.too_deep[slot].set(t.too_deep[slot].get() + 1);
            a.counters.nvtx_ranges_too_deep.fetch_add(1, Ordering::Relaxed);
            return level as i32;
        }
        t.depth.set(depth + 1);
        let parent = if depth == 0 { 0 } else { t.ids[depth - 1].get() };
        let (id, pushed) = next_scope_id(a, t);
        t.ids[depth].set(id);
        t.domains[depth].set(slot as u8);
        t.launch_base[depth].set(t.launches.get());
        t.graph_base[depth].set(t.graph_launches.get());
        t.began_in_capture[depth].set(t.capturing.get() > 0);
        t.pushed[depth].set(pushed);
        let scope = begin_event(a, id, parent, thread_id(t), &t.names, name, pushed);
        let mut mark = Recorded::new(false, TimingSource::LegacyStream);
        let marked = a.coarse.as_ref().map(|c| {
            let (streams, n) = thread_streams(t);
            record_boundary(c, &t.stash, &mut mark, depth == 0, &streams[..n]);
        });
        send(a, &t.ring, &scope, marked.map(|()| &mark));
        level as i32
    })
    .unwrap_or(NO_PUSH_POP_TRACKING)
}

/// Scope ids a thread takes from `Shared::next_scope_id` at a time: one `lock xadd` per this
/// many scopes instead of one per scope (issue 14, item 5).
pub const SCOPE_ID_BLOCK: u64 = 64;

/// The next scope id of this thread, from its block of [`SCOPE_ID_BLOCK`] ids, with `fine_on`
/// as the scope reads it (whether it pushes its external correlation id). A new block is
/// taken when the block is used up, was taken from another agent generation's counter (a
/// forked child), or was taken before `fine_on` last changed as this thread saw it. Ids are
/// unique and grow on each thread; across threads they are no longer in the order scopes
/// began.
///
/// A fine window (window.rs `arm`) sets `fine_on`, then reads the counter as its `first_id`,
/// and takes only scopes numbered from there. A block is taken whole before or after that
/// read (a `fetch_add` of the block size), and the `fine_on` returned is always read (SeqCst)
/// after the block was taken (a block's first id reads it again after the `fetch_add`), so a
/// scope numbered at or past `first_id` saw `fine_on` and pushed its external correlation
/// id, as when every scope took its id alone. Taking a new block when `fine_on` changes keeps
/// a thread from opening a window's first units with ids of an older block, which the window
/// would pass over.
#[inline(always)]
fn next_scope_id(a: &Shared, t: &ThreadScopes) -> (ScopeId, bool) {
    let counter = &a.next_scope_id as *const AtomicU64 as usize;
    let fine_on = a.fine_on.load(Ordering::SeqCst);
    let next = t.id_next.get();
    if next < t.id_end.get() && t.id_counter.get() == counter && t.id_fine_on.get() == fine_on {
        t.id_next.set(next + 1);
        return (next, fine_on);
    }
    let first = a.next_scope_id.fetch_add(SCOPE_ID_BLOCK, Ordering::SeqCst);
    let fine_on = a.fine_on.load(Ordering::SeqCst);
    t.id_next.set(first + 1);
    t.id_end.set(first + SCOPE_ID_BLOCK);
    t.id_counter.set(counter);
    t.id_fine_on.set(fine_on);
    (first, fine_on)
}

/// Makes the begin event, its name as a key (the name itself queued once per thread, or with
/// every push for a long name: [`crate::scope_names`]; [`NAME_DROPPED`], counted as a
/// dropped scope event, when the name queue is full), and pushes the external correlation
/// id when `push`. Its `ts_ticks` is now, a boundary-clock reading ([`Shared::boundary_ticks`]).
#[inline(always)]
fn begin_event(a: &Shared, id: ScopeId, parent: ScopeId, thread_id: u32, names: &ThreadNames, name: &[u8], push: bool) -> QueuedScope {
    let ts_ticks = a.boundary_ticks();
    if push {
        if let Some(api) = &a.api {
            api.push_external_correlation(GPUSPAN_EXTERNAL_KIND, id);
        }
    }
    let name = a.scope_names.key_of(names, name).unwrap_or_else(|| {
        a.counters.scope_events_dropped.fetch_add(1, Ordering::Relaxed);
        NAME_DROPPED
    });
    QueuedScope::Begin { id, parent, thread_id, ts_ticks, name }
}

/// Queues a boundary: on the thread's ring ([`crate::thread_ring`]), or, for a thread without
/// one, on the shared queue (`Shared::scope_queue`). A full ring or queue drops the
/// boundary: counted (`scope_events_dropped`, `marks_dropped`), and the mark's events go back
/// to the pool.
#[inline(always)]
fn send(a: &Shared, ring: &RingSide, scope: &QueuedScope, mark: Option<&Recorded>) {
    let dropped = match a.thread_rings.push(ring, scope, mark) {
        Pushed::Ring => return,
        Pushed::Full => Boundary { scope: *scope, mark: mark.copied() },
        Pushed::NoRing => match a.scope_queue.push(Boundary { scope: *scope, mark: mark.copied() }) {
            Ok(()) => return,
            Err(b) => b,
        },
    };
    if !dropped.scope.name_dropped() {
        a.counters.scope_events_dropped.fetch_add(1, Ordering::Relaxed);
    }
    if let (Some(m), Some(c)) = (&dropped.mark, &a.coarse) {
        drop_mark(c, m);
    }
}

/// Closes the innermost scope of this thread in the default NVTX domain. Returns the
/// nesting level of the closed range, or [`NO_PUSH_POP_TRACKING`] when inactive or nothing
/// is open.
pub fn scope_end() -> i32 {
    range_end(0)
}

/// A range pop in NVTX domain `slot`: closes that domain's innermost range (a pop in another
/// domain never closes it). When the range is a scope that is not the innermost one of the
/// thread (scope domains interleaved), it is taken out of the middle of the stack. Returns
/// the closed range's level within its domain, or [`NO_PUSH_POP_TRACKING`].
pub fn range_end(slot: usize) -> i32 {
    let Some(a) = shared() else { return NO_PUSH_POP_TRACKING };
    let slot = slot.min(DOMAIN_SLOTS - 1);
    SCOPES.try_with(|t| {
        let open = t.open[slot].get();
        if open == 0 {
            return NO_PUSH_POP_TRACKING;
        }
        t.open[slot].set(open - 1);
        let level = (open - 1) as i32;
        if !is_scope_domain(slot) {
            return level;
        }
        if t.too_deep[slot].get() > 0 {
            t.too_deep[slot].set(t.too_deep[slot].get() - 1);
            return level;
        }
        let depth = t.depth.get();
        let Some(pos) = (0..depth).rev().find(|&i| t.domains[i].get() as usize == slot) else {
            return level;
        };
        let id = t.ids[pos].get();
        let pushed = t.pushed[pos].get();
        let launch_base = t.launch_base[pos].get();
        let graph_base = t.graph_base[pos].get();
        let began_in_capture = t.began_in_capture[pos].get();
        for i in pos..depth - 1 {
            t.ids[i].set(t.ids[i + 1].get());
            t.domains[i].set(t.domains[i + 1].get());
            t.launch_base[i].set(t.launch_base[i + 1].get());
            t.graph_base[i].set(t.graph_base[i + 1].get());
            t.began_in_capture[i].set(t.began_in_capture[i + 1].get());
            t.pushed[i].set(t.pushed[i + 1].get());
        }
        t.depth.set(depth - 1);
        t.ids[depth - 1].set(0);
        t.pushed[depth - 1].set(false);
        if id == 0 {
            return level;
        }
        if let (true, Some(api)) = (pushed, &a.api) {
            let _ = api.pop_external_correlation(GPUSPAN_EXTERNAL_KIND);
        }
        // Graph launches are counted apart: each makes one record per graph node.
        let counting = a.counting_launches.load(Ordering::Relaxed);
        let launches = counting.then(|| (t.launches.get() - launch_base).min(u32::MAX as u64) as u32);
        let graph_launches = if counting { (t.graph_launches.get() - graph_base).min(u32::MAX as u64) as u32 } else { 0 };
        let ts_ticks = a.boundary_ticks();
        // Begun and ended inside a stream capture with nothing that ran: recorded into a
        // graph (fine mode; coarse mode tells by the capture status of its streams).
        if began_in_capture && t.capturing.get() > 0 && launches == Some(0) && graph_launches == 0 && a.coarse.is_none() {
            send(a, &t.ring, &QueuedScope::InCapture { id }, None);
        }
        let scope = QueuedScope::End { id, ts_ticks, launches, graph_launches };
        let mut mark = Recorded::new(true, TimingSource::LegacyStream);
        let marked = a.coarse.as_ref().map(|c| {
            let (streams, n) = thread_streams(t);
            record_boundary(c, &t.stash, &mut mark, pos == 0, &streams[..n]);
        });
        send(a, &t.ring, &scope, marked.map(|()| &mark));
        level
    })
    .unwrap_or(NO_PUSH_POP_TRACKING)
}

/// `nvtxRangePushA` hook.
///
/// # Safety
/// `msg` is NULL or a NUL-terminated string (NVTX contract).
pub unsafe extern "C" fn range_push_a(msg: *const c_char) -> i32 {
    std::panic::catch_unwind(|| {
        if msg.is_null() {
            return scope_begin(b"");
        }
        // SAFETY: NVTX passes a NUL-terminated ASCII string.
        scope_begin(unsafe { CStr::from_ptr(msg) }.to_bytes())
    })
    .unwrap_or(NO_PUSH_POP_TRACKING)
}

/// `nvtxRangePushW` hook: the wide name converted to UTF-8 on the stack.
///
/// # Safety
/// `msg` is NULL or a NUL-terminated `wchar_t` string (NVTX contract).
pub unsafe extern "C" fn range_push_w(msg: *const WChar) -> i32 {
    std::panic::catch_unwind(|| {
        let mut buf = [0u8; INLINE_NAME_CAP];
        // SAFETY: NVTX passes NULL or a NUL-terminated wide string.
        let n = unsafe { wide_to_utf8(msg, &mut buf) };
        range_begin(0, &buf[..n])
    })
    .unwrap_or(NO_PUSH_POP_TRACKING)
}

/// `nvtxRangePushEx` hook (ASCII, wide or registered messages; others become an unnamed
/// scope).
///
/// # Safety
/// `attr` is NULL or a valid `nvtxEventAttributes_t` (NVTX contract).
pub unsafe extern "C" fn range_push_ex(attr: *const EventAttributes) -> i32 {
    // SAFETY: NVTX contract on `attr`; NULL is the default domain.
    unsafe { domain_range_push_ex(std::ptr::null_mut(), attr) }
}

/// `nvtxRangePop` hook.
///
/// # Safety
/// None beyond being called by NVTX.
pub unsafe extern "C" fn range_pop() -> i32 {
    std::panic::catch_unwind(|| range_end(0)).unwrap_or(NO_PUSH_POP_TRACKING)
}

/// `nvtxDomainRangePushEx` hook: a scope in a scope domain ([`crate::nvtx_domains`]),
/// only counted in any other (NCCL's, a library's).
///
/// # Safety
/// `domain` is NULL or a handle from [`domain_create_a`] / [`domain_create_w`]; `attr` is
/// NULL or a valid `nvtxEventAttributes_t`.
pub unsafe extern "C" fn domain_range_push_ex(domain: *mut c_void, attr: *const EventAttributes) -> i32 {
    std::panic::catch_unwind(|| {
        let slot = nvtx_domains::slot_of(domain as usize);
        let mut buf = [0u8; INLINE_NAME_CAP];
        // SAFETY: NVTX contract on `attr`; messages are read into `buf` or borrowed.
        let name = if nvtx_domains::is_scope_domain(slot) { unsafe { message_text(attr, &mut buf) } } else { None };
        range_begin(slot, name.unwrap_or(b""))
    })
    .unwrap_or(NO_PUSH_POP_TRACKING)
}

/// `nvtxDomainRangePop` hook: closes the innermost range of that domain only.
///
/// # Safety
/// None beyond being called by NVTX.
pub unsafe extern "C" fn domain_range_pop(domain: *mut c_void) -> i32 {
    std::panic::catch_unwind(|| range_end(nvtx_domains::slot_of(domain as usize))).unwrap_or(NO_PUSH_POP_TRACKING)
}

/// `nvtxDomainCreateA` hook: a small-integer handle ([`crate::nvtx_domains::create`]).
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
pub unsafe extern "C" fn domain_create_a(name: *const c_char) -> *mut c_void {
    std::panic::catch_unwind(|| {
        // SAFETY: NVTX contract: NUL-terminated or NULL.
        let n = if name.is_null() { Default::default() } else { unsafe { CStr::from_ptr(name) }.to_string_lossy() };
        nvtx_domains::create(&n) as *mut c_void
    })
    .unwrap_or(nvtx_domains::OVERFLOW_SLOT as *mut c_void)
}

/// `nvtxDomainCreateW` hook.
///
/// # Safety
/// `name` is NULL or a NUL-terminated wide string.
pub unsafe extern "C" fn domain_create_w(name: *const WChar) -> *mut c_void {
    std::panic::catch_unwind(|| {
        let mut buf = [0u8; INLINE_NAME_CAP];
        // SAFETY: NVTX contract.
        let n = unsafe { wide_to_utf8(name, &mut buf) };
        nvtx_domains::create(&String::from_utf8_lossy(&buf[..n])) as *mut c_void
    })
    .unwrap_or(nvtx_domains::OVERFLOW_SLOT as *mut c_void)
}

/// `nvtxDomainRegisterStringA` hook: the handle is a leaked UTF-8 copy's address.
///
/// # Safety
/// `s` is NULL or a NUL-terminated string.
pub unsafe extern "C" fn domain_register_string_a(_domain: *mut c_void, s: *const c_char) -> *const c_void {
    std::panic::catch_unwind(|| {
        if s.is_null() {
            return std::ptr::null();
        }
        // SAFETY: NVTX contract: NUL-terminated.
        let text = unsafe { CStr::from_ptr(s) }.to_string_lossy();
        nvtx_domains::register_string(&text).map_or(std::ptr::null(), |c| c.as_ptr() as *const c_void)
    })
    .unwrap_or(std::ptr::null())
}

/// `nvtxDomainRegisterStringW` hook.
///
/// # Safety
/// `s` is NULL or a NUL-terminated wide string.
pub unsafe extern "C" fn domain_register_string_w(_domain: *mut c_void, s: *const WChar) -> *const c_void {
    std::panic::catch_unwind(|| {
        let mut buf = [0u8; INLINE_NAME_CAP];
        // SAFETY: NVTX contract.
        let n = unsafe { wide_to_utf8(s, &mut buf) };
        nvtx_domains::register_string(&String::from_utf8_lossy(&buf[..n]))
            .map_or(std::ptr::null(), |c| c.as_ptr() as *const c_void)
    })
    .unwrap_or(std::ptr::null())
}

/// The hook table installed into every NVTX instance.
pub fn nvtx_hooks() -> gpuspan_cupti::nvtx::Hooks {
    gpuspan_cupti::nvtx::Hooks {
        range_push_a,
        range_push_ex,
        range_pop,
        domain_range_push_ex,
        domain_range_pop,
        range_push_w,
        domain_create_a,
        domain_create_w,
        domain_register_string_a,
        domain_register_string_w,
    }
}
