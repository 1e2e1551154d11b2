//! Which record struct each CUPTI release writes for each activity kind we enable, so the
//! decoder reads only fields that exist in the loaded version.
//!
//! The table below comes from the `CUpti_ActivityKind` documentation ("The corresponding
//! activity record structure is …") and `CUPTI_API_VERSION` of the `cupti_activity.h` /
//! `cupti_version.h` headers shipped in the PyPI wheels `nvidia-cuda-cupti-cu12` 12.0.146 …
//! 12.9.79 and `nvidia-cuda-cupti` 13.0.85 … 13.5.25 (there is no 12.7 release);
//! `tests/header_layout.rs` checks every row, every size and every offset we read against
//! those headers. What it says:
//!
//! - kernel, memcpy and memset records only grow at the end (Kernel9 208 B on all of 12.x,
//!   Kernel10 216 / Kernel11 224 / Kernel12 232 / Kernel13 248 on 13.0 / 13.1–13.2 / 13.3 /
//!   13.4+; Memcpy5 88 B up to 12.6, Memcpy6 96 from 12.8, Memcpy7 112 from 13.4; Memset4
//!   88, Memset5 104 from 13.4), and every field gpuspan reads keeps its offset in all of
//!   them (the offsets of cudarc's 12.9 structs);
//! - the overhead record is the one that differs: `CUpti_ActivityOverhead` (40 B, no
//!   `correlationId`) on 12.0–12.2, `CUpti_ActivityOverhead2` (48 B, `correlationId`) on 12.3,
//!   `CUpti_ActivityOverhead3` (56 B, `correlationId` and the heap pointer `overheadData`,
//!   which the client must free) from 12.4. Reading `overheadData` on 12.0–12.3 reads the
//!   next record's first bytes and frees them (CUPTI-NOTES "Traps");
//! - `CUpti_ActivityAPI` (40 B) and `CUpti_ActivityExternalCorrelation` (24 B) never change.
//!
//! CUPTI API versions run 18 (12.0 and 12.1), 20, 21, 22, 23, 24, 26 (12.8), 28 (12.9), then
//! `MMmmpp` from 13.0 (130001 … 130500). CUPTI older than 12.0 (API < 18) is refused.

/// Lowest CUPTI API version gpuspan decodes: CUPTI 12.0 (`CUPTI_API_VERSION` 18).
pub const MIN_API_VERSION: u32 = 18;

/// The overhead record a CUPTI writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverheadLayout {
    /// `CUpti_ActivityOverhead` (12.0–12.2): 40 B, no `correlationId`, no `overheadData`.
    V1,
    /// `CUpti_ActivityOverhead2` (12.3): 48 B, `correlationId` at 40, no `overheadData`.
    V2,
    /// `CUpti_ActivityOverhead3` (12.4 on): 56 B, `correlationId` at 40, `overheadData` at 48.
    V3,
}

impl OverheadLayout {
    /// Record size, bytes.
    pub fn size(self) -> usize {
        match self {
            OverheadLayout::V1 => 40,
            OverheadLayout::V2 => 48,
            OverheadLayout::V3 => 56,
        }
    }
    /// Whether the record has `correlationId` (at offset 40).
    pub fn has_correlation_id(self) -> bool {
        self != OverheadLayout::V1
    }
    /// Whether the record has `overheadData` (at offset 48), heap memory the client frees.
    pub fn has_overhead_data(self) -> bool {
        self == OverheadLayout::V3
    }
}

/// One CUPTI release line: its API version and the record structs it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    /// `major.minor`, e.g. `"12.4"`.
    pub name: &'static str,
    /// `CUPTI_API_VERSION` (what `cuptiGetVersion` returns).
    pub api_version: u32,
    /// Kernel record: struct name and size, bytes.
    pub kernel: (&'static str, usize),
    /// Memcpy record: struct name and size, bytes.
    pub memcpy: (&'static str, usize),
    /// Memset record: struct name and size, bytes.
    pub memset: (&'static str, usize),
    /// Overhead record.
    pub overhead: OverheadLayout,
}

const fn rel(
    name: &'static str,
    api_version: u32,
    kernel: (&'static str, usize),
    memcpy: (&'static str, usize),
    memset: (&'static str, usize),
    overhead: OverheadLayout,
) -> Release {
    Release { name, api_version, kernel, memcpy, memset, overhead }
}

const K9: (&str, usize) = ("CUpti_ActivityKernel9", 208);
const M5: (&str, usize) = ("CUpti_ActivityMemcpy5", 88);
const M6: (&str, usize) = ("CUpti_ActivityMemcpy6", 96);
const M7: (&str, usize) = ("CUpti_ActivityMemcpy7", 112);
const S4: (&str, usize) = ("CUpti_ActivityMemset4", 88);
const S5: (&str, usize) = ("CUpti_ActivityMemset5", 104);
use OverheadLayout::{V1, V2, V3};

/// Every CUPTI release gpuspan knows, oldest first (see the module docs for the source).
pub const RELEASES: [Release; 15] = [
    rel("12.0", 18, K9, M5, S4, V1),
    rel("12.1", 18, K9, M5, S4, V1),
    rel("12.2", 20, K9, M5, S4, V1),
    rel("12.3", 21, K9, M5, S4, V2),
    rel("12.4", 22, K9, M5, S4, V3),
    rel("12.5", 23, K9, M5, S4, V3),
    rel("12.6", 24, K9, M5, S4, V3),
    rel("12.8", 26, K9, M6, S4, V3),
    rel("12.9", 28, K9, M6, S4, V3),
    rel("13.0", 130_001, ("CUpti_ActivityKernel10", 216), M6, S4, V3),
    rel("13.1", 130_101, ("CUpti_ActivityKernel11", 224), M6, S4, V3),
    rel("13.2", 130_202, ("CUpti_ActivityKernel11", 224), M6, S4, V3),
    rel("13.3", 130_301, ("CUpti_ActivityKernel12", 232), M6, S4, V3),
    rel("13.4", 130_401, ("CUpti_ActivityKernel13", 248), M7, S5, V3),
    rel("13.5", 130_500, ("CUpti_ActivityKernel13", 248), M7, S5, V3),
];

/// A release by its `major.minor` name (`"12.0"` … `"13.5"`).
pub fn release_named(name: &str) -> Option<&'static Release> {
    RELEASES.iter().find(|r| r.name == name)
}

/// What the decoder needs to know about the loaded CUPTI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLayouts {
    /// The API version it was made for.
    pub api_version: u32,
    /// The overhead record it writes.
    pub overhead: OverheadLayout,
}

impl RecordLayouts {
    /// The layouts of the CUPTI whose `cuptiGetVersion` returned `api_version`. An API
    /// version between two known releases takes the older one's layouts (fields only appear
    /// in newer records); one newer than every known release takes the newest's (records only
    /// grow). Errors below [`MIN_API_VERSION`] (CUPTI older than 12.0).
    pub fn for_api_version(api_version: u32) -> Result<RecordLayouts, String> {
        if api_version < MIN_API_VERSION {
            return Err(format!(
                "CUPTI API version {api_version} is older than CUPTI 12.0 (API {MIN_API_VERSION}), which gpuspan does not decode"
            ));
        }
        let r = RELEASES.iter().rev().find(|r| r.api_version <= api_version).unwrap_or(&RELEASES[0]);
        Ok(RecordLayouts { api_version, overhead: r.overhead })
    }

    /// The layouts of CUPTI 12.9 (API 28), the version cudarc's `sys` structs describe.
    pub fn cupti_12_9() -> RecordLayouts {
        RecordLayouts { api_version: 28, overhead: OverheadLayout::V3 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_layout_follows_the_api_version() {
        let l = |v| RecordLayouts::for_api_version(v).map(|l| l.overhead);
        assert!(l(17).is_err(), "CUPTI 11.8 is refused");
        assert_eq!(l(18), Ok(OverheadLayout::V1));
        assert_eq!(l(20), Ok(OverheadLayout::V1));
        assert_eq!(l(21), Ok(OverheadLayout::V2));
        assert_eq!(l(22), Ok(OverheadLayout::V3));
        assert_eq!(l(25), Ok(OverheadLayout::V3), "between releases: the older one's");
        assert_eq!(l(130_500), Ok(OverheadLayout::V3));
        assert_eq!(l(999_999), Ok(OverheadLayout::V3), "newer than known: the newest's");
        assert!(!OverheadLayout::V1.has_correlation_id() && !OverheadLayout::V2.has_overhead_data());
        assert!(OverheadLayout::V3.has_overhead_data());
    }

    #[test]
    fn releases_are_ordered_and_named_once() {
        for w in RELEASES.windows(2) {
            assert!(w[0].api_version <= w[1].api_version, "{} before {}", w[0].name, w[1].name);
            assert_ne!(w[0].name, w[1].name);
        }
        assert_eq!(release_named("12.3").map(|r| r.overhead), Some(OverheadLayout::V2));
        assert!(release_named("12.7").is_none(), "there is no CUPTI 12.7");
    }
}
