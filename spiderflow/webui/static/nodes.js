/* The Nodes page: every few seconds, the components and nodes sections (their charts included)
   are taken from a fresh copy of the page, rendered and escaped by the server; no script runs from it. */
"use strict";

(() => {
  const card = document.getElementById("nodes-card");
  const seconds = Number(card && card.dataset.refresh) || 0;
  if (!card || seconds <= 0) return;
  let busy = false;

  async function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const response = await fetch(window.location.pathname, {
        credentials: "same-origin", headers: {"X-Requested-With": "spiderflow"}, redirect: "manual",
      });
      if (!response.ok) return;                      // logged out, or the server is gone: keep what is shown
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const id of ["components", "nodes-card"]) {
        const now = document.getElementById(id);
        const next = fresh.getElementById(id);
        if (now && next) now.replaceWith(document.importNode(next, true));
      }
      document.body.dataset.refreshed = String(Date.now());
    } catch (e) {
      /* a failed refresh leaves the page as it was; the next one tries again */
    } finally {
      busy = false;
    }
  }

  document.body.dataset.refreshed = String(Date.now());
  window.setInterval(refresh, seconds * 1000);
})();

/* The control buttons of each online node (spiderflow control ping / shutdown / pool-grow / pool-shrink),
   by delegation: the rows are replaced at every refresh. */
(() => {
  const ARGS = {pool_grow: {n: 10}, pool_shrink: {n: 10}};

  function summary(reply) {
    if (reply && typeof reply === "object") {
      if ("error" in reply) return "error: " + reply.error;
      if ("ok" in reply) {
        const extra = reply["max-concurrency"] !== undefined ? ` (${reply["max-concurrency"]} slots)` : "";
        const up = reply.uptime !== undefined ? ` (${reply.kind}, pid ${reply.pid}, up ${Math.round(reply.uptime)} s)` : "";
        return String(reply.ok) + extra + up;
      }
    }
    return JSON.stringify(reply);
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-control]");
    if (!button) return;
    const command = button.dataset.control;
    const node = button.dataset.node;
    if (command === "shutdown" && !window.confirm(`Shut down ${button.dataset.name || node}? It finishes the work in hand, then exits.`)) return;
    button.disabled = true;
    try {
      const data = await SF.api("POST", `/api/control/${command}`, {destination: [node], timeout: 2, ...(ARGS[command] || {})});
      const replies = Object.entries(data.replies || {});
      if (!replies.length) SF.toast(`${command}: no reply from the node within 2 s`, "error");
      else SF.toast(replies.map(([name, reply]) => `${name}: ${summary(reply)}`).join("; "),
                    replies.some(([, r]) => r && r.error) ? "error" : "info");
    } catch (e) {
      SF.toast(`${command}: ${e.message}`, "error");
    } finally {
      button.disabled = false;
    }
  });
})();
