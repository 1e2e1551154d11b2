//! NVTX domains and registered strings, as the tool that implements them.
//!
//! Once a tool is injected, NVTX forwards `nvtxDomainCreateA/W` and
//! `nvtxDomainRegisterStringA/W` to it; slots the tool leaves empty become no-ops that
//! return NULL (`nvtxSetInitFunctionsToNoops`, CUPTI-NOTES §5), so without these hooks every
//! domain would be the NULL handle and NCCL's ranges would be indistinguishable from the
//! worker's. Handles given out here are small integers (`slot` as a pointer value): slot 0 is
//! the default domain (the non-domain `nvtxRangePush*` calls and a NULL handle), created
//! domains get 1..=[`MAX_DOMAINS`], and a creation beyond that gets [`OVERFLOW_SLOT`], an
//! untracked catch-all. The same name always gets the same handle.
//!
//! Which domains open gpuspan scopes: the default domain, the domain named `gpuspan`, and the
//! names listed in `GPUSPAN_NVTX_DOMAINS` (comma-separated, read at the first domain
//! creation). Every other domain (NCCL's, cuDNN's, a library's own) keeps its own range stack
//! for NVTX's return values and never opens or closes a scope.
//!
//! Registered strings are copied once into leaked, NUL-terminated UTF-8 strings (at most
//! [`MAX_REGISTERED_STRINGS`]; the rest get a NULL handle, which reads as an unnamed range):
//! the handle is the string's address, which `gpuspan_cupti::nvtx::message_text` reads.
//! Creation and registration are rare, setup-time calls: they take a mutex and allocate;
//! the push / pop hot path only indexes the fixed tables here.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Created domains tracked individually.
pub const MAX_DOMAINS: usize = 62;
/// Slot (and handle value) of domains created beyond [`MAX_DOMAINS`]: untracked.
pub const OVERFLOW_SLOT: usize = MAX_DOMAINS + 1;
/// Number of slots: the default domain, [`MAX_DOMAINS`] created ones, the overflow slot.
pub const DOMAIN_SLOTS: usize = MAX_DOMAINS + 2;
/// Most registered strings kept (each leaked for the life of the process).
pub const MAX_REGISTERED_STRINGS: usize = 65_536;

/// The domain whose ranges are gpuspan's scopes besides the default domain.
pub const GPUSPAN_DOMAIN: &str = "gpuspan";

struct Registry {
    names: Vec<String>,
    scope_names: Option<Vec<String>>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { names: Vec::new(), scope_names: None });
/// Whether each slot's ranges are scopes (slot 0, the default domain, always is).
static TRACKED: [AtomicBool; DOMAIN_SLOTS] = {
    let mut t = [const { AtomicBool::new(false) }; DOMAIN_SLOTS];
    t[0] = AtomicBool::new(true);
    t
};
static REGISTERED_STRINGS: AtomicUsize = AtomicUsize::new(0);

/// The domain names whose ranges are scopes: [`GPUSPAN_DOMAIN`] and `GPUSPAN_NVTX_DOMAINS`.
pub fn scope_domain_names(env: Option<&str>) -> Vec<String> {
    let mut v = vec![GPUSPAN_DOMAIN.to_string()];
    v.extend(env.unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from));
    v
}

/// `nvtxDomainCreate*`: the slot (= handle value) of the domain called `name`, created on
/// first use. Never fails: past [`MAX_DOMAINS`] names, [`OVERFLOW_SLOT`].
pub fn create(name: &str) -> usize {
    let Ok(mut r) = REGISTRY.lock() else { return OVERFLOW_SLOT };
    if let Some(i) = r.names.iter().position(|n| n == name) {
        return i + 1;
    }
    if r.names.len() >= MAX_DOMAINS {
        return OVERFLOW_SLOT;
    }
    let scope_names = r
        .scope_names
        .get_or_insert_with(|| scope_domain_names(std::env::var("GPUSPAN_NVTX_DOMAINS").ok().as_deref()));
    let tracked = scope_names.iter().any(|n| n == name);
    r.names.push(name.to_string());
    let slot = r.names.len();
    TRACKED[slot].store(tracked, Ordering::Release);
    slot
}

/// The slot of a domain handle: NULL is the default domain (0); a handle we did not give out
/// is treated as the overflow slot (untracked). One comparison, no lock.
#[inline]
pub fn slot_of(handle: usize) -> usize {
    if handle < DOMAIN_SLOTS {
        handle
    } else {
        OVERFLOW_SLOT
    }
}

/// Whether ranges of domain `slot` open gpuspan scopes. One atomic load.
#[inline]
pub fn is_scope_domain(slot: usize) -> bool {
    TRACKED.get(slot).is_some_and(|t| t.load(Ordering::Acquire))
}

/// `nvtxDomainRegisterString*`: a leaked NUL-terminated copy of `s`, whose address is the
/// string handle; `None` (a NULL handle) once [`MAX_REGISTERED_STRINGS`] were registered or
/// when `s` holds a NUL.
pub fn register_string(s: &str) -> Option<&'static std::ffi::CStr> {
    if REGISTERED_STRINGS.fetch_add(1, Ordering::Relaxed) >= MAX_REGISTERED_STRINGS {
        REGISTERED_STRINGS.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    std::ffi::CString::new(s).ok().map(|c| &*Box::leak(c.into_boxed_c_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_get_stable_slots_and_only_scope_domains_are_tracked() {
        assert_eq!(scope_domain_names(Some(" a, ,b ")), ["gpuspan", "a", "b"]);
        assert!(is_scope_domain(0), "the default domain opens scopes");
        let nccl = create("NCCL");
        let ours = create(GPUSPAN_DOMAIN);
        assert_ne!(nccl, ours);
        assert_eq!(create("NCCL"), nccl, "same name, same handle");
        assert!(!is_scope_domain(nccl));
        assert!(is_scope_domain(ours));
        assert_eq!(slot_of(0), 0);
        assert_eq!(slot_of(nccl), nccl);
        assert_eq!(slot_of(0xdead_beef), OVERFLOW_SLOT);
        assert!(!is_scope_domain(OVERFLOW_SLOT));
        for i in 0..MAX_DOMAINS + 5 {
            let s = create(&format!("lib{i}"));
            assert!(s <= OVERFLOW_SLOT);
        }
        assert_eq!(create("one too many"), OVERFLOW_SLOT);
    }

    #[test]
    fn registered_strings_read_back_as_c_strings() {
        let s = register_string("dit.step 1/4").unwrap();
        assert_eq!(s.to_str().unwrap(), "dit.step 1/4");
        assert_eq!(register_string("a\0b"), None);
    }
}
