// The farm page's queue table, from GET /api/v1/queues (rendered here as text cells); when that
// answers an error, a note says the depths are unavailable.
"use strict";

(() => {
  const COLUMNS = [["queue", "Queue"], ["tags", "Tags"], ["waiting", "Waiting"], ["held", "Held"],
    ["in_broker", "In broker"], ["running", "Running"], ["workers", "Workers"], ["oldest_wait_seconds", "Oldest wait"]];

  function wait(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds < 60) return `${Math.round(seconds)}s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${Math.round(seconds % 60)}s`;
    return `${Math.floor(seconds / 3600)}h ${Math.floor(seconds % 3600 / 60)}m`;
  }

  function cell(row, key) {
    const td = document.createElement("td");
    const value = row[key];
    if (key === "tags") {
      if (!value || !value.length) { td.className = "muted"; td.textContent = "untagged"; }
      for (const tag of value || []) {
        const span = document.createElement("span");
        span.className = "tag";
        span.textContent = tag;
        td.append(span);
      }
    } else if (key === "oldest_wait_seconds") {
      td.textContent = wait(value);
    } else {
      td.textContent = value ?? "";
      if (typeof value === "number") td.className = "num";
      if (key === "queue") td.className = "mono";
    }
    return td;
  }

  async function load(box) {
    let response;
    try {
      response = await fetch(box.dataset.src, {credentials: "same-origin", headers: {"Accept": "application/json"}});
    } catch {
      return;  // away for a moment: the next tick tries again
    }
    const note = (text) => {
      const p = document.createElement("p");
      p.className = "muted";
      p.id = "queues-unavailable";
      p.textContent = text;
      box.replaceChildren(p);
    };
    if (!response.ok) { note(`Queue depths are unavailable right now (${response.status}).`); return; }
    const body = await response.json();
    const table = document.createElement("table");
    table.className = "queues";
    table.id = "queues-table";
    const head = table.createTHead().insertRow();
    for (const [, label] of COLUMNS) {
      const th = document.createElement("th");
      th.textContent = label;
      head.append(th);
    }
    const tbody = table.createTBody();
    for (const row of body.queues || []) {
      const tr = tbody.insertRow();
      tr.dataset.queue = row.queue;
      for (const [key] of COLUMNS) tr.append(cell(row, key));
    }
    if (!(body.queues || []).length) {
      const td = tbody.insertRow().insertCell();
      td.colSpan = COLUMNS.length;
      td.className = "empty";
      td.textContent = "No queue has work or workers.";
    }
    box.replaceChildren(table);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const box = document.getElementById("queues");
    if (!box) return;
    load(box);
    setInterval(() => { if (!document.hidden) load(box); }, 3000);
  });
})();
