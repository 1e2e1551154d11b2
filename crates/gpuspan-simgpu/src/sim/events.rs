//! CUDA events on the simulated timeline (cuda.h `cuEventRecord` … `cuEventElapsedTime`;
//! CUPTI-NOTES §6).

// Integer-keyed maps of the simulator's own handles: one multiply per key, the same
// iteration order in every run (gpuspan_core::id_hash).
use gpuspan_core::id_hash::IdHashMap as HashMap;

/// `CU_EVENT_DISABLE_TIMING` (cuda.h `CUevent_flags`).
pub const EVENT_DISABLE_TIMING: u32 = 0x2;
const EVENT_HANDLE_BASE: u64 = 0x5e7e_0000_0000;

/// Outcome of an event query, mapped to CUresult by the ABI layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EventStatus {
    /// SUCCESS (or the elapsed ms).
    Ready,
    /// CUDA_ERROR_NOT_READY (600).
    NotReady,
    /// CUDA_ERROR_INVALID_HANDLE (400).
    InvalidHandle,
}

#[derive(Debug, Clone, Copy)]
struct Event {
    flags: u32,
    /// The device of the context current when it was created (CUDA Programming Guide,
    /// "Stream and Event Behavior": recording it on another device's stream, or comparing it
    /// with another device's event, fails).
    device: u32,
    /// GPU time at which the recorded point is reached.
    at_ns: Option<u64>,
}

/// All live events.
#[derive(Debug, Default)]
pub struct Events {
    map: HashMap<u64, Event>,
    next: u64,
}

impl Events {
    pub fn new() -> Self {
        Events {
            map: HashMap::default(),
            next: EVENT_HANDLE_BASE,
        }
    }

    /// A new event of device `device`.
    pub fn create(&mut self, flags: u32, device: u32) -> u64 {
        self.next += 0x10;
        self.map.insert(self.next, Event { flags, device, at_ns: None });
        self.next
    }

    /// The device of event `h`, `None` for an unknown handle.
    pub fn device(&self, h: u64) -> Option<u32> {
        self.map.get(&h).map(|e| e.device)
    }

    pub fn destroy(&mut self, h: u64) -> bool {
        self.map.remove(&h).is_some()
    }

    /// Records the event at GPU time `at_ns` (re-recording overwrites). False if unknown.
    pub fn record(&mut self, h: u64, at_ns: u64) -> bool {
        match self.map.get_mut(&h) {
            Some(e) => {
                e.at_ns = Some(at_ns);
                true
            }
            None => false,
        }
    }

    /// Recorded time: `None` for an unknown handle, `Some(None)` for a never-recorded event.
    pub fn recorded_at(&self, h: u64) -> Option<Option<u64>> {
        self.map.get(&h).map(|e| e.at_ns)
    }

    /// `cuEventQuery`: a never-recorded event is ready.
    pub fn query(&self, h: u64, now_ns: u64) -> EventStatus {
        match self.map.get(&h) {
            None => EventStatus::InvalidHandle,
            Some(Event { at_ns: Some(t), .. }) if *t > now_ns => EventStatus::NotReady,
            Some(_) => EventStatus::Ready,
        }
    }

    /// `cuEventElapsedTime` in ms; events of two devices cannot be compared (invalid handle).
    pub fn elapsed_ms(&self, start: u64, end: u64, now_ns: u64) -> Result<f32, EventStatus> {
        let (Some(s), Some(e)) = (self.map.get(&start), self.map.get(&end)) else {
            return Err(EventStatus::InvalidHandle);
        };
        if (s.flags | e.flags) & EVENT_DISABLE_TIMING != 0 || s.device != e.device {
            return Err(EventStatus::InvalidHandle);
        }
        let (Some(ts), Some(te)) = (s.at_ns, e.at_ns) else {
            return Err(EventStatus::InvalidHandle);
        };
        if ts > now_ns || te > now_ns {
            return Err(EventStatus::NotReady);
        }
        Ok(((te as i128 - ts as i128) as f64 / 1e6) as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_elapsed() {
        let mut ev = Events::new();
        let a = ev.create(0, 0);
        let b = ev.create(0, 0);
        let nt = ev.create(EVENT_DISABLE_TIMING, 0);
        let other = ev.create(0, 1);
        assert_eq!(ev.query(a, 0), EventStatus::Ready, "never recorded → ready");
        assert_eq!(
            ev.elapsed_ms(a, b, 0),
            Err(EventStatus::InvalidHandle),
            "unrecorded"
        );
        ev.record(a, 1_000);
        ev.record(b, 2_501_000);
        ev.record(nt, 5);
        ev.record(other, 1_500_000);
        assert_eq!(ev.query(b, 2_000_000), EventStatus::NotReady);
        assert_eq!(ev.elapsed_ms(a, b, 2_000_000), Err(EventStatus::NotReady));
        assert_eq!(ev.query(b, 2_501_000), EventStatus::Ready);
        assert_eq!(ev.elapsed_ms(a, b, 3_000_000), Ok(2.5));
        assert_eq!(
            ev.elapsed_ms(a, nt, 3_000_000),
            Err(EventStatus::InvalidHandle)
        );
        assert_eq!(ev.query(0x1234, 0), EventStatus::InvalidHandle);
        assert_eq!(ev.elapsed_ms(a, other, 3_000_000), Err(EventStatus::InvalidHandle), "two devices");
        assert_eq!(ev.device(other), Some(1));
    }
}
