#!/usr/bin/env node
// Loads a Chrome-trace / Kineto JSON file (.json or .json.gz) with Chrome DevTools' trace
// engine (npm @paulirish/trace_engine, the Performance panel's parser, run in Node) and
// prints one JSON object with what the engine sees:
//
//   kernel_count / kernel_total_us   GPU kernels (cat "kernel" / old "Kernel") that the
//                                    engine placed in its per-thread event trees, i.e. what
//                                    the Performance panel would draw
//   kernel_entries / kernel_entries_total_us
//                                    the same, counted over every entry the engine kept for
//                                    a thread before building the trees (an entry that only
//                                    partly overlaps its parent on the same row is dropped
//                                    from the tree, not from the entries)
//   gpu_activity_count               kernels + memcpy + memset entries
//   trace_bounds_us                  the engine's trace window {min, max}; events with
//                                    ts == 0 are left out of it by the engine
//   events_outside_bounds            complete events that start before / end after that window
//   not_in_tree                      complete events per cat that the engine kept but could
//                                    not place in its tree (they overlap the end of the event
//                                    before them on the same row), so are not drawn
//   processes / threads              the names the engine gave the process and thread rows
//                                    (from M process_name / thread_name events)
//   errors                           exceptions thrown while parsing and every console.error
//                                    / console.warn the engine printed (e.g. "Begin/End
//                                    events mismatch"); empty when the file loaded cleanly
//
// Usage: node trace_engine_report.mjs FILE
// Exit status: 0 when the report was printed (even with entries in "errors"), 2 on usage
// or read errors.

import fs from 'node:fs';
import zlib from 'node:zlib';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const enginePath = path.join(here, 'node_modules', '@paulirish', 'trace_engine', 'analyze-trace.mjs');

const file = process.argv[2];
if (!file) {
  console.error('usage: node trace_engine_report.mjs FILE');
  process.exit(2);
}
if (!fs.existsSync(enginePath)) {
  console.error(`trace engine not installed: ${enginePath} missing (run npm ci in ${here})`);
  process.exit(2);
}

let events;
try {
  const buf = fs.readFileSync(file);
  // The engine takes parsed events, not a file: gunzip here when the content is gzip.
  const text = (buf.length >= 2 && buf[0] === 0x1f && buf[1] === 0x8b) ? zlib.gunzipSync(buf).toString('utf8') :
                                                                        buf.toString('utf8');
  const json = JSON.parse(text);
  events = Array.isArray(json) ? json : json.traceEvents;
  if (!Array.isArray(events)) {
    throw new Error('no traceEvents array');
  }
} catch (e) {
  console.error(`${file}: cannot read: ${e.message}`);
  process.exit(2);
}

// Everything the engine complains about goes into the report (and not onto stdout, which
// holds the JSON only).
const errors = [];
const origError = console.error;
const origWarn = console.warn;
const origLog = console.log;
console.error = (...a) => errors.push(a.map(String).join(' '));
console.warn = (...a) => errors.push(a.map(String).join(' '));
console.log = (...a) => process.stderr.write(a.map(String).join(' ') + '\n');

// analyze-trace.mjs installs the DOMRect polyfill the engine needs in Node.
const {analyzeEvents} = await import(enginePath);

const GPU_KERNEL = new Set(['kernel', 'Kernel']);
const GPU_ACTIVITY = new Set(['kernel', 'Kernel', 'gpu_memcpy', 'Memcpy', 'gpu_memset', 'Memset']);

const report = {
  source: file,
  events_in_file: events.length,
  kernel_count: 0,
  kernel_total_us: 0,
  kernel_entries: 0,
  kernel_entries_total_us: 0,
  gpu_activity_count: 0,
  trace_bounds_us: null,
  events_outside_bounds: 0,
  not_in_tree: {},
  processes: {},
  threads: {},
  errors,
};

try {
  const {parsedTrace} = await analyzeEvents(events);
  // Newer engines return {data, insights, ...}; older ones the handler data itself.
  const data = parsedTrace.data ?? parsedTrace;
  const bounds = data.Meta.traceBounds;
  report.trace_bounds_us = {min: bounds.min, max: bounds.max};
  for (const [pid, ev] of data.Meta.processNames) {
    report.processes[pid] = ev.args?.name ?? null;
  }
  for (const [pid, threads] of data.Meta.threadsInProcess) {
    for (const [tid, ev] of threads) {
      report.threads[`${pid}:${tid}`] = ev.args?.name ?? null;
    }
  }
  const inTree = data.Renderer.entryToNode;
  for (const [, proc] of data.Renderer.processes) {
    for (const [, thread] of proc.threads) {
      for (const e of thread.entries) {
        if (e.ph !== 'X') {
          continue;
        }
        const dur = e.dur ?? 0;
        if (e.ts < bounds.min || e.ts + dur > bounds.max) {
          report.events_outside_bounds += 1;
        }
        if (!inTree.has(e)) {
          report.not_in_tree[e.cat] = (report.not_in_tree[e.cat] ?? 0) + 1;
        }
        if (GPU_ACTIVITY.has(e.cat)) {
          report.gpu_activity_count += 1;
        }
        if (!GPU_KERNEL.has(e.cat)) {
          continue;
        }
        report.kernel_entries += 1;
        report.kernel_entries_total_us += dur;
        if (inTree.has(e)) {
          report.kernel_count += 1;
          report.kernel_total_us += dur;
        }
      }
    }
  }
} catch (e) {
  errors.push(`parse failed: ${e && e.stack ? e.stack : e}`);
}

console.error = origError;
console.warn = origWarn;
console.log = origLog;
process.stdout.write(JSON.stringify(report) + '\n');
