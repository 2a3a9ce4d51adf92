"use strict";
// The run view: what the artifact is (manifest, metrics), for rl and rft its curves per step or round, and its
// lineage down to the tasks and the base model. Its data file loads when the view is first opened.
const Run = {
  render(main) {
    clear(main).append(h("p", {class: "loading"}, "loading the run…"));
    loadScript("data/run.js").then(() => {
      clear(main).append(this.page(window.__swepost_run));
    }, err => { clear(main).append(h("p", {class: "problem"}, String(err.message))); });
  },

  page(run) {
    const a = run.artifact;
    const page = h("div", {id: "run"},
      h("div", {class: "ep-head"}, h("h1", {}, a.id), h("span", {class: "muted"}, `${a.kind}, made by ${a.stage || "?"} on ${a.created}`)));
    if (run.series) page.append(this.curves(run.series));
    if (a.metrics) page.append(h("section", {}, h("h2", {}, "metrics"), this.kv(a.metrics)));
    page.append(h("section", {}, h("h2", {}, "stats"), this.kv(a.stats || {})));
    page.append(h("section", {}, h("h2", {}, "lineage"), h("ul", {class: "lineage", id: "lineage"}, this.node(run.lineage))));
    page.append(h("section", {}, h("details", {}, h("summary", {}, "producer config"),
      h("pre", {}, JSON.stringify(a.config, null, 2))),
      h("p", {class: "muted"}, `swepost ${a.swepost_version || "?"}, commit ${a.git_commit || "?"}, seed ${a.seed}, ${a.path}`)));
    return page;
  },

  curves(s) {
    const pts = s.points;
    const xs = pts.map(p => String(p[s.x]));
    const charts = h("div", {class: "charts", id: "charts"});
    const per = s.x === "step" ? "per step" : "per round";
    charts.append(lineChart(`reward ${per} (graded episodes)`, xs, [{name: "mean reward", ys: pts.map(p => p.reward)}]));
    charts.append(lineChart(`resolved rate ${per}`, xs, [{name: "resolved", ys: pts.map(p => p.resolved_rate)}], {yMax: 1}));
    charts.append(barChart(`exit statuses ${per}`, xs, s.statuses.map(st => ({name: st, ys: pts.map(p => p.exit_status[st] || 0)})), {legend: true}));
    if (s.kind === "rl") {
      charts.append(barChart("dropped groups per step (all rewards equal)", xs, [{name: "dropped", ys: pts.map(p => p.dropped_groups)}]));
      const parts = ["generation", "environment", "training"];
      if (pts.some(p => parts.some(k => p.time[k] !== null)))
        charts.append(barChart("time split per step (s)", xs, parts.map(k => ({name: k, ys: pts.map(p => p.time[k] || 0)}))));
      if (pts.some(p => p.loss !== null)) charts.append(lineChart("loss per step", xs, [{name: "loss", ys: pts.map(p => p.loss)}]));
    } else {
      charts.append(barChart("tasks resolved per round", xs, [{name: "seen before", ys: pts.map(p => p.resolved_tasks - p.new_tasks)},
        {name: "new", ys: pts.map(p => p.new_tasks)}]));
    }
    const section = h("section", {}, h("h2", {}, s.kind === "rl" ? "training curves" : "rounds"), charts);
    if (s.time_split && Object.keys(s.time_split).length) {
      section.append(h("p", {class: "muted"}, "whole run: " + Object.entries(s.time_split).map(([k, v]) => `${k} ${v} s`).join(", ")));
    }
    return section;
  },

  kv(obj) {
    const table = h("table", {class: "kv"});
    for (const [k, v] of Object.entries(obj)) {
      const text = v !== null && typeof v === "object" ? JSON.stringify(v) : String(v);
      table.append(h("tr", {}, h("td", {}, k), h("td", {}, text.length > 300 ? foldedPre({t: JSON.stringify(v, null, 1)}) : text)));
    }
    return table;
  },

  key(e) {
    if (e.key === "Escape" || e.key === "u") { location.hash = "#/"; return true; }
    return false;
  },

  node(n) {
    if (n.missing) return h("li", {}, n.id, h("span", {class: "kind"}, " (missing from the store)"));
    const li = h("li", {}, n.id, h("span", {class: "kind"}, ` ${n.kind}${n.stage ? ", " + n.stage : ""}`));
    if (n.parents && n.parents.length) li.append(h("ul", {class: "lineage"}, n.parents.map(p => this.node(p))));
    return li;
  },
};
