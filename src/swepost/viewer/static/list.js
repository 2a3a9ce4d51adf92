"use strict";
// The list view: every episode as one row of a virtualised table (only the rows in sight exist), sorted by a
// column, filtered by status, resolved, task, step or round and a text search across the messages.
const ROW_H = 28;

const List = {
  rows: [], order: [], sel: 0, sort: {key: "i", asc: true},
  filter: {text: "", st: "", res: "", env: "", task: "", group: ""},
  searchReady: false, searchLoading: null, scrollTop: 0, built: null,

  init(index) {
    this.index = index;
    this.rows = index.rows;
    this.apply();
  },

  columns() {
    const cols = [
      {key: "i", label: "#", num: true},
      {key: "id", label: "episode"},
      {key: "task", label: "task"},
      {key: "s", label: "sample", num: true},
    ];
    if (this.index.has_steps) cols.push({key: "step", label: "step", num: true});
    else if (this.index.has_rounds) cols.push({key: "round", label: "round", num: true});
    else cols.push({key: "env", label: "env"});
    cols.push({key: "st", label: "status"}, {key: "res", label: "resolved"}, {key: "r", label: "reward", num: true},
      {key: "turns", label: "turns", num: true}, {key: "tok", label: "tokens", num: true}, {key: "sec", label: "time s", num: true});
    return cols;
  },

  // --- filtering and sorting
  matches(row) {
    const f = this.filter;
    if (f.st && row.st !== f.st) return false;
    if (f.res && (row.res || "none") !== f.res) return false;
    if (f.env && row.env !== f.env) return false;
    if (f.group && String(this.index.has_steps ? row.step : row.round) !== f.group) return false;
    if (f.task && !row.task.toLowerCase().includes(f.task)) return false;
    if (f.text) {
      const hay = this.searchReady ? this.searchText(row.i) : (row.id + "\n" + row.task).toLowerCase();
      for (const word of f.text.split(/\s+/)) if (word && !hay.includes(word)) return false;
    }
    return true;
  },
  searchText(i) {
    const k = Math.floor(i / this.index.search_chunk);
    const chunk = window.__swepost_search[k];
    return chunk ? chunk[i - k * this.index.search_chunk] : "";
  },
  apply() {
    const {key, asc} = this.sort;
    const dir = asc ? 1 : -1;
    const order = this.rows.filter(r => this.matches(r));
    order.sort((a, b) => {
      const x = a[key], y = b[key];
      if (x === y) return a.i - b.i;
      if (x === null || x === undefined) return 1;  // empty cells last, whichever the direction
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * dir;
    });
    this.order = order.map(r => r.i);
    this.sel = Math.min(this.sel, Math.max(this.order.length - 1, 0));
  },
  loadSearch() {
    if (this.searchReady || this.searchLoading) return this.searchLoading;
    const files = [];
    for (let k = 0; k < this.index.search_chunks; k++) files.push(loadScript(`data/search/${k}.js`));
    this.searchLoading = Promise.all(files).then(() => { this.searchReady = true; });
    return this.searchLoading;
  },

  // --- drawing
  render(main) {
    clear(main);
    const counts = key => {
      const c = {};
      for (const r of this.rows) { const v = key(r); c[v] = (c[v] || 0) + 1; }
      return Object.entries(c).sort((a, b) => b[1] - a[1]);
    };
    const select = (label, field, pairs) => {
      const sel = h("select", {"aria-label": label, "data-filter": field}, h("option", {value: ""}, `${label}: all`));
      for (const [value, n] of pairs) {
        const opt = h("option", {value}, `${value} (${n})`);
        if (this.filter[field] === value) opt.selected = true;
        sel.append(opt);
      }
      sel.addEventListener("change", () => { this.filter[field] = sel.value; this.refresh(); });
      return sel;
    };
    const search = h("input", {type: "search", id: "search", placeholder: "search messages, ids, answers  ( / )",
      "aria-label": "text search"});
    search.value = this.filter.text;
    let timer = null;
    search.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        this.filter.text = search.value.trim().toLowerCase();
        if (this.filter.text && !this.searchReady) {
          this.status.textContent = "loading the search text…";
          this.loadSearch().then(() => this.refresh(), err => { this.status.textContent = String(err.message); });
        }
        this.refresh();
      }, 120);
    });
    const task = h("input", {type: "text", id: "task-filter", placeholder: "task contains…", "aria-label": "task"});
    task.value = this.filter.task;
    task.addEventListener("input", () => { this.filter.task = task.value.trim().toLowerCase(); this.refresh(); });
    this.count = h("span", {class: "count", id: "count"});
    this.status = h("span", {class: "muted"});
    const toolbar = h("div", {class: "toolbar"}, search,
      select("status", "st", counts(r => r.st)), select("resolved", "res", counts(r => r.res || "none")),
      task);
    if (this.index.has_steps) toolbar.append(select("step", "group", counts(r => String(r.step))));
    else if (this.index.has_rounds) toolbar.append(select("round", "group", counts(r => String(r.round))));
    else if (counts(r => r.env).length > 1) toolbar.append(select("env", "env", counts(r => r.env)));
    toolbar.append(this.count, this.status);

    const cols = this.columns();
    const head = h("div", {class: "grid list-head", role: "row"});
    for (const c of cols) {
      const cell = h("div", {class: (c.num ? "num " : "") + (this.sort.key === c.key ? "sorted" + (this.sort.asc ? " asc" : "") : ""),
        role: "columnheader", "data-key": c.key, title: "sort by " + c.label}, c.label);
      cell.addEventListener("click", () => {
        this.sort = {key: c.key, asc: this.sort.key === c.key ? !this.sort.asc : c.num ? false : true};
        this.render(main);
      });
      head.append(cell);
    }
    this.viewport = h("div", {class: "viewport", id: "list", tabindex: "0", role: "grid"});
    this.spacer = h("div", {class: "spacer"});
    this.viewport.append(this.spacer);
    this.viewport.addEventListener("scroll", () => this.schedule());
    main.append(toolbar, head, this.viewport);
    this.cols = cols;
    this.refresh(true);
    this.viewport.scrollTop = this.scrollTop;
    this.draw();
    this.viewport.focus({preventScroll: true});
  },
  refresh(keep) {
    this.apply();
    if (!keep) { this.sel = 0; if (this.viewport) this.viewport.scrollTop = 0; }
    const n = this.order.length, all = this.rows.length;
    this.count.textContent = n === all ? `${all.toLocaleString()} episodes` : `${n.toLocaleString()} of ${all.toLocaleString()} episodes`;
    if (this.searchReady || !this.filter.text) this.status.textContent = "";
    this.spacer.style.height = (n * ROW_H) + "px";
    this.draw();
  },
  schedule() {
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => { this.pending = null; this.draw(); });
  },
  draw() {
    if (!this.viewport) return;
    this.scrollTop = this.viewport.scrollTop;
    const first = Math.max(0, Math.floor(this.scrollTop / ROW_H) - 10);
    const last = Math.min(this.order.length, Math.ceil((this.scrollTop + this.viewport.clientHeight) / ROW_H) + 10);
    clear(this.spacer);
    for (let p = first; p < last; p++) this.spacer.append(this.rowEl(this.rows[this.order[p]], p));
  },
  rowEl(row, pos) {
    const cells = this.cols.map(c => {
      let v = row[c.key];
      if (c.key === "st") v = h("span", {class: statusClass(row.st)}, row.st);
      else if (c.key === "res") v = row.res ? h("span", {class: resolvedClass(row.res)}, row.res) : "";
      else if (c.key === "r") v = fmtNum(v, 2);
      else if (c.key === "sec") v = v === null ? "–" : Number(v).toFixed(1);
      else if (c.num) v = fmtNum(v);
      else v = v === null || v === undefined ? "–" : v;
      return h("div", {class: c.num ? "num" : "", title: typeof v === "string" ? v : null}, v);
    });
    const a = h("a", {class: "grid row" + (pos === this.sel ? " selected" : ""), href: `#/e/${row.i}`,
      role: "row", "data-i": row.i, tabindex: "-1"}, cells);
    a.style.top = (pos * ROW_H) + "px";
    a.addEventListener("click", () => { this.sel = pos; });
    return a;
  },

  // --- keys
  move(delta) {
    if (!this.order.length) return;
    this.sel = Math.max(0, Math.min(this.order.length - 1, this.sel + delta));
    const top = this.sel * ROW_H, vp = this.viewport;
    if (top < vp.scrollTop) vp.scrollTop = top;
    else if (top + ROW_H > vp.scrollTop + vp.clientHeight) vp.scrollTop = top + ROW_H - vp.clientHeight;
    this.draw();
  },
  key(e) {
    const page = Math.max(1, Math.floor(this.viewport.clientHeight / ROW_H) - 1);
    const moves = {ArrowDown: 1, j: 1, ArrowUp: -1, k: -1, PageDown: page, PageUp: -page, Home: -1e9, End: 1e9};
    if (e.key in moves) { this.move(moves[e.key]); return true; }
    if ((e.key === "Enter" || e.key === "o") && this.order.length) { location.hash = `#/e/${this.order[this.sel]}`; return true; }
    if (e.key === "/") { document.getElementById("search").focus(); return true; }
    return false;
  },
  neighbour(i, delta) {
    const p = this.order.indexOf(i);
    if (p < 0) return null;
    const q = p + delta;
    if (q < 0 || q >= this.order.length) return null;
    this.sel = q;
    return this.order[q];
  },
};
