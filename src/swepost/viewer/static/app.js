"use strict";
// The router: #/ the list, #/e/N episode N, #/raw/N its raw line, #/run the run. Keys go to the view in sight.
(function () {
  const index = window.__swepost_index;
  const main = document.getElementById("main");
  if (!index) { clear(main).append(h("p", {class: "problem"}, "data/index.js is missing: rebuild with `swepost view`")); return; }
  document.getElementById("artifact-id").textContent = `${index.artifact.id} (${index.artifact.view})`;
  document.title = `${index.artifact.id} · swepost view`;
  document.getElementById("nav-run").textContent = ["rl", "rft"].includes(index.artifact.view) ? "Run" : "Artifact";
  List.init(index);
  let view = null;

  function route() {
    const m = /^#\/e\/(\d+)$/.exec(location.hash);
    const navList = document.getElementById("nav-list"), navRun = document.getElementById("nav-run");
    navList.className = navRun.className = "";
    const raw = /^#\/raw\/(\d+)$/.exec(location.hash);
    if (m && Number(m[1]) < index.rows.length) { view = Episode; Episode.render(main, Number(m[1])); }
    else if (raw && Number(raw[1]) < index.rows.length) { view = Raw; Raw.render(main, Number(raw[1])); }
    else if (location.hash === "#/run") { view = Run; navRun.className = "active"; Run.render(main); }
    else { view = List; navList.className = "active"; List.render(main); }
  }

  document.addEventListener("keydown", e => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA")) {
      if (e.key === "Escape") { t.blur(); document.getElementById("list") && document.getElementById("list").focus(); }
      if (e.key === "Enter" && t.id === "search" && view === List) { List.viewport.focus(); }
      return;
    }
    if (view && view.key && view.key(e)) e.preventDefault();
  });
  window.addEventListener("hashchange", route);
  route();
})();
