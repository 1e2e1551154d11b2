//! The ranks of a distributed job side by side (issue 16): per step, each rank's compute,
//! communication and exposed-communication time, the straggler and the spread.
//!
//! Input: one trace per rank (its `distributedInfo.rank`, [`Trace::rank`]), summarised one
//! at a time ([`RankSummary::of`], so a directory of 8 captures need not be in memory at
//! once), then put side by side ([`RankStats::combine`]).
//!
//! Definitions (µs, per rank, over the kernels a step holds, [`super::kernel_step_assignment`]):
//! - `comm_us`: union of the intervals of its `communication` kernels (NCCL / RCCL; stage
//!   from the capture's `gpuspan.stage`, else the name rules);
//! - `compute_us`: union of its other kernels' intervals: the GPU time the rank's own work
//!   took, which is what differs between a straggler and the rest (the others spend the
//!   difference waiting inside collectives, which counts as communication);
//! - `exposed_comm_us`: communication time during which no other kernel of the rank runs
//!   (`comm_us` − its overlap with compute), the time a step actually pays for it;
//! - per step: `straggler_rank` is the rank with the most compute (ties: lowest rank),
//!   `spread_us` is its compute minus the median rank's (nearest-rank median).
//!
//! The k-th step of each rank is the same step (ranks run the same sequence of requests and
//! steps, or NCCL would hang); a rank with fewer steps is reported in `missing_steps`.

use serde::{Deserialize, Serialize};

use crate::interval::{length, overlap, union};
use super::percentiles::nearest_rank;
use crate::classify::COMMUNICATION;
use crate::trace::Trace;

/// Compute, communication and exposed communication of one rank over some kernels, µs.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RankTime {
    /// The rank.
    pub rank: u32,
    /// Union of its non-communication kernels, µs.
    pub compute_us: f64,
    /// Union of its communication kernels, µs.
    pub comm_us: f64,
    /// Communication not overlapped by compute, µs.
    pub exposed_comm_us: f64,
    /// Kernels counted.
    pub kernel_count: usize,
}

impl RankTime {
    fn of(rank: u32, compute: Vec<(f64, f64)>, comm: Vec<(f64, f64)>, kernel_count: usize) -> RankTime {
        let compute = union(compute);
        let comm = union(comm);
        let comm_us = length(&comm);
        RankTime {
            rank,
            compute_us: length(&compute),
            comm_us,
            exposed_comm_us: (comm_us - overlap(&comm, &compute)).max(0.0),
            kernel_count,
        }
    }
}

/// One rank's trace, reduced to what [`RankStats`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct RankSummary {
    /// The rank.
    pub rank: u32,
    /// `distributedInfo.world_size`, when the trace says.
    pub world_size: Option<u32>,
    /// Per step in start order: (step name, its time).
    pub steps: Vec<(String, RankTime)>,
    /// Over every kernel of the trace.
    pub total: RankTime,
}

impl RankSummary {
    /// Summarises `trace` as rank `rank`'s.
    pub fn of(rank: u32, trace: &Trace) -> RankSummary {
        let att = super::attribute(trace);
        let comm_stage = att.stages.iter().position(|s| s == COMMUNICATION);
        type Acc = (Vec<(f64, f64)>, Vec<(f64, f64)>, usize);
        let mut per_step: Vec<Acc> = (0..att.ranges.len()).map(|_| (Vec::new(), Vec::new(), 0)).collect();
        let mut all: Acc = (Vec::new(), Vec::new(), 0);
        for k in &att.kernels {
            let e = &trace.events[k.event];
            let iv = (e.ts_us, e.ts_us + e.dur_us.max(0.0));
            let is_comm = Some(k.stage) == comm_stage;
            for acc in std::iter::once(&mut all).chain(k.step.map(|s| &mut per_step[s])) {
                if is_comm {
                    acc.1.push(iv);
                } else {
                    acc.0.push(iv);
                }
                acc.2 += 1;
            }
        }
        let mut steps: Vec<(f64, String, RankTime)> = att
            .ranges
            .iter()
            .zip(per_step)
            .map(|(r, (compute, comm, n))| (r.start, r.name.clone(), RankTime::of(rank, compute, comm, n)))
            .collect();
        steps.sort_by(|a, b| a.0.total_cmp(&b.0));
        RankSummary {
            rank,
            world_size: trace.world_size(),
            steps: steps.into_iter().map(|(_, n, t)| (n, t)).collect(),
            total: RankTime::of(rank, all.0, all.1, all.2),
        }
    }
}

/// One step across the ranks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankStep {
    /// The step's name on the lowest rank (`dit.step 2/3`).
    pub name: String,
    /// Position of the step in each rank's sequence (0-based).
    pub index: usize,
    /// Each rank's time in this step, by rank.
    pub ranks: Vec<RankTime>,
    /// The rank with the most compute in the step.
    pub straggler_rank: u32,
    /// That rank's compute minus the median rank's, µs.
    pub spread_us: f64,
    /// The median rank's compute, µs.
    pub median_compute_us: f64,
}

/// The `ranks` object of `gpuspan stats --json` on a directory of per-rank captures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankStats {
    /// `world_size` the captures state (the largest), else the number of ranks found.
    pub world_size: u32,
    /// Ranks found, ascending.
    pub ranks: Vec<u32>,
    /// Per step, in order.
    pub steps: Vec<RankStep>,
    /// Per rank, over all its kernels (steps or not), by rank.
    pub totals: Vec<RankTime>,
    /// Ranks with fewer steps than the others (their missing steps are left out of `steps`).
    #[serde(default)]
    pub missing_steps: Vec<u32>,
}

impl RankStats {
    /// Puts the ranks' summaries side by side; `None` for fewer than two distinct ranks.
    /// Two summaries of one rank (rolling segments) are concatenated in the given order.
    pub fn combine(mut summaries: Vec<RankSummary>) -> Option<RankStats> {
        summaries.sort_by_key(|s| s.rank);
        let mut merged: Vec<RankSummary> = Vec::new();
        for s in summaries {
            match merged.last_mut() {
                Some(m) if m.rank == s.rank => {
                    m.steps.extend(s.steps);
                    let t = &mut m.total;
                    t.compute_us += s.total.compute_us;
                    t.comm_us += s.total.comm_us;
                    t.exposed_comm_us += s.total.exposed_comm_us;
                    t.kernel_count += s.total.kernel_count;
                }
                _ => merged.push(s),
            }
        }
        if merged.len() < 2 {
            return None;
        }
        let ranks: Vec<u32> = merged.iter().map(|s| s.rank).collect();
        let world_size = merged.iter().filter_map(|s| s.world_size).max().unwrap_or(ranks.len() as u32);
        let n_steps = merged.iter().map(|s| s.steps.len()).min().unwrap_or(0);
        let most = merged.iter().map(|s| s.steps.len()).max().unwrap_or(0);
        let missing_steps = merged.iter().filter(|s| s.steps.len() < most).map(|s| s.rank).collect();
        let steps = (0..n_steps)
            .map(|i| {
                let times: Vec<RankTime> = merged.iter().map(|s| s.steps[i].1).collect();
                let straggler = times
                    .iter()
                    .max_by(|a, b| a.compute_us.total_cmp(&b.compute_us).then_with(|| b.rank.cmp(&a.rank)))
                    .copied()
                    .unwrap_or_default();
                let mut computes: Vec<f64> = times.iter().map(|t| t.compute_us).collect();
                computes.sort_by(f64::total_cmp);
                let median = nearest_rank(&computes, 50);
                RankStep {
                    name: merged[0].steps[i].0.clone(),
                    index: i,
                    ranks: times,
                    straggler_rank: straggler.rank,
                    spread_us: straggler.compute_us - median,
                    median_compute_us: median,
                }
            })
            .collect();
        Some(RankStats { world_size, ranks, steps, totals: merged.iter().map(|s| s.total).collect(), missing_steps })
    }
}

/// One rank in two runs (A the baseline, B the new one), over the whole capture, µs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankChange {
    /// The rank.
    pub rank: u32,
    /// A's and B's compute.
    pub a_compute_us: f64,
    /// See `a_compute_us`.
    pub b_compute_us: f64,
    /// A's and B's communication.
    pub a_comm_us: f64,
    /// See `a_comm_us`.
    pub b_comm_us: f64,
    /// A's and B's exposed communication.
    pub a_exposed_comm_us: f64,
    /// See `a_exposed_comm_us`.
    pub b_exposed_comm_us: f64,
    /// `100 × (b_compute_us − a_compute_us) / a_compute_us`; `None` when A has none.
    pub compute_change_pct: Option<f64>,
}

/// One step position in two runs: who held it back in each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StragglerChange {
    /// Step position (0-based).
    pub index: usize,
    /// A's straggler and its spread over the median rank, µs.
    pub a_straggler_rank: u32,
    /// See `a_straggler_rank`.
    pub a_spread_us: f64,
    /// B's straggler and spread.
    pub b_straggler_rank: u32,
    /// See `b_straggler_rank`.
    pub b_spread_us: f64,
}

/// The `ranks` object of `gpuspan diff --json` on two directories of per-rank captures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankDiff {
    /// Ranks present in both, by rank.
    pub ranks: Vec<RankChange>,
    /// Ranks present in only one of the two (A's or B's).
    #[serde(default)]
    pub unmatched: Vec<u32>,
    /// Step positions present in both, in order.
    pub steps: Vec<StragglerChange>,
}

impl RankDiff {
    /// Compares two runs' ranks: per rank present in both, and per step position present in
    /// both.
    pub fn compare(a: &RankStats, b: &RankStats) -> RankDiff {
        let mut ranks = Vec::new();
        let mut unmatched = Vec::new();
        for ta in &a.totals {
            match b.totals.iter().find(|tb| tb.rank == ta.rank) {
                Some(tb) => ranks.push(RankChange {
                    rank: ta.rank,
                    a_compute_us: ta.compute_us,
                    b_compute_us: tb.compute_us,
                    a_comm_us: ta.comm_us,
                    b_comm_us: tb.comm_us,
                    a_exposed_comm_us: ta.exposed_comm_us,
                    b_exposed_comm_us: tb.exposed_comm_us,
                    compute_change_pct: (ta.compute_us > 0.0).then(|| 100.0 * (tb.compute_us - ta.compute_us) / ta.compute_us),
                }),
                None => unmatched.push(ta.rank),
            }
        }
        unmatched.extend(b.totals.iter().filter(|tb| !a.totals.iter().any(|ta| ta.rank == tb.rank)).map(|t| t.rank));
        unmatched.sort_unstable();
        let steps = a
            .steps
            .iter()
            .zip(&b.steps)
            .map(|(sa, sb)| StragglerChange {
                index: sa.index,
                a_straggler_rank: sa.straggler_rank,
                a_spread_us: sa.spread_us,
                b_straggler_rank: sb.straggler_rank,
                b_spread_us: sb.spread_us,
            })
            .collect();
        RankDiff { ranks, unmatched, steps }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{Category, TraceEvent};

    fn kernel(name: &str, stage: &str, ts: f64, dur: f64, stream: i64) -> TraceEvent {
        TraceEvent { cat: Some(Category::Kernel), name: name.into(), ts_us: ts, dur_us: dur, tid: stream, stage: Some(stage.into()), ..Default::default() }
    }

    fn step(name: &str, ts: f64, dur: f64) -> TraceEvent {
        TraceEvent { cat: Some(Category::UserAnnotation), name: name.into(), ts_us: ts, dur_us: dur, pid: 100, tid: 100, ..Default::default() }
    }

    /// A rank whose step 0 computes `c` µs, then waits in an all-to-all until 100 µs, with
    /// a 10 µs all-gather hidden behind 20 µs of compute.
    fn rank_trace(rank: u32, c: f64) -> Trace {
        let nccl = "ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)";
        Trace {
            events: vec![
                step("dit.step 0/1", 0.0, 200.0),
                kernel("gemm", "ffn", 1.0, c, 7),
                kernel(nccl, "communication", 1.0 + c, 99.0 - c, 13),
                kernel("gemm", "ffn", 100.0, 20.0, 7),
                kernel("ncclDevKernel_AllGather_RING_LL(x)", "attention.cross", 105.0, 10.0, 13),
            ],
            distributed_info: Some(serde_json::json!({"rank": rank, "world_size": 3})),
            ..Default::default()
        }
    }

    #[test]
    fn the_rank_with_the_most_compute_is_the_straggler_and_waiting_is_exposed_communication() {
        let s: Vec<RankSummary> = [(0, 40.0), (1, 90.0), (2, 50.0)].iter().map(|&(r, c)| RankSummary::of(r, &rank_trace(r, c))).collect();
        // The all-gather is `communication` by its name although its scope says cross
        // attention (the capture's stage arg here; the classifier in the agent).
        let r0 = &s[0].steps[0].1;
        assert!((r0.compute_us - 60.0).abs() < 1e-9, "{r0:?}");
        assert!((r0.comm_us - 69.0).abs() < 1e-9, "59 waiting + 10 all-gather: {r0:?}");
        assert!((r0.exposed_comm_us - 59.0).abs() < 1e-9, "the all-gather is hidden: {r0:?}");
        let stats = RankStats::combine(s).expect("three ranks");
        assert_eq!(stats.ranks, vec![0, 1, 2]);
        assert_eq!(stats.world_size, 3);
        let st = &stats.steps[0];
        assert_eq!(st.straggler_rank, 1);
        assert!((st.median_compute_us - 70.0).abs() < 1e-9);
        assert!((st.spread_us - 40.0).abs() < 1e-9);
        assert!(stats.missing_steps.is_empty());
        assert!((stats.totals[1].exposed_comm_us - 9.0).abs() < 1e-9);
        // Against a run where rank 2 became the straggler.
        let b: Vec<RankSummary> = [(0, 40.0), (1, 50.0), (2, 95.0)].iter().map(|&(r, c)| RankSummary::of(r, &rank_trace(r, c))).collect();
        let d = RankDiff::compare(&stats, &RankStats::combine(b).unwrap());
        assert_eq!(d.steps.len(), 1);
        assert_eq!((d.steps[0].a_straggler_rank, d.steps[0].b_straggler_rank), (1, 2));
        let r1 = d.ranks.iter().find(|r| r.rank == 1).unwrap();
        assert!((r1.compute_change_pct.unwrap() - 100.0 * (70.0 - 110.0) / 110.0).abs() < 1e-9, "{r1:?}");
        assert!(d.unmatched.is_empty());
        // One rank alone is not a distributed job.
        assert!(RankStats::combine(vec![RankSummary::of(0, &rank_trace(0, 1.0))]).is_none());
    }
}
