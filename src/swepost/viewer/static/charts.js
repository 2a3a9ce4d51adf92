"use strict";
// Small SVG charts, drawn with createElementNS: a line chart and a stacked bar chart. No library.
const SVGNS = "http://www.w3.org/2000/svg";
const PALETTE = ["#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7b83", "#6e7781", "#fb8500"];

function svg(tag, attrs, text) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = String(text);
  return el;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function frame(xs, yMax, width, height, yFmt) {
  const pad = {l: 44, r: 10, t: 8, b: 26};
  const root = svg("svg", {width, height, viewBox: `0 0 ${width} ${height}`, role: "img"});
  const w = width - pad.l - pad.r, hgt = height - pad.t - pad.b;
  const y = v => pad.t + hgt - (v / yMax) * hgt;
  for (let k = 0; k <= 4; k++) {
    const v = (yMax * k) / 4;
    root.append(svg("line", {x1: pad.l, x2: pad.l + w, y1: y(v), y2: y(v), stroke: "#e1e4e8"}));
    root.append(svg("text", {x: pad.l - 4, y: y(v) + 4, "text-anchor": "end"}, yFmt(v)));
  }
  const every = Math.max(1, Math.ceil(xs.length / 12));
  const band = w / Math.max(xs.length, 1);
  const x = i => pad.l + band * (i + 0.5);
  xs.forEach((label, i) => {
    if (i % every === 0) root.append(svg("text", {x: x(i), y: height - 8, "text-anchor": "middle"}, label));
  });
  return {root, x, y, band, pad, w, hgt};
}

function chartBox(title, root, names, always) {
  const legend = h("div", {class: "legend"});
  names.forEach((name, k) => {
    const sw = svg("svg", {width: 10, height: 10, class: "swatch"});
    sw.append(svg("rect", {width: 10, height: 10, fill: PALETTE[k % PALETTE.length]}));
    legend.append(h("span", {}, sw, name));
  });
  const box = h("div", {class: "chart"}, h("h3", {}, title));
  box.append(root);
  if (names.length > 1 || always) box.append(legend);
  return box;
}

// series: [{name, ys: [number|null]}]; ys share xs
function lineChart(title, xs, series, opts) {
  opts = opts || {};
  const all = series.flatMap(s => s.ys).filter(v => v !== null && v !== undefined);
  const yMax = opts.yMax || niceMax(Math.max(0, ...all));
  const yFmt = opts.yFmt || (v => (yMax <= 1 ? v.toFixed(2) : Math.round(v * 10) / 10));
  const f = frame(xs, yMax, opts.width || 420, opts.height || 200, yFmt);
  series.forEach((s, k) => {
    const color = PALETTE[k % PALETTE.length];
    let d = "";
    s.ys.forEach((v, i) => {
      if (v === null || v === undefined) return;
      d += (d ? " L " : "M ") + f.x(i).toFixed(1) + " " + f.y(v).toFixed(1);
      const dot = svg("circle", {cx: f.x(i), cy: f.y(v), r: 3, fill: color});
      dot.append(svg("title", {}, `${s.name} @ ${xs[i]}: ${Number(v).toFixed(3)}`));
      f.root.append(dot);
    });
    if (d) f.root.insertBefore(svg("path", {d, fill: "none", stroke: color, "stroke-width": 2}), f.root.firstChild.nextSibling);
  });
  return chartBox(title, f.root, series.map(s => s.name));
}

// stacks: [{name, ys: [number]}], drawn bottom-up per x
function barChart(title, xs, stacks, opts) {
  opts = opts || {};
  const totals = xs.map((_, i) => stacks.reduce((a, s) => a + (s.ys[i] || 0), 0));
  const yMax = niceMax(Math.max(0, ...totals));
  const f = frame(xs, yMax, opts.width || 420, opts.height || 200, v => Math.round(v * 100) / 100);
  xs.forEach((label, i) => {
    let base = 0;
    stacks.forEach((s, k) => {
      const v = s.ys[i] || 0;
      if (v <= 0) return;
      const top = f.y(base + v), bottom = f.y(base);
      const bar = svg("rect", {x: f.x(i) - f.band * 0.35, width: f.band * 0.7, y: top, height: Math.max(bottom - top, 0.5),
        fill: PALETTE[k % PALETTE.length]});
      bar.append(svg("title", {}, `${s.name} @ ${label}: ${Math.round(v * 1000) / 1000}`));
      f.root.append(bar);
      base += v;
    });
  });
  return chartBox(title, f.root, stacks.map(s => s.name), opts.legend);
}
