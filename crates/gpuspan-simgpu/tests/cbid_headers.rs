//! The simulator's driver callback ids (`abi::cbid::ALL`) against the text of NVIDIA's
//! `cupti_driver_cbid.h` of every CUPTI release unpacked in `.venv/cupti-headers/<release>/`
//! (`scripts/fetch-cupti-headers.sh`): each id must be the header's
//! `CUPTI_DRIVER_TRACE_CBID_<name>` wherever the header has that name, and 12.9 and 13.5
//! must have every name. Without the headers the test fails under CI and is skipped
//! (with a message) elsewhere, as `gpuspan-cupti`'s `header_layout.rs` does.

use gpuspan_simgpu::abi::cbid;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn headers() -> Option<PathBuf> {
    let venv = std::env::var_os("GPUSPAN_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv"));
    let d = venv.join("cupti-headers");
    if d.is_dir() {
        return Some(d);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have the CUPTI headers (scripts/fetch-cupti-headers.sh)"
    );
    eprintln!(
        "skipping: no {} (run scripts/fetch-cupti-headers.sh)",
        d.display()
    );
    None
}

/// `CUPTI_DRIVER_TRACE_CBID_<name> = <value>,` lines of a header.
fn driver_cbids(text: &str) -> HashMap<String, u32> {
    text.lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("CUPTI_DRIVER_TRACE_CBID_")?;
            let (name, value) = rest.split_once('=')?;
            Some((
                name.trim().to_string(),
                value.trim().trim_end_matches(',').trim().parse().ok()?,
            ))
        })
        .collect()
}

#[test]
fn driver_cbids_match_every_cupti_header() {
    let Some(dir) = headers() else { return };
    let mut releases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cupti_driver_cbid.h").is_file())
        .collect();
    releases.sort();
    assert!(!releases.is_empty(), "no release under {}", dir.display());
    for r in &releases {
        let release = r.file_name().unwrap().to_string_lossy().into_owned();
        let hdr = driver_cbids(&std::fs::read_to_string(r.join("cupti_driver_cbid.h")).unwrap());
        assert_eq!(
            hdr.get("cuGraphLaunch"),
            Some(&514),
            "{release}: header parsed"
        );
        for (name, id) in cbid::ALL {
            match hdr.get(*name) {
                Some(v) => assert_eq!(v, id, "{release}: CUPTI_DRIVER_TRACE_CBID_{name}"),
                None => assert!(
                    !["12.9", "13.5"].contains(&release.as_str()),
                    "{release} lacks CUPTI_DRIVER_TRACE_CBID_{name}"
                ),
            }
        }
    }
    // The capture and graph ids named in the task, spelled out.
    for (name, id) in [
        ("cuStreamBeginCapture", 495),
        ("cuStreamBeginCapture_v2", 539),
        ("cuStreamEndCapture", 497),
        ("cuStreamIsCapturing", 499),
        ("cuStreamGetCaptureInfo", 536),
        ("cuStreamGetCaptureInfo_v2", 629),
        ("cuThreadExchangeStreamCaptureMode", 541),
        ("cuGraphInstantiate", 513),
        ("cuGraphInstantiate_v2", 578),
        ("cuGraphInstantiateWithFlags", 643),
        ("cuGraphLaunch", 514),
        ("cuGraphExecDestroy", 516),
        ("cuGraphDestroy", 517),
    ] {
        assert_eq!(
            cbid::ALL.iter().find(|(n, _)| *n == name).map(|x| x.1),
            Some(id),
            "{name}"
        );
    }
}
