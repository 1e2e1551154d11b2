//! Kernel names, owned by the module they came from: one NUL-terminated string per
//! (module, name), so every kernel record of a function shares one `name` pointer as CUPTI's
//! do (CUPTI-NOTES §2 "`name` is mangled, shared by all records").
//!
//! When its module is unloaded (`cuModuleUnload`) a name's bytes are overwritten with
//! [`UNLOADED_BYTE`]s (the string keeps its length and stays readable: the memory is never
//! freed). That is the worst case the agent must survive: a record still in a CUPTI buffer
//! whose `name` points into memory that went with the module, read after the unload,
//! spells garbage (issue 11 item 3; the real driver's ownership of that memory is not
//! documented, so the simulator assumes the least). Reading such a name is not undefined
//! behaviour here, only wrong, so a test can see it.

use std::collections::HashMap;
use std::ffi::{c_char, CStr};
use std::sync::{Mutex, OnceLock};

/// What an unloaded module's names are overwritten with.
pub const UNLOADED_BYTE: u8 = b'?';

/// A kernel name's address: a leaked, NUL-terminated buffer that only [`release_module`]
/// ever writes again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelName(usize);

impl KernelName {
    /// The C string's address (what CUPTI records carry as `name`).
    pub fn as_ptr(self) -> *const c_char {
        self.0 as *const c_char
    }

    /// The name as it reads now (after an unload: [`UNLOADED_BYTE`]s).
    pub fn to_string_lossy(self) -> String {
        // SAFETY: a leaked buffer from `intern`, NUL-terminated, never freed.
        unsafe { CStr::from_ptr(self.as_ptr()) }.to_string_lossy().into_owned()
    }
}

fn table() -> &'static Mutex<HashMap<(u64, String), KernelName>> {
    static T: OnceLock<Mutex<HashMap<(u64, String), KernelName>>> = OnceLock::new();
    T.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The C string for `name` in module `module` (interior NULs are cut off): the same
/// address for every lookup until the module is released.
pub fn intern(module: u64, name: &str) -> KernelName {
    let name = name.split('\0').next().unwrap_or("");
    let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = t.get(&(module, name.to_string())) {
        return *s;
    }
    let mut bytes = Vec::with_capacity(name.len() + 1);
    bytes.extend_from_slice(name.as_bytes());
    bytes.push(0);
    let leaked: &'static mut [u8] = Box::leak(bytes.into_boxed_slice());
    let k = KernelName(leaked.as_mut_ptr() as usize);
    t.insert((module, name.to_string()), k);
    k
}

/// `cuModuleUnload(module)`: overwrites the names of `module` with [`UNLOADED_BYTE`]s and
/// forgets them (a later load of the same image gets new strings). Returns how many.
pub fn release_module(module: u64) -> usize {
    let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
    let gone: Vec<(u64, String)> = t.keys().filter(|(m, _)| *m == module).cloned().collect();
    for key in &gone {
        if let Some(k) = t.remove(key) {
            // SAFETY: `k` is a leaked buffer of `key.1.len() + 1` bytes from `intern`; only
            // the bytes before its NUL are written, and no Rust reference to it exists (the
            // simulator hands out raw addresses only). A reader decoding a record at this
            // moment sees old or new bytes: the race a real unload has.
            unsafe { std::ptr::write_bytes(k.0 as *mut u8, UNLOADED_BYTE, key.1.len()) };
        }
    }
    gone.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_name_same_pointer_per_module() {
        let a = intern(1, "spin_kernel");
        let b = intern(1, "spin_kernel");
        let c = intern(1, "other");
        let d = intern(2, "spin_kernel");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d, "each module owns its names");
        assert_eq!(a.to_string_lossy(), "spin_kernel");
    }

    #[test]
    fn an_unloaded_module_s_names_read_as_garbage() {
        let a = intern(7, "flash_fwd");
        let other = intern(8, "flash_fwd");
        assert_eq!(release_module(7), 1);
        assert_eq!(a.to_string_lossy(), "?????????");
        assert_eq!(other.to_string_lossy(), "flash_fwd", "another module's copy is untouched");
        assert_ne!(intern(7, "flash_fwd"), a, "a reload gets a new string");
    }
}
