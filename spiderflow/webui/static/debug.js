/* The debugger: edit and save the script, run a task through fetch and process, show what came out. */
"use strict";

(() => {
  const {api, el, toast, url} = SF;
  const root = document.getElementById("debugger");
  const project = root.dataset.project;
  const editable = root.dataset.editable === "true";
  const script = document.getElementById("script");
  const taskBox = document.getElementById("task-box");
  const runButton = document.getElementById("run");
  const runStatus = document.getElementById("run-status");
  const saveStatus = document.getElementById("save-status");
  let savedScript = script.value;
  let editor = null;

  /* -- the editor ------------------------------------------------------------------------- */
  const scriptText = () => (editor ? editor.getValue() : script.value);

  function dirty() {
    const changed = scriptText() !== savedScript;
    saveStatus.textContent = changed ? "unsaved changes" : saveStatus.dataset.saved || "";
    document.body.classList.toggle("unsaved", changed);
  }

  async function save() {
    if (!editable) { toast("this project is locked: read-only", "error"); return; }
    const text = scriptText();
    saveStatus.textContent = "saving...";
    try {
      const answer = await api("PATCH", url`/api/projects/${project}`, {script: text});
      savedScript = text;
      saveStatus.dataset.saved = `saved ${new Date().toLocaleTimeString()}`;
      document.getElementById("project-status").textContent = answer.project.status;
      for (const note of answer.notes || []) toast(note, "info");
      if (!(answer.notes || []).length) toast("saved", "ok");
      markErrors((answer.notes || []).map(compileErrorLine));
    } catch (error) {
      toast(`not saved: ${error.message}`, "error");
    }
    dirty();
  }

  /* The script's lines that an error names: a traceback's innermost frame in the script
     (`File "<project NAME>", line N`), or a Save note's "does not compile (line N): ...". */
  const frame = new RegExp(`File "<project ${project}>", line (\\d+)`, "g");   // names are [A-Za-z0-9_-]

  function tracebackLine(text) {
    const lines = [...String(text || "").matchAll(frame)];
    if (!lines.length) return null;
    const last = String(text).trim().split("\n").pop();
    return {line: Number(lines[lines.length - 1][1]), message: last};
  }

  function compileErrorLine(note) {
    const found = /does not compile \(line (\d+)\): (.*)/.exec(note);
    return found ? {line: Number(found[1]), message: found[2]} : null;
  }

  function markErrors(errors) {
    editor.clearErrors();
    for (const error of errors) if (error) editor.markError(error.line, error.message);
    root.dataset.errorLines = editor.errorLines().join(" ");
  }

  editor = SFEditor.attach(script, document.getElementById("gutter"),
                           {onSave: save, onRun: () => run(), onChange: dirty});
  root.dataset.editor = editor.kind;
  savedScript = scriptText();
  document.getElementById("save").addEventListener("click", save);
  window.addEventListener("beforeunload", (event) => {
    if (scriptText() !== savedScript) event.preventDefault();
  });

  /* -- tabs ----------------------------------------------------------------------------------- */
  function showTab(name) {
    for (const tab of document.querySelectorAll(".tabs [data-tab]")) {
      tab.classList.toggle("active", tab.dataset.tab === name);
    }
    for (const panel of document.querySelectorAll(".tab-panel")) {
      panel.classList.toggle("active", panel.id === `tab-${name}`);
    }
  }
  for (const tab of document.querySelectorAll(".tabs [data-tab]")) {
    tab.addEventListener("click", () => showTab(tab.dataset.tab));
  }

  /* -- showing a run --------------------------------------------------------------------------- */
  const escapeHtml = (text) => String(text).replace(/[&<>"']/g,
    (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const pretty = (value) => JSON.stringify(value, null, 2);

  function setCount(id, n) {
    document.getElementById(id).textContent = n ? String(n) : "";
  }

  function showPage(fetched) {
    const frame = document.getElementById("page-frame");
    const info = document.getElementById("page-info");
    if (!fetched) {
      frame.srcdoc = "";
      info.textContent = "Nothing was fetched.";
      return;
    }
    const type = (fetched.content_type || "").toLowerCase();
    const isHtml = type.includes("html") || (!type && /^\s*</.test(fetched.text));
    info.textContent = `${fetched.status_code} ${fetched.url}` + (type ? ` (${type})` : "") +
      (fetched.text_truncated ? ", shown cut short" : "");
    // the iframe is sandboxed without allow-scripts: the page's scripts never run
    // relative links and images resolve against the page's own address (http and https only)
    const base = /^https?:/i.test(fetched.url) ? `<base href="${escapeHtml(fetched.url)}" target="_blank">` : "";
    frame.srcdoc = isHtml
      ? base + fetched.text
      : `<pre style="white-space:pre-wrap">${escapeHtml(fetched.text)}</pre>`;
  }

  function followItem(task) {
    const fetch = task.fetch || {};
    const callback = (task.process || {}).callback || "";
    return el("li", {class: "follow"},
      el("button", {type: "button", class: "run-follow", title: "load this task into the task box and run it",
                    onclick: () => { taskBox.value = pretty(task); run(); }}, "run"),
      " ",
      el("span", {class: "method"}, fetch.method || "GET"), " ",
      el("span", {class: "follow-url"}, task.url), " ",
      callback ? el("span", {class: "callback"}, `→ ${callback}`) : null);
  }

  function show(report) {
    const fetched = report.fetch_result;
    const exception = document.getElementById("exception");
    exception.hidden = !report.exception;
    document.getElementById("exception-text").textContent = report.exception || "";
    document.getElementById("exception-title").textContent =
      report.limit ? `The run hit its ${report.limit} limit` : "The callback failed";
    markErrors([tracebackLine(report.exception)]);
    showPage(fetched);
    document.getElementById("html-source").textContent = fetched ? fetched.text : "";
    const follows = document.getElementById("follows");
    follows.replaceChildren(...report.follows.map(followItem));
    if (!report.follows.length) follows.append(el("li", {class: "muted"}, "no follows"));
    document.getElementById("results").textContent =
      report.results.length ? report.results.map(pretty).join("\n\n") : "no results";
    document.getElementById("messages").textContent =
      report.messages.length ? report.messages.map(pretty).join("\n\n") : "no messages";
    document.getElementById("logs").textContent = report.logs.length ? report.logs.join("\n") : "no logs";
    setCount("follows-count", report.follows.length);
    setCount("results-count", report.results.length);
    setCount("messages-count", report.messages.length);
    setCount("logs-count", report.logs.length);
    const parts = [];
    if (fetched) parts.push(`${fetched.status_code} in ${fetched.time.toFixed(2)} s`);
    const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
    parts.push(plural(report.follows.length, "follow"), plural(report.results.length, "result"));
    if (report.exception) parts.push("the callback failed");
    runStatus.textContent = parts.join(", ");
    runStatus.className = report.ok ? "ok" : "failed";
    root.dataset.runs = String(Number(root.dataset.runs || 0) + 1);
    if (report.exception) showTab("logs");
    else if (report.follows.length && !report.results.length) showTab("follows");
    else if (report.results.length) showTab("results");
  }

  async function run() {
    if (!editable) { toast("this project is locked: it cannot be debugged without logging in", "error"); return; }
    let task;
    try {
      task = JSON.parse(taskBox.value);
    } catch (error) {
      toast(`the task is not JSON: ${error.message}`, "error");
      return;
    }
    runButton.disabled = true;
    markErrors([]);
    runStatus.className = "muted";
    runStatus.textContent = "running...";
    try {
      show(await api("POST", url`/api/debug/${project}`, {task, script: scriptText()}));
    } catch (error) {
      runStatus.textContent = "";
      toast(error.message, "error");
    } finally {
      runButton.disabled = false;
    }
  }

  runButton.addEventListener("click", run);
  taskBox.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter") { event.preventDefault(); run(); }
  });
})();
