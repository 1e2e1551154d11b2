//! Every kernel of `kernels/*.cu` (the GPU validation workload, docs/gpu-validation.md), as
//! compiled to sm_90 PTX by `build.rs`, assembles with NVIDIA's `ptxas -arch=sm_90 -v`
//! without register spills; prints registers / spills / shared memory per kernel.
//!
//! Needs the PTX (NVRTC found at build time: the `nvidia-cuda-nvrtc-cu12` wheel in `.venv`)
//! and `ptxas` (the `nvidia-cuda-nvcc-cu12` wheel), both installed by scripts/test.sh into
//! `$GPUSPAN_VENV`, else `.venv` next to this package's Cargo.toml. When either is missing
//! the test fails if `CI` is set (to anything but `false` / `0` / empty) and otherwise
//! prints why and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

use gpuspan::kernels;
use gpuspan_kernels::{KERNELS, SOURCES};

/// ptxas's numbers for one entry function.
#[derive(Debug, Default, Clone)]
struct EntryInfo {
    name: String,
    registers: u32,
    stack_bytes: u32,
    spill_store_bytes: u32,
    spill_load_bytes: u32,
    smem_bytes: u32,
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Fails under CI, otherwise explains and returns.
fn skip(reason: &str) {
    if in_ci() {
        panic!("ptxas check cannot run under CI: {reason}");
    }
    eprintln!("SKIPPED ptxas check: {reason} (set CI=true to make this a failure)");
}

fn find_ptxas() -> Option<PathBuf> {
    let venvs = std::env::var_os("GPUSPAN_VENV")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::iter::once(Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv")));
    for venv in venvs {
        let Ok(rd) = std::fs::read_dir(venv.join("lib")) else { continue };
        let mut pys: Vec<PathBuf> = rd
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| e.path().join("site-packages/nvidia/cuda_nvcc/bin/ptxas"))
            .filter(|p| p.is_file())
            .collect();
        pys.sort();
        if let Some(p) = pys.into_iter().next() {
            return Some(p);
        }
    }
    None
}

/// Parses `ptxas -v` output (stderr): per entry, "Compiling entry function 'X'", then
/// "N bytes stack frame, N bytes spill stores, N bytes spill loads", then
/// "Used N registers, ..., N bytes smem, ...".
fn parse_ptxas(log: &str) -> Vec<EntryInfo> {
    let num_before = |line: &str, unit: &str| -> u32 {
        line.split(',')
            .find(|part| part.trim_end().ends_with(unit))
            .and_then(|part| part.split_whitespace().rev().nth(unit.split_whitespace().count()))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let mut out: Vec<EntryInfo> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.push(EntryInfo { name, ..Default::default() });
        } else if let Some(cur) = out.last_mut() {
            if line.contains("bytes stack frame") {
                cur.stack_bytes = num_before(line, "bytes stack frame");
                cur.spill_store_bytes = num_before(line, "bytes spill stores");
                cur.spill_load_bytes = num_before(line, "bytes spill loads");
            } else if line.contains("Used ") && line.contains("registers") {
                cur.registers = line
                    .split("Used ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                cur.smem_bytes = num_before(line, "bytes smem");
            }
        }
    }
    out
}

#[test]
fn parser_reads_ptxas_v_output() {
    let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'flash_attn_fwd_d64' for 'sm_90'\n\
ptxas info    : Function properties for flash_attn_fwd_d64\n\
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n\
ptxas info    : Used 164 registers, used 1 barriers, 32768 bytes smem\n\
ptxas info    : Compiling entry function 'spin_ns' for 'sm_90'\n\
ptxas info    : Function properties for spin_ns\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 8 registers, used 0 barriers\n";
    let e = parse_ptxas(log);
    assert_eq!(e.len(), 2);
    assert_eq!(
        (e[0].name.as_str(), e[0].registers, e[0].stack_bytes, e[0].spill_store_bytes, e[0].spill_load_bytes, e[0].smem_bytes),
        ("flash_attn_fwd_d64", 164, 16, 8, 4, 32768)
    );
    assert_eq!((e[1].name.as_str(), e[1].registers, e[1].smem_bytes), ("spin_ns", 8, 0));
}

#[test]
fn build_rs_compiles_the_sources_gpuspan_kernels_lists() {
    let built: Vec<&str> = kernels::ALL.iter().map(|(s, _)| *s).collect();
    assert_eq!(built, SOURCES.to_vec());
    assert_eq!(kernels::ptx_available(), kernels::SKIPPED.is_none());
}

#[test]
fn every_kernel_assembles_for_sm_90_without_spills() {
    if !kernels::ptx_available() {
        return skip(&format!(
            "no PTX: {}",
            kernels::SKIPPED.unwrap_or("build.rs did not compile kernels/*.cu")
        ));
    }
    let Some(ptxas) = find_ptxas() else {
        return skip("no ptxas: install the PyPI wheel nvidia-cuda-nvcc-cu12 into $GPUSPAN_VENV or .venv");
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut entries: Vec<(String, EntryInfo)> = Vec::new();
    for (src, ptx) in kernels::ALL {
        let ptx = ptx.expect("checked by ptx_available");
        assert!(ptx.contains(".target sm_90"), "{src}: PTX not for sm_90");
        let file = dir.path().join(src.replace(".cu", ".ptx"));
        std::fs::write(&file, ptx).expect("write PTX");
        let out = Command::new(&ptxas)
            .args(["-arch=sm_90", "-v", "-o"])
            .arg(dir.path().join(src.replace(".cu", ".cubin")))
            .arg(&file)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", ptxas.display()));
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "ptxas failed on {src}:\n{log}");
        entries.extend(parse_ptxas(&log).into_iter().map(|e| (src.to_string(), e)));
    }
    entries.sort_by(|a, b| (&a.0, &a.1.name).cmp(&(&b.0, &b.1.name)));

    println!("{}", kernels::NVRTC.unwrap_or("NVRTC ?"));
    println!("ptxas: {}", ptxas.display());
    println!(
        "{:<14} {:<22} {:>9} {:>11} {:>12} {:>11} {:>10}",
        "source", "kernel", "registers", "stack_bytes", "spill_stores", "spill_loads", "smem_bytes"
    );
    for (src, e) in &entries {
        println!(
            "{:<14} {:<22} {:>9} {:>11} {:>12} {:>11} {:>10}",
            src, e.name, e.registers, e.stack_bytes, e.spill_store_bytes, e.spill_load_bytes, e.smem_bytes
        );
    }

    for k in KERNELS {
        let found: Vec<_> = entries.iter().filter(|(_, e)| e.name == k.name).collect();
        assert_eq!(found.len(), 1, "kernel {} (unmangled) expected once in the PTX of {}", k.name, k.source);
        assert_eq!(found[0].0, k.source, "kernel {} in the wrong source", k.name);
    }
    assert_eq!(entries.len(), KERNELS.len(), "PTX has entries gpuspan_kernels::KERNELS does not list");
    let spilling: Vec<String> = entries
        .iter()
        .filter(|(_, e)| e.spill_store_bytes > 0 || e.spill_load_bytes > 0)
        .map(|(_, e)| format!("{} ({} B stores, {} B loads)", e.name, e.spill_store_bytes, e.spill_load_bytes))
        .collect();
    assert!(spilling.is_empty(), "register spills: {}", spilling.join(", "));
    // The flash kernel keeps its query row and accumulator (2 × 64 floats) in registers.
    let regs = |n: &str| entries.iter().find(|(_, e)| e.name == n).map(|(_, e)| e.registers).unwrap_or(0);
    assert!(regs("flash_attn_fwd_d64") <= 255);
}
