/* spiderflow web UI: what every page shares. No dependencies; data is only ever set as text. */
"use strict";

const SF = (() => {
  const xsrf = () => {
    const meta = document.querySelector('meta[name="xsrf"]');
    return meta ? meta.content : "";
  };

  /* Call the JSON API; throws an Error carrying the server's {"error": message}. */
  async function api(method, path, body) {
    const headers = {"Accept": "application/json", "X-Requested-With": "spiderflow"};
    const options = {method, headers, credentials: "same-origin"};
    if (method !== "GET" && method !== "HEAD") headers["X-XSRFToken"] = xsrf();
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      const error = new Error((data && data.error) || `${response.status} ${response.statusText}`);
      error.status = response.status;
      error.data = data;
      throw error;
    }
    return data;
  }

  /* el("a", {href: "/x", class: "y"}, "text", child) builds DOM; strings become text nodes. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  let toastTimer = null;
  function toast(message, kind) {
    const box = document.getElementById("toast");
    if (!box) return;
    box.textContent = message;
    box.className = "show " + (kind || "info");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { box.className = ""; }, kind === "error" ? 8000 : 3500);
  }

  /* Show the scheduler's state in the header (and the banner) after an API call reported it. */
  function schedulerState(status) {
    if (!status) return;
    const header = document.querySelector("header.top");
    let badge = header && header.querySelector(".sched");
    if (header && !badge) {
      badge = el("span", {class: "sched"});
      const grow = header.querySelector(".grow");
      grow.after(badge);
    }
    if (badge) {
      badge.className = "sched " + (status.reachable ? "ok" : "down");
      badge.textContent = status.reachable ? "scheduler connected" : "scheduler not reachable";
      badge.title = status.reachable ? (status.url || "") : (status.error || "");
    }
    let banner = document.getElementById("scheduler-banner");
    if (!status.reachable) {
      if (!banner) {
        banner = el("div", {class: "banner warn", id: "scheduler-banner"});
        document.querySelector("main").before(banner);
      }
      banner.textContent = "The scheduler is not reachable" + (status.error ? ` (${status.error})` : "") +
        ": this page shows what the databases say; running projects and live counters need it.";
    } else if (banner) {
      banner.remove();
    }
  }

  const url = (strings, ...values) =>
    strings.reduce((out, s, i) => out + s + (i < values.length ? encodeURIComponent(values[i]) : ""), "");

  return {api, el, toast, schedulerState, url};
})();
