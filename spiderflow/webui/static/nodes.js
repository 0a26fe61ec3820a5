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
