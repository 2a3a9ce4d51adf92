"use strict";
// The episode view: the verdict first (diff beside the gold patch and the tests, or the judge's scores, or EM/F1),
// then the conversation turn by turn with long outputs folded. Its data file loads only when it is opened.
const Episode = {
  current: null,

  render(main, i) {
    this.current = i;
    clear(main).append(h("p", {class: "loading"}, `loading episode ${i}…`));
    loadScript(`data/ep/${List.rows[i].c}.js`).then(() => {
      if (this.current !== i) return;
      const ep = window.__swepost_ep[i];
      clear(main).append(this.page(ep, List.rows[i] || {}));
      window.scrollTo(0, 0);
    }, err => { clear(main).append(h("p", {class: "problem"}, String(err.message))); });
  },

  page(ep, row) {
    const prev = List.order.indexOf(ep.i) > 0, next = List.order.indexOf(ep.i) < List.order.length - 1;
    const head = h("div", {class: "ep-head"},
      h("a", {href: "#/", id: "back"}, "← list"),
      h("h1", {id: "ep-title"}, row.id || `#${ep.i}`),
      h("span", {class: "muted"}, row.task),
      h("a", {href: `#/raw/${ep.i}`, id: "raw-link"}, "raw JSON"),
      h("span", {class: "muted"}, (prev ? "p: previous" : "") + (prev && next ? " · " : "") + (next ? "n: next" : "")));
    const badge = (label, value, cls) => h("span", {class: "badge"}, label + " ", h("b", {class: cls || ""}, value));
    const badges = h("div", {class: "badges"},
      h("span", {class: statusClass(row.st)}, row.st),
      row.res ? h("span", {class: resolvedClass(row.res)}, row.res) : null,
      badge("reward", fmtNum(row.r, 3)), badge("turns", fmtNum(row.turns)), badge("tokens", fmtNum(row.tok)),
      badge("time", row.sec === null || row.sec === undefined ? "–" : Number(row.sec).toFixed(1) + " s"),
      row.step !== null && row.step !== undefined ? badge("step", row.step) : null,
      row.round !== null && row.round !== undefined ? badge("round", row.round) : null,
      row.masked ? badge("masked", row.masked) : null,
      row.dropped ? badge("group", "dropped") : null);
    const page = h("div", {id: "episode"}, head, badges);
    if (ep.problem) page.append(h("p", {class: "problem"}, ep.problem));
    if (ep.meta.error) page.append(h("div", {class: "problem"}, h("b", {}, "error: "), capText(ep.meta.error)));
    if (ep.diff || ep.gold) page.append(this.diffs(ep));
    if (ep.tests.length) page.append(this.tests(ep.tests));
    if (ep.judge) page.append(this.judge(ep));
    if (ep.answers) page.append(this.answers(ep));
    else if (!ep.judge && (ep.answer || ep.reference)) page.append(this.answerBox(ep));
    if (ep.evidence.length) page.append(this.evidence(ep.evidence));
    page.append(this.conversation(ep));
    page.append(this.meta(ep));
    return page;
  },

  diffs(ep) {
    const side = (title, cap, id) => h("div", {}, h("h3", {class: "muted"}, title),
      cap ? h("div", {class: "diff", id}, this.diffLines(capText(cap)), capNote(cap)) : h("p", {class: "muted"}, "none"));
    return h("section", {}, h("h2", {}, "diff"),
      h("div", {class: "diffs"}, side("final diff (the model's)", ep.diff, "final-diff"), side("gold patch", ep.gold, "gold-patch")));
  },
  diffLines(text) {
    const pre = h("pre", {});
    for (const line of text.split("\n")) {
      let cls = "l";
      if (line.startsWith("diff --git") || line.startsWith("+++ ") || line.startsWith("--- ")) cls += " file";
      else if (line.startsWith("@@")) cls += " hunk";
      else if (line.startsWith("+")) cls += " add";
      else if (line.startsWith("-")) cls += " del";
      pre.append(h("span", {class: cls}, line));
    }
    return pre;
  },

  tests(tests) {
    const rank = t => (t[2] === "F2P" ? 0 : t[2] === "P2P" ? 1 : 2);
    const sorted = tests.slice().sort((a, b) => rank(a) - rank(b));
    const tally = {};
    for (const t of tests) tally[t[1]] = (tally[t[1]] || 0) + 1;
    const table = h("table", {class: "tests", id: "tests"}, h("tr", {}, h("th", {}, "test"), h("th", {}, "group"), h("th", {}, "status")));
    for (const [name, status, group] of sorted) {
      const cls = status === "PASSED" || status === "XFAIL" ? "t-pass" : status === "FAILED" || status === "ERROR" ? "t-fail" : "t-other";
      table.append(h("tr", {}, h("td", {}, h("code", {}, name)), h("td", {}, group), h("td", {class: cls}, status)));
    }
    return h("section", {}, h("h2", {}, `tests (${Object.entries(tally).map(([k, v]) => `${v} ${k}`).join(", ")})`), table);
  },

  judge(ep) {
    const j = ep.judge;
    const scores = {};
    try { Object.assign(scores, JSON.parse(capText(j.scores))); } catch (e) { /* shown as text below */ }
    const table = h("table", {class: "scores", id: "judge-scores"}, h("tr", {}, h("th", {}, "axis"), h("th", {}, "score")));
    for (const [axis, score] of Object.entries(scores)) table.append(h("tr", {}, h("td", {}, axis), h("td", {class: "num"}, String(score))));
    if (j.total) table.append(h("tr", {}, h("th", {}, "total"), h("th", {class: "num"}, capText(j.total))));
    const facts = ["judge", "model", "reward", "threshold", "qa_type", "judge_failed", "missing_answer", "note"]
      .filter(k => j[k]).map(k => h("tr", {}, h("td", {}, k), h("td", {}, capText(j[k]))));
    return h("section", {}, h("h2", {}, "judge"),
      h("div", {class: "answer-grid"}, table, h("table", {class: "kv"}, facts)),
      j.rationale ? h("div", {}, h("h3", {class: "muted"}, "rationale"), foldedPre(j.rationale)) : null,
      this.answerBox(ep), ep.rubric.length ? h("div", {}, h("h3", {class: "muted"}, "rubric"),
        h("ul", {}, ep.rubric.map(r => h("li", {}, capText(r))))) : null);
  },

  answers(ep) {
    const a = ep.answers;
    const facts = Object.keys(a).filter(k => k !== "answer" && k !== "golds")
      .map(k => h("tr", {}, h("td", {}, k), h("td", {}, capText(a[k]))));
    let golds = [];
    try { golds = JSON.parse(capText(a.golds)); } catch (e) { golds = a.golds ? [capText(a.golds)] : []; }
    return h("section", {}, h("h2", {}, "answer"),
      h("div", {class: "answer-grid"},
        h("div", {class: "box"}, h("h3", {class: "muted"}, "the model's answer"),
          ep.answer ? foldedPre(ep.answer) : h("p", {class: "muted"}, "none")),
        h("div", {class: "box"}, h("h3", {class: "muted"}, "gold answers"),
          h("ul", {id: "golds"}, (Array.isArray(golds) ? golds : [golds]).map(g => h("li", {}, String(g)))))),
      h("table", {class: "kv", id: "answer-metrics"}, facts));
  },

  answerBox(ep) {
    return h("div", {class: "answer-grid"},
      h("div", {class: "box"}, h("h3", {class: "muted"}, "the model's answer"), ep.answer ? foldedPre(ep.answer) : h("p", {class: "muted"}, "none")),
      h("div", {class: "box"}, h("h3", {class: "muted"}, "reference answer"), ep.reference ? foldedPre(ep.reference) : h("p", {class: "muted"}, "none")));
  },

  evidence(pairs) {
    const table = h("table", {class: "kv", id: "evidence"});
    for (const [key, value] of pairs) {
      const text = capText(value);
      table.append(h("tr", {}, h("td", {}, capText(key)),
        h("td", {}, text.includes("\n") || text.length > 200 ? foldedPre(value) : h("code", {}, text))));
    }
    return h("section", {}, h("details", {open: pairs.length <= 12 ? "" : null}, h("summary", {}, "grader evidence"), table));
  },

  conversation(ep) {
    const box = h("section", {id: "conversation"}, h("h2", {}, `conversation (${ep.messages.length} messages, ${ep.tools} tools offered)`));
    ep.messages.forEach((m, k) => {
      const role = capText(m.role);
      const who = h("div", {class: "who"}, h("b", {}, role), m.name ? h("span", {}, capText(m.name)) : null,
        h("span", {class: "muted"}, `#${k}`), m.error ? h("span", {class: "err"}, "error: " + capText(m.error)) : null);
      const body = h("div", {class: "body"});
      if (m.content && capText(m.content)) body.append(foldedPre(m.content));
      else if (!(m.calls || []).length) body.append(h("span", {class: "muted"}, "(no text)"));
      for (const call of m.calls || []) {
        const c = h("div", {class: "call"}, h("span", {class: "fn"}, capText(call.name) || "(no name)"));
        if (call.args) for (const [key, value] of call.args) c.append(h("div", {class: "arg-key"}, capText(key)), foldedPre(value, "text arg"));
        else if (call.raw) c.append(foldedPre(call.raw));
        body.append(c);
      }
      const cls = ["system", "user", "assistant", "tool"].includes(role) ? role : "other";
      box.append(h("div", {class: "msg " + cls}, who, body));
    });
    return box;
  },

  meta(ep) {
    const rows = Object.entries(ep.meta).map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", {}, h("pre", {}, capText(v)))));
    const rollout = Object.entries(ep.row || {}).map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", {}, h("pre", {}, capText(v)))));
    return h("section", {}, h("details", {}, h("summary", {}, "record fields"), h("table", {class: "kv"}, rows)),
      rollout.length ? h("details", {}, h("summary", {}, "rl rollout row"), h("table", {class: "kv"}, rollout)) : null);
  },

  key(e) {
    if (e.key === "Escape" || e.key === "Backspace" || e.key === "u") { location.hash = "#/"; return true; }
    if (e.key === "n" || e.key === "p" || e.key === "j" || e.key === "k") {
      const to = List.neighbour(this.current, e.key === "n" || e.key === "j" ? 1 : -1);
      if (to !== null) location.hash = `#/e/${to}`;
      return true;
    }
    return false;
  },
};

// The episode's line exactly as the artifact holds it (indented when it is JSON), loaded only when asked for.
const Raw = {
  render(main, i) {
    this.current = i;
    clear(main).append(h("p", {class: "loading"}, `loading the raw line of episode ${i}…`));
    Promise.all([loadScript(`data/raw/${List.rows[i].c}.js`), loadScript(`data/ep/${List.rows[i].c}.js`)]).then(() => {
      const raw = window.__swepost_raw[i], ep = window.__swepost_ep[i];
      let text = raw;
      try { text = JSON.stringify(JSON.parse(raw), null, 2); } catch (e) { /* not JSON: as it is */ }
      clear(main).append(h("div", {id: "raw"},
        h("div", {class: "ep-head"}, h("a", {href: `#/e/${i}`}, "← episode"), h("h1", {}, (List.rows[i] || {}).id || `#${i}`),
          h("span", {class: "muted"}, `line ${ep.line} of ${ep.file} (${raw.length.toLocaleString()} characters)`)),
        foldedPre({t: text}, "text raw-text")));
    }, err => { clear(main).append(h("p", {class: "problem"}, String(err.message))); });
  },
  key(e) {
    if (e.key === "Escape" || e.key === "u") { location.hash = `#/e/${this.current}`; return true; }
    return false;
  },
};
