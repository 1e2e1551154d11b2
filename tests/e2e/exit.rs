//! How the agent leaves a worker (issue 11, item 3): SIGTERM during fine collection still
//! leaves a readable capture of what was collected, marked partial, and the worker still
//! dies of SIGTERM; the exit work stays within `GPUSPAN_EXIT_BUDGET` with a million records
//! pending; `exit()` from a signal handler (even one that interrupted `malloc`) or from a
//! second thread never hangs the worker.

use crate::util::*;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `gpuspan-replay ARGS` on the simulated H100 (installed into `sim`) with the agent
/// preloaded in fine mode, writing into `out`, logging at info; stdout and stderr piped.
/// `GPUSPAN_EXIT_BUDGET` is the agent's default (2 s) unless `env` sets it.
fn spawn_replay(sim: &Path, out: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(artifact("gpuspan-replay"));
    preload_agent(c.args(args), sim, "fine", out).env("GPUSPAN_LOG", "info").stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

/// Waits for `child` at most `limit`; kills it and panics (with its stderr) if it is still
/// running then: a hang is the failure under test.
fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> (std::process::ExitStatus, String) {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (st, err);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
            panic!("{what}: still running after {limit:?} (hung)\n{err}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}


/// The agent's "finished in N ms" line, N.
fn finished_ms(stderr: &str) -> u64 {
    let l = stderr.lines().find(|l| l.contains("finished in ")).unwrap_or_else(|| panic!("no 'finished in' line:\n{stderr}"));
    l.split("finished in ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn a_million_records_pending_at_exit_finish_within_the_budget() {
    // wan2.1 at 26 steps: ≈ 350k kernels, each with its driver-API and external-correlation
    // record, ≈ 1.05 M activity records, all held by fine mode until exit.
    let sim = tempfile::tempdir().unwrap();
    gpuspan_simgpu::install::install(sim.path(), &artifact("libgpuspan_simgpu.so")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut child = spawn_replay(sim.path(), out.path(), &["wan2.1", "--steps", "26"], &[]);
    // The last line the worker prints is the simulator's CUPTI line, just before `main`
    // returns and exit handlers run.
    let mut lines = Vec::new();
    let mut at_exit = Instant::now();
    for l in BufReader::new(child.stdout.take().unwrap()).lines() {
        at_exit = Instant::now();
        lines.push(l.unwrap());
    }
    let (status, stderr) = wait_bounded(&mut child, Duration::from_secs(30), "exit with 1M records pending");
    let exit_took = at_exit.elapsed();
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(lines.last().is_some_and(|l| l.starts_with("sim cupti:")), "{lines:?}");
    let budget_ms = 2000;
    let finished = finished_ms(&stderr);
    println!("exit: agent finished in {finished} ms (budget {budget_ms} ms); process ended {exit_took:?} after its last line");
    // The agent's own account, and the process as seen from outside (its stdout closing is
    // the end of `main`; process teardown after our handler is not the agent's work).
    assert!(finished <= budget_ms + 300, "agent finishing took {finished} ms\n{stderr}");
    assert!(exit_took < Duration::from_millis(budget_ms + 1500), "exit took {exit_took:?}\n{stderr}");
    let t = gpuspan_export::read_trace(&capture_in(out.path())).expect("a readable capture");
    // Each kernel makes three records (kernel, driver API, external correlation).
    let kernels: u64 = lines[0].split(' ').nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{lines:?}"));
    assert!(kernels * 3 >= 1_000_000, "records pending at exit: {kernels} kernels × 3");
    let decoded = summary_u64(&t, "gpuspan.records_decoded");
    println!("{kernels} kernels, {decoded} records decoded before the budget cut decoding");
    let cut = summary_u64(&t, "gpuspan.events_cut_exit_budget")
        + summary_u64(&t, "gpuspan.buffers_unread_exit_budget")
        + summary_u64(&t, "gpuspan.cupti_flush_timed_out");
    assert_eq!(summary_u64(&t, "gpuspan.partial"), u64::from(cut > 0), "partial exactly when something was cut ({cut})");
    // Scopes go first: whatever the budget cut, every step keeps its range.
    let steps = t.events.iter().filter(|e| e.name.starts_with("dit.step ")).count();
    assert_eq!(steps, 26, "every step range is in the capture");
    println!("capture: {} kernels written, {cut} records/events/buffers cut", t.kernels().count());
}

#[test]
fn exit_from_a_sigterm_handler_does_not_hang() {
    // The worker's own SIGTERM handler calls exit(0) on whatever thread the signal lands,
    // possibly inside a CUDA call holding the driver's (the simulator's) lock. Three runs,
    // signalled at different points of the run.
    let sim = tempfile::tempdir().unwrap();
    gpuspan_simgpu::install::install(sim.path(), &artifact("libgpuspan_simgpu.so")).unwrap();
    for delay_ms in [300u64, 700, 1100] {
        let out = tempfile::tempdir().unwrap();
        let mut child = spawn_replay(sim.path(), out.path(), &["wan2.1", "--steps", "50", "--exit-on-sigterm"], &[]);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().map(|l| l.unwrap()).as_deref(), Some("exits armed"));
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let t0 = Instant::now();
        // Budget 2 s + the exit handler's 0.5 s grace + process teardown.
        let (status, stderr) = wait_bounded(&mut child, Duration::from_secs(6), &format!("exit() in a SIGTERM handler after {delay_ms} ms"));
        println!("SIGTERM after {delay_ms} ms: exited {status:?} {:?} after the signal", t0.elapsed());
        for l in stderr.lines().filter(|l| l.contains("finish") || l.contains("capture")) {
            println!("  {l}");
        }
        assert_eq!(status.code(), Some(0), "the handler's exit(0) ends the worker: {status:?}\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        // What was decoded before the signal is written: CUPTI and the collector thread,
        // when stuck behind the interrupted CUDA call, cost only their share of the budget
        // (the capture then says partial; when the signal landed elsewhere it is complete).
        // exit() in a signal handler is not async-signal-safe: when the interrupted thread
        // holds a lock the finishing thread needs too (malloc's, say), no capture can be
        // written; the exit handler then gives up after the budget and says so, and the
        // worker still exits.
        match captures_in(out.path()).first() {
            Some(p) => {
                let t = gpuspan_export::read_trace(p).expect("a readable capture");
                let stuck = summary_u64(&t, "gpuspan.cupti_flush_timed_out");
                assert!(stuck == 0 || summary_u64(&t, "gpuspan.partial") == 1, "a timed-out CUPTI flush marks the capture partial");
            }
            None => assert!(stderr.contains("finishing did not complete within the exit budget"), "no capture, and no reason given:\n{stderr}"),
        }
    }
}

#[test]
fn exit_from_a_signal_handler_that_interrupted_malloc_does_not_hang() {
    // The worker's SIGTERM handler calls exit(0) on a thread stopped inside malloc, holding
    // its arena lock (tests/e2e/workers/exit_in_malloc.c): an exit handler that allocated
    // on that thread would wait for itself forever. Deterministic, unlike where a signal
    // lands in `exit_from_a_sigterm_handler_does_not_hang`.
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("exit_in_malloc");
    compile_c(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/workers/exit_in_malloc.c"), &exe, &["-rdynamic"]);
    let sim = tempfile::tempdir().unwrap();
    gpuspan_simgpu::install::install(sim.path(), &artifact("libgpuspan_simgpu.so")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut child = preload_agent(Command::new(&exe).arg("200"), sim.path(), "fine", out.path())
        .env("GPUSPAN_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines().map(|l| l.unwrap());
    assert_eq!(lines.next().as_deref(), Some("launched 200 kernels"));
    assert_eq!(lines.next().as_deref(), Some("in malloc"));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let t0 = Instant::now();
    let (status, stderr) = wait_bounded(&mut child, Duration::from_secs(6), "exit() in a SIGTERM handler inside malloc");
    println!("exit() inside malloc: exited {status:?} {:?} after the signal", t0.elapsed());
    assert_eq!(status.code(), Some(0), "{status:?}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The finishing thread allocates on its own arena: the capture is written, complete.
    let t = gpuspan_export::read_trace(&capture_in(out.path())).unwrap_or_else(|e| panic!("{e}\n{stderr}"));
    assert_eq!(t.kernels().count(), 200, "{stderr}");
    assert_eq!(summary_u64(&t, "gpuspan.partial"), 0);
}

/// `(thread name, blocked-signal mask)` of each thread of `pid`, from
/// `/proc/PID/task/TID/{comm,status}` (`SigBlk`, hex; bit `n - 1` is signal `n`).
fn thread_masks(pid: u32) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let (Ok(comm), Ok(status)) = (std::fs::read_to_string(e.path().join("comm")), std::fs::read_to_string(e.path().join("status"))) else { continue };
        let Some(blk) = status.lines().find_map(|l| l.strip_prefix("SigBlk:")) else { continue };
        v.push((comm.trim().to_string(), u64::from_str_radix(blk.trim(), 16).unwrap()));
    }
    v
}

#[test]
fn agent_threads_block_process_directed_signals() {
    // A process-directed signal goes to any thread that does not block it: gpuspan's threads
    // block the asynchronous ones, so the worker's SIGTERM / SIGINT handler runs on one of
    // its own threads, never on the collector in the middle of its work.
    let sim = tempfile::tempdir().unwrap();
    gpuspan_simgpu::install::install(sim.path(), &artifact("libgpuspan_simgpu.so")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut child = spawn_replay(sim.path(), out.path(), &["wan2.1", "--steps", "50", "--exit-on-sigterm"], &[]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().map(|l| l.unwrap()).as_deref(), Some("exits armed"));
    // The agent activates on the worker's cuInit; wait for its threads.
    let t0 = Instant::now();
    let masks = loop {
        let m = thread_masks(child.id());
        if ["gpuspan-collect", "gpuspan-exit", "gpuspan-control"].iter().all(|n| m.iter().any(|(c, _)| c == n)) || t0.elapsed() > Duration::from_secs(5) {
            break m;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    let bit = |sig: i32| 1u64 << (sig - 1);
    let agent: Vec<_> = masks.iter().filter(|(c, _)| c.starts_with("gpuspan-") && c != "gpuspan-replay").collect();
    assert!(agent.len() >= 3, "the collector, exit and control threads: {masks:?}");
    for (name, blk) in &agent {
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1, libc::SIGPIPE, libc::SIGPROF] {
            assert!(blk & bit(sig) != 0, "{name} does not block signal {sig}: {blk:#x}");
        }
        for sig in [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL] {
            assert!(blk & bit(sig) == 0, "{name} blocks synchronous signal {sig}: {blk:#x}");
        }
    }
    // The worker's own threads keep their masks (the main thread blocks nothing).
    let main = masks.iter().find(|(c, _)| c == "gpuspan-replay").unwrap_or_else(|| panic!("{masks:?}"));
    assert_eq!(main.1 & bit(libc::SIGTERM), 0, "{masks:?}");
}

#[test]
fn exit_from_a_second_thread_mid_run_writes_the_capture() {
    let sim = tempfile::tempdir().unwrap();
    gpuspan_simgpu::install::install(sim.path(), &artifact("libgpuspan_simgpu.so")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut child = spawn_replay(sim.path(), out.path(), &["wan2.1", "--steps", "50", "--exit-after-ms", "800"], &[]);
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap()).lines().map(|l| l.unwrap()).collect();
    let (status, stderr) = wait_bounded(&mut child, Duration::from_secs(10), "exit() from a second thread");
    assert_eq!(status.code(), Some(0), "{status:?}\n{stderr}");
    assert!(lines.iter().any(|l| l == "exit from a second thread"), "{lines:?}");
    assert!(!lines.iter().any(|l| l.starts_with("replayed ")), "exited mid-run: {lines:?}");
    // The main thread kept launching while the exit handler finished: the capture is
    // written, readable, and holds kernels of the run so far.
    let t = gpuspan_export::read_trace(&capture_in(out.path())).expect("a readable capture");
    assert!(t.kernels().count() > 0, "kernels before the exit");
    assert!(finished_ms(&stderr) <= 2300, "{stderr}");
}

#[test]
fn sigterm_during_fine_collection_leaves_a_partial_capture() {
    let sim = tempfile::tempdir().unwrap();
    gpuspan_simgpu::install::install(sim.path(), &artifact("libgpuspan_simgpu.so")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let worker = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/examples/sim_worker.py");
    let mut child = Command::new(python_exe())
        .arg(&worker)
        .args(["--steps", "20", "--requests", "200"])
        .env("LD_PRELOAD", artifact("libgpuspan.so"))
        .env("LD_LIBRARY_PATH", sim.path())
        .env("GPUSPAN_MODE", "fine")
        .env("GPUSPAN_OUT", out.path())
        .env_remove("NVTX_INJECTION64_PATH")
        .env_remove("CUDA_INJECTION64_PATH")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Two requests done: then SIGTERM, as a pod eviction would send.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut done = 0;
    for l in lines.by_ref() {
        if l.unwrap().starts_with("request ") {
            done += 1;
            if done == 2 {
                break;
            }
        }
    }
    assert_eq!(done, 2, "the worker ran two requests");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "the worker still dies of SIGTERM: {status:?}\n{stderr}");
    assert!(stderr.contains("SIGTERM: wrote what was collected"), "{stderr}");
    let t = gpuspan_export::read_trace(&capture_in(out.path())).expect("a readable capture");
    let summary = t.events.iter().find(|e| e.name == "gpuspan.summary").expect("summary");
    assert_eq!(summary.extra_args.get("gpuspan.partial").and_then(|v| v.as_u64()), Some(1), "marked partial");
    let requests: std::collections::BTreeSet<&str> = t.kernels().filter_map(|k| k.trace_id.as_deref()).collect();
    assert!(requests.len() >= 2, "at least the two finished requests' kernels: {}", requests.len());
    assert!(requests.len() < 200, "not the whole run");
}

/// Kernel names are read before their module is unloaded (issue 11 item 3): the worker
/// unloads its module after the last kernel (`--unload-module`, as the CUDA runtime does
/// with its fatbinaries at exit) while records are still in CUPTI's buffers, and the
/// simulator overwrites an unloaded module's names. Every kernel of the capture must still
/// carry its own name, in fine mode and in the same run with the default flush period.
#[test]
fn kernel_names_are_read_before_their_module_is_unloaded() {
    let sim = tempfile::tempdir().unwrap();
    gpuspan_simgpu::install::install(sim.path(), &artifact("libgpuspan_simgpu.so")).unwrap();
    let steps = 4u32;
    let w = gpuspan_simgpu::workload::preset::preset("stdit", steps, 1).unwrap();
    let want = w.summary();
    let names: std::collections::BTreeSet<String> = want.per_kernel.keys().cloned().collect();
    let out = tempfile::tempdir().unwrap();
    let mut child = spawn_replay(sim.path(), out.path(), &["stdit", "--steps", &steps.to_string(), "--unload-module"], &[]);
    let (status, stderr) = wait_bounded(&mut child, Duration::from_secs(60), "a worker that unloads its module");
    assert!(status.success(), "{status:?}\n{stderr}");
    let t = gpuspan_export::read_trace(&capture_in(out.path())).expect("a readable capture");
    let kernels: Vec<_> = t.kernels().collect();
    assert_eq!(kernels.len() as u64, want.kernel_count, "every kernel");
    let wrong: Vec<String> = kernels
        .iter()
        .map(|k| k.name.as_str())
        .filter(|n| !names.contains(*n))
        .map(|n| n.chars().take(40).collect())
        .collect();
    assert!(wrong.is_empty(), "{} kernel names read after the unload, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(3)]);
    assert!(summary_u64(&t, "gpuspan.unload_drains") >= 1, "the unload was seen");
    assert_eq!(summary_u64(&t, "gpuspan.unload_drain_timeouts"), 0);
}

/// The agent's "agent threads' CPU: collector C ms, exit E ms, deflate D ms" line, in s.
fn agent_threads_cpu_s(stderr: &str) -> (f64, f64, f64) {
    let l = stderr.lines().find(|l| l.contains("agent threads' CPU: ")).unwrap_or_else(|| panic!("no agent threads' CPU line:\n{stderr}"));
    let ms = |key: &str| -> f64 {
        let v = l.split(&format!("{key} ")).nth(1).and_then(|r| r.split(" ms").next()).unwrap_or_else(|| panic!("no {key} in {l}"));
        v.parse::<f64>().unwrap_or_else(|e| panic!("{key} {v:?}: {e}")) / 1e3
    };
    (ms("collector"), ms("exit"), ms("deflate"))
}

#[test]
fn the_exit_report_gives_what_the_agents_own_threads_cost() {
    // Issue 14, item 1: the agent's threads report their own CPU clocks at exit, which is how
    // `scripts/bench-agent-cpu.sh` tells the agent's cost from the worker's and the
    // simulator's. The figures are the threads' own: together no more than the whole
    // process's CPU (`wait4`), each there when its work was done, and no deflate without a
    // capture to write.
    let sim = tempfile::tempdir().unwrap();
    gpuspan_simgpu::install::install(sim.path(), &artifact("libgpuspan_simgpu.so")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = |dest: &Path| {
        let mut child = spawn_replay(sim.path(), dest, &["wan2.1", "--steps", "2"], &[]);
        let mut stdout = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        let mut status = 0;
        // SAFETY: a zeroed rusage is a valid out-parameter; the child is ours and not yet
        // waited (forgotten after, never waited again).
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
        assert_eq!(pid, child.id() as i32);
        std::mem::forget(child);
        assert!(std::process::ExitStatus::from_raw(status).success(), "{stderr}");
        let cpu_s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        (agent_threads_cpu_s(&stderr), cpu_s(ru.ru_utime) + cpu_s(ru.ru_stime), replayed_kernels(&stdout), stderr)
    };
    let ((collector, exit, deflate), process, kernels, stderr) = run(out.path());
    println!("with a capture: collector {collector:.4} s, exit {exit:.4} s, deflate {deflate:.4} s of the process's {process:.4} s ({kernels} kernels)");
    assert!(collector > 0.0 && exit > 0.0 && deflate > 0.0, "{stderr}");
    assert!(collector + exit + deflate <= process * 1.05 + 0.01, "the agent's threads report more than the process used\n{stderr}");
    let ((_, exit_no, deflate_no), _, _, stderr) = run(Path::new("/dev/null/no-capture"));
    println!("without: exit {exit_no:.4} s, deflate {deflate_no:.4} s");
    assert_eq!(deflate_no, 0.0, "nothing deflated without a capture\n{stderr}");
    assert!(exit_no < exit, "the exit without the capture's join and JSON ({exit_no} s) costs less than with them ({exit} s)");
}
