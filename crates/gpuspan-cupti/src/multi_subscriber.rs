//! CUPTI 13.3+'s multiple-subscriber mode: the subscriber-aware V2 API's types, function
//! signatures and constants.
//!
//! Until CUPTI 13.2 a process has one callback-API subscriber and one set of activity
//! state (enabled kinds, buffer callbacks, external-correlation stacks): a second tool gets
//! `CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED` (39) from `cuptiSubscribe`. From CUPTI
//! 13.3 (API version 130301) with driver r610+, `cuptiSubscribe_v2` with
//! `allowMultipleSubscribers = 1` lets several tools subscribe at once, each with its own
//! activity kinds, buffer callbacks, buffers, external-correlation stacks and dropped count,
//! reached through the `_v2` functions that take the subscriber handle
//! (`cupti_callbacks.h` `CUpti_SubscriberParams`, `cupti_activity.h` 13.3 … 13.5; CUPTI-NOTES
//! §4; <https://docs.nvidia.com/cupti/main/main.html> §2.2, §2.4). The rules the agent and the
//! simulator follow:
//! - the first subscriber fixes the mode: `cuptiSubscribe` or `_v2` with
//!   `allowMultipleSubscribers = 0` makes it single, `_v2` with 1 makes it multiple;
//! - in single mode any further subscribe returns 39 and, with `_v2`, writes the holder's name
//!   (`"CUPTI for <name>"`, or the incompatible tool's) into `oldSubscriberName`;
//! - in multiple mode every tool must use the V2 calls; a V1 `cuptiSubscribe` returns 39;
//! - `cuptiActivityFlushAll` (no `_v2`) flushes every subscriber's buffers;
//! - `cuptiFinalize` does nothing while more than one subscriber is subscribed.
//!
//! The buffer callbacks of the V2 API carry no context, stream or subscriber: each
//! subscriber registers its own functions.

use std::ffi::{c_char, c_void};

/// First `cuptiGetVersion` value with the whole subscriber-aware activity API
/// (`cuptiActivityGetNextRecord_v2`, `cuptiActivityPushExternalCorrelationId_v2`,
/// `cuptiActivityGetNumDroppedRecords_v2` appear in 13.3's `cupti_activity.h`; 13.2 has only
/// part of it), and from which multiple subscribers are supported (CUPTI-NOTES §4).
pub const MULTI_SUBSCRIBER_MIN_VERSION: u32 = 130_300;

/// `CUPTI_SUBSCRIBER_NAME_MAX_LEN` (`cupti_callbacks.h` 13.x): bytes of the name a tool gives;
/// CUPTI prefixes "CUPTI for " and NUL-terminates it within 64 bytes.
pub const SUBSCRIBER_NAME_MAX_LEN: usize = 53;

/// `CUPTI_OLD_SUBSCRIBER_NAME_MIN_LEN` (`cupti_callbacks.h` 13.x): the least room to give for
/// the name of the subscriber that holds CUPTI.
pub const OLD_SUBSCRIBER_NAME_MIN_LEN: usize = 64;

/// `CUPTI_ACTIVITY_ATTR_MULTIPLE_SUBSCRIBER_STATE` (12, `cupti_activity.h` 13.3+): a `uint8_t`,
/// 0 single, 1 multiple, 2 not fixed yet; readable with `cuptiActivityGetAttribute_v2`, never
/// settable.
pub const ATTR_MULTIPLE_SUBSCRIBER_STATE: u32 = 12;

/// `CUpti_SubscriberParams` (`cupti_callbacks.h` 13.x), 40 bytes; offsets checked against
/// every 13.x wheel header (`tests/header_layout.rs`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SubscriberParams {
    /// `structSize`: `size_of::<SubscriberParams>()` (the header's
    /// `CUpti_SubscriberParams_STRUCT_SIZE` ends at `padding`, so it is the same 40).
    pub struct_size: usize,
    /// `subscriberName`: NUL-terminated, at most [`SUBSCRIBER_NAME_MAX_LEN`] bytes; may be NULL.
    pub subscriber_name: *const c_char,
    /// `oldSubscriberName`: where CUPTI writes the holder's name on a 39; may be NULL.
    pub old_subscriber_name: *mut c_char,
    /// `oldSubscriberSize`: bytes at `old_subscriber_name`, ≥ [`OLD_SUBSCRIBER_NAME_MIN_LEN`].
    pub old_subscriber_size: usize,
    /// `allowMultipleSubscribers`: 1 asks for multiple-subscriber mode.
    pub allow_multiple_subscribers: u8,
    /// `padding[7]`.
    pub padding: [u8; 7],
}

impl SubscriberParams {
    /// Params naming the subscriber `name` (at most [`SUBSCRIBER_NAME_MAX_LEN`] bytes are
    /// kept by CUPTI), with `holder` (≥ [`OLD_SUBSCRIBER_NAME_MIN_LEN`] bytes) to receive the
    /// holder's name on a 39, asking for multiple-subscriber mode or not. The params point at
    /// `name` and `holder`: both must outlive the `cuptiSubscribe_v2` call.
    pub fn new(name: &std::ffi::CStr, holder: &mut [u8], allow_multiple: bool) -> SubscriberParams {
        SubscriberParams {
            struct_size: std::mem::size_of::<SubscriberParams>(),
            subscriber_name: name.as_ptr(),
            old_subscriber_name: holder.as_mut_ptr() as *mut c_char,
            old_subscriber_size: holder.len(),
            allow_multiple_subscribers: allow_multiple as u8,
            padding: [0; 7],
        }
    }
}

/// `CUpti_BufferCallbackRequestInfo` (`cupti_activity.h` 13.2+): `structSize`, set by CUPTI.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BufferRequestInfo {
    /// `structSize`.
    pub struct_size: usize,
}

/// `CUpti_BufferCallbackCompleteInfo` (`cupti_activity.h` 13.2+), 32 bytes, set by CUPTI.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BufferCompleteInfo {
    /// `structSize`.
    pub struct_size: usize,
    /// `threadId`: the thread that completed the buffer (per-thread buffers).
    pub thread_id: u64,
    /// `ppRecordLayouts`: user-defined record layouts in the buffer (unused by gpuspan: NULL).
    pub record_layouts: *mut *mut c_void,
    /// `numRecordLayouts`.
    pub num_record_layouts: usize,
}

/// `CUpti_BuffersCallbackRequestFunc_v2`: `(buffer**, size*, maxNumRecords*, info*)`.
pub type BufferRequestedV2Fn = unsafe extern "C" fn(*mut *mut u8, *mut usize, *mut usize, *mut BufferRequestInfo);
/// `CUpti_BuffersCallbackCompleteFunc_v2`: `(buffer, size, validSize, info*)`.
pub type BufferCompletedV2Fn = unsafe extern "C" fn(*mut u8, usize, usize, *mut BufferCompleteInfo);

/// The name CUPTI reports for a subscriber named `name` (its "CUPTI for " prefix), as written
/// into another tool's `oldSubscriberName`.
pub fn reported_name(name: &str) -> String {
    let cut: String = name.chars().take(SUBSCRIBER_NAME_MAX_LEN).collect();
    format!("CUPTI for {cut}")
}

/// Reads the NUL-terminated name CUPTI wrote into an `oldSubscriberName` buffer (`None` when
/// empty). Lossy UTF-8; stops at the buffer's end if CUPTI wrote no NUL.
pub fn read_old_subscriber_name(buf: &[u8]) -> Option<String> {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let s = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_are_the_headers() {
        assert_eq!(std::mem::size_of::<SubscriberParams>(), 40);
        assert_eq!(std::mem::offset_of!(SubscriberParams, allow_multiple_subscribers), 32);
        assert_eq!(std::mem::size_of::<BufferCompleteInfo>(), 32);
        assert_eq!(std::mem::size_of::<BufferRequestInfo>(), 8);
    }

    #[test]
    fn holder_names_read_back() {
        let mut buf = [0u8; OLD_SUBSCRIBER_NAME_MIN_LEN];
        assert_eq!(read_old_subscriber_name(&buf), None);
        let n = reported_name("torch.profiler");
        buf[..n.len()].copy_from_slice(n.as_bytes());
        assert_eq!(read_old_subscriber_name(&buf).as_deref(), Some("CUPTI for torch.profiler"));
        assert_eq!(reported_name(&"x".repeat(80)).len(), "CUPTI for ".len() + SUBSCRIBER_NAME_MAX_LEN);
    }
}
