//! Another V1 activity client in the process (torch.profiler's Kineto on CUPTI ≤ 13.2, or in
//! single-subscriber mode), seen through the three CUPTI entry points `libgpuspan.so`
//! interposes when it is preloaded (`crates/gpuspan-preload`): `cuptiActivityRegisterCallbacks`,
//! `cuptiActivityEnable` and `cuptiActivityDisable`.
//!
//! Why: CUPTI keeps one pair of V1 buffer callbacks per process, and the activity kinds are
//! process-wide (CUPTI-NOTES §1). When gpuspan opens a fine window it registers its own
//! callbacks, so without this module the other client stops receiving records, and closing
//! the window disables the kinds both enabled. With the interposed entry points the agent
//! knows the other client's callbacks and kinds, and becomes a demultiplexer:
//! - once gpuspan has registered its V1 callbacks (there is no way to unregister them), a
//!   later registration by the other client is remembered, not passed on, and answered
//!   `CUPTI_SUCCESS`;
//! - every buffer CUPTI completes into gpuspan's callback is walked, and the records of the
//!   kinds the other client enabled are copied, in order and byte for byte, into buffers the
//!   other client lends through its own request callback, then handed to its completion
//!   callback ([`ForeignClient::forward`]) as CUPTI would;
//! - a buffer the other client lent before gpuspan registered is handed back to it unchanged
//!   ([`ForeignClient::hand_back`]) after gpuspan read it;
//! - gpuspan's `cuptiActivityDisable` leaves enabled the kinds the other client enabled, and
//!   the other client's disable of a kind gpuspan still collects is not passed on.
//!
//! Without `LD_PRELOAD` (`CUDA_INJECTION64_PATH` alone loads the agent `RTLD_LOCAL`) nothing is
//! interposed and the other client's calls reach CUPTI directly: the behaviour described in
//! docs/architecture.md "Other CUPTI clients" before this module.
//!
//! Who uses it: `gpuspan-preload` (the interposed symbols), [`crate::activity::ActivityApi`]
//! (gpuspan's own V1 registration and kinds), and the agent's buffer callbacks.
//!
//! Kinds are tracked as a bit mask of `CUpti_ActivityKind` values below 64 (12.x and 13.x
//! define fewer than 64); a kind ≥ 64 is passed through untracked.

use crate::symbols::{BufferCompletedFn, BufferRequestedFn, GetNextRecordFn};
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// `cuptiActivityRegisterCallbacks` (`cupti_activity.h`).
pub type RegisterCallbacksFn = unsafe extern "C" fn(BufferRequestedFn, BufferCompletedFn) -> u32;
/// `cuptiActivityEnable` / `cuptiActivityDisable` (`cupti_activity.h`).
pub type KindFn = unsafe extern "C" fn(u32) -> u32;

/// `CUPTI_ERROR_INVALID_PARAMETER` (`cupti_result.h`).
const INVALID_PARAMETER: u32 = 1;
/// `CUPTI_ERROR_NOT_INITIALIZED` (`cupti_result.h`): answered when no CUPTI is loaded to
/// forward to.
pub const NOT_INITIALIZED: u32 = 15;

/// The process's CUPTI entry points the interposed ones forward to.
#[derive(Clone, Copy)]
pub struct RealCupti {
    /// `cuptiActivityRegisterCallbacks`.
    pub register_callbacks: RegisterCallbacksFn,
    /// `cuptiActivityEnable`.
    pub enable: KindFn,
    /// `cuptiActivityDisable`.
    pub disable: KindFn,
}

/// Resolves the CUPTI functions that the interposed symbols stand in front of: the next
/// definition after `libgpuspan.so` in the global lookup order (`dlsym(RTLD_NEXT)`), else an
/// already loaded `libcupti.so.12` / `.so.13` / `.so` (`RTLD_NOLOAD`; a library loaded
/// `RTLD_LOCAL`, as a dependency of PyTorch's `_C`, is not in the global order). `None` when
/// no CUPTI is loaded. Resolved once and cached.
pub fn real_cupti() -> Option<RealCupti> {
    static REAL: std::sync::OnceLock<Option<RealCupti>> = std::sync::OnceLock::new();
    *REAL.get_or_init(resolve_real)
}

/// Whether the process's global symbol lookup finds `libgpuspan.so`'s interposed
/// `cuptiActivityRegisterCallbacks` (the agent was preloaded), so that no other client can
/// register buffer callbacks with CUPTI behind gpuspan's back. Looks the symbol up through
/// the main program's handle (`dlopen(NULL)`: the program, the objects loaded at startup,
/// `LD_PRELOAD` first, then those loaded `RTLD_GLOBAL`; dlopen(3)), which is where a
/// client's calls bind, and compares the object that defines it with the one this function
/// is in. (`dlsym(RTLD_DEFAULT)` would not do: called from an object loaded `RTLD_LOCAL`,
/// as `CUDA_INJECTION64_PATH` loads the agent, it also searches that object's own scope
/// and finds the agent's symbol there.) Resolved once and cached.
pub fn interposed() -> bool {
    static INTERPOSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *INTERPOSED.get_or_init(|| {
        // SAFETY: dlopen(NULL) returns the main program's handle and loads nothing; dlsym /
        // dladdr with a NUL-terminated name and zero-initialised `Dl_info` out-structs (plain
        // C data); the addresses are only compared.
        unsafe {
            let program = libc::dlopen(std::ptr::null(), libc::RTLD_LAZY);
            if program.is_null() {
                return false;
            }
            let found = libc::dlsym(program, c"cuptiActivityRegisterCallbacks".as_ptr());
            if found.is_null() {
                return false;
            }
            let (mut there, mut here): (libc::Dl_info, libc::Dl_info) = (std::mem::zeroed(), std::mem::zeroed());
            let me = interposed as fn() -> bool as *const c_void;
            libc::dladdr(found, &mut there) != 0 && libc::dladdr(me, &mut here) != 0 && there.dli_fbase == here.dli_fbase
        }
    })
}

fn resolve_real() -> Option<RealCupti> {
    // SAFETY: dlsym with RTLD_NEXT and NUL-terminated names; a non-NULL result is the address
    // of the named function, whose prototype is the one in `cupti_activity.h`.
    unsafe {
        let next = |name: &std::ffi::CStr| libc::dlsym(libc::RTLD_NEXT, name.as_ptr());
        let (r, e, d) = (next(c"cuptiActivityRegisterCallbacks"), next(c"cuptiActivityEnable"), next(c"cuptiActivityDisable"));
        if !r.is_null() && !e.is_null() && !d.is_null() {
            return Some(RealCupti {
                register_callbacks: std::mem::transmute::<*mut c_void, RegisterCallbacksFn>(r),
                enable: std::mem::transmute::<*mut c_void, KindFn>(e),
                disable: std::mem::transmute::<*mut c_void, KindFn>(d),
            });
        }
    }
    for name in crate::symbols::CUPTI_LIB_NAMES {
        // SAFETY: RTLD_NOLOAD only finds an object already loaded (its constructors ran);
        // symbols read with their `cupti_activity.h` prototypes. The handle is leaked: the
        // pointers must stay valid for the process.
        unsafe {
            let Ok(lib) = libloading::os::unix::Library::open(Some(name), libc::RTLD_NOW | libc::RTLD_NOLOAD) else {
                continue;
            };
            let r = lib.get::<RegisterCallbacksFn>(b"cuptiActivityRegisterCallbacks\0").map(|s| *s);
            let e = lib.get::<KindFn>(b"cuptiActivityEnable\0").map(|s| *s);
            let d = lib.get::<KindFn>(b"cuptiActivityDisable\0").map(|s| *s);
            std::mem::forget(lib);
            if let (Ok(register_callbacks), Ok(enable), Ok(disable)) = (r, e, d) {
                return Some(RealCupti { register_callbacks, enable, disable });
            }
        }
    }
    None
}

/// What gpuspan knows of the other V1 activity client, and what it did for it.
///
/// Read without locks by the buffer callbacks (atomics only: they run under CUPTI's lock);
/// registrations take [`ForeignClient`]'s transition lock so that "who is registered with
/// CUPTI" and the remembered callbacks never disagree.
pub struct ForeignClient {
    /// The other client's `CUpti_BuffersCallbackRequestFunc`, 0 when none registered.
    requested: AtomicUsize,
    /// Its `CUpti_BuffersCallbackCompleteFunc`, 0 when none registered.
    completed: AtomicUsize,
    /// Kinds it enabled (bit `k` = kind `k`).
    kinds: AtomicU64,
    /// Kinds gpuspan enabled through the V1 calls.
    agent_kinds: AtomicU64,
    /// gpuspan's V1 buffer callbacks are registered with CUPTI (sticky: V1 has no unregister).
    agent_registered: AtomicBool,
    transition: Mutex<()>,
    /// Buffers of the other client's that carried forwarded records.
    pub buffers_forwarded: AtomicU64,
    /// Records copied into them.
    pub records_forwarded: AtomicU64,
    /// Records of its kinds that could not be forwarded (it declined a buffer, or a record
    /// was larger than the buffer it lent).
    pub records_not_forwarded: AtomicU64,
    /// Buffers it lent before gpuspan registered, handed back to it after gpuspan read them.
    pub buffers_handed_back: AtomicU64,
}

/// The process's one [`ForeignClient`] (CUPTI's V1 callbacks are process-wide too).
pub static FOREIGN: ForeignClient = ForeignClient::new();

impl Default for ForeignClient {
    fn default() -> Self {
        Self::new()
    }
}

/// The bit of `kind` in a kind mask, or 0 for kinds ≥ 64 (untracked).
#[inline]
fn bit(kind: u32) -> u64 {
    if kind < 64 {
        1u64 << kind
    } else {
        0
    }
}

impl ForeignClient {
    /// No other client known, nothing registered or enabled.
    pub const fn new() -> ForeignClient {
        ForeignClient {
            requested: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            kinds: AtomicU64::new(0),
            agent_kinds: AtomicU64::new(0),
            agent_registered: AtomicBool::new(false),
            transition: Mutex::new(()),
            buffers_forwarded: AtomicU64::new(0),
            records_forwarded: AtomicU64::new(0),
            records_not_forwarded: AtomicU64::new(0),
            buffers_handed_back: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.transition.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The other client's callbacks, when it registered.
    fn callbacks(&self) -> Option<(BufferRequestedFn, BufferCompletedFn)> {
        let (r, c) = (self.requested.load(Ordering::Acquire), self.completed.load(Ordering::Acquire));
        if r == 0 || c == 0 {
            return None;
        }
        // SAFETY: both were stored from function pointers of these types in `register`.
        unsafe { Some((std::mem::transmute::<usize, BufferRequestedFn>(r), std::mem::transmute::<usize, BufferCompletedFn>(c))) }
    }

    /// True when another client registered buffer callbacks through the interposed call.
    pub fn is_known(&self) -> bool {
        self.completed.load(Ordering::Acquire) != 0
    }

    /// The kinds the other client has enabled (bit mask).
    pub fn kinds(&self) -> u64 {
        self.kinds.load(Ordering::Acquire)
    }

    /// True while gpuspan has kinds enabled through the V1 calls: its buffer callbacks want
    /// the records (when false, a buffer arrives only to be forwarded).
    pub fn agent_collects(&self) -> bool {
        self.agent_kinds.load(Ordering::Acquire) != 0
    }

    /// The interposed `cuptiActivityRegisterCallbacks(requested, completed)`: remembers the
    /// other client's callbacks; passes the call on unless gpuspan's callbacks are
    /// registered (then it answers `CUPTI_SUCCESS`: its records reach it through
    /// [`ForeignClient::forward`]). A NULL callback is refused with
    /// `CUPTI_ERROR_INVALID_PARAMETER`, as CUPTI would, and nothing is remembered.
    pub fn register(&self, real: &RealCupti, requested: Option<BufferRequestedFn>, completed: Option<BufferCompletedFn>) -> u32 {
        let (Some(r), Some(c)) = (requested, completed) else {
            return INVALID_PARAMETER;
        };
        let _g = self.lock();
        self.requested.store(r as usize, Ordering::Release);
        self.completed.store(c as usize, Ordering::Release);
        if self.agent_registered.load(Ordering::Acquire) {
            return 0;
        }
        // SAFETY: the process's CUPTI function with its own prototype; both callbacks are
        // the caller's functions of the CUPTI callback types.
        unsafe { (real.register_callbacks)(r, c) }
    }

    /// The interposed `cuptiActivityEnable(kind)`: passed on; on success the kind is the
    /// other client's too.
    pub fn enable(&self, real: &RealCupti, kind: u32) -> u32 {
        // Under the lock: gpuspan's disable of the same kind must see the bit.
        let _g = self.lock();
        // SAFETY: the process's CUPTI function, plain integer argument.
        let code = unsafe { (real.enable)(kind) };
        if code == 0 {
            self.kinds.fetch_or(bit(kind), Ordering::AcqRel);
        }
        code
    }

    /// The interposed `cuptiActivityDisable(kind)`: the kind is no longer the other
    /// client's; passed on unless gpuspan still collects it (then `CUPTI_SUCCESS`).
    pub fn disable(&self, real: &RealCupti, kind: u32) -> u32 {
        let _g = self.lock();
        self.kinds.fetch_and(!bit(kind), Ordering::AcqRel);
        if self.agent_kinds.load(Ordering::Acquire) & bit(kind) != 0 {
            return 0;
        }
        // SAFETY: the process's CUPTI function, plain integer argument.
        unsafe { (real.disable)(kind) }
    }

    /// gpuspan registers its V1 buffer callbacks with `register` (the real CUPTI function),
    /// under the transition lock; from then on the other client's registrations are only
    /// remembered.
    pub(crate) fn agent_register(&self, register: impl FnOnce() -> u32) -> u32 {
        let _g = self.lock();
        let code = register();
        if code == 0 {
            self.agent_registered.store(true, Ordering::Release);
        }
        code
    }

    /// gpuspan enabled `kind` through the V1 call.
    pub(crate) fn agent_enabled(&self, kind: u32) {
        self.agent_kinds.fetch_or(bit(kind), Ordering::AcqRel);
    }

    /// gpuspan disables `kind` with `disable` (the real CUPTI function) unless the other
    /// client enabled it too; `CUPTI_SUCCESS` when left enabled.
    pub(crate) fn agent_disable(&self, kind: u32, disable: impl FnOnce() -> u32) -> u32 {
        let _g = self.lock();
        self.agent_kinds.fetch_and(!bit(kind), Ordering::AcqRel);
        if self.kinds.load(Ordering::Acquire) & bit(kind) != 0 {
            return 0;
        }
        disable()
    }

    /// Hands a buffer the other client lent (CUPTI completed it into gpuspan's callback
    /// because gpuspan registered after the loan) back to the other client's completion
    /// callback, unchanged. Returns false when no other client is known (the buffer is then
    /// left alone, as before this module).
    ///
    /// # Safety
    /// The arguments are those CUPTI passed to gpuspan's completion callback for a buffer
    /// gpuspan's pool did not lend; gpuspan no longer reads it.
    pub unsafe fn hand_back(&self, ctx: *mut c_void, stream_id: u32, buffer: *mut u8, size: usize, valid_bytes: usize) -> bool {
        let Some((_, completed)) = self.callbacks() else { return false };
        // SAFETY: the other client's completion callback, called as CUPTI would with its own
        // buffer.
        unsafe { completed(ctx, stream_id, buffer, size, valid_bytes) };
        self.buffers_handed_back.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Copies the records of the other client's kinds in `buffer[..valid_bytes]` (a buffer
    /// of gpuspan's, walked with `next_record`) into buffers the other client lends, in
    /// order, and hands each to its completion callback. A record's extent runs to the next
    /// record (the last one to `valid_bytes`), so the copy keeps CUPTI's 8-byte record
    /// alignment when the lent buffer is 8-byte aligned. Does nothing when no other client
    /// is known or it enabled nothing.
    ///
    /// # Safety
    /// `buffer` holds `valid_bytes` of records CUPTI completed, walkable with `next_record`
    /// (the process's `cuptiActivityGetNextRecord`), and is not written meanwhile.
    pub unsafe fn forward(&self, next_record: GetNextRecordFn, ctx: *mut c_void, stream_id: u32, buffer: *mut u8, valid_bytes: usize) {
        let kinds = self.kinds();
        let Some((requested, completed)) = self.callbacks() else { return };
        if kinds == 0 || buffer.is_null() || valid_bytes == 0 {
            return;
        }
        // The other client's buffer being filled: (start, size, used, records, cap).
        let mut out: Option<(*mut u8, usize, usize, usize, usize)> = None;
        let finish = |o: &mut Option<(*mut u8, usize, usize, usize, usize)>| {
            if let Some((p, size, used, _, _)) = o.take() {
                // SAFETY: a buffer the other client lent through its request callback, with
                // `used` bytes of whole records, handed to its completion callback as CUPTI
                // would.
                unsafe { completed(ctx, stream_id, p, size, used) };
                self.buffers_forwarded.fetch_add(1, Ordering::Relaxed);
            }
        };
        let mut rec: *mut cudarc::cupti::sys::CUpti_Activity = std::ptr::null_mut();
        // SAFETY: buffer contract from the caller; `rec` is NULL or the previous record.
        let mut code = unsafe { next_record(buffer, valid_bytes, &mut rec) };
        while code == 0 && !rec.is_null() {
            let at = rec as usize - buffer as usize;
            let mut next = rec;
            // SAFETY: as above.
            code = unsafe { next_record(buffer, valid_bytes, &mut next) };
            let end = if code == 0 && !next.is_null() { next as usize - buffer as usize } else { valid_bytes };
            // SAFETY: a record CUPTI returned inside the buffer starts with its u32 kind.
            let kind = unsafe { (rec as *const u32).read_unaligned() };
            let len = end.saturating_sub(at);
            if kinds & bit(kind) != 0 && len > 0 {
                if matches!(out, Some((_, size, used, n, cap)) if used + len > size || (cap > 0 && n >= cap)) {
                    finish(&mut out);
                }
                if out.is_none() {
                    let (mut p, mut size, mut cap) = (std::ptr::null_mut::<u8>(), 0usize, 0usize);
                    // SAFETY: the other client's request callback with valid out-pointers.
                    unsafe { requested(&mut p, &mut size, &mut cap) };
                    if !p.is_null() && size > 0 {
                        out = Some((p, size, 0, 0, cap));
                    }
                }
                match &mut out {
                    Some((p, size, used, n, _)) if *used + len <= *size => {
                        // SAFETY: `len` bytes of a record inside gpuspan's buffer, copied into
                        // the other client's buffer below its size; distinct allocations.
                        unsafe { std::ptr::copy_nonoverlapping(buffer.add(at), p.add(*used), len) };
                        *used += len;
                        *n += 1;
                        self.records_forwarded.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        self.records_not_forwarded.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            rec = next;
        }
        finish(&mut out);
    }
}

#[cfg(test)]
mod tests {
    //! The demultiplexer against a stand-in CUPTI: records are (kind u32, len u32, payload)
    //! packed at 8-byte alignment, walked by `walk`; the other client is a set of fixed
    //! buffers recorded by `lend` / `got`.
    use super::*;
    use cudarc::cupti::sys::CUpti_Activity;
    use std::sync::Mutex as StdMutex;

    /// Walks records whose second u32 is their length in bytes (CUPTI's own walk knows the
    /// length from the kind; this stand-in carries it).
    unsafe extern "C" fn walk(buf: *mut u8, valid: usize, rec: *mut *mut CUpti_Activity) -> u32 {
        // SAFETY: test buffers built by `records` below.
        unsafe {
            let at = if (*rec).is_null() { 0 } else { (*rec as usize - buf as usize) + ((*rec as *const u32).add(1).read() as usize) };
            if at + 8 > valid {
                return 12;
            }
            *rec = buf.add(at) as *mut CUpti_Activity;
            0
        }
    }

    /// A buffer of records of the given (kind, len) in order; byte 8 of each holds its index.
    fn records(spec: &[(u32, u32)]) -> Vec<u64> {
        let total: usize = spec.iter().map(|s| s.1 as usize).sum();
        let mut b = vec![0u64; total / 8];
        let bytes = b.as_mut_ptr() as *mut u8;
        let mut at = 0usize;
        for (i, &(k, l)) in spec.iter().enumerate() {
            // SAFETY: inside `b` (lengths are multiples of 8, at least 16).
            unsafe {
                (bytes.add(at) as *mut u32).write(k);
                (bytes.add(at + 4) as *mut u32).write(l);
                bytes.add(at + 8).write(i as u8);
            }
            at += l as usize;
        }
        b
    }

    static LENT_BYTES: AtomicUsize = AtomicUsize::new(0);
    static LENT_CAP: AtomicUsize = AtomicUsize::new(0);
    static GOT: StdMutex<Vec<Vec<u8>>> = StdMutex::new(Vec::new());

    unsafe extern "C" fn lend(buffer: *mut *mut u8, size: *mut usize, cap: *mut usize) {
        let n = LENT_BYTES.load(Ordering::Relaxed);
        // SAFETY: valid out-pointers from `forward`.
        unsafe {
            if n == 0 {
                *buffer = std::ptr::null_mut();
                *size = 0;
                return;
            }
            *buffer = Box::leak(vec![0u64; n / 8].into_boxed_slice()).as_mut_ptr() as *mut u8;
            *size = n;
            *cap = LENT_CAP.load(Ordering::Relaxed);
        }
    }

    unsafe extern "C" fn got(_ctx: *mut c_void, _stream: u32, buffer: *mut u8, _size: usize, valid: usize) {
        // SAFETY: a buffer `lend` made, `valid` bytes filled.
        let v = unsafe { std::slice::from_raw_parts(buffer, valid) }.to_vec();
        GOT.lock().unwrap().push(v);
    }

    /// The record indices (byte 8) in each buffer the client got.
    fn indices(buffers: &[Vec<u8>]) -> Vec<Vec<u8>> {
        buffers
            .iter()
            .map(|b| {
                let mut out = Vec::new();
                let mut at = 0;
                while at + 8 < b.len() {
                    out.push(b[at + 8]);
                    at += u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
                }
                out
            })
            .collect()
    }

    unsafe extern "C" fn real_register(_: BufferRequestedFn, _: BufferCompletedFn) -> u32 {
        REAL_CALLS.lock().unwrap().push("register".into());
        0
    }
    unsafe extern "C" fn real_enable(k: u32) -> u32 {
        REAL_CALLS.lock().unwrap().push(format!("enable {k}"));
        0
    }
    unsafe extern "C" fn real_disable(k: u32) -> u32 {
        REAL_CALLS.lock().unwrap().push(format!("disable {k}"));
        0
    }
    static REAL_CALLS: StdMutex<Vec<String>> = StdMutex::new(Vec::new());
    const REAL: RealCupti = RealCupti { register_callbacks: real_register, enable: real_enable, disable: real_disable };

    /// One test: the statics above are shared.
    #[test]
    fn forwards_only_the_clients_kinds_in_order_and_keeps_its_kinds_enabled() {
        let f = ForeignClient::new();
        let mut buf = records(&[(10, 32), (5, 40), (10, 32), (40, 24), (10, 48), (5, 40)]);
        let valid = buf.len() * 8;
        let p = buf.as_mut_ptr() as *mut u8;
        // Nobody registered: nothing forwarded, nothing handed back.
        // SAFETY: `p` holds `valid` bytes of records `walk` reads.
        unsafe { f.forward(walk, std::ptr::null_mut(), 0, p, valid) };
        // SAFETY: no client is known, so the buffer is not passed anywhere.
        assert!(!unsafe { f.hand_back(std::ptr::null_mut(), 0, p, valid, valid) });

        // The client registers before gpuspan: passed on; it enables CONCURRENT_KERNEL (10).
        assert_eq!(f.register(&REAL, Some(lend), Some(got)), 0);
        assert_eq!(f.enable(&REAL, 10), 0);
        assert_eq!(f.register(&REAL, None, Some(got)), INVALID_PARAMETER);
        // gpuspan registers and enables 10 and 5; a later registration of the client's is
        // only remembered.
        assert_eq!(f.agent_register(|| 0), 0);
        f.agent_enabled(10);
        f.agent_enabled(5);
        assert_eq!(f.register(&REAL, Some(lend), Some(got)), 0);
        assert_eq!(*REAL_CALLS.lock().unwrap(), ["register", "enable 10"]);

        // Its kind only, in order, byte for byte, in one buffer.
        LENT_BYTES.store(1 << 10, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { f.forward(walk, std::ptr::null_mut(), 0, p, valid) };
        let g = std::mem::take(&mut *GOT.lock().unwrap());
        assert_eq!(indices(&g), [vec![0u8, 2, 4]]);
        assert_eq!(g[0].len(), 32 + 32 + 48);
        // SAFETY: `buf` is a live Vec of `valid` bytes.
        let src = unsafe { std::slice::from_raw_parts(p, valid) };
        assert_eq!(&g[0][..32], &src[..32]);
        assert_eq!(&g[0][32..64], &src[72..104]);

        // Small lent buffers: split at record boundaries; a record larger than a whole lent
        // buffer is counted, not cut.
        LENT_BYTES.store(40, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { f.forward(walk, std::ptr::null_mut(), 0, p, valid) };
        let g = std::mem::take(&mut *GOT.lock().unwrap());
        assert_eq!(indices(&g), [vec![0u8], vec![2], vec![]]);
        assert_eq!(f.records_not_forwarded.load(Ordering::Relaxed), 1);
        // maxNumRecords caps each lent buffer.
        LENT_BYTES.store(1 << 10, Ordering::Relaxed);
        LENT_CAP.store(2, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { f.forward(walk, std::ptr::null_mut(), 0, p, valid) };
        LENT_CAP.store(0, Ordering::Relaxed);
        assert_eq!(indices(&std::mem::take(&mut *GOT.lock().unwrap())), [vec![0u8, 2], vec![4]]);
        // A declined buffer: counted.
        LENT_BYTES.store(0, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { f.forward(walk, std::ptr::null_mut(), 0, p, valid) };
        assert!(GOT.lock().unwrap().is_empty());
        assert_eq!(f.records_not_forwarded.load(Ordering::Relaxed), 1 + 3);
        assert_eq!(f.records_forwarded.load(Ordering::Relaxed), 3 + 2 + 3);

        // Disables: gpuspan's disable of the client's kind is held back, of its own passed
        // on; the client's disable of a kind gpuspan still collects is held back.
        REAL_CALLS.lock().unwrap().clear();
        assert_eq!(f.agent_disable(10, || real_disable_now(10)), 0);
        assert_eq!(f.agent_disable(5, || real_disable_now(5)), 0);
        f.agent_enabled(5);
        assert_eq!(f.enable(&REAL, 5), 0);
        assert_eq!(f.disable(&REAL, 5), 0);
        assert_eq!(f.disable(&REAL, 10), 0);
        assert_eq!(*REAL_CALLS.lock().unwrap(), ["disable 5", "enable 5", "disable 10"]);
        assert!(f.agent_collects());
        assert_eq!(f.kinds(), 0);
    }

    fn real_disable_now(k: u32) -> u32 {
        // SAFETY: the stand-in.
        unsafe { real_disable(k) }
    }
}
