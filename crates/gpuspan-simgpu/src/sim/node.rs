//! The simulated HGX H100 node (issue 16): which of its 8 devices this process drives, and
//! NCCL collectives across the rank processes of one launch.
//!
//! A launcher (torchrun, or `gpuspan-replay --ranks N`) starts one process per rank with
//! `RANK`, `WORLD_SIZE`, `LOCAL_RANK` and, as most do, `CUDA_VISIBLE_DEVICES=<local rank>`:
//! the process then sees one CUDA device (ordinal 0, CUPTI `deviceId` 0) that is physical
//! device `CUDA_VISIBLE_DEVICES` of the node (`Config::own_nvml_index`: the NVML device that
//! does this process's work), while NVML, which ignores `CUDA_VISIBLE_DEVICES`, lists all the
//! node's devices (`GPUSPAN_SIM_NVML_DEVICES`, which the launcher sets to the world size).
//! NVML's NVLink throughput counters (`nvmlDeviceGetFieldValues`) read
//! [`Node::nvlink_tx_bytes_at`].
//!
//! Collectives: a kernel whose name starts with `ncclDevKernel_` or `ncclKernel_` (NCCL
//! 2.19+ and older spellings) is a collective of the one world communicator. Its first
//! kernel parameter is the message size in bytes as nccl-tests reports it (`count ×
//! sizeof(dtype)`: an all-gather's output, a reduce-scatter's input, an all-reduce's
//! buffer, an all-to-all's per-rank buffer). Like the real kernel, it starts when its
//! stream reaches it and ends only after every rank's kernel of the same collective has
//! started (NCCL's ring / send-recv protocols wait for their peers) plus the transfer time:
//! `NCCL_LATENCY_NS + wire bytes / NVLINK_BUS_BYTES_PER_US`, where the wire bytes are what
//! each rank sends for the ring algorithm of that kind (`(n−1)/n × size`, twice that for an
//! all-reduce; NCCL's "bus bandwidth", nccl-tests `doc/PERFORMANCE.md`).
//!
//! Ranks meet in `GPUSPAN_SIM_NODE_DIR` (the launcher makes it): rank r appends the GPU
//! start time of its k-th collective to `rank-<r>.arrivals` (16 bytes per collective: the
//! time and its complement, so a torn read is seen and retried) and waits, polling, until
//! every rank's file holds entry k. Timestamps compare across processes because every
//! rank's virtual clock starts at the same epoch (with `GPUSPAN_SIM_CLOCK=real` at speed 1,
//! `CLOCK_REALTIME` is shared too). A rank that never arrives (crashed) is waited for
//! [`RENDEZVOUS_TIMEOUT`] of wall time, then left out, with one warning on stderr. The wait
//! holds the simulator's lock, as a real driver call that blocks would hold the caller.
//!
//! Without `GPUSPAN_SIM_NODE_DIR` an NCCL kernel is an ordinary kernel whose parameter is
//! its duration (a replayed single-process trace that holds NCCL kernels keeps their
//! recorded times); in a node of `WORLD_SIZE` 1 a collective has no peer and runs for its
//! latency alone.
//!
//! Ground truth for tests ([`Truth`], `gpuspanSimNodeTruth`): the process's kernel
//! intervals, from which communication time, communication not overlapped by compute
//! (exposed) and NVLink bytes are computed here, independently of CUPTI and the agent.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// NCCL's bus bandwidth on 8 × H100 SXM over NVLink 4 (900 GB/s per GPU, 450 GB/s each
/// way; nccl-tests reach about 360–370 GB/s of bus bandwidth), bytes per µs.
pub const NVLINK_BUS_BYTES_PER_US: u64 = 360_000;
/// NVLink 4 bandwidth of one H100 SXM, both directions (NVIDIA H100 datasheet), GB/s.
pub const NVLINK_GBPS_PER_GPU: u64 = 900;
/// NVLink 4 links per H100 SXM.
pub const NVLINK_LINKS: u32 = 18;
/// Fixed cost of a collective on NVLink (NCCL's LL protocol latency, order of 10 µs).
pub const NCCL_LATENCY_NS: u64 = 8_000;
/// How long a rank waits for its peers at one collective before leaving the missing ones
/// out (wall time).
pub const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(120);

/// A collective's kind, from its kernel name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectiveKind {
    /// `ncclDevKernel_AllGather_*`.
    AllGather,
    /// `ncclDevKernel_ReduceScatter_*`.
    ReduceScatter,
    /// `ncclDevKernel_AllReduce_*`.
    AllReduce,
    /// `ncclDevKernel_SendRecv*` (all-to-all is grouped send / recv in NCCL), or any other
    /// NCCL kernel.
    SendRecv,
}

impl CollectiveKind {
    /// The kind of kernel `name`, `None` when it is not an NCCL kernel.
    pub fn of_kernel(name: &str) -> Option<CollectiveKind> {
        let rest = name.strip_prefix("ncclDevKernel_").or_else(|| name.strip_prefix("ncclKernel_"))?;
        Some(if rest.starts_with("AllGather") {
            CollectiveKind::AllGather
        } else if rest.starts_with("ReduceScatter") {
            CollectiveKind::ReduceScatter
        } else if rest.starts_with("AllReduce") {
            CollectiveKind::AllReduce
        } else {
            CollectiveKind::SendRecv
        })
    }

    /// Bytes each of `world` ranks sends for a collective of message size `size_bytes`
    /// (ring algorithms; see the module docs).
    pub fn wire_bytes(self, size_bytes: u64, world: u32) -> u64 {
        let n = world.max(1) as u64;
        let one = size_bytes.saturating_mul(n - 1) / n;
        match self {
            CollectiveKind::AllReduce => one.saturating_mul(2),
            _ => one,
        }
    }
}

/// Transfer time of `wire_bytes` on NVLink, ns (without [`NCCL_LATENCY_NS`]).
pub fn wire_ns(wire_bytes: u64) -> u64 {
    (wire_bytes as u128 * 1000 / NVLINK_BUS_BYTES_PER_US as u128) as u64
}

/// What the simulator measured of this process's device, for tests (`gpuspanSimNodeTruth`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Truth {
    /// This process's rank (`RANK`, 0 without one).
    pub rank: u32,
    /// `WORLD_SIZE` (1 without one).
    pub world_size: u32,
    /// Collectives launched.
    pub collectives: u64,
    /// Union of the time any collective kernel ran, ns.
    pub comm_ns: u64,
    /// Union of the time any other kernel ran, ns.
    pub compute_ns: u64,
    /// Collective time not overlapped by any other kernel on the device, ns.
    pub exposed_comm_ns: u64,
    /// Bytes this device sent over NVLink.
    pub nvlink_tx_bytes: u64,
}

/// The node this process belongs to and what its device did.
#[derive(Debug)]
pub struct Node {
    /// `RANK` (0 without one).
    pub rank: u32,
    /// `WORLD_SIZE` (1 without one).
    pub world: u32,
    dir: Option<PathBuf>,
    /// Collectives launched so far (the next one's sequence number).
    seq: u64,
    own: Option<File>,
    peers: Vec<Option<File>>,
    warned: bool,
    /// Kernel intervals `(start_ns, end_ns, is_collective)`, kept only in a node
    /// (`GPUSPAN_SIM_NODE_DIR` set) for [`Node::truth`].
    intervals: Vec<(u64, u64, bool)>,
    /// NVLink transfers `(start_ns, end_ns, bytes)`: the wire phase of each collective.
    transfers: Vec<(u64, u64, u64)>,
}

fn env_u32(var: &str) -> Option<u32> {
    std::env::var(var).ok()?.trim().parse().ok()
}

impl Node {
    /// The node as the environment describes it (module docs).
    pub fn from_env() -> Node {
        let world = env_u32("WORLD_SIZE").filter(|&w| (1..=super::device::MAX_NODE_DEVICES).contains(&w)).unwrap_or(1);
        let rank = env_u32("RANK").filter(|&r| r < world).unwrap_or(0);
        let dir = std::env::var_os("GPUSPAN_SIM_NODE_DIR").filter(|d| !d.is_empty()).map(PathBuf::from);
        Node {
            rank,
            world,
            dir,
            seq: 0,
            own: None,
            peers: (0..world).map(|_| None).collect(),
            warned: false,
            intervals: Vec::new(),
            transfers: Vec::new(),
        }
    }

    /// Whether this process is one rank of several that meet (records ground truth).
    pub fn in_node(&self) -> bool {
        self.dir.is_some()
    }

    /// Records a non-collective kernel's interval for [`Node::truth`].
    pub fn note_kernel(&mut self, start_ns: u64, end_ns: u64) {
        if self.in_node() {
            self.intervals.push((start_ns, end_ns, false));
        }
    }

    /// A collective of `kind` and message size `size_bytes` whose kernel starts at
    /// `start_ns` on this rank: meets the other ranks and returns its end, ns.
    pub fn collective(&mut self, kind: CollectiveKind, size_bytes: u64, start_ns: u64) -> u64 {
        let seq = self.seq;
        self.seq += 1;
        let world = self.world;
        let last_arrival = if world > 1 { self.rendezvous(seq, start_ns) } else { start_ns };
        let wire = kind.wire_bytes(size_bytes, world);
        let xfer_start = last_arrival.max(start_ns) + NCCL_LATENCY_NS;
        let end = xfer_start + wire_ns(wire);
        if self.in_node() {
            self.intervals.push((start_ns, end, true));
            if wire > 0 {
                self.transfers.push((xfer_start, end, wire));
            }
        }
        end
    }

    /// Publishes this rank's arrival at collective `seq` and returns the latest arrival of
    /// all ranks (this one's when the node directory cannot be used).
    fn rendezvous(&mut self, seq: u64, start_ns: u64) -> u64 {
        let Some(dir) = self.dir.clone() else { return start_ns };
        if self.own.is_none() {
            let path = dir.join(format!("rank-{}.arrivals", self.rank));
            match OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path) {
                Ok(f) => self.own = Some(f),
                Err(e) => {
                    self.warn(&format!("cannot open {}: {e}; collectives run without peers", path.display()));
                    self.world = 1;
                    return start_ns;
                }
            }
        }
        let mut rec = [0u8; 16];
        rec[..8].copy_from_slice(&start_ns.to_le_bytes());
        rec[8..].copy_from_slice(&(!start_ns).to_le_bytes());
        if let Some(f) = &self.own {
            if let Err(e) = f.write_all_at(&rec, seq * 16) {
                self.warn(&format!("cannot write arrival: {e}"));
            }
        }
        let deadline = Instant::now() + RENDEZVOUS_TIMEOUT;
        let mut latest = start_ns;
        let mut pause = Duration::from_micros(20);
        for r in 0..self.world as usize {
            if r == self.rank as usize {
                continue;
            }
            loop {
                if let Some(t) = self.peer_arrival(&dir, r, seq) {
                    latest = latest.max(t);
                    break;
                }
                if Instant::now() >= deadline {
                    self.warn(&format!("rank {r} did not reach collective {seq} within {RENDEZVOUS_TIMEOUT:?}; completing it without that rank"));
                    break;
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(2));
            }
        }
        latest
    }

    /// Rank `r`'s arrival at collective `seq`, once its file holds it intact.
    fn peer_arrival(&mut self, dir: &std::path::Path, r: usize, seq: u64) -> Option<u64> {
        if self.peers[r].is_none() {
            self.peers[r] = File::open(dir.join(format!("rank-{r}.arrivals"))).ok();
        }
        let f = self.peers[r].as_ref()?;
        let mut rec = [0u8; 16];
        f.read_exact_at(&mut rec, seq * 16).ok()?;
        let t = u64::from_le_bytes(rec[..8].try_into().ok()?);
        let check = u64::from_le_bytes(rec[8..].try_into().ok()?);
        (check == !t).then_some(t)
    }

    fn warn(&mut self, what: &str) {
        if !self.warned {
            self.warned = true;
            eprintln!("gpuspan-simgpu: rank {}: {what}", self.rank);
        }
    }

    /// NVLink bytes this device has sent by `now_ns` (a transfer in progress counts in
    /// proportion to its elapsed time): what NVML's throughput counter reads.
    pub fn nvlink_tx_bytes_at(&self, now_ns: u64) -> u64 {
        self.transfers
            .iter()
            .map(|&(s, e, b)| {
                if now_ns >= e {
                    b
                } else if now_ns <= s {
                    0
                } else {
                    (b as u128 * (now_ns - s) as u128 / (e - s) as u128) as u64
                }
            })
            .sum()
    }

    /// This device's NVLink transfers so far, `(start_ns, end_ns, bytes)` on the sim's clock:
    /// the wire phase of each collective, in issue order. NVML's counter
    /// ([`Node::nvlink_tx_bytes_at`]) is their sum up to a moment.
    pub fn transfers(&self) -> &[(u64, u64, u64)] {
        &self.transfers
    }

    /// The ground truth so far (see [`Truth`]).
    pub fn truth(&self) -> Truth {
        let comm = union(self.intervals.iter().filter(|i| i.2).map(|i| (i.0, i.1)));
        let compute = union(self.intervals.iter().filter(|i| !i.2).map(|i| (i.0, i.1)));
        let total = |v: &[(u64, u64)]| v.iter().map(|(s, e)| e - s).sum::<u64>();
        Truth {
            rank: self.rank,
            world_size: self.world,
            collectives: self.seq,
            comm_ns: total(&comm),
            compute_ns: total(&compute),
            exposed_comm_ns: total(&comm) - overlap(&comm, &compute),
            nvlink_tx_bytes: self.transfers.iter().map(|t| t.2).sum(),
        }
    }
}

// The simulator's ground truth uses its own interval code, not `gpuspan_core::interval`:
// a test comparing the agent's figures with the truth must not share the arithmetic.

/// Sorted, disjoint union of intervals.
fn union(it: impl Iterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = it.filter(|(s, e)| e > s).collect();
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Length of the intersection of two sorted, disjoint interval lists.
fn overlap(a: &[(u64, u64)], b: &[(u64, u64)]) -> u64 {
    let (mut i, mut j, mut sum) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        let s = a[i].0.max(b[j].0);
        let e = a[i].1.min(b[j].1);
        if e > s {
            sum += e - s;
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_nccl_kernel_names() {
        use CollectiveKind::*;
        assert_eq!(CollectiveKind::of_kernel("ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)"), Some(AllGather));
        assert_eq!(CollectiveKind::of_kernel("ncclKernel_AllReduce_RING_LL_Sum_bfloat16(ncclWorkElem)"), Some(AllReduce));
        assert_eq!(CollectiveKind::of_kernel("ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)"), Some(SendRecv));
        assert_eq!(CollectiveKind::of_kernel("ampere_sgemm_128x64_nn"), None);
        // Ring wire bytes: (n-1)/n of the message, twice for an all-reduce.
        assert_eq!(AllGather.wire_bytes(8_000, 8), 7_000);
        assert_eq!(AllReduce.wire_bytes(8_000, 8), 14_000);
        assert_eq!(SendRecv.wire_bytes(8_000, 1), 0);
    }

    #[test]
    fn exposed_time_is_communication_outside_compute() {
        let comm = union([(0, 10), (20, 30)].into_iter());
        let compute = union([(5, 25), (8, 9)].into_iter());
        // comm 20 ns, of which [5,10) and [20,25) overlap compute.
        assert_eq!(overlap(&comm, &compute), 10);
    }

    #[test]
    fn ranks_meet_at_the_latest_arrival() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |rank| Node {
            rank,
            world: 2,
            dir: Some(dir.path().to_path_buf()),
            seq: 0,
            own: None,
            peers: vec![None, None],
            warned: false,
            intervals: Vec::new(),
            transfers: Vec::new(),
        };
        let (mut a, mut b) = (mk(0), mk(1));
        // Rank 1 arrives first (in wall time) but later on the GPU clock; both end at the
        // later start plus the transfer.
        let tb = std::thread::spawn(move || (b.collective(CollectiveKind::AllGather, 720_000, 5_000), b));
        let end_a = a.collective(CollectiveKind::AllGather, 720_000, 1_000);
        let (end_b, b) = tb.join().unwrap();
        let expect = 5_000 + NCCL_LATENCY_NS + wire_ns(360_000);
        assert_eq!((end_a, end_b), (expect, expect));
        assert_eq!(wire_ns(360_000), 1_000);
        let (ta, tb) = (a.truth(), b.truth());
        assert_eq!(ta.comm_ns, expect - 1_000);
        assert_eq!(tb.comm_ns, expect - 5_000);
        assert_eq!(ta.exposed_comm_ns, ta.comm_ns, "no compute to hide it");
        assert_eq!(ta.nvlink_tx_bytes, 360_000);
        assert_eq!(a.nvlink_tx_bytes_at(expect - 500), 180_000);
    }
}
