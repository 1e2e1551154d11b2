//! cudarc's CUPTI 12.9 struct layouts against the numbers measured with gcc on the real
//! headers (CUPTI-NOTES §2 "Kernel9 offsets", `CUpti_ActivityAPI`, §4 `CUpti_CallbackData`).
//! The sim writes records through these offsets, so a cudarc change must fail here.

use cudarc::cupti::sys::*;
use std::mem::{offset_of, size_of};

#[test]
fn record_sizes() {
    assert_eq!(size_of::<CUpti_ActivityKernel9>(), 208);
    assert_eq!(size_of::<CUpti_ActivityMemcpy6>(), 96);
    assert_eq!(size_of::<CUpti_ActivityMemset4>(), 88);
    assert_eq!(size_of::<CUpti_ActivityAPI>(), 40);
    assert_eq!(size_of::<CUpti_ActivityExternalCorrelation>(), 24);
    assert_eq!(size_of::<CUpti_ActivityOverhead3>(), 56);
    assert_eq!(size_of::<CUpti_CallbackData>(), 72);
}

#[test]
fn kernel9_offsets() {
    type K = CUpti_ActivityKernel9;
    let got = [
        ("registersPerThread", offset_of!(K, registersPerThread), 6),
        ("start", offset_of!(K, start), 16),
        ("end", offset_of!(K, end), 24),
        ("completed", offset_of!(K, completed), 32),
        ("deviceId", offset_of!(K, deviceId), 40),
        ("contextId", offset_of!(K, contextId), 44),
        ("streamId", offset_of!(K, streamId), 48),
        ("gridX", offset_of!(K, gridX), 52),
        ("gridY", offset_of!(K, gridY), 56),
        ("gridZ", offset_of!(K, gridZ), 60),
        ("blockX", offset_of!(K, blockX), 64),
        ("blockY", offset_of!(K, blockY), 68),
        ("blockZ", offset_of!(K, blockZ), 72),
        ("staticSharedMemory", offset_of!(K, staticSharedMemory), 76),
        (
            "dynamicSharedMemory",
            offset_of!(K, dynamicSharedMemory),
            80,
        ),
        ("correlationId", offset_of!(K, correlationId), 92),
        ("gridId", offset_of!(K, gridId), 96),
        ("name", offset_of!(K, name), 104),
        ("queued", offset_of!(K, queued), 120),
        ("submitted", offset_of!(K, submitted), 128),
        ("graphNodeId", offset_of!(K, graphNodeId), 144),
        ("graphId", offset_of!(K, graphId), 156),
    ];
    for (field, off, want) in got {
        assert_eq!(off, want, "Kernel9.{field}");
    }
}

#[test]
fn api_external_and_callback_offsets() {
    type A = CUpti_ActivityAPI;
    assert_eq!(
        [
            offset_of!(A, cbid),
            offset_of!(A, start),
            offset_of!(A, end),
            offset_of!(A, processId),
            offset_of!(A, threadId),
            offset_of!(A, correlationId),
            offset_of!(A, returnValue)
        ],
        [4, 8, 16, 24, 28, 32, 36]
    );
    type E = CUpti_ActivityExternalCorrelation;
    assert_eq!(
        [offset_of!(E, externalId), offset_of!(E, correlationId)],
        [8, 16]
    );
    type C = CUpti_CallbackData;
    assert_eq!(
        [
            offset_of!(C, callbackSite),
            offset_of!(C, functionName),
            offset_of!(C, functionParams),
            offset_of!(C, functionReturnValue),
            offset_of!(C, symbolName),
            offset_of!(C, context),
            offset_of!(C, contextUid),
            offset_of!(C, correlationData),
            offset_of!(C, correlationId),
        ],
        [0, 8, 16, 24, 32, 40, 48, 56, 64]
    );
}

#[test]
fn memcpy_memset_fields_the_sim_writes() {
    type M = CUpti_ActivityMemcpy6;
    assert_eq!(
        [
            offset_of!(M, bytes),
            offset_of!(M, start),
            offset_of!(M, end),
            offset_of!(M, streamId),
            offset_of!(M, correlationId)
        ],
        [8, 16, 24, 40, 44]
    );
    type S = CUpti_ActivityMemset4;
    assert_eq!(
        [
            offset_of!(S, bytes),
            offset_of!(S, start),
            offset_of!(S, end),
            offset_of!(S, streamId),
            offset_of!(S, correlationId)
        ],
        [8, 16, 24, 40, 44]
    );
}
