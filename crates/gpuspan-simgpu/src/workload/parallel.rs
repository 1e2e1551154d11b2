//! One rank of a sequence-parallel DiT (issue 16): a preset's request as rank `rank` of
//! `world` runs it, the way xDiT's Ulysses attention does.
//!
//! [`sequence_parallel`] rewrites a single-GPU request ([`super::preset`]):
//! - the denoiser's kernels (inside `dit.step` ranges) get `1/world` of their duration (each
//!   rank holds `1/world` of the sequence); the text encoder and the VAE are replicated;
//! - every kernel of the slow rank ([`Parallel::slow`]) takes `factor` times as long;
//! - spatial and temporal attention begin and end with an all-to-all (heads ⇄ sequence) on
//!   NCCL's stream [`COMM_STREAM`], with the compute stream waiting for it on both sides:
//!   that communication is exposed;
//! - cross attention starts an all-gather of the next block's weight shards (FSDP-style
//!   prefetch) that the compute stream does not wait for until the next all-to-all: it is
//!   hidden behind cross attention and the FFN, as far as they last;
//! - before the VAE, an all-gather of the final latents, waited for.
//!
//! Collective kernels carry NCCL's names and launch shapes ([`Collective`]); the simulator
//! times them from their message size and the other ranks (`sim::node`).

use super::Op;

/// Workload stream id of NCCL's communicator stream (PyTorch's ProcessGroupNCCL runs
/// collectives on a stream of their own).
pub const COMM_STREAM: u32 = 13;

/// Channels (thread blocks) of an NCCL kernel on 8 × H100 NVLink (NCCL picks up to 32;
/// 24 is typical there), and threads per block (`NCCL_SIMPLE_MAX_NTHREADS`, NCCL
/// `src/include/device.h`).
pub const NCCL_GRID: [u32; 3] = [24, 1, 1];
/// See [`NCCL_GRID`].
pub const NCCL_BLOCK: [u32; 3] = [512, 1, 1];

/// An NCCL collective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Collective {
    /// `ncclAllGather`.
    AllGather,
    /// `ncclReduceScatter`.
    ReduceScatter,
    /// `ncclAllReduce`.
    AllReduce,
    /// All-to-all: grouped `ncclSend` / `ncclRecv` (torch `all_to_all_single`).
    AllToAll,
}

impl Collective {
    /// The kernel NCCL 2.19+ launches for it (bf16 data, ring / LL protocol), as CUPTI and
    /// Kineto traces name it.
    pub fn kernel_name(self) -> &'static str {
        match self {
            Collective::AllGather => "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
            Collective::ReduceScatter => "ncclDevKernel_ReduceScatter_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
            Collective::AllReduce => "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
            Collective::AllToAll => "ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)",
        }
    }
}

/// Which rank runs and how.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Parallel {
    /// This rank.
    pub rank: u32,
    /// Ranks in the world (1–8).
    pub world: u32,
    /// `(rank, factor)`: that rank's kernels take `factor` times as long (a straggler:
    /// thermal throttling, a noisy neighbour).
    pub slow: Option<(u32, f64)>,
    /// Bytes of one rank's share of the activations an all-to-all exchanges.
    pub activation_bytes: u64,
    /// Bytes of one block's weights (the prefetch all-gather's output).
    pub block_weight_bytes: u64,
    /// Bytes of the final latents (the last all-gather's output).
    pub latent_bytes: u64,
}

impl Parallel {
    /// STDiT-XL shapes for `world` ranks: 30 latent frames × 30 × 53 patches = 47,700
    /// tokens × hidden 1152 × bf16 × batch 2 (guidance) of activations, split over the
    /// ranks; 28 M bf16 parameters per block; the preset's latents.
    pub fn stdit(rank: u32, world: u32, slow: Option<(u32, f64)>, latent_bytes: u64) -> Parallel {
        let world = world.max(1);
        Parallel {
            rank,
            world,
            slow,
            activation_bytes: 47_700 * 1152 * 2 * 2 / world as u64,
            block_weight_bytes: 28_000_000 * 2,
            latent_bytes,
        }
    }

    fn factor(&self) -> f64 {
        match self.slow {
            Some((r, f)) if r == self.rank => f,
            _ => 1.0,
        }
    }
}

fn collective(kind: Collective, bytes: u64) -> Op {
    Op::Collective { kind, bytes, stream: COMM_STREAM }
}

/// Rank `p.rank`'s version of single-GPU request `ops` whose compute runs on `stream` (see
/// the module docs).
pub fn sequence_parallel(ops: Vec<Op>, p: &Parallel, stream: u32) -> Vec<Op> {
    let slow = p.factor();
    let mut out = Vec::with_capacity(ops.len() + ops.len() / 8);
    // Names of the open ranges, innermost last.
    let mut open: Vec<String> = Vec::new();
    let wait_comm = Op::StreamWait { stream: COMM_STREAM, on: stream };
    let wait_compute = Op::StreamWait { stream, on: COMM_STREAM };
    let exchange = |out: &mut Vec<Op>| {
        out.push(wait_comm.clone());
        out.push(collective(Collective::AllToAll, p.activation_bytes));
        out.push(wait_compute.clone());
    };
    for op in ops {
        match op {
            Op::RangePush(name) => {
                if name == "vae.decode" && p.world > 1 {
                    out.push(wait_comm.clone());
                    out.push(collective(Collective::AllGather, p.latent_bytes));
                    out.push(wait_compute.clone());
                }
                out.push(Op::RangePush(name.clone()));
                if p.world > 1 {
                    match name.as_str() {
                        "attention.spatial" | "attention.temporal" => exchange(&mut out),
                        "attention.cross" => {
                            out.push(wait_comm.clone());
                            out.push(collective(Collective::AllGather, p.block_weight_bytes));
                        }
                        _ => {}
                    }
                }
                open.push(name);
            }
            Op::RangePop => {
                if let Some(name) = open.pop() {
                    if p.world > 1 && matches!(name.as_str(), "attention.spatial" | "attention.temporal") {
                        exchange(&mut out);
                    }
                }
                out.push(Op::RangePop);
            }
            Op::Launch { name, dur_ns, stream, grid, block, shared_mem_bytes } => {
                let in_step = open.iter().any(|n| n.starts_with("dit.step "));
                let share = if in_step { p.world.max(1) as f64 } else { 1.0 };
                let dur_ns = ((dur_ns as f64 / share * slow).round() as u64).max(1);
                out.push(Op::Launch { name, dur_ns, stream, grid, block, shared_mem_bytes });
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::preset::{PresetRequests, PRESET_STREAM};

    #[test]
    fn each_rank_splits_the_denoiser_and_meets_the_others_at_the_same_collectives() {
        let single = PresetRequests::new("stdit", 2, Some(1)).unwrap().next().unwrap();
        let p = |rank| Parallel::stdit(rank, 8, Some((3, 1.5)), 1 << 20);
        let r0 = sequence_parallel(single.ops.clone(), &p(0), PRESET_STREAM);
        let r3 = sequence_parallel(single.ops.clone(), &p(3), PRESET_STREAM);
        let colls = |ops: &[Op]| ops.iter().filter_map(|o| match o { Op::Collective { kind, bytes, .. } => Some((*kind, *bytes)), _ => None }).collect::<Vec<_>>();
        // Every rank issues the same collectives in the same order (or NCCL would hang).
        assert_eq!(colls(&r0), colls(&r3));
        let attn = single.ops.iter().filter(|o| matches!(o, Op::RangePush(n) if n == "attention.spatial" || n == "attention.temporal")).count();
        let cross = single.ops.iter().filter(|o| matches!(o, Op::RangePush(n) if n == "attention.cross")).count();
        let c = colls(&r0);
        assert_eq!(c.iter().filter(|k| k.0 == Collective::AllToAll).count(), 2 * attn);
        assert_eq!(c.iter().filter(|k| k.0 == Collective::AllGather).count(), cross + 1);
        assert!(r0.iter().any(|o| matches!(o, Op::RangePush(_))));
        let ranges_ok = crate::workload::Workload { ops: r0.clone() }.ranges_balanced();
        assert!(ranges_ok);
        // Denoiser kernels: 1/8 of the time; rank 3 half as slow again.
        let step_kernel_ns = |ops: &[Op]| {
            let mut depth_step = false;
            let mut total = 0u64;
            for o in ops {
                match o {
                    Op::RangePush(n) if n.starts_with("dit.step ") => depth_step = true,
                    Op::RangePush(n) if n == "vae.decode" => depth_step = false,
                    Op::Launch { dur_ns, .. } if depth_step => total += dur_ns,
                    _ => {}
                }
            }
            total as f64
        };
        let (s, a, b) = (step_kernel_ns(&single.ops), step_kernel_ns(&r0), step_kernel_ns(&r3));
        assert!((a / s - 0.125).abs() < 0.01, "{a} / {s}");
        assert!((b / a - 1.5).abs() < 0.01, "{b} / {a}");
        // One rank alone is the single-GPU request.
        assert_eq!(sequence_parallel(single.ops.clone(), &Parallel::stdit(0, 1, None, 0), PRESET_STREAM), single.ops);
    }
}
