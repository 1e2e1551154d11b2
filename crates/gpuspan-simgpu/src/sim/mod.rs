//! The simulator core: one process-wide [`State`] behind a mutex.
//!
//! Lock rule: the mutex is never held while a client callback runs (buffer request /
//! completion, callback-API subscriber, injection init) — see [`trace`] and [`delivery`].

pub mod buffers;
pub mod clock;
pub mod config;
pub mod costs;
pub mod cupti;
pub mod delivery;
pub mod device;
pub mod events;
pub mod graphs;
pub mod names;
pub mod node;
pub mod records;
pub mod timeline;
pub mod trace;

// Integer-keyed maps of the simulator's own handles: one multiply per key, the same
// iteration order in every run (gpuspan_core::id_hash).
use gpuspan_core::id_hash::{IdHashMap as HashMap, IdHashSet as HashSet};
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

/// Opaque handle of device 0's primary context (device `d`'s: [`context_handle`]).
pub const CONTEXT_HANDLE: u64 = 0x5c7c_0000_0010;
/// CUPTI `contextId` of device 0's primary context (device `d`'s: [`context_id`]).
pub const CONTEXT_ID: u32 = 1;
/// CUPTI `deviceId` of device 0 (the device of a process that sees one).
pub const DEVICE_ID: u32 = 0;
/// Distance between the handles of consecutive devices' primary contexts.
const CONTEXT_HANDLE_STRIDE: u64 = 0x100;

/// Opaque handle of device `device`'s primary context.
pub fn context_handle(device: u32) -> u64 {
    CONTEXT_HANDLE + u64::from(device) * CONTEXT_HANDLE_STRIDE
}

/// CUPTI `contextId` of device `device`'s primary context (each primary context is created
/// once, device by device, so ids count up from [`CONTEXT_ID`]).
pub fn context_id(device: u32) -> u32 {
    CONTEXT_ID + device
}

/// The device whose primary context `handle` is, if it is one of `devices`.
pub fn device_of_context(handle: u64, devices: u32) -> Option<u32> {
    let off = handle.checked_sub(CONTEXT_HANDLE)?;
    let d = u32::try_from(off / CONTEXT_HANDLE_STRIDE).ok()?;
    (off % CONTEXT_HANDLE_STRIDE == 0 && d < devices).then_some(d)
}

/// The context the calling thread made current (`cuCtxSetCurrent`), as the driver keeps it:
/// per thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ThreadContext {
    /// The thread never called `cuCtxSetCurrent`: it follows the process's last choice
    /// ([`State::default_context`]), as a thread of a CUDA runtime program is bound to the
    /// primary context of the device the program selected.
    Unset,
    /// `cuCtxSetCurrent(NULL)`.
    None,
    /// Device `d`'s primary context.
    Device(u32),
}

thread_local! {
    static THREAD_CONTEXT: std::cell::Cell<ThreadContext> = const { std::cell::Cell::new(ThreadContext::Unset) };
}

/// The device of the context most recently made current on any thread, `u32::MAX` for none:
/// the current context of threads that never chose one. An atomic, not a [`State`] field,
/// so that CUPTI callbacks, which run without the simulator's lock, can name the context.
static DEFAULT_CONTEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(u32::MAX);

/// The device whose primary context is current on the calling thread, `None` without one.
pub fn current_context() -> Option<u32> {
    match THREAD_CONTEXT.with(|c| c.get()) {
        ThreadContext::Unset => {
            let d = DEFAULT_CONTEXT.load(std::sync::atomic::Ordering::Relaxed);
            (d != u32::MAX).then_some(d)
        }
        ThreadContext::None => None,
        ThreadContext::Device(d) => Some(d),
    }
}
const MODULE_HANDLE_BASE: u64 = 0x5a0d_0000_0000;
const FUNCTION_HANDLE_BASE: u64 = 0x5f0c_0000_0000;
/// First address `cuMemAlloc` returns (device pointers look like real UVA addresses).
const DEVICE_HEAP_BASE: u64 = 0x7f40_0000_0000;

/// Everything the simulator knows.
#[derive(Debug)]
pub struct State {
    pub cfg: config::Config,
    pub clock: clock::HostClock,
    /// One timeline per device (index = CUDA ordinal = CUPTI `deviceId`); streams belong to
    /// the device whose context was current when they were created.
    pub timelines: Vec<timeline::Timeline>,
    pub events: events::Events,
    /// Stream captures, graphs and executable graphs.
    pub graphs: graphs::Graphs,
    /// Activity clients (each with its buffers), subscribers, subscriber mode.
    pub cupti: cupti::Cupti,
    pub counters: cupti::Counters,
    pub jobs: VecDeque<delivery::Job>,
    /// Last correlation id handed out.
    pub correlation: u32,
    /// Records offered so far (drives the `drop_records` fault).
    pub record_seq: u64,
    pub initialized: bool,
    pub nvml_refs: u32,
    pub modules: HashSet<u64>,
    /// Function handle → (module, name).
    pub functions: HashMap<u64, (u64, names::KernelName)>,
    /// Device pointer → (bytes, device).
    pub allocations: HashMap<u64, (u64, u32)>,
    /// Bytes allocated on each device (index = CUDA ordinal).
    pub allocated_bytes: Vec<u64>,
    next_handle: u64,
    next_dptr: u64,
    pub grid_id: i64,
    /// The node, rank and physical device of this process; collectives' rendezvous.
    pub node: node::Node,
    /// Function handle → collective kind, for the NCCL kernels ([`node`]).
    pub collectives: HashMap<u64, node::CollectiveKind>,
}

/// Index in `gpuspan_cupti::layouts::RELEASES` of the CUPTI release whose layouts the
/// simulator writes (`State::cfg.cupti`), readable without the simulator's lock:
/// `cuptiActivityGetNextRecord` only parses a buffer the caller owns and, like the real one,
/// takes no lock (a thread stuck inside a CUDA call must not stop another from decoding).
static CUPTI_ABI_INDEX: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);

/// Records `abi` as the layouts in effect ([`cupti_abi`]).
pub(crate) fn publish_cupti_abi(abi: config::CuptiAbi) {
    if let Some(i) = gpuspan_cupti::layouts::RELEASES.iter().position(|r| r.name == abi.0.name) {
        CUPTI_ABI_INDEX.store(i, std::sync::atomic::Ordering::Release);
    }
}

/// The CUPTI release whose layouts the simulator writes, without taking its lock.
pub fn cupti_abi() -> config::CuptiAbi {
    let i = CUPTI_ABI_INDEX.load(std::sync::atomic::Ordering::Acquire);
    gpuspan_cupti::layouts::RELEASES.get(i).map_or(config::CuptiAbi::V12, config::CuptiAbi)
}

impl State {
    pub fn new(cfg: config::Config) -> State {
        publish_cupti_abi(cfg.cupti);
        DEFAULT_CONTEXT.store(u32::MAX, std::sync::atomic::Ordering::Relaxed);
        State {
            cfg,
            clock: clock::HostClock::with_speed(cfg.clock, cfg.speed_milli),
            timelines: (0..cfg.devices).map(timeline::Timeline::for_device).collect(),
            events: events::Events::new(),
            graphs: graphs::Graphs::default(),
            cupti: cupti::Cupti::default(),
            counters: cupti::Counters::default(),
            jobs: VecDeque::new(),
            correlation: 0,
            record_seq: 0,
            initialized: false,
            nvml_refs: 0,
            modules: HashSet::default(),
            functions: HashMap::default(),
            allocations: HashMap::default(),
            allocated_bytes: vec![0; cfg.devices as usize],
            next_handle: 0,
            next_dptr: DEVICE_HEAP_BASE,
            grid_id: 0,
            node: node::Node::from_env(),
            collectives: HashMap::default(),
        }
    }

    /// Makes device `device`'s primary context (or none) current on the calling thread
    /// (`cuCtxSetCurrent`), and the default of threads that never chose one.
    pub fn set_current(&mut self, device: Option<u32>) {
        THREAD_CONTEXT.with(|c| c.set(device.map_or(ThreadContext::None, ThreadContext::Device)));
        DEFAULT_CONTEXT.store(device.unwrap_or(u32::MAX), std::sync::atomic::Ordering::Relaxed);
    }

    /// The device whose context is current on the calling thread ([`current_context`]).
    pub fn current_context(&self) -> Option<u32> {
        current_context()
    }

    /// The device work without a stream of its own goes to on the calling thread (its
    /// current context's; device 0 when it has none, where a real driver would answer
    /// `CUDA_ERROR_INVALID_CONTEXT`, which the simulator does not model).
    pub fn current_device(&self) -> u32 {
        self.current_context().unwrap_or(0)
    }

    /// The device stream `h` belongs to: the calling thread's current device for the legacy
    /// stream (each context has its own), the creating context's device for a created
    /// stream, `None` for an unknown handle.
    pub fn stream_device(&self, h: u64) -> Option<u32> {
        if timeline::is_legacy(h) {
            return Some(self.current_device());
        }
        self.timelines.iter().position(|t| t.knows(h)).map(|d| d as u32)
    }

    /// The timeline of stream `h`'s device ([`State::stream_device`]).
    pub fn timeline_of(&mut self, h: u64) -> Option<&mut timeline::Timeline> {
        let d = self.stream_device(h)?;
        self.timelines.get_mut(d as usize)
    }

    /// The timeline of the calling thread's current device.
    pub fn current_timeline(&mut self) -> &mut timeline::Timeline {
        let d = self.current_device() as usize;
        &mut self.timelines[d]
    }

    /// Next correlation id (never 0).
    pub fn next_correlation(&mut self) -> u32 {
        self.correlation = self.correlation.wrapping_add(1).max(1);
        self.correlation
    }

    pub fn new_module(&mut self) -> u64 {
        self.next_handle += 1;
        let h = MODULE_HANDLE_BASE + self.next_handle * 0x10;
        self.modules.insert(h);
        h
    }

    pub fn new_function(&mut self, module: u64, name: &str) -> u64 {
        self.next_handle += 1;
        let h = FUNCTION_HANDLE_BASE + self.next_handle * 0x10;
        self.functions.insert(h, (module, names::intern(module, name)));
        if let Some(kind) = node::CollectiveKind::of_kernel(name) {
            self.collectives.insert(h, kind);
        }
        h
    }

    /// `cuModuleUnload`: forgets the module and its functions and overwrites their names
    /// ([`names::release_module`]). False for an unknown module.
    pub fn unload_module(&mut self, module: u64) -> bool {
        if !self.modules.remove(&module) {
            return false;
        }
        self.functions.retain(|_, (m, _)| *m != module);
        names::release_module(module);
        true
    }

    /// Bump allocation of device memory on the calling thread's current device (no backing
    /// store: the sim moves no data).
    pub fn alloc(&mut self, bytes: u64) -> Option<u64> {
        let d = self.current_device();
        if self.allocated_bytes[d as usize] + bytes > device::TOTAL_MEM_BYTES - device::RESERVED_MEM_BYTES {
            return None;
        }
        let p = self.next_dptr;
        self.next_dptr += bytes.max(1).div_ceil(512) * 512;
        self.allocations.insert(p, (bytes, d));
        self.allocated_bytes[d as usize] += bytes;
        Some(p)
    }

    pub fn free(&mut self, p: u64) -> bool {
        match self.allocations.remove(&p) {
            Some((b, d)) => {
                self.allocated_bytes[d as usize] -= b;
                true
            }
            None => false,
        }
    }

    /// `cuptiFinalize`: drop all CUPTI state (buffers must have been delivered first) and
    /// re-read the CUPTI ABI version from the environment.
    pub fn reset_cupti(&mut self) {
        self.cupti = cupti::Cupti::default();
        self.cfg.cupti = config::Config::from_env().cupti;
        publish_cupti_abi(self.cfg.cupti);
    }
}

/// The process-wide simulator. On cache lines of its own (`align(128)`: an adjacent-line
/// prefetcher pairs lines): its lock, which every CUDA call of the worker takes, shared a
/// line with `CUPTI_ABI_INDEX`, which the agent's collector reads in every
/// `cuptiActivityGetNextRecord`, and that read missed the cache each time: a tenth of the
/// collector thread that real CUPTI would not cost it (issue 14, item 1).
#[repr(align(128))]
pub struct Sim {
    state: Mutex<State>,
    /// Wakes the delivery thread (new full buffer, flush job, clock change).
    pub wake: Condvar,
}

/// The simulator, created on first use from the environment.
pub fn sim() -> &'static Sim {
    static SIM: OnceLock<Sim> = OnceLock::new();
    SIM.get_or_init(|| Sim {
        state: Mutex::new(State::new(config::Config::from_env())),
        wake: Condvar::new(),
    })
}

impl Sim {
    /// Locks the state (a panic elsewhere does not poison the simulator).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Test hook (`gpuspanSimReset`): a fresh simulator re-reading the environment. Buffers
/// the sim still held are forgotten (not delivered).
pub fn reset() {
    let s = sim();
    let mut st = s.lock();
    *st = State::new(config::Config::from_env());
    crate::abi::cupti::forget_handles();
}

/// (cuptiSubscribe calls, cuptiActivityEnable calls) since start or the last [`reset`].
pub fn cupti_counters() -> (u64, u64) {
    let st = sim().lock();
    (st.counters.subscribes, st.counters.enables)
}

/// (successful cuptiUnsubscribe calls, whether a subscriber is held now, activity kinds
/// enabled now summed over the activity clients) since start or the last [`reset`].
pub fn cupti_subscription() -> (u64, bool, u64) {
    let st = sim().lock();
    let kinds = st.cupti.clients().map(|(_, c)| c.enabled.len() as u64).sum();
    (st.counters.unsubscribes, !st.cupti.subscribers.is_empty(), kinds)
}

/// Forks of this process seen by [`fork_child`]; the cached ids below are of the generation
/// they were read in.
static FORKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// This process's id, with the fork generation it was read in (0 until read).
static PID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static ATFORK: std::sync::Once = std::sync::Once::new();

thread_local! {
    /// This thread's gettid, with the fork generation it was read in.
    static TID: std::cell::Cell<(u32, u32)> = const { std::cell::Cell::new((0, 0)) };
}

/// `pthread_atfork` child handler: the forking thread's cached ids belong to the parent.
extern "C" fn fork_child() {
    FORKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

fn forks() -> u32 {
    // SAFETY: registers a handler that only bumps an atomic (async-signal-safe), once.
    ATFORK.call_once(|| unsafe {
        libc::pthread_atfork(None, None, Some(fork_child));
    });
    FORKS.load(std::sync::atomic::Ordering::Relaxed)
}

/// OS thread id of the caller (gettid), read once per thread (and again in a forked child):
/// CUPTI fills every API record's `threadId` with it (`cuptiSetThreadIdType(SYSTEM)`), and a
/// syscall per record made the simulator's CUPTI dearer than the agent it is measuring.
pub fn os_tid() -> u32 {
    let gen = forks();
    TID.with(|t| {
        let (tid, at) = t.get();
        if tid != 0 && at == gen {
            return tid;
        }
        // SAFETY: SYS_gettid takes no arguments and cannot fail.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) as u32 };
        t.set((tid, gen));
        tid
    })
}

/// This process's id (getpid, which glibc no longer caches), read once per fork generation:
/// the `processId` of API and overhead records.
pub fn process_id() -> u32 {
    let gen = forks();
    let cached = PID.load(std::sync::atomic::Ordering::Relaxed);
    if cached != 0 && (cached >> 32) as u32 == gen {
        return cached as u32;
    }
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    PID.store((u64::from(gen) << 32) | u64::from(pid), std::sync::atomic::Ordering::Relaxed);
    pid
}
