//! Scope names on their way from the hot path to the collector (issue 14, item 5).
//!
//! A range push used to queue its name inline: a 290-byte event, whose copy through the
//! queue was half of a push's cost. Now the scope queue carries [`QueuedScope`], 40 bytes,
//! whose begin names its scope by a [`NameKey`], and the name itself crosses once, as a
//! [`NameDef`] on a queue of its own:
//!
//! - A name of at most [`INTERN_MAX_BYTES`] bytes (stage and step names, the ones pushed
//!   thousands of times) is keyed by a 64-bit hash of its bytes (tagged [`INTERNED`]). Each
//!   thread remembers the keys it has sent in a small direct-mapped table
//!   ([`ThreadNames`], [`NAME_SLOTS`] slots), so a name it used before costs a hash and a
//!   compare; one it has not sent, or whose slot another name took since, is sent again
//!   (harmless: same key, same name).
//! - A longer name (`gpuspan.request <traceparent> …`, new with every request) gets a
//!   one-time key from a counter and is sent every time; the collector forgets it once used.
//!
//! The application thread queues the definition before the begin that names it, so the
//! collector, which pops the begin (acquire) and then drains the name queue, always finds
//! it ([`NameTable::resolve`]). A full name queue drops the definition; the push then drops
//! its scope event too, and both are counted as `scope_events_dropped`.
//!
//! The collector keeps at most [`INTERNED_NAMES_MAX`] interned names; past that it forgets
//! them all and moves [`NameSender::epoch`] on, which tells every thread to forget what it
//! sent. Hot path: no allocation, no lock; one relaxed load of the epoch per push.

use crossbeam::queue::ArrayQueue;
use gpuspan_core::scope::{InlineName, ScopeEvent, ScopeId};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Longest name that is interned, bytes; longer ones are sent with every push.
pub const INTERN_MAX_BYTES: usize = 96;
/// Tag bit of interned keys; one-time keys are below it.
pub const INTERNED: u64 = 1 << 63;
/// Keys a thread remembers having sent (direct-mapped by key).
pub const NAME_SLOTS: usize = 32;
/// Interned names the collector keeps before it starts over ([`NameTable`]).
pub const INTERNED_NAMES_MAX: usize = 8192;
/// Capacity of the name queue (each entry ≈ 270 bytes: ≈ 1 MiB).
pub const NAME_QUEUE_CAP: usize = 1 << 12;

/// What a scope's name is called between the hot path and the collector: an interned
/// name's hash (with [`INTERNED`] set) or a one-time key.
pub type NameKey = u64;

/// The key of a begin whose name did not fit in the name queue (no name is given it: one-time
/// keys start at 1, interned ones have [`INTERNED`] set). The push counted the begin as a
/// dropped scope event; it is queued all the same for the scope its mark names.
pub const NAME_DROPPED: NameKey = 0;

/// A scope event as queued by the hot path: [`ScopeEvent`] with the begin's name as a key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QueuedScope {
    /// [`ScopeEvent::Begin`] whose name is `name` ([`NameTable::resolve`]).
    Begin {
        /// This scope's id.
        id: ScopeId,
        /// Enclosing scope on the same thread, 0 when none.
        parent: ScopeId,
        /// OS thread id of the thread that opened it.
        thread_id: u32,
        /// CPU time of the begin: a reading of the boundary clock (`Shared::boundary_ticks`),
        /// converted to ns by the collector ([`crate::boundary_clock::TickMap`]).
        ts_ticks: u64,
        /// The name's key.
        name: NameKey,
    },
    /// [`ScopeEvent::End`], as is.
    End {
        /// The scope's id.
        id: ScopeId,
        /// CPU time of the end: a boundary-clock reading, as the begin's.
        ts_ticks: u64,
        /// See [`ScopeEvent::End`].
        launches: Option<u32>,
        /// See [`ScopeEvent::End`].
        graph_launches: u32,
    },
    /// [`ScopeEvent::InCapture`], as is.
    InCapture {
        /// The scope's id.
        id: ScopeId,
    },
}

impl QueuedScope {
    /// A begin whose name was dropped ([`NAME_DROPPED`]): not a scope event for the
    /// collector, already counted as dropped.
    pub fn name_dropped(&self) -> bool {
        matches!(self, QueuedScope::Begin { name: NAME_DROPPED, .. })
    }

    /// The boundary-clock reading of a begin or end; 0 for [`QueuedScope::InCapture`].
    pub fn ts_ticks(&self) -> u64 {
        match self {
            QueuedScope::Begin { ts_ticks, .. } | QueuedScope::End { ts_ticks, .. } => *ts_ticks,
            QueuedScope::InCapture { .. } => 0,
        }
    }
}

/// A name's definition: `key` stands for `name`.
#[derive(Clone, Copy)]
pub struct NameDef {
    /// The key begins will carry.
    pub key: NameKey,
    /// The name.
    pub name: InlineName,
}

/// The sending side, in the agent's shared state: the name queue, the one-time key counter
/// and the epoch of the collector's interned names.
pub struct NameSender {
    /// Definitions, oldest first.
    pub queue: ArrayQueue<NameDef>,
    next_one_time: AtomicU64,
    /// Changes whenever the collector forgets its interned names; starts at a value no
    /// other `NameSender` of this process started at (an agent restarted after `fork`
    /// gets a new one, so a thread's table from before is forgotten).
    pub epoch: AtomicU32,
}

/// Epoch bases handed out to [`NameSender`]s, 65,536 apart.
static EPOCH_BASE: AtomicU32 = AtomicU32::new(1);

impl Default for NameSender {
    fn default() -> Self {
        NameSender {
            queue: ArrayQueue::new(NAME_QUEUE_CAP),
            next_one_time: AtomicU64::new(1),
            epoch: AtomicU32::new(EPOCH_BASE.fetch_add(1, Ordering::Relaxed) << 16),
        }
    }
}

/// One thread's memory of the keys it sent (const-initialisable for a `thread_local!`).
pub struct ThreadNames {
    slots: [Cell<NameKey>; NAME_SLOTS],
    epoch: Cell<u32>,
}

impl ThreadNames {
    /// Nothing sent yet.
    pub const fn new() -> Self {
        ThreadNames { slots: [const { Cell::new(0) }; NAME_SLOTS], epoch: Cell::new(0) }
    }
}

impl Default for ThreadNames {
    fn default() -> Self {
        Self::new()
    }
}

/// 64-bit hash of `name` (FxHash's multiply-rotate over 8-byte words, with the length), with
/// [`INTERNED`] set. A tail shorter than a word is read as the last 8 bytes of the name
/// (overlapping the words before it), or, in a name shorter than 8 bytes, as wyhash reads
/// short keys: two overlapping 4-byte halves, or the first, middle and last byte. No byte
/// copy (a `copy_from_slice` of the tail into a zeroed word was a `memcpy` call per push,
/// issue 14 item 5); the length is hashed first, so names of different lengths whose words
/// overlap alike still differ.
#[inline]
fn interned_key(name: &[u8]) -> NameKey {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let mix = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(K);
    let word = |at: usize| u64::from_le_bytes(name[at..at + 8].try_into().expect("8 bytes"));
    let half = |at: usize| u64::from(u32::from_le_bytes(name[at..at + 4].try_into().expect("4 bytes")));
    let n = name.len();
    let mut h = n as u64;
    if n >= 8 {
        let mut at = 0;
        while at + 8 <= n {
            h = mix(h, word(at));
            at += 8;
        }
        if at < n {
            h = mix(h, word(n - 8));
        }
    } else if n >= 4 {
        h = mix(h, half(0) | half(n - 4) << 32);
    } else if n > 0 {
        h = mix(h, u64::from(name[0]) | u64::from(name[n / 2]) << 8 | u64::from(name[n - 1]) << 16);
    }
    h | INTERNED
}

impl NameSender {
    /// The key for `name` on the thread whose memory is `t`, queueing its definition unless
    /// the thread sent it before. `None` when the definition did not fit in the queue (the
    /// caller drops its event and counts it).
    #[inline]
    pub fn key_of(&self, t: &ThreadNames, name: &[u8]) -> Option<NameKey> {
        if name.len() > INTERN_MAX_BYTES {
            let key = self.next_one_time.fetch_add(1, Ordering::Relaxed) & !INTERNED;
            return self.queue.push(NameDef { key, name: InlineName::from_bytes(name) }).is_ok().then_some(key);
        }
        let epoch = self.epoch.load(Ordering::Relaxed);
        if t.epoch.get() != epoch {
            for s in &t.slots {
                s.set(0);
            }
            t.epoch.set(epoch);
        }
        let key = interned_key(name);
        let slot = &t.slots[key as usize % NAME_SLOTS];
        if slot.get() == key {
            return Some(key);
        }
        self.queue.push(NameDef { key, name: InlineName::from_bytes(name) }).ok()?;
        slot.set(key);
        Some(key)
    }
}

/// The collector's side: keys → names.
#[derive(Default, Debug)]
pub struct NameTable {
    interned: HashMap<NameKey, InlineName, fnv::FnvBuildHasher>,
    one_time: HashMap<NameKey, InlineName, fnv::FnvBuildHasher>,
}

impl NameTable {
    /// `ev` as a [`ScopeEvent`] at `ts_ns` (its boundary-clock reading converted), its name
    /// looked up (the name queue of `sender` drained first when the key is new). `None` for a begin whose name never arrived (its
    /// definition was dropped, or the interned names were forgotten between the thread's
    /// check and its push): the caller counts it as a dropped scope event.
    pub fn resolve(&mut self, sender: &NameSender, ev: QueuedScope, ts_ns: u64) -> Option<ScopeEvent> {
        Some(match ev {
            QueuedScope::Begin { id, parent, thread_id, name, .. } => {
                let name = match self.take(name) {
                    Some(n) => n,
                    None => {
                        self.drain(sender);
                        self.take(name)?
                    }
                };
                ScopeEvent::Begin { id, parent, thread_id, ts_ns, name }
            }
            QueuedScope::End { id, launches, graph_launches, .. } => ScopeEvent::End { id, ts_ns, launches, graph_launches },
            QueuedScope::InCapture { id } => ScopeEvent::InCapture { id },
        })
    }

    fn take(&mut self, key: NameKey) -> Option<InlineName> {
        if key & INTERNED != 0 {
            self.interned.get(&key).copied()
        } else {
            self.one_time.remove(&key)
        }
    }

    /// Moves the queued definitions into the table; past [`INTERNED_NAMES_MAX`] interned
    /// names, forgets them and moves the epoch on first.
    fn drain(&mut self, sender: &NameSender) {
        while let Some(d) = sender.queue.pop() {
            if d.key & INTERNED != 0 {
                if self.interned.len() >= INTERNED_NAMES_MAX && !self.interned.contains_key(&d.key) {
                    self.interned.clear();
                    sender.epoch.fetch_add(1, Ordering::Relaxed);
                }
                self.interned.insert(d.key, d.name);
            } else {
                self.one_time.insert(d.key, d.name);
            }
        }
    }

    /// Names held: (interned, one-time not yet used).
    pub fn len(&self) -> (usize, usize) {
        (self.interned.len(), self.one_time.len())
    }

    /// Whether no name is held.
    pub fn is_empty(&self) -> bool {
        self.interned.is_empty() && self.one_time.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begin(id: ScopeId, name: NameKey) -> QueuedScope {
        QueuedScope::Begin { id, parent: 0, thread_id: 1, ts_ticks: id * 10, name }
    }

    fn name_of(ev: Option<ScopeEvent>) -> String {
        match ev {
            Some(ScopeEvent::Begin { name, .. }) => name.as_str().to_string(),
            other => panic!("not a begin: {other:?}"),
        }
    }

    #[test]
    fn every_byte_and_the_length_of_a_name_change_its_key() {
        // All names of up to 3 bytes over four letters (NUL among them), then every one-byte
        // change of a 1..=40-byte name: no two share a key (the tail reads overlap, so each
        // byte must still count).
        let mut seen = std::collections::HashMap::new();
        let letters = [b'a', b'b', 0u8, 0xff];
        let mut names: Vec<Vec<u8>> = vec![Vec::new()];
        for len in 1..=3 {
            for i in 0..letters.len().pow(len) {
                names.push((0..len).map(|d| letters[i / letters.len().pow(d) % letters.len()]).collect());
            }
        }
        for n in 1..=40usize {
            let base: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            for at in 0..n {
                let mut v = base.clone();
                v[at] = b'#';
                names.push(v);
            }
            names.push(base);
        }
        names.sort();
        names.dedup();
        for name in &names {
            let key = interned_key(name);
            assert_ne!(key & INTERNED, 0);
            if let Some(other) = seen.insert(key, name.clone()) {
                panic!("{name:?} and {other:?} share key {key:#x}");
            }
        }
        assert!(seen.len() > 900, "{}", seen.len());
    }

    #[test]
    fn a_repeated_short_name_crosses_once_and_long_names_every_time() {
        let s = NameSender::default();
        let t = ThreadNames::new();
        let mut table = NameTable::default();
        let k1 = s.key_of(&t, b"attention.spatial").unwrap();
        let k2 = s.key_of(&t, b"attention.spatial").unwrap();
        assert_eq!(k1, k2);
        assert_ne!(k1 & INTERNED, 0);
        assert_eq!(s.queue.len(), 1, "sent once");
        let long = format!("gpuspan.request 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 model={}", "x".repeat(40));
        let l1 = s.key_of(&t, long.as_bytes()).unwrap();
        let l2 = s.key_of(&t, long.as_bytes()).unwrap();
        assert_ne!(l1, l2, "a long name gets a new key each time");
        assert_eq!(l1 & INTERNED, 0);
        assert_eq!(name_of(table.resolve(&s, begin(1, k1), 0)), "attention.spatial");
        assert_eq!(name_of(table.resolve(&s, begin(2, l1), 0)), long);
        assert_eq!(name_of(table.resolve(&s, begin(3, k2), 0)), "attention.spatial");
        assert_eq!(name_of(table.resolve(&s, begin(4, l2), 0)), long);
        assert_eq!(table.len(), (1, 0), "one-time names are forgotten once used");
        assert!(table.resolve(&s, begin(5, l1), 0).is_none(), "a one-time key resolves once");
        let end = QueuedScope::End { id: 1, ts_ticks: 5, launches: Some(3), graph_launches: 0 };
        assert_eq!(table.resolve(&s, end, 5), Some(ScopeEvent::End { id: 1, ts_ns: 5, launches: Some(3), graph_launches: 0 }));
    }

    #[test]
    fn a_second_thread_sends_the_name_again_and_distinct_names_keep_distinct_keys() {
        let s = NameSender::default();
        let (a, b) = (ThreadNames::new(), ThreadNames::new());
        let mut table = NameTable::default();
        let names: Vec<String> = (0..200).map(|i| format!("dit.step {i}/200")).collect();
        let keys: Vec<NameKey> = names.iter().map(|n| s.key_of(&a, n.as_bytes()).unwrap()).collect();
        let distinct: std::collections::BTreeSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), 200);
        assert_eq!(s.key_of(&b, names[0].as_bytes()), Some(keys[0]));
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(name_of(table.resolve(&s, begin(i as u64 + 1, *k), 0)), names[i]);
        }
    }

    #[test]
    fn a_full_name_queue_refuses_the_key_and_the_table_starts_over_past_its_bound() {
        let s = NameSender::default();
        let t = ThreadNames::new();
        let mut table = NameTable::default();
        let keys: Vec<NameKey> = (0..NAME_QUEUE_CAP).map(|i| s.key_of(&t, format!("n{i}").as_bytes()).unwrap()).collect();
        assert_eq!(s.key_of(&t, b"one too many"), None, "full: no key, the caller drops and counts");
        // Resolving drains the queue; the thread did not remember the refused name, so now
        // it is sent.
        assert_eq!(name_of(table.resolve(&s, begin(1, keys[0]), 0)), "n0");
        assert!(s.queue.is_empty());
        assert!(s.key_of(&t, b"one too many").is_some());
        assert_eq!(s.queue.len(), 1);
        while s.queue.pop().is_some() {}
        // Past INTERNED_NAMES_MAX the table forgets and the epoch moves: threads resend.
        let t2 = ThreadNames::new();
        let keep = s.key_of(&t2, b"keep").unwrap();
        assert_eq!(name_of(table.resolve(&s, begin(2, keep), 0)), "keep");
        assert_eq!(s.key_of(&t2, b"keep"), Some(keep));
        assert!(s.queue.is_empty(), "remembered: not sent again");
        let epoch = s.epoch.load(Ordering::Relaxed);
        for i in 0..=INTERNED_NAMES_MAX {
            let k = s.key_of(&t, format!("m{i}").as_bytes()).unwrap();
            table.resolve(&s, begin(2, k), 0).unwrap();
        }
        assert_ne!(s.epoch.load(Ordering::Relaxed), epoch);
        assert!(table.len().0 <= INTERNED_NAMES_MAX);
        assert_eq!(s.key_of(&t2, b"keep"), Some(keep));
        assert_eq!(s.queue.len(), 1, "the thread forgot what it sent and sent it again");
        assert_eq!(name_of(table.resolve(&s, begin(3, keep), 0)), "keep");
    }
}
