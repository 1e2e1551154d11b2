//! Replays, on stable Rust, every input kept for the fuzz targets (`crates/gpuspan-fuzz`):
//! the seed corpora `fuzz/seeds/<target>/` and the inputs a fuzzer once crashed or hung on,
//! `fuzz/regressions/<target>/` (`scripts/fuzz.sh` copies new ones there). Each must run
//! through its harness without a panic.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let visible = |p: &PathBuf| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).filter(visible).collect()).unwrap_or_default();
    v.sort();
    v
}

#[test]
fn every_kept_input_runs_through_its_harness() {
    let mut total = 0;
    for (name, harness) in gpuspan_fuzz::TARGETS {
        let seeds = inputs(&repo().join("fuzz/seeds").join(name));
        assert!(!seeds.is_empty(), "fuzz/seeds/{name} has no seed");
        for p in seeds.iter().chain(&inputs(&repo().join("fuzz/regressions").join(name))) {
            let data = std::fs::read(p).unwrap();
            harness(&data);
            total += 1;
        }
    }
    println!("{total} inputs replayed");
}

/// The harnesses reject garbage quietly and parse what they should (a harness that ignored
/// its input would pass the replay above and fuzz nothing).
#[test]
fn harnesses_reach_the_parsers() {
    for (_, harness) in gpuspan_fuzz::TARGETS {
        harness(&[]);
        harness(&[0xff; 64]);
    }
    // A valid external-correlation record is decoded (release byte, kind 39, 20 bytes).
    let mut buf = vec![8u8];
    buf.extend_from_slice(&39u32.to_le_bytes());
    buf.extend_from_slice(&[0u8; 20]);
    assert_eq!(gpuspan_simgpu::fuzz_support::decode_activity_bytes(&buf), 1);
    assert_eq!(
        gpuspan_cupti::nvtx::message_of_fuzz_bytes(b"\x01\x00\x00\x00\x03\x00\x30\x00attention.spatial").as_deref(),
        Some("attention.spatial")
    );
}
