// Markdown for model output: marked to HTML, DOMPurify over every string that becomes HTML, highlight.js on code
// blocks and a copy button on each. Model output is untrusted: raw HTML in it is shown as text, images become links
// (a remote image would load, and could carry the conversation out in its URL), and links open in a new tab.

import { Marked } from "./vendor/marked.js";
import DOMPurify from "./vendor/purify.js";
import hljs from "./vendor/highlight.js";

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

const marked = new Marked({
  gfm: true,
  renderer: {
    html({ text, block }) {
      return block ? `<p class="raw-html">${escapeHtml(text)}</p>` : escapeHtml(text);
    },
    image({ href, text }) {
      return `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`;
    },
  },
});

const PURIFY = {
  USE_PROFILE: { html: true },
  FORBID_TAGS: ["style", "img", "picture", "source", "video", "audio", "iframe", "form", "button", "textarea", "select"],
  FORBID_ATTR: ["style"],
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

/** The sanitized HTML of a Markdown text. */
export function markdownToHtml(text) {
  return DOMPurify.sanitize(marked.parse(text), PURIFY);
}

/**
 * Renders `text` into `element`. While streaming (`final: false`) only blocks that name their language are highlighted:
 * guessing the language of a long block on every update would cost more than the model's own decoding.
 */
export function renderMarkdown(element, text, { final = true } = {}) {
  element.innerHTML = markdownToHtml(text);
  for (const code of element.querySelectorAll("pre > code")) decorateCode(code, final);
}

function decorateCode(code, final) {
  const language = [...code.classList].find((c) => c.startsWith("language-"))?.slice("language-".length);
  const known = language && hljs.getLanguage(language);
  if (known || (final && !language)) {
    const result = known ? hljs.highlight(code.textContent, { language, ignoreIllegals: true }) : hljs.highlightAuto(code.textContent);
    // highlight.js escapes the code it returns; sanitizing again keeps "every HTML through DOMPurify" without exception.
    code.innerHTML = DOMPurify.sanitize(result.value, PURIFY);
    code.classList.add("hljs");
  }
  const pre = code.parentElement;
  const wrap = document.createElement("div");
  wrap.className = "code-block";
  const bar = document.createElement("div");
  bar.className = "code-bar";
  const name = document.createElement("span");
  name.textContent = known?.name ?? language ?? "code";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy-code";
  copy.textContent = "Copy";
  copy.setAttribute("aria-label", "Copy code");
  bar.append(name, copy);
  pre.replaceWith(wrap);
  wrap.append(bar, pre);
}

/** Clipboard API where the page is a secure context (localhost is); a hidden textarea elsewhere (http on a LAN). */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      // permission refused: fall through to the old way
    }
  }
  const area = Object.assign(document.createElement("textarea"), { value: text, readOnly: true });
  area.className = "offscreen";
  document.body.append(area);
  area.select();
  const ok = document.execCommand("copy");
  area.remove();
  return ok;
}
