#!/usr/bin/env node
// Drives a `gpuspan waterfall --html` page in a real headless Chromium (npm playwright-core,
// with Debian's /usr/bin/chromium or $CHROMIUM) with real mouse and keyboard input, and
// checks what it does:
//
//   errors      no uncaught exception, no console.error, no request that is not file:// or
//               data: (the page is self-contained)
//   selector    the step selector lists every step of the page's data, in order, named as
//               the data names them (one of them the work outside every step); choosing
//               another step draws it (body data-step, the waterfall's title, the full
//               range of the step in data-view-start / data-view-end, bars drawn)
//   legend      for every step: the legend's non-greyed entries are exactly the stages of
//               the step's bars (from the data), each with its stage colour
//   tooltip     hovering the longest kernel of the step (located through the page's
//               read-only hook window.gpuspanWaterfall.barRect, its pixel checked on the
//               canvas to be painted in the kernel's stage colour) shows a tooltip with
//               its name, duration, grid, block, registers, shared memory and correlation
//               id, all equal to the values decoded here from the page's JSON; moving off
//               the bars hides it
//   zoom / pan  a wheel over the lanes shrinks the visible range and keeps the time under
//               the cursor in place; a drag moves the range by the dragged pixels, same
//               width; the reset button shows the whole step again
//   chart       clicking each step's bar of the per-step stacked chart selects that step
//
// Usage: node waterfall_ui.mjs PAGE.html [--expect-steps N]
// Prints one JSON line with what was measured ("failures": the checks that failed) and
// exits 0 when every check passed, 1 when one failed, 2 on usage / setup errors.

import fs from 'node:fs';
import path from 'node:path';
import {pathToFileURL, fileURLToPath} from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const file = args[0];
const ei = args.indexOf('--expect-steps');
const expectSteps = ei >= 0 ? Number(args[ei + 1]) : null;
if (!file || !fs.existsSync(file) || (ei >= 0 && !Number.isInteger(expectSteps))) {
  console.error('usage: node waterfall_ui.mjs PAGE.html [--expect-steps N]');
  process.exit(2);
}
let chromium;
try {
  ({chromium} = await import(path.join(here, 'node_modules', 'playwright-core', 'index.mjs')));
} catch (e) {
  console.error(`playwright-core not installed (run npm ci in ${here}): ${e.message}`);
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

const report = {page: path.resolve(file), failures: []};
const failures = report.failures;
function check(cond, what) {
  if (!cond) failures.push(what);
  return !!cond;
}
const near = (a, b, tol) => Math.abs(a - b) <= tol;

// ---- the page's data, decoded here from the documented columns (html.rs) ----
// Per step and lane row: bars with start / duration in µs from the step's window start,
// name, stage, launch configuration, correlation id (null: unknown), kernel or not.
function decodeStep(D, i) {
  const s = D.steps[i];
  return s.k.map((k, r) => {
    const bars = [];
    let end = 0, corr = 0;
    const notKernel = new Set(k.x);
    for (let q = 0; q < k.s.length; q++) {
      const a = end + k.s[q];
      end = a + k.d[q];
      let c = null;
      if (k.r[q] !== null) { corr += k.r[q]; c = corr; }
      bars.push({r, q, startUs: a / 1000, durUs: k.d[q] / 1000, name: D.names[k.n[q]], stage: k.g[q],
                 cfg: D.cfgs[k.c[q]], corr: c, kernel: !notKernel.has(q)});
    }
    return bars;
  });
}
// "12.3 µs" / "1.234 ms" / "1.5 s" → µs
function parseDur(text) {
  const m = /^\s*([0-9.]+)\s*(µs|ms|s)\s*$/.exec(text || '');
  if (!m) return NaN;
  return Number(m[1]) * ({'µs': 1, 'ms': 1e3, 's': 1e6})[m[2]];
}
const hex = (rgb) => '#' + rgb.slice(0, 3).map((v) => v.toString(16).padStart(2, '0')).join('');

let browser;
const timer = setTimeout(() => {
  failures.push('timed out after 90 s');
  finish();
}, 90_000);
async function finish() {
  clearTimeout(timer);
  report.ok = failures.length === 0;
  console.log(JSON.stringify(report));
  try { if (browser) await browser.close(); } catch { /* already gone */ }
  process.exit(failures.length === 0 ? 0 : 1);
}

try {
  browser = await chromium.launch({
    executablePath,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
           '--disable-sync', '--no-first-run'],
  });
} catch (e) {
  console.error(`cannot start ${executablePath}: ${e.message}`);
  process.exit(2);
}

try {
  const page = await browser.newPage({viewport: {width: 1400, height: 1000}});
  page.setDefaultTimeout(10_000);
  const errors = [];
  page.on('pageerror', (e) => errors.push('pageerror: ' + e.message));
  page.on('console', (m) => { if (m.type() === 'error') errors.push('console.error: ' + m.text()); });
  page.on('request', (r) => {
    if (!/^(file|data|about):/.test(r.url())) errors.push('request: ' + r.url());
  });
  report.errors = errors;

  await page.goto(pathToFileURL(path.resolve(file)).href);
  await page.waitForSelector('body[data-render-ms]', {state: 'attached'});
  const D = await page.evaluate(() => JSON.parse(document.getElementById('data').textContent));
  const hasHook = await page.evaluate(() => typeof window.gpuspanWaterfall === 'object');
  if (!check(hasHook, 'the page exposes window.gpuspanWaterfall')) throw new Error('no hook');
  const body = (name) => page.evaluate((n) => document.body.dataset[n], name);
  const view = async () => [Number(await body('viewStart')), Number(await body('viewEnd'))];
  const waitBody = (name, value) => page.waitForFunction(
      ([n, v]) => document.body.dataset[n] === v, [name, String(value)]);
  const waitRedraw = (before) => page.waitForFunction(
      ([a, b]) => document.body.dataset.viewStart !== String(a) || document.body.dataset.viewEnd !== String(b),
      before, {timeout: 3000}).catch(() => {});
  report.render_ms = Number(await body('renderMs'));
  check(await body('error') === undefined, 'window.onerror fired: ' + await body('error'));

  // ---- (2) step selector ----
  const options = await page.$$eval('#step option', (os) => os.map((o) => [o.value, o.textContent]));
  report.steps = D.steps.length;
  report.step_kinds = D.steps.map((s) => s.kind);
  report.options = options.map((o) => o[1]);
  check(D.steps.length > 0, 'the page has steps');
  if (expectSteps !== null) check(D.steps.length === expectSteps, `${expectSteps} steps, got ${D.steps.length}`);
  check(options.length === D.steps.length, `one option per step: ${options.length} vs ${D.steps.length}`);
  options.forEach(([value, text], i) => {
    check(value === String(i) && text.startsWith(`${i}: ${D.steps[i].name} (`), `option ${i} names step ${i}: ${text}`);
  });
  const outside = D.steps.findIndex((s) => s.kind === 'outside');
  report.outside_option = outside >= 0 ? options[outside]?.[1] : null;
  if (expectSteps !== null) {
    check(outside === D.steps.length - 1 && /outside/.test(D.steps[outside].name),
          'the last step is the work outside every step');
  }
  const first = Number(await body('step'));
  report.initial_step = first;
  check(first === (D.sel ?? D.slowest ?? 0), `opens on step ${D.sel}, drew ${first}`);
  check(await page.$eval('#step', (s) => s.value) === String(first), 'the selector shows the drawn step');
  // Another step with kernels (a real step when there is one).
  const kernelsOf = (i) => decodeStep(D, i).flat().filter((b) => b.kernel);
  const other = D.steps.map((_, i) => i).find((i) => i !== first && D.steps[i].kind === 'range' && kernelsOf(i).length)
      ?? D.steps.map((_, i) => i).find((i) => i !== first);
  report.selector = {from: first, to: other ?? null};
  if (other !== undefined) {
    await page.selectOption('#step', String(other));
    await waitBody('step', other);
    const title = await page.textContent('#wftitle');
    check(title === `step ${other}: ${D.steps[other].name}`, `title after selecting ${other}: ${title}`);
    const [a, b] = await view();
    check(a === 0 && near(b, D.steps[other].span, 1e-9), `whole step ${other} shown: [${a}, ${b}] vs span ${D.steps[other].span}`);
    const bars = Number(await body('drawnBars'));
    report.selector.drawn_bars = bars;
    check(!kernelsOf(other).length || bars > 0, `bars drawn for step ${other}`);
    // The keyboard too: right arrow selects the next step, left arrow goes back.
    await page.evaluate(() => document.activeElement && document.activeElement.blur());
    await page.keyboard.press('ArrowRight');
    const next = Math.min(other + 1, D.steps.length - 1);
    await waitBody('step', next);
    await page.keyboard.press('ArrowLeft');
    await waitBody('step', next === other ? other - 1 : other);
    if (next === other) { await page.selectOption('#step', String(other)); await waitBody('step', other); }
  }

  // ---- (6) legend, every step ----
  report.legend = [];
  for (let i = 0; i < D.steps.length; i++) {
    await page.selectOption('#step', String(i));
    await waitBody('step', i);
    const entries = await page.$$eval('#legend span', (ss) => ss.map((s) => ({
      name: s.textContent, absent: s.classList.contains('absent'), colour: getComputedStyle(s.querySelector('i')).backgroundColor,
    })));
    const shown = entries.filter((e) => !e.absent).map((e) => e.name).sort();
    const present = [...new Set(decodeStep(D, i).flat().map((b) => D.stages[b.stage]))].sort();
    report.legend.push({step: i, shown});
    check(JSON.stringify(shown) === JSON.stringify(present), `legend of step ${i}: ${shown} vs stages of its bars ${present}`);
    check(entries.length === D.stages.length && entries.every((e, g) => e.name === D.stages[g]), 'the legend has every stage');
    for (const e of entries) {
      const g = D.stages.indexOf(e.name);
      const rgb = (e.colour.match(/\d+/g) || []).map(Number);
      check(g >= 0 && rgb.length >= 3 && hex(rgb) === D.colours[g].toLowerCase(), `legend colour of ${e.name}: ${e.colour} vs ${D.colours[g]}`);
    }
  }

  // ---- (3) tooltip over a real bar, in the step chosen above ----
  const step = other ?? first;
  await page.selectOption('#step', String(step));
  await waitBody('step', step);
  const ks = kernelsOf(step).sort((x, y) => y.durUs - x.durUs);
  if (check(ks.length > 0, `step ${step} has kernels`)) {
    const k = ks[0];
    const rect = await page.evaluate(([r, q]) => window.gpuspanWaterfall.barRect(r, q), [k.r, k.q]);
    if (check(rect && rect.width >= 2, `bar ${k.r}/${k.q} of step ${step} is on screen: ${JSON.stringify(rect)}`)) {
      const cx = rect.x + rect.width / 2, cy = rect.y + rect.height / 2;
      // The canvas is painted there in the kernel's stage colour.
      const px = await page.evaluate(([x, y]) => {
        const cv = document.getElementById('wf'), r = cv.getBoundingClientRect(), s = cv.width / r.width;
        return Array.from(cv.getContext('2d').getImageData(Math.floor((x - r.left) * s), Math.floor((y - r.top) * s), 1, 1).data);
      }, [cx, cy]);
      check(hex(px) === D.colours[k.stage].toLowerCase(), `pixel under the bar ${hex(px)} is its stage colour ${D.colours[k.stage]}`);
      await page.mouse.move(cx, cy, {steps: 3});
      await page.waitForSelector('#tip', {state: 'visible'});
      const tip = await page.$eval('#tip', (t) => ({
        text: t.textContent, name: t.querySelector('b')?.textContent,
        rows: Object.fromEntries(Array.from(t.querySelectorAll('tr')).map((tr) => Array.from(tr.cells, (c) => c.textContent))),
      }));
      const [gx, gy, gz, bx, by, bz, regs, smem] = k.cfg;
      report.tooltip = {step, kernel: k.name, expected: {dur_us: k.durUs, grid: [gx, gy, gz], block: [bx, by, bz], registers: regs,
                        shared_memory: smem, correlation: k.corr}, text: tip.text};
      check(tip.name === k.name && tip.text.includes(k.name), `tooltip names the kernel ${k.name}: ${tip.name}`);
      const dur = parseDur(tip.rows.duration);
      check(near(dur, k.durUs, Math.max(0.05, k.durUs * 5e-4)), `tooltip duration ${tip.rows.duration} vs ${k.durUs} µs`);
      const want = {
        grid: gx < 0 ? '?' : `${gx}, ${gy}, ${gz}`,
        block: bx < 0 ? '?' : `${bx}, ${by}, ${bz}`,
        registers: regs < 0 ? '?' : `${regs} per thread`,
        'shared memory': smem < 0 ? '?' : `${smem} bytes`,
        correlation: k.corr === null ? '?' : String(k.corr),
        stage: D.stages[k.stage],
      };
      for (const [key, v] of Object.entries(want)) check(tip.rows[key] === v, `tooltip ${key}: ${tip.rows[key]} vs ${v}`);
      // The demo's kernels have all of them known.
      if (expectSteps !== null) check(gx > 0 && bx > 0 && regs >= 0 && smem >= 0 && k.corr !== null, 'the demo kernel has a launch configuration and a correlation id');
      // Off the bars (the lane labels): no tooltip.
      const plot = await page.evaluate(() => window.gpuspanWaterfall.plotRect());
      await page.mouse.move(plot.x - 60, cy, {steps: 2});
      await page.waitForSelector('#tip', {state: 'hidden'});
    }
  }

  // ---- (4) zoom with the wheel, pan with a drag ----
  {
    const plot = await page.evaluate(() => window.gpuspanWaterfall.plotRect());
    const cx = Math.round(plot.x + plot.width * 0.4), cy = Math.round(plot.y + Math.min(plot.height, 26) / 2);
    await page.mouse.move(cx, cy);
    const v0 = await view();
    const tAt = (v, x) => v[0] + (x - plot.x) / plot.width * (v[1] - v[0]);
    await page.mouse.wheel(0, -300);
    await waitRedraw(v0);
    const v1 = await view();
    report.zoom = {before: v0, after: v1, ratio: (v1[1] - v1[0]) / (v0[1] - v0[0])};
    check(v1[1] - v1[0] < 0.9 * (v0[1] - v0[0]), `wheel zooms in: [${v0}] -> [${v1}]`);
    check(v1[0] >= v0[0] && v1[1] <= v0[1], 'the zoomed range lies inside the previous one');
    // (within a pixel: the event's clientX is whole pixels)
    check(near(tAt(v0, cx), tAt(v1, cx), (v0[1] - v0[0]) / plot.width), `the time under the cursor stays: ${tAt(v0, cx)} vs ${tAt(v1, cx)}`);
    // Drag 200 px to the left: the range moves later by 200 px' worth of time, same width.
    const dx = 200;
    await page.mouse.down();
    await page.mouse.move(cx - dx / 2, cy, {steps: 4});
    await page.mouse.move(cx - dx, cy, {steps: 4});
    await page.mouse.up();
    await waitRedraw(v1);
    const v2 = await view();
    const w1 = v1[1] - v1[0], w2 = v2[1] - v2[0];
    const want = dx * w1 / plot.width;
    report.pan = {before: v1, after: v2, shift_us: v2[0] - v1[0], expected_shift_us: want};
    check(near(w2, w1, w1 * 1e-9), `a drag keeps the width: ${w1} vs ${w2}`);
    check(near(v2[0] - v1[0], want, want * 0.02), `a ${dx} px drag to the left moves the range by ${want} µs, moved ${v2[0] - v1[0]}`);
    await page.click('#reset');
    await waitRedraw(v2);
    const v3 = await view();
    report.reset = v3;
    check(v3[0] === 0 && near(v3[1], D.steps[step].span, 1e-9), `reset shows the whole step: [${v3}]`);
  }

  // ---- (5) the per-step chart: a click on each bar selects its step ----
  report.chart_clicks = [];
  const order = D.steps.map((_, i) => i).reverse();
  for (const i of order) {
    const r = await page.evaluate((j) => window.gpuspanWaterfall.chartBarRect(j), i);
    if (!check(r && r.width > 0 && r.height > 0, `chart bar of step ${i}: ${JSON.stringify(r)}`)) continue;
    const cx = r.x + r.width / 2, cy = r.y + Math.min(r.height / 2, Math.max(r.height - 2, 1));
    // Something is painted there (not the white background).
    const px = await page.evaluate(([x, y]) => {
      const cv = document.getElementById('chart'), b = cv.getBoundingClientRect(), s = cv.width / b.width;
      return Array.from(cv.getContext('2d').getImageData(Math.floor((x - b.left) * s), Math.floor((y - b.top) * s), 1, 1).data);
    }, [cx, cy]);
    check(hex(px) !== '#ffffff' && px[3] > 0, `chart bar of step ${i} is painted at its centre: ${hex(px)}`);
    await page.mouse.click(cx, cy);
    await waitBody('step', i).catch(() => {});
    const got = Number(await body('step'));
    const sel = await page.$eval('#step', (s) => s.value);
    report.chart_clicks.push({step: i, selected: got});
    check(got === i && sel === String(i), `clicking the chart bar of step ${i} selects it (drawn ${got}, selector ${sel})`);
  }

  await page.waitForTimeout(100);
  check(errors.length === 0, `page errors: ${errors.join(' | ')}`);
} catch (e) {
  failures.push('exception: ' + (e && e.stack || e));
}
await finish();
