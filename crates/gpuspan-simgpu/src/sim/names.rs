//! Interned kernel names: one leaked, NUL-terminated string per distinct name, valid for
//! the life of the process, so every kernel record of a function shares one `name`
//! pointer as CUPTI's do (CUPTI-NOTES §2 "`name` is mangled, shared by all records").

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::{Mutex, OnceLock};

fn table() -> &'static Mutex<HashMap<String, &'static CStr>> {
    static T: OnceLock<Mutex<HashMap<String, &'static CStr>>> = OnceLock::new();
    T.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The process-lifetime C string for `name` (interior NULs are cut off).
pub fn intern(name: &str) -> &'static CStr {
    let name = name.split('\0').next().unwrap_or("");
    let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = t.get(name) {
        return s;
    }
    let leaked: &'static CStr =
        Box::leak(CString::new(name).expect("NULs removed").into_boxed_c_str());
    t.insert(name.to_string(), leaked);
    leaked
}

#[cfg(test)]
mod tests {
    #[test]
    fn same_name_same_pointer() {
        let a = super::intern("spin_kernel");
        let b = super::intern("spin_kernel");
        let c = super::intern("other");
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert_ne!(a.as_ptr(), c.as_ptr());
        assert_eq!(a.to_str().unwrap(), "spin_kernel");
    }
}
