// ci-queue pages: live regions, buttons that call the API, relative times, the pipeline's edges.
// Plain modern JavaScript, no build step. Content from runs is only ever inserted as text (or as
// HTML the server rendered and escaped), never assembled into markup here.
"use strict";

const ciq = (() => {
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

  function toast(message, bad = false) {
    const box = document.getElementById("toast");
    if (!box) return;
    box.textContent = message;
    box.classList.toggle("bad", bad);
    box.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { box.hidden = true; }, 5000);
  }

  async function post(url) {
    const response = await fetch(url, {method: "POST", credentials: "same-origin",
      headers: {"X-CSRF-Token": csrf(), "Accept": "application/json"}});
    let body = {};
    try { body = await response.json(); } catch { /* not JSON: keep the status */ }
    if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
    return body;
  }

  function ago(date) {
    const seconds = Math.round((Date.now() - date.getTime()) / 1000);
    if (seconds < 5) return "just now";
    if (seconds < 60) return `${seconds}s ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
    return date.toLocaleDateString(undefined, {year: "numeric", month: "short", day: "numeric"});
  }

  function humanTimes(root = document) {
    for (const el of root.querySelectorAll("time[datetime]")) {
      const date = new Date(el.getAttribute("datetime"));
      if (Number.isNaN(date.getTime())) continue;
      el.textContent = ago(date);
      el.title = date.toLocaleString();
    }
  }

  // A live region re-fetches the fragment of its own page and swaps it in.
  function liveRegion(container, target, intervalMs) {
    const url = new URL(container.dataset.live, location.href);
    url.searchParams.set("fragment", "1");
    let busy = false;
    async function refresh() {
      if (busy || document.hidden) return;
      busy = true;
      try {
        const response = await fetch(url, {credentials: "same-origin", headers: {"Accept": "text/html"}});
        if (response.status === 401 || response.redirected) { location.reload(); return; }
        if (response.ok) {
          target.innerHTML = await response.text();
          humanTimes(target);
          document.dispatchEvent(new CustomEvent("ciq:updated", {detail: target}));
        }
      } catch { /* the server is away for a moment: the next tick tries again */ }
      finally { busy = false; }
    }
    setInterval(refresh, intervalMs);
    return refresh;
  }

  // needs edges: from the right side of each needed job to the left side of the job needing it
  function drawEdges() {
    const pipeline = document.getElementById("pipeline");
    const svg = pipeline?.querySelector("svg.edges");
    if (!svg) return;
    svg.replaceChildren();
    const box = pipeline.getBoundingClientRect();
    svg.setAttribute("width", pipeline.scrollWidth);
    svg.setAttribute("height", pipeline.scrollHeight);
    const byName = new Map([...pipeline.querySelectorAll(".job[data-job]")].map(el => [el.dataset.job, el]));
    for (const [, el] of byName) {
      let needs = [];
      try { needs = JSON.parse(el.dataset.needs || "[]"); } catch { needs = []; }
      for (const name of needs) {
        const from = byName.get(name);
        if (!from) continue;
        const a = from.getBoundingClientRect(), b = el.getBoundingClientRect();
        const x1 = a.right - box.left + pipeline.scrollLeft, y1 = a.top + a.height / 2 - box.top;
        const x2 = b.left - box.left + pipeline.scrollLeft, y2 = b.top + b.height / 2 - box.top;
        const mid = (x1 + x2) / 2;
        const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
        path.setAttribute("d", `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`);
        path.dataset.from = name;
        path.dataset.to = el.dataset.job;
        svg.append(path);
      }
    }
  }

  function start() {
    humanTimes();
    setInterval(() => humanTimes(), 30000);
    const refreshers = [];
    const runs = document.getElementById("runs");
    if (runs?.dataset.live) refreshers.push(liveRegion(runs, document.getElementById("runs-rows"), 3000));
    const run = document.getElementById("run-live");
    if (run) refreshers.push(liveRegion(run, run, 1500));
    const workers = document.getElementById("workers");
    if (workers) refreshers.push(liveRegion(workers, document.getElementById("workers-rows"), 3000));
    drawEdges();
    document.addEventListener("ciq:updated", drawEdges);
    window.addEventListener("resize", drawEdges);

    document.addEventListener("click", async (event) => {
      const button = event.target.closest("button[data-action]");
      if (!button) return;
      event.preventDefault();
      if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
      button.disabled = true;
      try {
        const body = await post(button.dataset.action);
        toast(body.retried ? `Retrying ${body.retried.join(", ")}` : body.job ? `Started ${body.job}`
          : `Run is ${body.status}`);
      } catch (error) {
        toast(error.message, true);
        button.disabled = false;
      }
      for (const refresh of refreshers) refresh();
    });
  }

  return {post, toast, humanTimes, drawEdges, start};
})();

document.addEventListener("DOMContentLoaded", ciq.start);
