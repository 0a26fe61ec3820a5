/* The dashboard: refreshes projects, counters and queues every few seconds; inline edits; create dialog. */
"use strict";

(() => {
  const {api, el, toast, schedulerState, url} = SF;
  const config = JSON.parse(document.getElementById("dashboard-config").textContent);
  const SEGMENTS = ["success", "retry", "failed", "pending"];
  const tbody = document.querySelector("#projects tbody");
  let editing = 0;

  /* -- rendering ------------------------------------------------------------------------- */
  function avgTime(counters) {
    for (const w of ["1h", "all"]) {
      const c = (counters || {})[w] || {};
      if (c.fetch_time || c.process_time) {
        return `${(c.fetch_time || 0).toFixed(3)}+${(c.process_time || 0).toFixed(3)} s`;
      }
    }
    return "-";
  }

  function fillBar(bar, window, counts) {
    counts = counts || {};
    const values = SEGMENTS.map((name) => [name, Math.round(counts[name] || 0)]);
    const total = values.reduce((sum, [, n]) => sum + n, 0);
    bar.title = `${window}: ` + values.map(([name, n]) => `${name} ${n}`).join(", ");
    for (const [name, n] of values) {
      let seg = bar.querySelector(`.seg.${name}`);
      if (!seg) {
        seg = el("span", {class: `seg ${name}`});
        bar.querySelector(".plabel").before(seg);
      }
      seg.style.width = total ? `${(100 * n / total).toFixed(2)}%` : "0%";
    }
    bar.querySelector(".plabel b").textContent = String(total);
  }

  function buildRow(p) {
    const tr = el("tr", {class: "project-row", dataset: {name: p.name}});
    const select = el("select", {class: "status-select", "aria-label": `status of ${p.name}`},
      config.statuses.map((s) => el("option", {value: s}, s)));
    tr.append(
      el("td", {class: "group"}),
      el("td", {class: "name"}, el("a", {class: "project-link", href: url`/debug/${p.name}`}, p.name)),
      el("td", {class: "status"}, select, " ", el("span", {class: "badge paused", hidden: true}, "PAUSED")),
      el("td", {class: "rate"}),
      el("td", {class: "time"}, "-"),
      el("td", {class: "progress-cell"}, config.windows.map((w) =>
        el("div", {class: "progress", dataset: {window: w}}, el("span", {class: "plabel"}, `${w} `, el("b", {}, "0"))))),
      el("td", {class: "actions"},
        el("button", {type: "button", class: "run"}, "Run"), " ",
        el("a", {href: url`/tasks?project=${p.name}`}, "Active tasks"), " ",
        el("a", {href: url`/results/${p.name}`}, "Results")),
    );
    return tr;
  }

  function editableCell(td, cls, text, editable, title) {
    const current = td.querySelector(`.${cls}-edit, .${cls}-text, input`);
    if (current && current.tagName === "INPUT") return;          // being edited
    const want = editable ? "BUTTON" : "SPAN";
    let node = current;
    if (!node || node.tagName !== want) {
      node = editable ? el("button", {type: "button", class: `edit ${cls}-edit`, title}) : el("span", {class: `${cls}-text`});
      td.replaceChildren(node);
    }
    node.textContent = text;
  }

  function updateRow(tr, p, counters) {
    tr.dataset.editable = p.editable ? "true" : "false";
    editableCell(tr.querySelector("td.group"), "group", p.group || "-", p.editable, "change the group");
    editableCell(tr.querySelector("td.rate"), "rate", `${p.rate}/${p.burst}`, p.editable, "change rate/burst");
    const name = tr.querySelector("td.name");
    let lock = name.querySelector(".badge.lock");
    if (p.locked && !lock) name.append(" ", el("span", {class: "badge lock", title: "group 'lock'"}, "locked"));
    if (!p.locked && lock) lock.remove();
    const select = tr.querySelector(".status-select");
    if (document.activeElement !== select) select.value = p.status;
    select.disabled = !p.editable;
    tr.querySelector(".badge.paused").hidden = !p.paused;
    tr.querySelector(".run").disabled = !p.editable;
    tr.querySelector("td.time").textContent = avgTime(counters);
    for (const bar of tr.querySelectorAll(".progress")) {
      fillBar(bar, bar.dataset.window, (counters || {})[bar.dataset.window]);
    }
  }

  function showQueues(queues) {
    for (const box of document.querySelectorAll("#queues .queue")) {
      const names = box.dataset.queues.split(" ");
      const sizes = names.map((n) => (queues ? queues[n] : null));
      box.querySelector(".qsize").textContent =
        sizes.some((s) => s === null || s === undefined) ? "-" : String(sizes.reduce((a, b) => a + b, 0));
    }
  }

  let refreshing = false;

  async function refresh() {
    if (editing || refreshing) return;       // never pile up requests behind a slow scheduler
    refreshing = true;
    let projects, counters, queues;
    try {
      [projects, counters, queues] = await Promise.all([
        api("GET", "/api/projects"), api("GET", "/api/counters"), api("GET", "/api/queues")]);
    } catch (error) {
      if (error.status === 401) { location.reload(); return; }
      toast(`refresh failed: ${error.message}`, "error");
      return;
    } finally {
      refreshing = false;
    }
    schedulerState(projects.scheduler);
    document.getElementById("counter-source").textContent = `counters from ${counters.source}`;
    const rows = new Map([...tbody.querySelectorAll("tr.project-row")].map((tr) => [tr.dataset.name, tr]));
    for (const p of projects.projects) {
      let tr = rows.get(p.name);
      if (!tr) {
        tr = buildRow(p);
        tbody.append(tr);
      }
      rows.delete(p.name);
      updateRow(tr, p, counters.counters[p.name]);
    }
    for (const tr of rows.values()) tr.remove();
    document.getElementById("no-projects").hidden = projects.projects.length > 0;
    showQueues(queues.queues);
    document.body.dataset.refreshed = String(Date.now());
  }

  /* -- editing --------------------------------------------------------------------------- */
  async function patch(name, fields) {
    const answer = await api("PATCH", url`/api/projects/${name}`, fields);
    for (const note of answer.notes || []) toast(note, "info");
    return answer;
  }

  function inlineEdit(button, initial, save) {
    const input = el("input", {class: "inline-input", value: initial, "aria-label": button.title || "edit"});
    button.replaceWith(input);
    input.focus();
    input.select();
    editing += 1;
    let done = false;
    const finish = async (commit) => {
      if (done) return;
      done = true;
      try {
        if (commit && input.value !== initial) await save(input.value.trim());
      } catch (error) {
        toast(error.message, "error");
      } finally {
        input.replaceWith(button);
        editing -= 1;
        refresh();
      }
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") { event.preventDefault(); finish(true); }
      if (event.key === "Escape") { event.preventDefault(); finish(false); }
    });
    input.addEventListener("blur", () => finish(true));
  }

  tbody.addEventListener("click", async (event) => {
    const tr = event.target.closest("tr.project-row");
    if (!tr) return;
    const name = tr.dataset.name;
    const target = event.target;
    if (target.classList.contains("group-edit")) {
      const initial = target.textContent === "-" ? "" : target.textContent;
      inlineEdit(target, initial, (value) => patch(name, {group: value}));
    } else if (target.classList.contains("rate-edit")) {
      inlineEdit(target, target.textContent, (value) => {
        const [rate, burst] = value.split("/").map((v) => Number(v.trim()));
        if (!Number.isFinite(rate) || !Number.isFinite(burst)) throw new Error("write rate/burst, e.g. 10/20");
        return patch(name, {rate, burst});
      });
    } else if (target.classList.contains("run")) {
      target.disabled = true;
      try {
        const answer = await api("POST", url`/api/projects/${name}/run`);
        toast(answer.note || `${name}: on_start scheduled`, answer.note ? "info" : "ok");
      } catch (error) {
        toast(error.message, "error");
      } finally {
        target.disabled = false;
      }
    }
  });

  tbody.addEventListener("change", async (event) => {
    if (!event.target.classList.contains("status-select")) return;
    const name = event.target.closest("tr.project-row").dataset.name;
    try {
      await patch(name, {status: event.target.value});
      toast(`${name} is now ${event.target.value}`, "ok");
    } catch (error) {
      toast(error.message, "error");
    }
    refresh();
  });

  /* -- create ------------------------------------------------------------------------------ */
  const dialog = document.getElementById("create-dialog");
  const form = document.getElementById("create-form");
  const errorBox = document.getElementById("create-error");
  document.getElementById("new-project").addEventListener("click", () => {
    errorBox.textContent = "";
    form.reset();
    dialog.showModal();
  });
  document.getElementById("create-cancel").addEventListener("click", () => dialog.close());
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = form.elements.name.value.trim();
    const startUrl = form.elements.start_url.value.trim();
    try {
      await api("POST", "/api/projects", {name, start_url: startUrl || null});
      location.href = url`/debug/${name}`;
    } catch (error) {
      errorBox.textContent = error.message;
    }
  });

  refresh();
  setInterval(refresh, config.refresh * 1000);
})();
