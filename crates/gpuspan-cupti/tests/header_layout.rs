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

/// The allocation and code-unload callback ids we enable are the headers' (12.9 and 13.5).
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
        let u: Vec<u32> = ["cuModuleUnload", "cuLibraryUnload"]
            .iter()
            .map(|n| value(&drv, &format!("CUPTI_DRIVER_TRACE_CBID_{n}")))
            .collect();
        assert_eq!(u, gpuspan_cupti::activity::DRIVER_UNLOAD_CBIDS, "{inc}");
    }
}

/// The stream-capture callback ids are the headers' in every release that has them: 12.0
/// through 13.5 (`.venv/cupti-headers/<release>/cupti_driver_cbid.h`).
#[test]
fn capture_callback_ids_match_every_release_header() {
    use gpuspan_cupti::activity::{DRIVER_CAPTURE_BEGIN_CBIDS, DRIVER_CAPTURE_END_CBIDS};
    let Some(dir) = release_headers() else {
        assert!(std::env::var_os("CI").is_none(), "CI must have the CUPTI headers (scripts/test.sh fetches them)");
        eprintln!("skipping: release headers not fetched (run scripts/test.sh)");
        return;
    };
    let begin = ["cuStreamBeginCapture", "cuStreamBeginCapture_ptsz", "cuStreamBeginCapture_v2", "cuStreamBeginCapture_v2_ptsz", "cuStreamBeginCaptureToGraph", "cuStreamBeginCaptureToGraph_ptsz", "cuStreamBeginCaptureToCig", "cuStreamBeginCaptureToCig_ptsz"];
    let end = ["cuStreamEndCapture", "cuStreamEndCapture_ptsz", "cuStreamEndCaptureToCig", "cuStreamEndCaptureToCig_ptsz"];
    let mut releases = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let h = entry.unwrap().path().join("cupti_driver_cbid.h");
        let Ok(text) = std::fs::read_to_string(&h) else { continue };
        releases += 1;
        let value = |name: &str| -> Option<u32> {
            let full = format!("CUPTI_DRIVER_TRACE_CBID_{name}");
            text.lines()
                .find(|l| l.split_whitespace().next() == Some(full.as_str()))
                .map(|l| l.split('=').nth(1).unwrap().trim().trim_end_matches(',').parse().unwrap())
        };
        for (names, ids) in [(&begin[..], &DRIVER_CAPTURE_BEGIN_CBIDS[..]), (&end[..], &DRIVER_CAPTURE_END_CBIDS[..])] {
            for (n, id) in names.iter().zip(ids) {
                if let Some(v) = value(n) {
                    assert_eq!(v, *id, "{n} in {}", h.display());
                }
            }
            // The plain begin / end exist in every release.
            assert_eq!(value(names[0]), Some(ids[0]), "{}", h.display());
        }
    }
    assert!(releases >= 10, "{releases} release headers in {}", dir.display());
}

/// `.venv/cupti-headers/<release>/` as unpacked by `scripts/fetch-cupti-headers.sh`.
fn release_headers() -> Option<PathBuf> {
    let venv = std::env::var_os("GPUSPAN_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv"));
    let d = venv.join("cupti-headers");
    if d.is_dir() {
        return Some(d);
    }
    assert!(std::env::var_os("CI").is_none(), "CI must have the CUPTI headers (scripts/fetch-cupti-headers.sh)");
    eprintln!("skipping: no {} (run scripts/fetch-cupti-headers.sh)", d.display());
    None
}

/// `NAME = value` of an enum member or `#define NAME value` in a header's text.
fn header_value(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let t = l.trim();
        let rest = t.strip_prefix("#define ").unwrap_or(t);
        let rest = rest.strip_prefix(name)?;
        if rest.starts_with(|c: char| c.is_alphanumeric() || c == '_') {
            return None;
        }
        let v = rest.trim_start_matches([' ', '\t', '=']).trim_end_matches(',').trim();
        let v = v.split(|c: char| c.is_whitespace() || c == ',').next()?;
        v.parse().ok()
    })
}

/// The struct the `CUpti_ActivityKind` documentation of `kind` names ("The corresponding
/// activity record structure is \ref CUpti_Activity…"): the last `CUpti_Activity*` of the
/// doc comment right before `CUPTI_ACTIVITY_KIND_<kind> =`.
fn documented_struct(text: &str, kind: &str) -> String {
    let member = format!("CUPTI_ACTIVITY_KIND_{kind}");
    let mut at = None;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix(&member) {
            if rest.trim_start().starts_with('=') {
                at = Some(pos);
                break;
            }
        }
        pos += line.len();
    }
    let at = at.unwrap_or_else(|| panic!("{kind} not in the header"));
    let doc_start = text[..at].rfind("/**").expect("doc comment");
    let doc = &text[doc_start..at];
    assert!(!doc.contains("*/\n  CUPTI_"), "the doc comment right before {kind}");
    doc.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .rfind(|w| w.starts_with("CUpti_Activity"))
        .unwrap_or_else(|| panic!("no struct named for {kind}"))
        .to_string()
}

/// Every row of `gpuspan_cupti::layouts::RELEASES` against that release's own headers: the
/// API version, the kind values, the struct each kind's documentation names, that struct's
/// size, and the offset of every field the decoder reads (the 12.9 offsets it uses), with the
/// overhead record's optional fields present exactly where the table says. Also the launch
/// callback ids gpuspan enables.
#[test]
fn every_cupti_release_writes_what_the_layout_table_says() {
    use gpuspan_cupti::activity::*;
    use gpuspan_cupti::layouts::{OverheadLayout, RELEASES};
    let Some(root) = release_headers() else { return };
    let stub = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda-stub");
    let k9 = |f: &str| -> usize {
        expected().iter().find(|(t, n, _)| *t == "CUpti_ActivityKernel9" && *n == f).map(|e| e.2).unwrap()
    };
    let fields: [(&str, &[&str]); 5] = [
        ("kernel", &["registersPerThread", "start", "end", "deviceId", "contextId", "streamId", "gridX", "gridY", "gridZ", "blockX", "blockY", "blockZ", "staticSharedMemory", "dynamicSharedMemory", "correlationId", "name", "graphId"]),
        ("memcpy", &["copyKind", "bytes", "start", "end", "deviceId", "contextId", "streamId", "correlationId"]),
        ("memset", &["value", "bytes", "start", "end", "deviceId", "contextId", "streamId", "correlationId"]),
        ("api", &["cbid", "start", "end", "processId", "threadId", "correlationId", "returnValue"]),
        ("ext", &["externalKind", "externalId", "correlationId"]),
    ];
    let twelve_nine = |family: &str, f: &str| -> usize {
        match family {
            "kernel" => k9(f),
            "memcpy" => expected().iter().find(|(t, n, _)| *t == "CUpti_ActivityMemcpy6" && *n == f).map(|e| e.2).unwrap_or_else(|| {
                // contextId is not in `expected()`: cudarc's offset.
                offset_of!(CUpti_ActivityMemcpy6, contextId)
            }),
            "memset" => match f {
                "deviceId" => offset_of!(CUpti_ActivityMemset4, deviceId),
                "contextId" => offset_of!(CUpti_ActivityMemset4, contextId),
                _ => expected().iter().find(|(t, n, _)| *t == "CUpti_ActivityMemset4" && *n == f).map(|e| e.2).unwrap(),
            },
            "api" => expected().iter().find(|(t, n, _)| *t == "CUpti_ActivityAPI" && *n == f).map(|e| e.2).unwrap(),
            _ => expected().iter().find(|(t, n, _)| *t == "CUpti_ActivityExternalCorrelation" && *n == f).map(|e| e.2).unwrap(),
        }
    };
    for r in RELEASES {
        let inc = root.join(r.name);
        let activity = std::fs::read_to_string(inc.join("cupti_activity.h"))
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fetch-cupti-headers.sh)", inc.display()));
        let version = std::fs::read_to_string(inc.join("cupti_version.h")).unwrap();
        assert_eq!(header_value(&version, "CUPTI_API_VERSION"), Some(r.api_version as u64), "{} API version", r.name);
        for (name, ours) in [
            ("CUPTI_ACTIVITY_KIND_MEMCPY", KIND_MEMCPY),
            ("CUPTI_ACTIVITY_KIND_MEMSET", KIND_MEMSET),
            ("CUPTI_ACTIVITY_KIND_KERNEL", KIND_KERNEL),
            ("CUPTI_ACTIVITY_KIND_DRIVER", KIND_DRIVER),
            ("CUPTI_ACTIVITY_KIND_RUNTIME", KIND_RUNTIME),
            ("CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL", KIND_CONCURRENT_KERNEL),
            ("CUPTI_ACTIVITY_KIND_OVERHEAD", KIND_OVERHEAD),
            ("CUPTI_ACTIVITY_KIND_EXTERNAL_CORRELATION", KIND_EXTERNAL_CORRELATION),
        ] {
            assert_eq!(header_value(&activity, name), Some(ours as u64), "{} {name}", r.name);
        }
        let overhead_struct = match r.overhead {
            OverheadLayout::V1 => "CUpti_ActivityOverhead",
            OverheadLayout::V2 => "CUpti_ActivityOverhead2",
            OverheadLayout::V3 => "CUpti_ActivityOverhead3",
        };
        assert_eq!(documented_struct(&activity, "CONCURRENT_KERNEL"), r.kernel.0, "{} kernel record", r.name);
        assert_eq!(documented_struct(&activity, "MEMCPY"), r.memcpy.0, "{} memcpy record", r.name);
        assert_eq!(documented_struct(&activity, "MEMSET"), r.memset.0, "{} memset record", r.name);
        assert_eq!(documented_struct(&activity, "OVERHEAD"), overhead_struct, "{} overhead record", r.name);

        // Sizes and offsets, compiled against this release's header.
        let structs = [("kernel", r.kernel.0), ("memcpy", r.memcpy.0), ("memset", r.memset.0), ("api", "CUpti_ActivityAPI"), ("ext", "CUpti_ActivityExternalCorrelation")];
        let mut c = String::from("#include <stdio.h>\n#include <stddef.h>\n#include <cupti_activity.h>\nint main(void){\n");
        for (family, t) in structs {
            c += &format!("printf(\"{family}. %zu\\n\", sizeof({t}));\n");
            for f in fields.iter().find(|x| x.0 == family).unwrap().1 {
                c += &format!("printf(\"{family}.{f} %zu\\n\", offsetof({t},{f}));\n");
            }
        }
        c += &format!("printf(\"overhead. %zu\\n\", sizeof({overhead_struct}));\n");
        for f in ["overheadKind", "start", "end"] {
            c += &format!("printf(\"overhead.{f} %zu\\n\", offsetof({overhead_struct},{f}));\n");
        }
        if r.overhead.has_correlation_id() {
            c += &format!("printf(\"overhead.correlationId %zu\\n\", offsetof({overhead_struct},correlationId));\n");
        }
        if r.overhead.has_overhead_data() {
            c += &format!("printf(\"overhead.overheadData %zu\\n\", offsetof({overhead_struct},overheadData));\n");
        }
        c += "return 0;}\n";
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("l.c"), c).unwrap();
        let exe = dir.path().join("l");
        let o = Command::new("gcc").arg("-I").arg(&stub).arg("-I").arg(&inc).arg(dir.path().join("l.c")).arg("-o").arg(&exe).output().expect("gcc");
        assert!(o.status.success(), "gcc against {}: {}", inc.display(), String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8(Command::new(&exe).output().unwrap().stdout).unwrap();
        let got: std::collections::BTreeMap<&str, usize> =
            out.lines().map(|l| l.split_once(' ').unwrap()).map(|(k, v)| (k, v.parse().unwrap())).collect();
        assert_eq!(got["kernel."], r.kernel.1, "{} {} size", r.name, r.kernel.0);
        assert_eq!(got["memcpy."], r.memcpy.1, "{} {} size", r.name, r.memcpy.0);
        assert_eq!(got["memset."], r.memset.1, "{} {} size", r.name, r.memset.0);
        assert_eq!(got["api."], size_of::<CUpti_ActivityAPI>(), "{} API size", r.name);
        assert_eq!(got["ext."], size_of::<CUpti_ActivityExternalCorrelation>(), "{} external correlation size", r.name);
        for (family, names) in fields {
            for f in names {
                assert_eq!(got[format!("{family}.{f}").as_str()], twelve_nine(family, f), "{} {family}.{f}", r.name);
            }
        }
        type O = CUpti_ActivityOverhead3;
        assert_eq!(got["overhead."], r.overhead.size(), "{} overhead size", r.name);
        assert_eq!(got["overhead.overheadKind"], offset_of!(O, overheadKind), "{}", r.name);
        assert_eq!(got["overhead.start"], offset_of!(O, start), "{}", r.name);
        assert_eq!(got["overhead.end"], offset_of!(O, end), "{}", r.name);
        if r.overhead.has_correlation_id() {
            assert_eq!(got["overhead.correlationId"], offset_of!(O, correlationId), "{}", r.name);
        }
        if r.overhead.has_overhead_data() {
            assert_eq!(got["overhead.overheadData"], offset_of!(O, overheadData), "{}", r.name);
        }

        // Launch callback ids: the same number in every release, and 505/506 only from 13.0.
        let drv = std::fs::read_to_string(inc.join("cupti_driver_cbid.h")).unwrap();
        let rt = std::fs::read_to_string(inc.join("cupti_runtime_cbid.h")).unwrap();
        for (name, id) in [
            ("cuLaunchKernel", 307),
            ("cuLaunchKernel_ptsz", 442),
            ("cuLaunchCooperativeKernel", 477),
            ("cuLaunchCooperativeKernel_ptsz", 478),
            ("cuLaunchKernelEx", 652),
            ("cuLaunchKernelEx_ptsz", 653),
            ("cuGraphLaunch", 514),
            ("cuGraphLaunch_ptsz", 515),
        ] {
            assert_eq!(header_value(&drv, &format!("CUPTI_DRIVER_TRACE_CBID_{name}")), Some(id), "{} {name}", r.name);
            if !name.starts_with("cuGraph") {
                assert!(gpuspan_core::spans::DRIVER_GPU_WORK_CBIDS.contains(&(id as u32)), "{name} counted");
            }
        }
        for (name, id) in [
            ("cudaLaunchKernel_v7000", 211),
            ("cudaLaunchKernel_ptsz_v7000", 214),
            ("cudaLaunchCooperativeKernel_v9000", 269),
            ("cudaLaunchCooperativeKernel_ptsz_v9000", 270),
            ("cudaLaunchKernelExC_v11060", 430),
            ("cudaLaunchKernelExC_ptsz_v11060", 431),
            ("cudaGraphLaunch_v10000", 311),
            ("cudaGraphLaunch_ptsz_v10000", 312),
        ] {
            assert_eq!(header_value(&rt, &format!("CUPTI_RUNTIME_TRACE_CBID_{name}")), Some(id), "{} {name}", r.name);
            if !name.starts_with("cudaGraph") {
                assert!(gpuspan_core::spans::RUNTIME_GPU_WORK_CBIDS.contains(&(id as u32)), "{name} counted");
            }
        }
        let v13 = header_value(&rt, "CUPTI_RUNTIME_TRACE_CBID___cudaLaunchKernel_v13000");
        let v13_ptsz = header_value(&rt, "CUPTI_RUNTIME_TRACE_CBID___cudaLaunchKernel_ptsz_v13000");
        if r.api_version >= 130_000 {
            assert_eq!((v13, v13_ptsz), (Some(505), Some(506)), "{}", r.name);
            assert_eq!(gpuspan_core::spans::RUNTIME_GPU_WORK_CBIDS_13, [505, 506]);
        } else {
            assert_eq!((v13, v13_ptsz), (None, None), "{}: no CUDA 13 launch cbids", r.name);
            assert!(header_value(&rt, "CUPTI_RUNTIME_TRACE_CBID_SIZE").unwrap() <= 505, "{}: 505 is past the 12.x table", r.name);
        }
    }
}

/// The V2 structs and constants of `gpuspan_cupti::multi_subscriber` against every release
/// header that has them (13.3 … 13.5 for the whole V2 activity API; `CUpti_SubscriberParams`
/// from 13.0): sizes and offsets by gcc, the name lengths, the attribute value, and that the
/// V2 functions the agent resolves are declared from 13.3 on and not all before.
#[test]
fn multi_subscriber_types_match_the_13x_headers() {
    use gpuspan_cupti::multi_subscriber::*;
    use std::mem::{offset_of, size_of};
    let Some(root) = release_headers() else { return };
    let v2_calls = [
        "cuptiSubscribe_v2",
        "cuptiActivityEnable_v2",
        "cuptiActivityDisable_v2",
        "cuptiActivityRegisterCallbacks_v2",
        "cuptiActivityGetNumDroppedRecords_v2",
        "cuptiActivityPushExternalCorrelationId_v2",
        "cuptiActivityPopExternalCorrelationId_v2",
        "cuptiGetTimestamp_v2",
        "cuptiActivityGetNextRecord_v2",
        "cuptiActivitySetAttribute_v2",
    ];
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let inc = entry.unwrap().path();
        let Ok(version) = std::fs::read_to_string(inc.join("cupti_version.h")) else { continue };
        let api = header_value(&version, "CUPTI_API_VERSION").unwrap_or(0) as u32;
        let text = ["cupti_activity.h", "cupti_callbacks.h"]
            .iter()
            .map(|h| std::fs::read_to_string(inc.join(h)).unwrap_or_default())
            .collect::<String>();
        let declared = v2_calls.iter().filter(|c| text.contains(&format!("CUPTIAPI {}(", c))).count();
        if api < MULTI_SUBSCRIBER_MIN_VERSION {
            assert!(declared < v2_calls.len(), "{}: all V2 calls before 13.3?", inc.display());
            continue;
        }
        assert_eq!(declared, v2_calls.len(), "{}: every V2 call the agent resolves", inc.display());
        assert_eq!(header_value(&text, "CUPTI_SUBSCRIBER_NAME_MAX_LEN"), Some(SUBSCRIBER_NAME_MAX_LEN as u64));
        assert_eq!(header_value(&text, "CUPTI_OLD_SUBSCRIBER_NAME_MIN_LEN"), Some(OLD_SUBSCRIBER_NAME_MIN_LEN as u64));
        let dir = tempfile::tempdir().unwrap();
        let mut c = String::from("#include <stdio.h>\n#include <stddef.h>\n#include <cupti_activity.h>\n#include <cupti_callbacks.h>\nint main(void){\n");
        let fields: [(&str, &str, usize); 11] = [
            ("CUpti_SubscriberParams", "", size_of::<SubscriberParams>()),
            ("CUpti_SubscriberParams", "subscriberName", offset_of!(SubscriberParams, subscriber_name)),
            ("CUpti_SubscriberParams", "oldSubscriberName", offset_of!(SubscriberParams, old_subscriber_name)),
            ("CUpti_SubscriberParams", "oldSubscriberSize", offset_of!(SubscriberParams, old_subscriber_size)),
            ("CUpti_SubscriberParams", "allowMultipleSubscribers", offset_of!(SubscriberParams, allow_multiple_subscribers)),
            ("CUpti_BufferCallbackRequestInfo", "", size_of::<BufferRequestInfo>()),
            ("CUpti_BufferCallbackCompleteInfo", "", size_of::<BufferCompleteInfo>()),
            ("CUpti_BufferCallbackCompleteInfo", "threadId", offset_of!(BufferCompleteInfo, thread_id)),
            ("CUpti_BufferCallbackCompleteInfo", "ppRecordLayouts", offset_of!(BufferCompleteInfo, record_layouts)),
            ("CUpti_BufferCallbackCompleteInfo", "numRecordLayouts", offset_of!(BufferCompleteInfo, num_record_layouts)),
            ("CUpti_SubscriberParams", "padding", offset_of!(SubscriberParams, padding)),
        ];
        for (t, f, _) in fields {
            if f.is_empty() {
                c += &format!("printf(\"{t}. %zu\\n\", sizeof({t}));\n");
            } else {
                c += &format!("printf(\"{t}.{f} %zu\\n\", offsetof({t},{f}));\n");
            }
        }
        c += "printf(\"STRUCT_SIZE. %zu\\n\", (size_t)CUpti_SubscriberParams_STRUCT_SIZE);\n";
        c += "printf(\"ATTR. %d\\n\", (int)CUPTI_ACTIVITY_ATTR_MULTIPLE_SUBSCRIBER_STATE);\nreturn 0;}\n";
        std::fs::write(dir.path().join("m.c"), c).unwrap();
        let exe = dir.path().join("m");
        let stub = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda-stub");
        let o = Command::new("gcc").arg("-I").arg(&stub).arg("-I").arg(&inc).arg(dir.path().join("m.c")).arg("-o").arg(&exe).output().expect("gcc");
        assert!(o.status.success(), "gcc against {}: {}", inc.display(), String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8(Command::new(&exe).output().unwrap().stdout).unwrap();
        let got: std::collections::BTreeMap<&str, usize> =
            out.lines().map(|l| l.split_once(' ').unwrap()).map(|(k, v)| (k, v.parse().unwrap())).collect();
        for (t, f, want) in fields {
            assert_eq!(got.get(format!("{t}.{f}").as_str()), Some(&want), "{t}.{f} in {}", inc.display());
        }
        assert_eq!(got["STRUCT_SIZE."], size_of::<SubscriberParams>(), "structSize we pass, {}", inc.display());
        assert_eq!(got["ATTR."], ATTR_MULTIPLE_SUBSCRIBER_STATE as usize, "{}", inc.display());
        checked += 1;
    }
    assert!(checked >= 3, "13.3, 13.4, 13.5 checked ({checked}) in {}", root.display());
}
