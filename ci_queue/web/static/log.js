// A job's log, live: the lines there are come in JSON pages of the API, then new ones arrive by
// Server-Sent Events (the API's stream, which resumes where it stopped after a reconnect); all
// are rendered in batches, one animation frame at a time, so a 4 MiB log paints its first lines
// at once and never inserts 100,000 nodes in one go. Lines go
// into chunks with `content-visibility: auto`, so the browser lays out only what is on screen.
// GitLab's collapsible sections (section_start / section_end) fold; every line has an anchor.
"use strict";

(() => {
  const CHUNK_LINES = 500;
  const FIRST_PAGE = 500;  // a small first read: the top of the log paints at once
  const PAGE = 10000;  // then the API's largest pages
  const FRAME_BUDGET_MS = 12;
  const SECTION = /^(?:\x1b\[0K)?section_(start|end):(\d+):([A-Za-z0-9_.\-]+)(?:\[([^\]]*)\])?\r(?:\x1b\[0K)?/;

  function start() {
    const log = document.getElementById("log");
    if (!log) return;
    const state = document.getElementById("log-state");
    const follow = document.getElementById("follow");
    const pending = [];
    const ansi = CiqAnsi.newState();
    const root = {body: log, chunk: null, count: 0};
    const stack = [];  // open sections: {name, el, body, chunk, count, started}
    let number = 0, scheduled = false, ended = null, targetSeen = false, caughtUp = false;
    const target = /^#L(\d+)$/.exec(location.hash);
    if (target) follow.checked = false;

    function container() {
      const box = stack.length ? stack[stack.length - 1] : root;
      if (!box.chunk || box.count >= CHUNK_LINES) {
        box.chunk = document.createElement("div");
        box.chunk.className = "chunk";
        box.body.append(box.chunk);
        box.count = 0;
      }
      box.count += 1;
      return box.chunk;
    }

    function lineElement(fields, text) {
      number += 1;
      const row = document.createElement("div");
      row.className = `ln ${fields.stream === "system" ? "sys" : fields.stream === "err" ? "err" : ""}`;
      row.id = `L${number}`;
      const anchor = document.createElement("a");
      anchor.className = "n";
      anchor.href = `#L${number}`;
      anchor.textContent = number;
      const ts = document.createElement("span");
      ts.className = "ts";
      ts.textContent = (fields.ts || "").slice(11, 23);
      row.title = fields.ts || "";
      const tx = document.createElement("span");
      tx.className = "tx";
      tx.append(CiqAnsi.render(text, ansi));
      row.append(anchor, ts, tx);
      return row;
    }

    function openSection(name, options, started, fields, header) {
      const el = document.createElement("div");
      el.className = "sec";
      el.dataset.section = name;
      const head = lineElement(fields, header || name);
      head.classList.add("sec-head");
      const body = document.createElement("div");
      body.className = "sec-body";
      container().append(el);
      el.append(head, body);
      if (/collapsed=true/.test(options || "")) el.classList.add("closed");
      stack.push({name, el, body, chunk: null, count: 0, started, head});
    }

    function closeSection(name, ended) {
      const at = stack.map(s => s.name).lastIndexOf(name);
      if (at < 0) return;
      const section = stack[at];
      stack.length = at;  // closes sections left open inside it too
      const seconds = Math.max(0, ended - section.started);
      const dur = document.createElement("span");
      dur.className = "sec-dur";
      dur.textContent = seconds >= 60 ? `${Math.floor(seconds / 60)}m ${seconds % 60}s` : `${seconds}s`;
      section.head.querySelector(".tx").append(dur);
    }

    function add(fields) {
      let text = fields.text || "";
      let marker = SECTION.exec(text);
      while (marker) {
        const [whole, kind, time, name, options] = marker;
        text = text.slice(whole.length);
        if (kind === "start") { openSection(name, options, Number(time), fields, text); return; }
        closeSection(name, Number(time));
        if (!text) return;
        marker = SECTION.exec(text);
      }
      container().append(lineElement(fields, text));
    }

    function flush() {
      scheduled = false;
      const began = performance.now();
      while (pending.length && performance.now() - began < FRAME_BUDGET_MS) {
        for (const fields of pending.splice(0, 200)) add(fields);
      }
      if (pending.length) schedule();
      else if (ended) state.textContent = `${number} lines · job ${ended}`;
      if (target && !targetSeen && number >= Number(target[1])) {
        targetSeen = true;
        document.getElementById(`L${target[1]}`)?.scrollIntoView({block: "center"});
      }
      // following: to the end once what was there is painted, then with each live batch (never on
      // every frame of a long history: each jump lays the page out again)
      if (follow.checked && caughtUp && !pending.length) window.scrollTo(0, document.body.scrollHeight);
    }

    function schedule() {
      if (!scheduled) { scheduled = true; requestAnimationFrame(flush); }
    }

    // What is there already comes in pages of JSON (one request per 10,000 lines, not an event per
    // line); then the live stream goes on from where the last page ended.
    async function history() {
      let offset = "-", limit = FIRST_PAGE;
      for (;;) {
        const url = new URL(log.dataset.lines, location.href);
        url.searchParams.set("offset", offset);
        url.searchParams.set("limit", limit);
        limit = PAGE;
        const response = await fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}});
        if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
        const page = await response.json();
        if (page.lines.length) { pending.push(...page.lines); schedule(); }
        if (page.next_offset === offset) return offset;
        offset = page.next_offset;
        state.textContent = `loading… ${pending.length + number} lines`;
      }
    }

    function live(offset) {
      caughtUp = true;
      schedule();
      const url = new URL(log.dataset.stream, location.href);
      url.searchParams.set("offset", offset);
      const source = new EventSource(url, {withCredentials: true});
      source.addEventListener("open", () => { if (!ended) state.textContent = "live"; });
      source.addEventListener("line", (event) => {
        pending.push(JSON.parse(event.data));
        schedule();
      });
      source.addEventListener("end", (event) => {
        source.close();
        ended = JSON.parse(event.data).status || "over";
        const badge = document.querySelector("#job-status .badge");
        if (badge) {
          badge.className = `badge st-${ended}`;
          badge.lastChild.textContent = ended;
        }
        log.dataset.ended = ended;
        schedule();
      });
      source.addEventListener("error", () => {
        if (!ended) state.textContent = source.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting…";
      });
    }

    history().then(live, (error) => { state.textContent = `the log could not be read: ${error.message}`; });

    log.addEventListener("click", (event) => {
      const head = event.target.closest(".sec-head");
      if (head && !event.target.closest("a")) head.parentElement.classList.toggle("closed");
    });
    document.getElementById("show-ts").addEventListener("change", (e) => log.classList.toggle("with-ts", e.target.checked));
    document.getElementById("to-end").addEventListener("click", () => { follow.checked = true; window.scrollTo(0, document.body.scrollHeight); });
    document.getElementById("to-top").addEventListener("click", () => { follow.checked = false; window.scrollTo(0, 0); });
    window.addEventListener("wheel", (e) => { if (e.deltaY < 0) follow.checked = false; }, {passive: true});

    const files = document.getElementById("artifact-files");
    if (files) listArtifacts(files);
  }

  async function listArtifacts(list) {
    try {
      const response = await fetch(list.dataset.src, {credentials: "same-origin"});
      const body = await response.json();
      if (!response.ok) throw new Error(body.error || response.statusText);
      for (const file of body.files.filter(f => f.type === "file")) {
        const item = document.createElement("li");
        const link = document.createElement("a");
        link.href = list.dataset.file + file.path.split("/").map(encodeURIComponent).join("/");
        link.textContent = file.path;
        const size = document.createElement("span");
        size.className = "muted";
        size.textContent = ` ${(file.size / 1024).toFixed(1)} KiB`;
        item.append(link, size);
        list.append(item);
      }
    } catch (error) {
      list.textContent = `The file list could not be read: ${error.message}`;
    }
  }

  document.addEventListener("DOMContentLoaded", start);
})();
