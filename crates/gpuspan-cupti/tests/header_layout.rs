//! Record layouts checked against NVIDIA's real CUPTI headers (issue 2, item 4).
//!
//! A small C program compiled with gcc against `cupti_activity.h` of the PyPI wheels
//! `nvidia-cuda-cupti-cu12` (12.9) and `nvidia-cuda-cupti` (13.5) prints `sizeof` and
//! `offsetof` of every field the decoder (`src/decode.rs`) and the simulator read or write;
//! the test compares them with cudarc's `sys` structs that both use. The wheels ship no
//! `cuda.h`, so `tests/cuda-stub/` declares the few CUDA handle types the CUPTI headers name
//! (all pointers or ints, so they do not change record layouts).
//!
//! The wheels are installed by `scripts/test.sh` into `.venv/` (or `$GPUSPAN_VENV`). Without
//! them the test fails under CI and is skipped (with a message) elsewhere.

use cudarc::cupti::sys::*;
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

fn venv_nvidia() -> Option<PathBuf> {
    let venv = std::env::var_os("GPUSPAN_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv"));
    for e in std::fs::read_dir(venv.join("lib")).ok()?.flatten() {
        let p = e.path().join("site-packages/nvidia");
        if p.is_dir() {
            return Some(p);
        }
    }
    None
}

/// (C type, field, cudarc offset). Size rows use field "".
fn expected() -> Vec<(&'static str, &'static str, usize)> {
    macro_rules! f {
        ($t:ident, $f:ident) => {
            (stringify!($t), stringify!($f), offset_of!($t, $f))
        };
    }
    macro_rules! s {
        ($t:ident) => {
            (stringify!($t), "", size_of::<$t>())
        };
    }
    vec![
        s!(CUpti_ActivityKernel9),
        f!(CUpti_ActivityKernel9, registersPerThread),
        f!(CUpti_ActivityKernel9, start),
        f!(CUpti_ActivityKernel9, end),
        f!(CUpti_ActivityKernel9, deviceId),
        f!(CUpti_ActivityKernel9, contextId),
        f!(CUpti_ActivityKernel9, streamId),
        f!(CUpti_ActivityKernel9, gridX),
        f!(CUpti_ActivityKernel9, gridY),
        f!(CUpti_ActivityKernel9, gridZ),
        f!(CUpti_ActivityKernel9, blockX),
        f!(CUpti_ActivityKernel9, blockY),
        f!(CUpti_ActivityKernel9, blockZ),
        f!(CUpti_ActivityKernel9, staticSharedMemory),
        f!(CUpti_ActivityKernel9, dynamicSharedMemory),
        f!(CUpti_ActivityKernel9, correlationId),
        f!(CUpti_ActivityKernel9, name),
        f!(CUpti_ActivityKernel9, graphId),
        s!(CUpti_ActivityMemcpy6),
        f!(CUpti_ActivityMemcpy6, copyKind),
        f!(CUpti_ActivityMemcpy6, bytes),
        f!(CUpti_ActivityMemcpy6, start),
        f!(CUpti_ActivityMemcpy6, end),
        f!(CUpti_ActivityMemcpy6, deviceId),
        f!(CUpti_ActivityMemcpy6, streamId),
        f!(CUpti_ActivityMemcpy6, correlationId),
        s!(CUpti_ActivityMemset4),
        f!(CUpti_ActivityMemset4, value),
        f!(CUpti_ActivityMemset4, bytes),
        f!(CUpti_ActivityMemset4, start),
        f!(CUpti_ActivityMemset4, end),
        f!(CUpti_ActivityMemset4, streamId),
        f!(CUpti_ActivityMemset4, correlationId),
        s!(CUpti_ActivityAPI),
        f!(CUpti_ActivityAPI, cbid),
        f!(CUpti_ActivityAPI, start),
        f!(CUpti_ActivityAPI, end),
        f!(CUpti_ActivityAPI, processId),
        f!(CUpti_ActivityAPI, threadId),
        f!(CUpti_ActivityAPI, correlationId),
        f!(CUpti_ActivityAPI, returnValue),
        s!(CUpti_ActivityExternalCorrelation),
        f!(CUpti_ActivityExternalCorrelation, externalKind),
        f!(CUpti_ActivityExternalCorrelation, externalId),
        f!(CUpti_ActivityExternalCorrelation, correlationId),
        s!(CUpti_ActivityOverhead3),
        f!(CUpti_ActivityOverhead3, overheadKind),
        f!(CUpti_ActivityOverhead3, start),
        f!(CUpti_ActivityOverhead3, end),
        f!(CUpti_ActivityOverhead3, correlationId),
        f!(CUpti_ActivityOverhead3, overheadData),
    ]
}

/// Runs the C program against one wheel's include dir; returns "T.f" → value lines.
fn c_layout(include: &Path, extra: &str) -> std::collections::BTreeMap<String, usize> {
    let dir = tempfile::tempdir().unwrap();
    let mut c = String::from("#include <stdio.h>\n#include <stddef.h>\n#include <cupti_activity.h>\nint main(void){\n");
    for (t, f, _) in expected() {
        if f.is_empty() {
            c += &format!("printf(\"{t}. %zu\\n\", sizeof({t}));\n");
        } else {
            c += &format!("printf(\"{t}.{f} %zu\\n\", offsetof({t},{f}));\n");
        }
    }
    c += extra;
    c += "return 0;}\n";
    let src = dir.path().join("layout.c");
    std::fs::write(&src, c).unwrap();
    let exe = dir.path().join("layout");
    let stub = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda-stub");
    let o = Command::new("gcc").arg("-I").arg(&stub).arg("-I").arg(include).arg(&src).arg("-o").arg(&exe).output().expect("gcc");
    assert!(o.status.success(), "gcc against {}: {}", include.display(), String::from_utf8_lossy(&o.stderr));
    let out = Command::new(&exe).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn check(include: &Path, extra: &str) -> std::collections::BTreeMap<String, usize> {
    let got = c_layout(include, extra);
    for (t, f, want) in expected() {
        let key = format!("{t}.{f}");
        assert_eq!(got.get(&key), Some(&want), "{key} in {} vs cudarc", include.display());
    }
    got
}

#[test]
fn record_layouts_match_real_cupti_headers() {
    let Some(nv) = venv_nvidia() else {
        assert!(std::env::var_os("CI").is_none(), "CI must have the CUPTI wheels (scripts/test.sh installs them)");
        eprintln!("skipping: CUPTI wheels not installed (run scripts/test.sh)");
        return;
    };
    check(&nv.join("cuda_cupti/include"), "");
    // CUPTI 13.x: the records it emits (Kernel13, Memcpy7, Memset5) extend the 12.9 ones,
    // whose every field we read lies at the same offset (CUPTI-NOTES §2).
    let extra13 = "printf(\"K13. %zu\\n\", sizeof(CUpti_ActivityKernel13));\
                   printf(\"K13.start %zu\\n\", offsetof(CUpti_ActivityKernel13,start));\
                   printf(\"K13.name %zu\\n\", offsetof(CUpti_ActivityKernel13,name));\
                   printf(\"K13.correlationId %zu\\n\", offsetof(CUpti_ActivityKernel13,correlationId));\
                   printf(\"M7. %zu\\n\", sizeof(CUpti_ActivityMemcpy7));\
                   printf(\"S5. %zu\\n\", sizeof(CUpti_ActivityMemset5));\n";
    let got = check(&nv.join("cu13/include"), extra13);
    assert_eq!(got["K13."], 248);
    assert_eq!(got["K13.start"], offset_of!(CUpti_ActivityKernel9, start));
    assert_eq!(got["K13.name"], offset_of!(CUpti_ActivityKernel9, name));
    assert_eq!(got["K13.correlationId"], offset_of!(CUpti_ActivityKernel9, correlationId));
    assert_eq!(got["M7."], 112);
    assert_eq!(got["S5."], 104);
}

/// The allocation callback ids we enable are the headers' (12.9 and 13.5).
#[test]
fn alloc_callback_ids_match_real_cupti_headers() {
    use gpuspan_cupti::activity::{DRIVER_ALLOC_CBIDS, RUNTIME_ALLOC_CBIDS};
    let Some(nv) = venv_nvidia() else {
        assert!(std::env::var_os("CI").is_none(), "CI must have the CUPTI wheels (scripts/test.sh installs them)");
        eprintln!("skipping: CUPTI wheels not installed (run scripts/test.sh)");
        return;
    };
    let value = |text: &str, name: &str| -> u32 {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not in the header"));
        line.split('=').nth(1).unwrap().trim().trim_end_matches(',').parse().unwrap()
    };
    for inc in ["cuda_cupti/include", "cu13/include"] {
        let drv = std::fs::read_to_string(nv.join(inc).join("cupti_driver_cbid.h")).unwrap();
        let rt = std::fs::read_to_string(nv.join(inc).join("cupti_runtime_cbid.h")).unwrap();
        let d: Vec<u32> = ["cuMemAlloc", "cuMemAlloc_v2", "cuMemAllocPitch_v2", "cuMemAllocHost_v2", "cuMemAllocManaged", "cuMemAllocAsync", "cuMemAllocFromPoolAsync"]
            .iter()
            .map(|n| value(&drv, &format!("CUPTI_DRIVER_TRACE_CBID_{n}")))
            .collect();
        assert_eq!(d, DRIVER_ALLOC_CBIDS, "{inc}");
        let r: Vec<u32> = ["cudaMalloc_v3020", "cudaMallocPitch_v3020", "cudaMallocHost_v3020", "cudaMallocManaged_v6000", "cudaMallocAsync_v11020", "cudaMallocFromPoolAsync_v11020"]
            .iter()
            .map(|n| value(&rt, &format!("CUPTI_RUNTIME_TRACE_CBID_{n}")))
            .collect();
        assert_eq!(r, RUNTIME_ALLOC_CBIDS, "{inc}");
    }
}
