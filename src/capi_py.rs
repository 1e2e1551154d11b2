//! Scope calls for Python as CPython builtin functions, without a build step and without
//! linking libpython: the hot path of `gpuspan.auto` (issue 12: at most 2 µs of CPU per
//! hooked module call).
//!
//! A ctypes call pays argument conversion, a libffi call and result conversion: on the
//! bench machine a stage begin + end pair (the agent's work included) took 558 ns through
//! ctypes and 354 ns through these builtins (`METH_NOARGS`, a direct C call from the
//! interpreter), in loops of 200,000 and 2,000,000 pairs. So the Python package builds,
//! with `ctypes.pythonapi.PyCFunction_NewEx`, builtin functions whose C implementation lives
//! here (`python/gpuspan/__init__.py`, `_builtin`):
//! - [`gpuspan_py_bind`] gives this library the address of `Py_IncRef` and of the two
//!   objects the functions return (`True`: the scope opened / was closed, `False`: not
//!   collecting), so nothing here needs a symbol of libpython;
//! - [`gpuspan_py_stage_begin_fn`] binds a stage name to one of [`SLOTS`] slots and returns
//!   that slot's function, which opens a scope of that name (as `gpuspan_stage_begin`);
//! - [`gpuspan_py_end_fn`] returns the function that closes the innermost scope (as
//!   `gpuspan_end`).
//!
//! The functions are `PyCFunction`s called with the GIL held; their `self` is whatever the
//! Python side passed to `PyCFunction_NewEx` (unused). Layouts and flags from CPython's
//! stable ABI (`Include/methodobject.h`: `PyCFunction` is `PyObject *(*)(PyObject *,
//! PyObject *)`; a `METH_NOARGS` function gets NULL as its second argument and returns a new
//! reference).

use gpuspan_agent::hooks::{scope_begin, scope_end, NO_PUSH_POP_TRACKING};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::catch_unwind;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

/// `void Py_IncRef(PyObject *)` (stable ABI).
type PyIncRef = unsafe extern "C" fn(*mut c_void);
/// `PyObject *(*PyCFunction)(PyObject *self, PyObject *args)`.
type PyCFunction = unsafe extern "C" fn(*mut c_void, *mut c_void) -> *mut c_void;

/// How many stage names can have a builtin of their own (auto's stage names: 9 built in).
pub const SLOTS: usize = 32;

static INCREF: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
static YES: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
static NO: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
static NAMES: [OnceLock<Box<[u8]>>; SLOTS] = [const { OnceLock::new() }; SLOTS];

/// `int gpuspan_py_bind(void *py_incref, void *yes, void *no)`: `Py_IncRef`'s address and
/// the objects the builtins return (the caller keeps them alive for the process's life:
/// `True` and `False`). Returns 0, or -1 when an argument is NULL. Binding again replaces
/// the three (one interpreter per process: the same values).
#[no_mangle]
pub extern "C" fn gpuspan_py_bind(py_incref: *mut c_void, yes: *mut c_void, no: *mut c_void) -> c_int {
    if py_incref.is_null() || yes.is_null() || no.is_null() {
        return -1;
    }
    YES.store(yes, Ordering::Release);
    NO.store(no, Ordering::Release);
    INCREF.store(py_incref, Ordering::Release);
    0
}

/// A new reference to `YES` when `opened`, else to `NO`.
///
/// # Safety
/// [`gpuspan_py_bind`] ran (the `*_fn` getters hand out functions only then), and the GIL is
/// held (the builtin is being called by the interpreter).
unsafe fn answer(opened: bool) -> *mut c_void {
    let obj = if opened { YES.load(Ordering::Acquire) } else { NO.load(Ordering::Acquire) };
    let incref = INCREF.load(Ordering::Acquire);
    // SAFETY: bound before any function was handed out; `incref` is CPython's `Py_IncRef`
    // (stable ABI), `obj` a live object the Python side keeps, and the GIL is held.
    unsafe { std::mem::transmute::<*mut c_void, PyIncRef>(incref)(obj) };
    obj
}

/// The builtin of slot `N`: opens a scope named as the slot.
///
/// # Safety
/// Called by CPython as a `METH_NOARGS` `PyCFunction` (GIL held) after
/// [`gpuspan_py_stage_begin_fn`] bound slot `N`.
unsafe extern "C" fn stage_begin<const N: usize>(_slf: *mut c_void, _args: *mut c_void) -> *mut c_void {
    let rc = catch_unwind(|| {
        gpuspan_agent::entry::on_api_call();
        scope_begin(NAMES[N].get().map_or(&[][..], |n| &n[..]))
    })
    .unwrap_or(NO_PUSH_POP_TRACKING);
    // SAFETY: as this function's contract.
    unsafe { answer(rc != NO_PUSH_POP_TRACKING) }
}

/// The `end` builtin: closes the innermost open scope of the calling thread.
///
/// # Safety
/// Called by CPython as a `METH_NOARGS` `PyCFunction` (GIL held) after
/// [`gpuspan_py_bind`].
unsafe extern "C" fn end(_slf: *mut c_void, _args: *mut c_void) -> *mut c_void {
    let rc = catch_unwind(scope_end).unwrap_or(NO_PUSH_POP_TRACKING);
    // SAFETY: as this function's contract.
    unsafe { answer(rc != NO_PUSH_POP_TRACKING) }
}

macro_rules! slot_fns {
    ($($n:literal)*) => { [$(stage_begin::<$n> as PyCFunction),*] };
}
static STAGE_FNS: [PyCFunction; SLOTS] =
    slot_fns!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31);

/// `void *gpuspan_py_stage_begin_fn(uint32_t slot, const char *name)`: binds `name` (cut to
/// the agent's inline name length) to `slot` and returns the slot's `METH_NOARGS`
/// function. NULL when [`gpuspan_py_bind`] has not run, `slot >= SLOTS`, `name` is NULL, or
/// the slot is bound to another name already.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn gpuspan_py_stage_begin_fn(slot: u32, name: *const c_char) -> *mut c_void {
    let slot = slot as usize;
    if INCREF.load(Ordering::Acquire).is_null() || slot >= SLOTS || name.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: non-NULL and NUL-terminated per the contract.
    let bytes = unsafe { CStr::from_ptr(name) }.to_bytes();
    let bytes = &bytes[..bytes.len().min(gpuspan_core::scope::INLINE_NAME_CAP)];
    let bound = NAMES[slot].get_or_init(|| bytes.into());
    if &bound[..] != bytes {
        return std::ptr::null_mut();
    }
    STAGE_FNS[slot] as *mut c_void
}

/// `void *gpuspan_py_end_fn(void)`: the `METH_NOARGS` function that closes the innermost
/// scope; NULL before [`gpuspan_py_bind`].
#[no_mangle]
pub extern "C" fn gpuspan_py_end_fn() -> *mut c_void {
    if INCREF.load(Ordering::Acquire).is_null() {
        return std::ptr::null_mut();
    }
    end as PyCFunction as *mut c_void
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    static INCREFS: AtomicUsize = AtomicUsize::new(0);
    unsafe extern "C" fn counting_incref(_obj: *mut c_void) {
        INCREFS.fetch_add(1, Ordering::Relaxed);
    }

    #[test]
    fn slots_bind_names_once_and_answer_with_a_new_reference() {
        // Fine mode with no CUPTI: the agent does not activate, so both builtins answer "no"
        // (coarse mode, the default, would time scopes on the CPU).
        std::env::set_var("GPUSPAN_MODE", "fine");
        let (mut yes, mut no) = (1u64, 2u64);
        let (yes_p, no_p) = (&mut yes as *mut u64 as *mut c_void, &mut no as *mut u64 as *mut c_void);
        // SAFETY: NUL-terminated literals.
        assert!(unsafe { gpuspan_py_stage_begin_fn(0, c"ffn".as_ptr()) }.is_null(), "nothing before bind");
        assert!(gpuspan_py_end_fn().is_null());
        assert_eq!(gpuspan_py_bind(std::ptr::null_mut(), yes_p, no_p), -1);
        assert_eq!(gpuspan_py_bind(counting_incref as PyIncRef as *mut c_void, yes_p, no_p), 0);
        // SAFETY: as above.
        unsafe {
            let f = gpuspan_py_stage_begin_fn(3, c"attention.cross".as_ptr());
            assert!(!f.is_null());
            assert_eq!(gpuspan_py_stage_begin_fn(3, c"attention.cross".as_ptr()), f, "same name, same function");
            assert!(gpuspan_py_stage_begin_fn(3, c"ffn".as_ptr()).is_null(), "a slot keeps its name");
            assert!(gpuspan_py_stage_begin_fn(SLOTS as u32, c"ffn".as_ptr()).is_null());
            assert!(gpuspan_py_stage_begin_fn(4, std::ptr::null()).is_null());
            assert_eq!(&NAMES[3].get().unwrap()[..], b"attention.cross");
            // The test binary's agent is not collecting: both answer "no", with a reference.
            let f: PyCFunction = std::mem::transmute::<*mut c_void, PyCFunction>(f);
            let before = INCREFS.load(Ordering::Relaxed);
            assert_eq!(f(std::ptr::null_mut(), std::ptr::null_mut()), no_p);
            let e: PyCFunction = std::mem::transmute::<*mut c_void, PyCFunction>(gpuspan_py_end_fn());
            assert_eq!(e(std::ptr::null_mut(), std::ptr::null_mut()), no_p);
            assert_eq!(INCREFS.load(Ordering::Relaxed), before + 2, "each answer is a new reference");
        }
    }
}
