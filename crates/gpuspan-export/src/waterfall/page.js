"use strict";
// gpuspan waterfall page. Data: the JSON in #data (see html.rs for its columns). Kernels are
// drawn on canvases, only for the selected step and the visible time range; bars thinner
// than a pixel that fall on an already painted pixel of their lane are skipped, so a draw
// costs at most about (lanes x width) rectangles whatever the kernel count.
(function () {
  const D = JSON.parse(document.getElementById("data").textContent);
  const $ = (id) => document.getElementById(id);
  const COL = D.colours;
  const AXIS = 26, LANE = 26, LABEL = 170, PADR = 10;
  const CHART_L = 64, CHART_B = 18, CHART_T = 14;

  function fmtUs(us) {
    const a = Math.abs(us);
    if (a === 0) return "0";
    if (a < 1000) return us.toFixed(a < 10 ? 3 : 1) + " \u00b5s";
    if (a < 1e6) return (us / 1000).toFixed(3) + " ms";
    return (us / 1e6).toFixed(3) + " s";
  }
  // Axis label: the unit of `ref` (the axis' largest value), as many decimals as `step` needs.
  function fmtTick(us, step, ref) {
    if (us === 0) return "0";
    let div = 1, unit = " \u00b5s";
    if (ref >= 1e6) { div = 1e6; unit = " s"; } else if (ref >= 1000) { div = 1000; unit = " ms"; }
    const dec = Math.min(6, Math.max(0, -Math.floor(Math.log10(step / div) + 1e-9)));
    return (us / div).toFixed(dec) + unit;
  }
  function esc(s) {
    return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;" })[c]);
  }
  const cut = (s, n) => (s.length > n ? s.slice(0, n - 1) + "\u2026" : s);
  function lowerBound(arr, x) { // first i with arr[i] >= x
    let lo = 0, hi = arr.length;
    while (lo < hi) { const m = (lo + hi) >> 1; if (arr[m] < x) lo = m + 1; else hi = m; }
    return lo;
  }

  // ---- decoding one step's lanes (once per step) ----
  // Per lane: starts (µs from the step's window start), durations, correlation ids (NaN:
  // unknown), a kernel flag, and the running maximum of ends (for range queries).
  const decoded = new Map();
  function decode(i) {
    let d = decoded.get(i);
    if (d) return d;
    const s = D.steps[i];
    const rows = s.k.map((k, r) => {
      const n = k.s.length;
      const start = new Float64Array(n), dur = new Float64Array(n), corr = new Float64Array(n), maxEnd = new Float64Array(n);
      let end = 0, c = 0, m = -Infinity;
      for (let q = 0; q < n; q++) {
        const a = end + k.s[q];
        end = a + k.d[q];
        start[q] = a / 1000;
        dur[q] = k.d[q] / 1000;
        m = Math.max(m, end / 1000);
        maxEnd[q] = m;
        const dc = k.r[q];
        if (dc === null) corr[q] = NaN; else { c += dc; corr[q] = c; }
      }
      const kernel = new Uint8Array(n).fill(1);
      for (const q of k.x) kernel[q] = 0;
      return { k, lane: s.ln[r], start, dur, corr, kernel, maxEnd };
    });
    d = { s, rows };
    decoded.set(i, d);
    return d;
  }

  // ---- state ----
  const realSpans = D.steps.filter((s) => s.kind === "range").map((s) => s.span).sort((a, b) => a - b);
  const median = realSpans.length ? realSpans[(realSpans.length - 1) >> 1] : 0;
  const slowest = D.slowest;
  const isSlow = (i) => D.steps[i].kind === "range" && realSpans.length > 1 && D.steps[i].span > 1.1 * median;
  let cur = D.sel !== null && D.sel !== undefined ? D.sel : slowest === null ? 0 : slowest;
  let v0 = 0, v1 = 1;
  let drawn = 0;

  function resetView() {
    const s = D.steps[cur];
    v0 = 0;
    v1 = s && s.span > 0 ? s.span : 1;
  }

  // ---- controls ----
  $("source").textContent = D.source;
  document.title = "gpuspan waterfall: " + D.source;
  const sel = $("step");
  D.steps.forEach((s, i) => {
    const o = document.createElement("option");
    o.value = String(i);
    o.textContent = i + ": " + s.name + " (" + fmtUs(s.span) + (i === slowest && s.kind === "range" ? ", slowest" : "") + ")";
    sel.appendChild(o);
  });
  function select(i) {
    if (i < 0 || i >= D.steps.length) return;
    cur = i;
    sel.value = String(i);
    resetView();
    drawAll();
  }
  sel.addEventListener("change", () => select(Number(sel.value)));
  $("prev").addEventListener("click", () => select(cur - 1));
  $("next").addEventListener("click", () => select(cur + 1));
  $("reset").addEventListener("click", () => { resetView(); drawWf(); });
  document.addEventListener("keydown", (e) => {
    if (e.target && e.target.tagName === "SELECT") return;
    if (e.key === "ArrowLeft") select(cur - 1);
    else if (e.key === "ArrowRight") select(cur + 1);
  });

  // ---- legend ----
  function drawLegend() {
    const tot = D.steps[cur] ? D.steps[cur].tot : [];
    $("legend").innerHTML = D.stages.map((name, g) =>
      "<span" + (tot[g] > 0 ? "" : " class=\"absent\"") + "><i style=\"background:" + COL[g] + "\"></i>" + esc(name) + "</span>").join("");
  }

  function setupCanvas(cv, h) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(200, cv.parentElement.clientWidth - 2);
    cv.style.height = h + "px";
    cv.width = Math.round(w * dpr);
    cv.height = Math.round(h * dpr);
    const ctx = cv.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = "11px system-ui, sans-serif";
    return [ctx, w];
  }

  // ---- per-step stacked chart ----
  let chartGeom = null;
  function drawChart() {
    const H = 150;
    const [ctx, W] = setupCanvas($("chart"), H);
    const n = D.steps.length;
    if (!n) return;
    const plotW = W - CHART_L - PADR, plotH = H - CHART_B - CHART_T;
    const band = plotW / n;
    const barW = Math.max(1, Math.min(band * 0.8, 60));
    const sum = (s) => s.tot.reduce((a, b) => a + b, 0);
    let yMax = 0;
    D.steps.forEach((s) => { if (s.kind !== "outside") yMax = Math.max(yMax, sum(s), s.span); });
    if (!(yMax > 0)) yMax = 1;
    const y = (us) => CHART_T + plotH - Math.min(us, yMax) / yMax * plotH;
    ctx.strokeStyle = "#d8dde4";
    ctx.fillStyle = "#5f6b7a";
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (const f of [0, 0.5, 1]) {
      ctx.beginPath();
      ctx.moveTo(CHART_L, Math.round(y(f * yMax)) + 0.5);
      ctx.lineTo(W - PADR, Math.round(y(f * yMax)) + 0.5);
      ctx.stroke();
      ctx.fillText(fmtTick(f * yMax, yMax / 20, yMax), CHART_L - 4, y(f * yMax));
    }
    for (let i = 0; i < n; i++) {
      const s = D.steps[i];
      const x = CHART_L + i * band + (band - barW) / 2;
      ctx.globalAlpha = s.kind === "outside" ? 0.45 : 1;
      let acc = 0;
      for (let g = 0; g < s.tot.length; g++) {
        if (!(s.tot[g] > 0)) continue;
        const ya = y(acc), yb = y(acc + s.tot[g]);
        ctx.fillStyle = COL[g];
        ctx.fillRect(x, yb, barW, Math.max(ya - yb, 0.5));
        acc += s.tot[g];
      }
      ctx.globalAlpha = 1;
      const ys = y(s.span);
      ctx.fillStyle = "#111";
      ctx.fillRect(x - Math.min(2, band * 0.1), ys - 1, barW + 2 * Math.min(2, band * 0.1), 2);
      if (isSlow(i)) {
        ctx.strokeStyle = "#d62728";
        ctx.lineWidth = 2;
        ctx.strokeRect(x - 1, Math.min(ys, y(acc)) - 1, barW + 2, CHART_T + plotH - Math.min(ys, y(acc)) + 1);
        ctx.lineWidth = 1;
        ctx.fillStyle = "#d62728";
        ctx.beginPath();
        const cx = x + barW / 2, top = Math.min(ys, y(acc)) - 4;
        ctx.moveTo(cx - 4, top - 6); ctx.lineTo(cx + 4, top - 6); ctx.lineTo(cx, top); ctx.closePath(); ctx.fill();
      }
      if (i === cur) {
        ctx.fillStyle = "#1d2330";
        ctx.fillRect(CHART_L + i * band, H - CHART_B + 1, Math.max(band, 2), 3);
      }
    }
    // Step numbers under the bars, as many as fit.
    ctx.fillStyle = "#5f6b7a";
    ctx.textAlign = "center";
    const every = Math.max(1, Math.ceil(28 / band));
    for (let i = 0; i < n; i += every) {
      const s = D.steps[i];
      ctx.fillText(s.kind === "outside" ? "outside" : String(i), CHART_L + (i + 0.5) * band, H - 7);
    }
    chartGeom = { band, n, barW, bars: D.steps.map((s, i) => {
      const x = CHART_L + i * band + (band - barW) / 2, top = y(s.tot.reduce((a, b) => a + b, 0));
      return { x, y: top, w: barW, h: CHART_T + plotH - top };
    }) };
  }

  // ---- waterfall ----
  let wfGeom = null;
  function niceStep(range, px) {
    const raw = range / Math.max(1, px / 110);
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
    return 10 * p;
  }
  function drawWf() {
    const s = D.steps[cur];
    $("wftitle").textContent = s ? ("step " + cur + ": " + s.name) : "no steps";
    if (!s) return;
    const d = decode(cur);
    const rows = s.ln.length;
    const H = AXIS + Math.max(1, rows) * LANE + 4;
    const [ctx, W] = setupCanvas($("wf"), H);
    const plotW = W - LABEL - PADR;
    const scale = plotW / (v1 - v0);
    wfGeom = { plotW, scale, rows };
    // axis
    const tick = niceStep(v1 - v0, plotW);
    ctx.fillStyle = "#5f6b7a";
    ctx.strokeStyle = "#e6e9ee";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    for (let t = Math.ceil(v0 / tick) * tick; t <= v1; t += tick) {
      const x = Math.round(LABEL + (t - v0) * scale) + 0.5;
      ctx.beginPath(); ctx.moveTo(x, AXIS - 6); ctx.lineTo(x, H); ctx.stroke();
      ctx.fillText(fmtTick(t, tick, v1), Math.min(Math.max(x, LABEL + 20), W - 30), AXIS / 2 - 2);
    }
    if (!rows) {
      ctx.textAlign = "left";
      ctx.fillText("no GPU activity in this step", LABEL, AXIS + LANE / 2);
    }
    ctx.textAlign = "left";
    drawn = 0;
    // Lane groups: consecutive lanes of one rank (D.lr; -1 outside a waterfall of ranks),
    // a rule above each group after the first.
    let groups = 0;
    for (let r = 0; r < rows; r++) {
      const y = AXIS + r * LANE;
      const grp = D.lr ? D.lr[s.ln[r]] : -1;
      if (r === 0 || grp !== (D.lr ? D.lr[s.ln[r - 1]] : -1)) {
        groups++;
        if (r > 0) { ctx.fillStyle = "#8a94a3"; ctx.fillRect(0, y - 1, W, 2); }
      }
      if (r % 2) { ctx.fillStyle = "#f6f8fa"; ctx.fillRect(0, y, W, LANE); }
      ctx.fillStyle = "#1d2330";
      ctx.fillText(D.lanes[s.ln[r]].slice(0, 26), 6, y + LANE / 2);
      const row = d.rows[r], st = row.start, du = row.dur, g = row.k.g;
      ctx.save();
      ctx.beginPath(); ctx.rect(LABEL, y, plotW, LANE); ctx.clip();
      let lastX = -Infinity;
      for (let q = lowerBound(row.maxEnd, v0); q < st.length; q++) {
        const a = st[q];
        if (a > v1) break;
        const b = a + du[q];
        if (b < v0) continue;
        let xa = LABEL + (a - v0) * scale;
        const xb = LABEL + (b - v0) * scale;
        if (xb <= lastX) continue;
        if (xa < lastX) xa = lastX;
        let w = xb - xa;
        if (w < 1) w = 1; else if (w > 3) w -= 0.5;
        ctx.fillStyle = COL[g[q]];
        ctx.fillRect(xa, y + 3, w, LANE - 6);
        lastX = xa + (w < 1.5 ? w : w + 0.5);
        drawn++;
      }
      ctx.restore();
    }
    ctx.strokeStyle = "#c4cad3";
    ctx.beginPath(); ctx.moveTo(LABEL - 0.5, 0); ctx.lineTo(LABEL - 0.5, H); ctx.stroke();
    document.body.dataset.drawnBars = String(drawn);
    document.body.dataset.laneGroups = String(groups);
    // What is on screen, for tests and scripts: the step and the visible range (µs from
    // the step's window start).
    document.body.dataset.step = String(cur);
    document.body.dataset.viewStart = String(v0);
    document.body.dataset.viewEnd = String(v1);
  }

  function drawInfo() {
    const s = D.steps[cur];
    if (!s) { $("info").textContent = "the trace has no GPU activity"; return; }
    const busy = s.span > 0 ? 100 * s.busy / s.span : 0;
    $("info").textContent = "GPU span " + fmtUs(s.span) + " \u00b7 busy " + busy.toFixed(1) + "% \u00b7 idle " +
      (s.span > 0 ? (100 - busy).toFixed(1) : "0.0") + "% \u00b7 " + s.n + " kernels \u00b7 " + s.ln.length + (s.ln.length === 1 ? " stream" : " streams") +
      (s.kind === "range" ? " \u00b7 CPU range " + fmtUs(s.range) : "");
  }

  function drawTop() {
    const s = D.steps[cur];
    if (!s) { $("top").innerHTML = ""; return; }
    const d = decode(cur), best = [];
    const durOf = (x) => d.rows[x[0]].dur[x[1]], startOf = (x) => d.rows[x[0]].start[x[1]];
    d.rows.forEach((row, r) => {
      for (let q = 0; q < row.dur.length; q++) {
        if (!row.kernel[q]) continue;
        if (best.length < 5 || row.dur[q] > durOf(best[best.length - 1])) {
          best.push([r, q]);
          best.sort((x, y) => durOf(y) - durOf(x) || startOf(x) - startOf(y));
          if (best.length > 5) best.pop();
        }
      }
    });
    $("top").innerHTML = "<tr><th>duration</th><th>stage</th><th>stream</th><th>kernel</th></tr>" + best.map(([r, q]) => {
      const row = d.rows[r], g = row.k.g[q], name = D.names[row.k.n[q]];
      return "<tr><td class=\"num\">" + fmtUs(row.dur[q]) + "</td><td class=\"nw\"><i style=\"background:" + COL[g] + "\"></i>" +
        esc(D.stages[g]) + "</td><td class=\"nw\">" + esc(D.lanes[row.lane]) + "</td><td class=\"name\" title=\"" + esc(name) + "\">" +
        esc(cut(name, 240)) + "</td></tr>";
    }).join("");
  }

  function drawAll() {
    drawInfo();
    drawChart();
    drawLegend();
    drawWf();
    drawTop();
  }

  // ---- tooltip ----
  const tip = $("tip");
  function showTip(html, ev) {
    tip.innerHTML = html;
    tip.hidden = false;
    const r = tip.getBoundingClientRect();
    let x = ev.clientX + 14, y = ev.clientY + 14;
    if (x + r.width > window.innerWidth - 4) x = Math.max(4, ev.clientX - r.width - 14);
    if (y + r.height > window.innerHeight - 4) y = Math.max(4, ev.clientY - r.height - 14);
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }
  const hideTip = () => { tip.hidden = true; };
  const dims = (a, b, c) => (a < 0 ? "?" : a + ", " + b + ", " + c);

  // The bar under the mouse as [lane row, index], or null.
  function barAt(ev) {
    if (!wfGeom) return null;
    const rect = $("wf").getBoundingClientRect();
    const x = ev.clientX - rect.left, y = ev.clientY - rect.top;
    const r = Math.floor((y - AXIS) / LANE);
    if (x < LABEL || r < 0 || r >= wfGeom.rows) return null;
    const row = decode(cur).rows[r], t = v0 + (x - LABEL) / wfGeom.scale, tol = 2 / wfGeom.scale;
    const st = row.start, me = row.maxEnd;
    let q = lowerBound(st, t + tol) - 1, best = -1, bestDist = Infinity;
    for (let n = 0; q >= 0 && me[q] >= t - tol && n < 20000; q--, n++) {
      const a = st[q], b = a + row.dur[q];
      const dist = t < a ? a - t : t > b ? t - b : 0;
      if (dist <= tol && dist < bestDist) { best = q; bestDist = dist; if (dist === 0) break; }
    }
    return best < 0 ? null : [r, best];
  }
  function kernelTip(r, q) {
    const row = decode(cur).rows[r], k = row.k, cfg = D.cfgs[k.c[q]];
    const rows = [
      ["duration", fmtUs(row.dur[q])],
      ["start", "+" + fmtUs(row.start[q]) + " in the step"],
      ["stage", esc(D.stages[k.g[q]])],
      ["stream", esc(D.lanes[row.lane])],
    ];
    if (row.kernel[q]) {
      rows.push(["grid", dims(cfg[0], cfg[1], cfg[2])], ["block", dims(cfg[3], cfg[4], cfg[5])],
        ["registers", cfg[6] < 0 ? "?" : cfg[6] + " per thread"],
        ["shared memory", cfg[7] < 0 ? "?" : cfg[7] + " bytes"]);
    }
    rows.push(["correlation", isNaN(row.corr[q]) ? "?" : String(row.corr[q])]);
    return "<b>" + esc(D.names[k.n[q]]) + "</b><table>" +
      rows.map((x) => "<tr><td>" + x[0] + "</td><td>" + x[1] + "</td></tr>").join("") + "</table>";
  }

  // ---- interaction: zoom, pan, hover, chart clicks ----
  const wf = $("wf");
  let pending = false;
  function redrawSoon() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; drawWf(); });
  }
  function clampView() {
    const s = D.steps[cur], full = s && s.span > 0 ? s.span : 1;
    let w = Math.min(Math.max(v1 - v0, 1e-3), full);
    if (v0 < 0) v0 = 0;
    if (v0 + w > full) v0 = full - w;
    v1 = v0 + w;
  }
  wf.addEventListener("wheel", (ev) => {
    if (!wfGeom) return;
    ev.preventDefault();
    const rect = wf.getBoundingClientRect();
    const x = Math.min(Math.max(ev.clientX - rect.left - LABEL, 0), wfGeom.plotW);
    const tc = v0 + x / wfGeom.scale;
    const f = Math.exp((ev.deltaY || ev.deltaX) * 0.0015);
    v0 = tc - (tc - v0) * f;
    v1 = tc + (v1 - tc) * f;
    clampView();
    hideTip();
    redrawSoon();
  }, { passive: false });
  let drag = null;
  wf.addEventListener("mousedown", (ev) => {
    drag = { x: ev.clientX, v0, v1 };
    wf.classList.add("dragging");
    ev.preventDefault();
  });
  window.addEventListener("mouseup", () => { drag = null; wf.classList.remove("dragging"); });
  window.addEventListener("mousemove", (ev) => {
    if (drag && wfGeom) {
      const dt = (ev.clientX - drag.x) / wfGeom.scale;
      v0 = drag.v0 - dt;
      v1 = drag.v1 - dt;
      clampView();
      hideTip();
      redrawSoon();
    }
  });
  wf.addEventListener("mousemove", (ev) => {
    if (drag) return;
    const hit = barAt(ev);
    if (!hit) hideTip(); else showTip(kernelTip(hit[0], hit[1]), ev);
  });
  wf.addEventListener("mouseleave", hideTip);
  wf.addEventListener("dblclick", () => { resetView(); drawWf(); });

  const chart = $("chart");
  function chartStep(ev) {
    if (!chartGeom) return -1;
    const rect = chart.getBoundingClientRect();
    const i = Math.floor((ev.clientX - rect.left - CHART_L) / chartGeom.band);
    return i >= 0 && i < chartGeom.n ? i : -1;
  }
  chart.addEventListener("click", (ev) => { const i = chartStep(ev); if (i >= 0) select(i); });
  chart.addEventListener("mousemove", (ev) => {
    const i = chartStep(ev);
    if (i < 0) { hideTip(); return; }
    const s = D.steps[i];
    const stages = s.tot.map((t, g) => [t, g]).filter((x) => x[0] > 0).sort((a, b) => b[0] - a[0]);
    showTip("<b>" + i + ": " + esc(s.name) + "</b>" + (isSlow(i) ? " <span style=\"color:#ff8a8a\">slow</span>" : "") +
      "<table><tr><td>GPU span</td><td>" + fmtUs(s.span) + "</td></tr><tr><td>busy</td><td>" +
      (s.span > 0 ? (100 * s.busy / s.span).toFixed(1) : "0.0") + "%</td></tr><tr><td>kernels</td><td>" + s.n + "</td></tr>" +
      stages.map((x) => "<tr><td><i style=\"display:inline-block;width:9px;height:9px;background:" + COL[x[1]] + "\"></i> " +
        esc(D.stages[x[1]]) + "</td><td>" + fmtUs(x[0]) + "</td></tr>").join("") + "</table>", ev);
  });
  chart.addEventListener("mouseleave", hideTip);
  window.addEventListener("resize", () => { drawChart(); drawWf(); });

  // ---- read-only hook for tests: where things are drawn, in client (CSS px) coordinates ----
  const clientRect = (cv, x, y, w, h) => {
    const r = cv.getBoundingClientRect();
    return { x: r.left + x, y: r.top + y, width: w, height: h };
  };
  window.gpuspanWaterfall = Object.freeze({
    step: () => cur,
    view: () => [v0, v1],
    // The plot area of the lanes (right of the labels, below the axis).
    plotRect: () => wfGeom && clientRect(wf, LABEL, AXIS, wfGeom.plotW, wfGeom.rows * LANE),
    // Bar `q` of lane row `r` of the selected step as drawn now (clipped to the plot), or
    // null when it is outside the visible range.
    barRect(r, q) {
      if (!wfGeom || r < 0 || r >= wfGeom.rows) return null;
      const row = decode(cur).rows[r];
      if (!(q >= 0 && q < row.start.length)) return null;
      const a = row.start[q], b = a + row.dur[q];
      if (b < v0 || a > v1) return null;
      const xa = Math.max(LABEL, LABEL + (a - v0) * wfGeom.scale);
      const xb = Math.min(LABEL + wfGeom.plotW, LABEL + (b - v0) * wfGeom.scale);
      return clientRect(wf, xa, AXIS + r * LANE + 3, Math.max(xb - xa, 1), LANE - 6);
    },
    // The stacked bar of step `i` in the per-step chart (stage totals, without the span tick).
    chartBarRect(i) {
      const b = chartGeom && chartGeom.bars[i];
      return b ? clientRect(chart, b.x, b.y, b.w, b.h) : null;
    },
  });

  // ---- first draw ----
  sel.value = String(cur);
  resetView();
  drawAll();
  document.body.dataset.renderMs = performance.now().toFixed(1);
})();
