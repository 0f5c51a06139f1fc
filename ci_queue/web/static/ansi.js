// A small renderer of ANSI SGR colours for job logs (what CI output uses: bold, dim, italic,
// underline, strike, 16 / 256 / 24-bit colours). Every other escape sequence is dropped: cursor
// movement and erasing (CSI), OSC (titles, OSC-8 hyperlinks: their text stays, as plain text),
// other ESC sequences and C0 control characters. Output is text nodes in spans: a log line can
// never become markup or a link. Tested in a real browser (tests/web/browser/test_ansi.py).
"use strict";

const CiqAnsi = (() => {
  const newState = () => ({bold: false, dim: false, italic: false, underline: false, strike: false, fg: null, bg: null});

  // one 256-colour palette entry -> a class (0-15) or an rgb() string
  function xterm(n) {
    if (n < 16) return n;
    if (n < 232) {
      const v = [0, 95, 135, 175, 215, 255], i = n - 16;
      return `rgb(${v[Math.floor(i / 36)]},${v[Math.floor(i / 6) % 6]},${v[i % 6]})`;
    }
    const g = 8 + (n - 232) * 10;
    return `rgb(${g},${g},${g})`;
  }

  function extended(params, i) {
    // 38;5;n or 38;2;r;g;b (and 48;...): returns [colour, next index]
    if (params[i + 1] === 5 && params[i + 2] !== undefined) return [xterm(Math.min(255, params[i + 2])), i + 3];
    if (params[i + 1] === 2 && params[i + 4] !== undefined) {
      const [r, g, b] = params.slice(i + 2, i + 5).map(v => Math.min(255, v));
      return [`rgb(${r},${g},${b})`, i + 5];
    }
    return [null, params.length];
  }

  function sgr(state, raw) {
    const params = raw === "" ? [0] : raw.split(/[;:]/).map(p => (p === "" ? 0 : parseInt(p, 10) || 0));
    for (let i = 0; i < params.length;) {
      const p = params[i];
      if (p === 0) Object.assign(state, newState());
      else if (p === 1) state.bold = true;
      else if (p === 2) state.dim = true;
      else if (p === 3) state.italic = true;
      else if (p === 4) state.underline = true;
      else if (p === 9) state.strike = true;
      else if (p === 22) state.bold = state.dim = false;
      else if (p === 23) state.italic = false;
      else if (p === 24) state.underline = false;
      else if (p === 29) state.strike = false;
      else if (p >= 30 && p <= 37) state.fg = p - 30;
      else if (p === 39) state.fg = null;
      else if (p >= 40 && p <= 47) state.bg = p - 40;
      else if (p === 49) state.bg = null;
      else if (p >= 90 && p <= 97) state.fg = p - 90 + 8;
      else if (p >= 100 && p <= 107) state.bg = p - 100 + 8;
      else if (p === 38 || p === 48) {
        const [colour, next] = extended(params, i);
        if (colour !== null) state[p === 38 ? "fg" : "bg"] = colour;
        i = next;
        continue;
      }
      i += 1;
    }
  }

  // ESC [ params final | ESC ] ... (BEL | ESC \) | ESC x | other C0 controls (not TAB)
  const TOKEN = /\x1b\[([0-9;:?<=>]*)[ -\/]*([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\|$)|\x1b[()*+][ -~]|\x1b[@-Z\\-_]?|[\x00-\x08\x0b-\x1f\x7f]/g;

  // [{text, state}] of one line, the state carried on (colours span lines, as in a terminal)
  function parse(text, state = newState()) {
    const cr = text.lastIndexOf("\r");
    if (cr >= 0) text = text.slice(cr + 1);  // a carriage return redraws the line: keep what was drawn last
    const parts = [];
    let last = 0, match;
    TOKEN.lastIndex = 0;
    while ((match = TOKEN.exec(text)) !== null) {
      if (match.index > last) parts.push({text: text.slice(last, match.index), state: {...state}});
      if (match[2] === "m") sgr(state, match[1]);
      last = TOKEN.lastIndex;
    }
    if (last < text.length) parts.push({text: text.slice(last), state: {...state}});
    return parts;
  }

  function classes(s) {
    const list = [];
    if (s.bold) list.push("b");
    if (s.dim) list.push("d");
    if (s.italic) list.push("i");
    if (s.underline) list.push("u");
    if (s.strike) list.push("s");
    if (typeof s.fg === "number") list.push(`fg${s.fg}`);
    if (typeof s.bg === "number") list.push(`bg${s.bg}`);
    return list;
  }

  // the line as nodes to append: text nodes, in spans where it has a style
  function render(text, state = newState()) {
    const fragment = document.createDocumentFragment();
    for (const part of parse(text, state)) {
      const list = classes(part.state);
      const styled = list.length || typeof part.state.fg === "string" || typeof part.state.bg === "string";
      if (!styled) { fragment.append(part.text); continue; }
      const span = document.createElement("span");
      if (list.length) span.className = list.join(" ");
      if (typeof part.state.fg === "string") span.style.color = part.state.fg;
      if (typeof part.state.bg === "string") span.style.backgroundColor = part.state.bg;
      span.textContent = part.text;
      fragment.append(span);
    }
    return fragment;
  }

  const strip = text => parse(text).map(p => p.text).join("");
  return {newState, parse, render, strip, classes};
})();
