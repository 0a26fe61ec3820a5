/* The script editor: CodeMirror 5 (vendored, see static/vendor/) on a <textarea>, or the plain
   textarea with line numbers when CodeMirror did not load. Both keep the textarea's value current
   and offer the same object: getValue, setValue, focus, markError, clearErrors, errorLines.

   Keys: Tab / Shift-Tab indent and dedent, Enter auto-indents, Ctrl-S saves, Ctrl-Enter runs,
   Ctrl-F finds (Enter or Ctrl-G / F3 the next match, Shift-Ctrl-G / Shift-F3 the previous),
   Shift-Ctrl-F replaces, Alt-G jumps to a line, Esc then Tab (or Shift-Tab) leaves the editor. */
"use strict";

const SFEditor = (() => {
  const INDENT = "    ";

  /* -- the plain textarea ------------------------------------------------------------------- */
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

  function plain(textarea, gutter, opts) {
    let lines = 0;
    let escaped = false;
    const errors = new Map();     // line number -> message

    function numbers(force) {
      const count = textarea.value.split("\n").length;
      if (count !== lines || force) {
        lines = count;
        const out = [];
        for (let i = 1; i <= count; i++) {
          if (!errors.has(i)) { out.push(`${i}\n`); continue; }
          const mark = document.createElement("span");
          mark.className = "sf-error-gutter";
          mark.title = errors.get(i);
          mark.textContent = `${i}\n`;
          out.push(mark);
        }
        gutter.replaceChildren(...out);
      }
      gutter.scrollTop = textarea.scrollTop;
    }

    textarea.addEventListener("input", () => { numbers(false); if (opts.onChange) opts.onChange(); });
    textarea.addEventListener("scroll", () => { gutter.scrollTop = textarea.scrollTop; });
    textarea.addEventListener("keydown", (event) => {
      const mod = event.ctrlKey || event.metaKey;
      const wasEscaped = escaped;
      escaped = event.key === "Escape" || (wasEscaped && event.key === "Shift");
      if (mod && (event.key === "s" || event.key === "S")) {
        event.preventDefault();
        if (opts.onSave) opts.onSave();
        return;
      }
      if (mod && event.key === "Enter" && opts.onRun) {
        event.preventDefault();
        opts.onRun();
        return;
      }
      if (textarea.readOnly) return;
      if (event.key === "Tab" && !mod && !event.altKey) {
        if (wasEscaped) return;     // Esc, then Tab: the browser moves the focus on
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
    numbers(true);
    return {
      kind: "textarea",
      getValue: () => textarea.value,
      setValue(text) { textarea.value = text; numbers(true); if (opts.onChange) opts.onChange(); },
      focus: () => textarea.focus(),
      markError(line, message) {
        errors.set(Math.min(Math.max(line, 1), textarea.value.split("\n").length), message || "error");
        numbers(true);
      },
      clearErrors() { errors.clear(); numbers(true); },
      errorLines: () => [...errors.keys()].sort((a, b) => a - b),
      refresh: () => numbers(true),
    };
  }

  /* -- CodeMirror ------------------------------------------------------------------------------ */
  function codeMirror(textarea, gutter, opts) {
    const CM = window.CodeMirror;
    let escaped = false;
    let marked = [];              // line handles with an error
    const keys = {
      "Tab": (cm) => {
        if (cm.getOption("readOnly")) return CM.Pass;     // nothing to indent: Tab moves the focus on
        if (cm.somethingSelected() && cm.getSelection().includes("\n")) cm.indentSelection("add");
        else cm.execCommand("insertSoftTab");
      },
      "Shift-Tab": (cm) => (cm.getOption("readOnly") ? CM.Pass : cm.indentSelection("subtract")),
      "F3": "findNext",
      "Shift-F3": "findPrev",
    };
    for (const mod of ["Ctrl", "Cmd"]) {
      keys[`${mod}-S`] = () => { if (opts.onSave) opts.onSave(); };
      keys[`${mod}-Enter`] = () => { if (opts.onRun) opts.onRun(); };
    }
    const cm = CM.fromTextArea(textarea, {
      mode: {name: "python", version: 3, singleLineStringErrors: false},
      lineNumbers: true,
      gutters: ["sf-errors", "CodeMirror-linenumbers"],
      indentUnit: 4,
      tabSize: 4,
      indentWithTabs: false,
      matchBrackets: true,
      styleActiveLine: true,
      readOnly: textarea.readOnly,
      screenReaderLabel: textarea.getAttribute("aria-label") || "script",
      extraKeys: keys,
      viewportMargin: 50,
    });
    gutter.hidden = true;
    textarea.closest(".editor")?.classList.add("has-codemirror");
    // Esc, then Tab or Shift-Tab: CodeMirror lets the browser move the focus out of the editor
    cm.on("keydown", (_cm, event) => {
      if (event.key === "Tab" && escaped) event.codemirrorIgnore = true;
      escaped = event.key === "Escape" || (escaped && event.key === "Shift");
    });
    cm.on("changes", () => {
      cm.save();                  // the textarea holds the script too: forms and tests read it
      if (opts.onChange) opts.onChange();
    });

    function clearErrors() {
      for (const handle of marked) {
        cm.removeLineClass(handle, "wrap", "sf-error-line");
        cm.removeLineClass(handle, "gutter", "sf-error-gutter");
      }
      marked = [];
      cm.clearGutter("sf-errors");
    }

    return {
      kind: "codemirror",
      cm,
      getValue: () => cm.getValue(),
      setValue: (text) => cm.setValue(text),
      focus: () => cm.focus(),
      markError(line, message) {
        const n = Math.min(Math.max(line, 1), cm.lineCount()) - 1;
        const marker = document.createElement("span");
        marker.className = "sf-error-marker";
        marker.title = message || "error";
        marker.textContent = "●";
        marked.push(cm.addLineClass(n, "wrap", "sf-error-line"));
        cm.addLineClass(n, "gutter", "sf-error-gutter");
        cm.setGutterMarker(n, "sf-errors", marker);
        cm.scrollIntoView({line: n, ch: 0}, 60);
      },
      clearErrors,
      errorLines: () => marked.map((handle) => cm.getLineNumber(handle) + 1).filter((n) => n > 0)
        .sort((a, b) => a - b),
      refresh: () => cm.refresh(),
    };
  }

  /** The editor on *textarea* (CodeMirror if it loaded); also kept as ``textarea.sfEditor``. */
  function attach(textarea, gutter, options) {
    const opts = options || {};
    let editor = null;
    if (window.CodeMirror && window.CodeMirror.fromTextArea) {
      try {
        editor = codeMirror(textarea, gutter, opts);
      } catch (error) {
        console.warn("the code editor failed to start, the plain textarea is used:", error);
      }
    }
    editor = editor || plain(textarea, gutter, opts);
    textarea.sfEditor = editor;
    return editor;
  }

  return {attach};
})();
