//! CUPTI errors as raw codes.
//!
//! Names come from `CUptiResult` in `cupti_result.h` (CUPTI 12.9 / 13.5, same values).
//! We never call `cuptiGetResultString` to format an error: on CUPTI 13 without a driver it
//! returns 999 and a NULL string (CUPTI-NOTES "Traps for the agent").

use std::fmt;

/// `CUPTI_ERROR_INVALID_PARAMETER`.
pub const CUPTI_ERROR_INVALID_PARAMETER: u32 = 1;
/// `CUPTI_ERROR_MAX_LIMIT_REACHED`: end of an activity buffer.
pub const CUPTI_ERROR_MAX_LIMIT_REACHED: u32 = 12;
/// `CUPTI_ERROR_NOT_INITIALIZED`: e.g. no driver.
pub const CUPTI_ERROR_NOT_INITIALIZED: u32 = 15;
/// `CUPTI_ERROR_QUEUE_EMPTY`: pop on an empty external-correlation stack.
pub const CUPTI_ERROR_QUEUE_EMPTY: u32 = 18;
/// `CUPTI_ERROR_INVALID_KIND`: incomplete or invalid record.
pub const CUPTI_ERROR_INVALID_KIND: u32 = 21;
/// `CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED`: another tool holds CUPTI.
pub const CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED: u32 = 39;
/// `CUPTI_ERROR_UNKNOWN`.
pub const CUPTI_ERROR_UNKNOWN: u32 = 999;

/// Name of a CUPTI result code, from our own table.
pub fn result_name(code: u32) -> &'static str {
    match code {
        0 => "CUPTI_SUCCESS",
        1 => "CUPTI_ERROR_INVALID_PARAMETER",
        2 => "CUPTI_ERROR_INVALID_DEVICE",
        3 => "CUPTI_ERROR_INVALID_CONTEXT",
        10 => "CUPTI_ERROR_PARAMETER_SIZE_NOT_SUFFICIENT",
        11 => "CUPTI_ERROR_API_NOT_IMPLEMENTED",
        12 => "CUPTI_ERROR_MAX_LIMIT_REACHED",
        13 => "CUPTI_ERROR_NOT_READY",
        14 => "CUPTI_ERROR_NOT_COMPATIBLE",
        15 => "CUPTI_ERROR_NOT_INITIALIZED",
        17 => "CUPTI_ERROR_INVALID_OPERATION",
        18 => "CUPTI_ERROR_QUEUE_EMPTY",
        19 => "CUPTI_ERROR_INVALID_HANDLE",
        21 => "CUPTI_ERROR_INVALID_KIND",
        22 => "CUPTI_ERROR_INVALID_EVENT_VALUE",
        27 => "CUPTI_ERROR_NOT_SUPPORTED",
        35 => "CUPTI_ERROR_INSUFFICIENT_PRIVILEGES",
        39 => "CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED",
        999 => "CUPTI_ERROR_UNKNOWN",
        _ => "CUPTI_ERROR_(unlisted)",
    }
}

/// A failed CUPTI call, or a CUPTI we could not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CuptiError {
    /// No CUPTI library could be loaded (`dlopen` of every candidate failed).
    NotFound {
        /// The names tried, in order.
        tried: Vec<String>,
    },
    /// The library lacks a symbol we need.
    MissingSymbol(&'static str),
    /// The loaded CUPTI is older than gpuspan decodes (before 12.0, `crate::layouts`).
    Unsupported(String),
    /// A CUPTI library was found but no CUDA driver library ([`crate::events::CUDA_LIB_NAMES`])
    /// loads, so no CUPTI function is called: CUPTI needs the driver for anything, and
    /// CUPTI 13.2 (`nvidia-cuda-cupti` 13.2.86, what torch 2.15's wheel loads) answers
    /// `cuptiGetVersion` without one by recursing through `cuptiGetResultString` until the
    /// stack overflows (SIGSEGV in the host process; measured here, 2026-12-02).
    NoDriver {
        /// Where the CUPTI library was loaded from.
        cupti: String,
    },
    /// `cuptiSubscribe_v2` returned `CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED` (39) and
    /// named the subscriber or tool that holds CUPTI (`oldSubscriberName`, e.g. "CUPTI for
    /// torch.profiler"; [`crate::multi_subscriber`]).
    HeldBy {
        /// The CUPTI function.
        call: &'static str,
        /// The holder's name as CUPTI wrote it.
        holder: String,
    },
    /// A call returned a non-success code.
    Call {
        /// The CUPTI function.
        call: &'static str,
        /// Its raw `CUptiResult`.
        code: u32,
    },
}

impl CuptiError {
    /// The raw code for [`CuptiError::Call`], else `None`.
    pub fn code(&self) -> Option<u32> {
        match self {
            CuptiError::Call { code, .. } => Some(*code),
            CuptiError::HeldBy { .. } => Some(CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED),
            _ => None,
        }
    }
}

impl fmt::Display for CuptiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CuptiError::NotFound { tried } => {
                write!(f, "no CUPTI library found (tried {})", tried.join(", "))
            }
            CuptiError::MissingSymbol(s) => write!(f, "CUPTI library lacks symbol {s}"),
            CuptiError::Unsupported(why) => write!(f, "{why}"),
            CuptiError::NoDriver { cupti } => write!(
                f,
                "no CUDA driver library (libcuda.so.1) to go with CUPTI ({cupti}); CUPTI is not called without one"
            ),
            CuptiError::HeldBy { call, holder } => write!(
                f,
                "{call} returned {CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED} ({}): CUPTI is held by {holder}",
                result_name(CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED)
            ),
            CuptiError::Call { call, code } => {
                write!(f, "{call} returned {code} ({})", result_name(*code))
            }
        }
    }
}

impl std::error::Error for CuptiError {}

/// Turns a raw code into a `Result`.
pub fn check(call: &'static str, code: u32) -> Result<(), CuptiError> {
    if code == 0 {
        Ok(())
    } else {
        Err(CuptiError::Call { call, code })
    }
}
