/* A small code editor on a <textarea>: line numbers, Tab/Shift-Tab indent, auto-indent, Ctrl-S. */
"use strict";

const SFEditor = (() => {
  const INDENT = "    ";

  function insert(textarea, text) {
    textarea.focus();
    // execCommand keeps the browser's undo history; setRangeText is the fallback
    if (!document.execCommand || !document.execCommand("insertText", false, text)) {
      textarea.setRangeText(text, textarea.selectionStart, textarea.selectionEnd, "end");
      textarea.dispatchEvent(new Event("input"));
    }
  }

  function lineStart(value, pos) {
    return value.lastIndexOf("\n", pos - 1) + 1;
  }

  function indentLines(textarea, dedent) {
    const value = textarea.value;
    const start = lineStart(value, textarea.selectionStart);
    let end = textarea.selectionEnd;
    if (end > start && value[end - 1] === "\n") end -= 1;
    const lineEnd = value.indexOf("\n", end);
    const stop = lineEnd === -1 ? value.length : lineEnd;
    const lines = value.slice(start, stop).split("\n");
    const changed = lines.map((line) => {
      if (!dedent) return INDENT + line;
      const spaces = line.match(/^ {0,4}/)[0].length;
      return line.startsWith("\t") ? line.slice(1) : line.slice(spaces);
    }).join("\n");
    textarea.setSelectionRange(start, stop);
    insert(textarea, changed);
    textarea.setSelectionRange(start, start + changed.length);
  }

  function attach(textarea, gutter, options) {
    const opts = options || {};
    let lines = 0;

    function numbers() {
      const count = textarea.value.split("\n").length;
      if (count !== lines) {
        lines = count;
        const out = [];
        for (let i = 1; i <= count; i++) out.push(i);
        gutter.textContent = out.join("\n") + "\n";
      }
      gutter.scrollTop = textarea.scrollTop;
    }

    textarea.addEventListener("input", numbers);
    textarea.addEventListener("scroll", () => { gutter.scrollTop = textarea.scrollTop; });
    textarea.addEventListener("keydown", (event) => {
      const mod = event.ctrlKey || event.metaKey;
      if (mod && (event.key === "s" || event.key === "S")) {
        event.preventDefault();
        if (opts.onSave) opts.onSave();
        return;
      }
      if (textarea.readOnly) return;
      if (event.key === "Tab" && !mod && !event.altKey) {
        event.preventDefault();
        const multi = textarea.value.slice(textarea.selectionStart, textarea.selectionEnd).includes("\n");
        if (event.shiftKey || multi) indentLines(textarea, event.shiftKey);
        else insert(textarea, INDENT);
        return;
      }
      if (event.key === "Enter" && !mod && !event.shiftKey && !event.altKey) {
        const value = textarea.value;
        const pos = textarea.selectionStart;
        const line = value.slice(lineStart(value, pos), pos);
        let indent = line.match(/^[ \t]*/)[0];
        if (/:\s*$/.test(line)) indent += INDENT;
        event.preventDefault();
        insert(textarea, "\n" + indent);
      }
    });
    numbers();
    return {refresh: numbers};
  }

  return {attach};
})();
