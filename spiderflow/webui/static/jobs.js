/* The Jobs page: schedule and cancel through /api/jobs; every few seconds the jobs card is taken
   from a fresh copy of the page, rendered and escaped by the server; no script runs from it. */
"use strict";

(() => {
  const seconds = Number((document.getElementById("jobs-card") || {dataset: {}}).dataset.refresh) || 0;
  let busy = false;

  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      const response = await fetch(window.location.pathname, {
        credentials: "same-origin", headers: {"X-Requested-With": "spiderflow"}, redirect: "manual",
      });
      if (!response.ok) return;                      // logged out, or the server is gone: keep what is shown
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      const now = document.getElementById("jobs-card");
      const next = fresh.getElementById("jobs-card");
      if (now && next) now.replaceWith(document.importNode(next, true));
      document.body.dataset.refreshed = String(Date.now());
    } catch (e) {
      /* a failed refresh leaves the page as it was; the next one tries again */
    } finally {
      busy = false;
    }
  }

  /* Cancel buttons: the card is replaced on refresh, so listen on the document. */
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button.cancel-job");
    if (!button) return;
    const job = button.dataset.job;
    if (!window.confirm(`Cancel job ${job}?`)) return;
    button.disabled = true;
    try {
      const data = await SF.api("POST", SF.url`/api/jobs/${job}/cancel`);
      SF.toast(data.prevstate === "running" ? `job ${job}: cancel requested; the scheduler stops it`
        : `job ${job} cancelled (it was ${data.prevstate})`);
    } catch (e) {
      SF.toast(e.message, "error");
    }
    await refresh();
  });

  function pairs(text) {
    const out = {};
    for (const line of text.split("\n")) {
      const item = line.trim();
      if (!item) continue;
      const at = item.indexOf("=");
      if (at < 1) throw new Error(`not NAME=VALUE: ${item}`);
      out[item.slice(0, at).trim()] = item.slice(at + 1);
    }
    return out;
  }

  const form = document.getElementById("schedule-form");
  if (form) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = document.getElementById("schedule-button");
      button.disabled = true;
      try {
        const body = {project: form.elements.project.value, priority: Number(form.elements.priority.value || 0),
                      args: pairs(form.elements.args.value)};
        if (form.elements.spider.value.trim()) body.spider = form.elements.spider.value.trim();
        if (form.elements.jobid.value.trim()) body.jobid = form.elements.jobid.value.trim();
        const data = await SF.api("POST", "/api/jobs", body);
        SF.toast(`job ${data.job.id} of ${data.job.project} scheduled`);
        form.elements.jobid.value = "";
        await refresh();
      } catch (e) {
        SF.toast(e.message, "error");
      } finally {
        button.disabled = false;
      }
    });
  }

  document.body.dataset.refreshed = String(Date.now());
  if (seconds > 0) window.setInterval(() => { if (!document.hidden) refresh(); }, seconds * 1000);
})();
