// The chat page: conversations, the composer, streaming replies and the settings and template dialogs.
// Rendering rule: user text only ever goes through textContent; model text only through markdown.js (DOMPurify).

import { ApiError, classify, health, listModels, streamChat } from "./api.js";
import { copyText, renderMarkdown } from "./markdown.js";
import * as store from "./store.js";

const SENTIMENT_LABELS = ["positive", "negative"];

const $ = (id) => document.getElementById(id);
const ui = {
  sidebar: $("sidebar"),
  list: $("conversation-list"),
  title: $("chat-title"),
  status: $("status"),
  model: $("model-name"),
  messages: $("messages"),
  empty: $("empty"),
  composer: $("composer"),
  input: $("input"),
  send: $("send"),
  stop: $("stop"),
  thinking: $("thinking"),
  turnInfo: $("turn-info"),
  templateButtons: $("template-buttons"),
  themeToggle: $("theme-toggle"),
  settingsDialog: $("settings-dialog"),
  settingsForm: $("settings-form"),
  templatesDialog: $("templates-dialog"),
  templatesForm: $("templates-form"),
  templateRows: $("template-rows"),
  toast: $("toast"),
};

const state = {
  settings: store.loadSettings(),
  templates: store.loadTemplates(),
  conversation: null, // the one shown; created on the first message
  generation: null, // { controller, conversation, message } while a reply streams
  model: null, // id from /v1/models, sent with each request when known
  classifier: true, // false once /v1/classify answered 404: badges stay hidden
};

// ---------------------------------------------------------------- small helpers

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("aria-") || key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children.filter((c) => c != null));
  return node;
}

let toastTimer;
function toast(message) {
  ui.toast.textContent = message;
  ui.toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (ui.toast.hidden = true), 5000);
}

function persist(conversation) {
  try {
    store.saveConversation(conversation);
  } catch (error) {
    toast(error.message);
  }
}

function nearBottom() {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function scrollToEnd() {
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

// ---------------------------------------------------------------- theme

const systemDark = matchMedia("(prefers-color-scheme: dark)");

function effectiveTheme() {
  return document.documentElement.dataset.theme ?? (systemDark.matches ? "dark" : "light");
}

function applyTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
  const other = effectiveTheme() === "dark" ? "light" : "dark";
  ui.themeToggle.setAttribute("aria-label", `Switch to ${other} theme`);
  ui.themeToggle.title = `Switch to ${other} theme`;
}

// One button flips the theme; choosing what the system already shows means "follow the system" again.
function toggleTheme() {
  const next = effectiveTheme() === "dark" ? "light" : "dark";
  const system = systemDark.matches ? "dark" : "light";
  const theme = next === system ? null : next;
  store.saveTheme(theme);
  applyTheme(theme);
}

// ---------------------------------------------------------------- conversation list

function renderList() {
  const items = store.listConversations();
  ui.list.replaceChildren(
    ...items.map((item) => {
      const current = item.id === state.conversation?.id;
      const open = el("button", { type: "button", class: "conversation-open", title: item.title }, item.title);
      if (current) open.setAttribute("aria-current", "true");
      open.addEventListener("click", () => openConversation(item.id));
      const rename = el("button", { type: "button", class: "icon small", "aria-label": `Rename ${item.title}`, title: "Rename" }, "✎");
      rename.addEventListener("click", () => startRename(li, item));
      const remove = el("button", { type: "button", class: "icon small", "aria-label": `Delete ${item.title}`, title: "Delete" }, "✕");
      remove.addEventListener("click", () => removeConversation(item));
      const li = el("li", { class: current ? "current" : "" }, open, rename, remove);
      return li;
    }),
  );
}

function startRename(li, item) {
  const input = el("input", { type: "text", value: item.title, class: "rename", "aria-label": "Conversation title" });
  let done = false;
  const finish = (save) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (save && title && title !== item.title) {
      const conversation = item.id === state.conversation?.id ? state.conversation : store.loadConversation(item.id);
      if (conversation) {
        conversation.title = title;
        conversation.renamed = true; // the first message no longer names it
        persist(conversation);
      }
    }
    renderList();
    renderHeader();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") finish(true);
    if (event.key === "Escape") {
      event.stopPropagation();
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));
  li.replaceChildren(input);
  input.focus();
  input.select();
}

function removeConversation(item) {
  if (!confirm(`Delete "${item.title}"? This cannot be undone.`)) return;
  if (state.generation?.conversation.id === item.id) state.generation.controller.abort();
  store.deleteConversation(item.id);
  if (state.conversation?.id === item.id) showConversation(null);
  renderList();
}

function openConversation(id) {
  const conversation = state.generation?.conversation.id === id ? state.generation.conversation : store.loadConversation(id);
  if (!conversation) {
    toast("That conversation is no longer stored.");
    renderList();
    return;
  }
  showConversation(conversation);
  closeSidebar();
  ui.input.focus();
}

function showConversation(conversation) {
  state.conversation = conversation;
  if (conversation) history.replaceState(null, "", `#${conversation.id}`);
  else history.replaceState(null, "", location.pathname + location.search);
  renderMessages();
  renderList();
  renderHeader();
}

function renderHeader() {
  const title = state.conversation?.title ?? "New chat";
  ui.title.textContent = title;
  document.title = `${title} · qwen-gguf`;
  const empty = !state.conversation?.messages.length;
  $("export-md").disabled = empty;
  $("export-json").disabled = empty;
}

// ---------------------------------------------------------------- messages

/** Turns (a user message and what answered it) from the end, `limit` of them: what the model is sent. */
function contextStart(messages, limit) {
  let turns = 0;
  for (let i = messages.length - 1; i >= 0; i--) {
    if (messages[i].role === "user" && ++turns === limit) return i;
  }
  return 0;
}

function renderMessages() {
  const messages = state.conversation?.messages ?? [];
  const start = contextStart(messages, state.settings.turnLimit);
  const nodes = [];
  messages.forEach((message, i) => {
    if (i === start && start > 0) {
      nodes.push(el("div", { class: "context-divider", role: "note" }, `Messages above are not sent to the model (turn limit ${state.settings.turnLimit})`));
    }
    const node = messageView(message);
    if (i < start) node.classList.add("out-of-context");
    nodes.push(node);
  });
  ui.empty.hidden = messages.length > 0;
  ui.messages.replaceChildren(ui.empty, ...nodes);
  scrollToEnd();
  renderTurnInfo();
}

function renderTurnInfo() {
  const limit = state.settings.turnLimit;
  const turns = state.conversation?.messages.filter((m) => m.role === "user").length ?? 0;
  const left = Math.max(0, turns - limit + 1); // the next message is a turn of its own
  ui.turnInfo.textContent = `Sends the last ${limit} turn${limit === 1 ? "" : "s"}${left ? ` · ${left} earlier left out` : ""}`;
}

function messageView(message) {
  return message.role === "user" ? userView(message) : assistantView(message);
}

function userView(message) {
  const badge = el("span", { class: "badge sentiment", hidden: true });
  const view = el(
    "article",
    { class: "message user", "data-id": message.id, "aria-label": "From you" },
    el("header", {}, el("span", { class: "role" }, "You"), badge),
    el("div", { class: "content plain" }, message.content),
  );
  showSentiment(view, message.sentiment);
  return view;
}

function showSentiment(view, sentiment) {
  const badge = view.querySelector(".sentiment");
  if (!badge) return;
  badge.hidden = !sentiment;
  if (!sentiment) return;
  const percent = Math.round(sentiment.probability * 100);
  badge.textContent = `${sentiment.label} ${percent}%`;
  badge.className = `badge sentiment ${sentiment.label === "positive" ? "positive" : sentiment.label === "negative" ? "negative" : ""}`;
  badge.setAttribute("aria-label", `Sentiment: ${sentiment.label}, ${percent}%`);
  badge.title = Object.entries(sentiment.probabilities ?? {})
    .map(([label, p]) => `${label}: ${(p * 100).toFixed(1)}%`)
    .join("\n");
}

function assistantView(message) {
  const reasoningBody = el("div", { class: "reasoning-body markdown" });
  const reasoning = el("details", { class: "reasoning", hidden: true }, el("summary", {}, "Reasoning"), reasoningBody);
  const content = el("div", { class: "content markdown" });
  const stats = el("footer", { class: "stats", hidden: true });
  const copy = el("button", { type: "button", class: "link copy-reply", "aria-label": "Copy reply", hidden: true }, "Copy");
  copy.addEventListener("click", async () => {
    if (await copyText(message.content)) flash(copy, "Copied");
  });
  const view = el(
    "article",
    { class: "message assistant", "data-id": message.id, "aria-label": "From the model" },
    el("header", {}, el("span", { class: "role" }, "Qwen"), copy),
    reasoning,
    content,
    el("p", { class: "error", role: "alert", hidden: true }),
    stats,
  );
  updateAssistantView(view, message, { final: true });
  return view;
}

function updateAssistantView(view, message, { final }) {
  const streaming = state.generation?.message === message;
  const reasoning = view.querySelector(".reasoning");
  // While streaming, only the part that grew is parsed again (one of reasoning and answer grows at a time).
  const changed = (part, text) => {
    const key = `rendered${part}`;
    if (!final && view.dataset[key] === String(text.length)) return false;
    view.dataset[key] = String(text.length);
    return true;
  };
  if (message.reasoning) {
    reasoning.hidden = false;
    if (changed("Reasoning", message.reasoning)) renderMarkdown(reasoning.querySelector(".reasoning-body"), message.reasoning, { final });
    const thinking = streaming && !message.content;
    reasoning.querySelector("summary").textContent = thinking ? "Thinking…" : message.stats?.reasoningMs ? `Reasoning (${(message.stats.reasoningMs / 1000).toFixed(1)} s)` : "Reasoning";
    // Open while the model thinks, folded once the answer starts (the user can open it again).
    if (thinking) reasoning.open = true;
    else if (streaming && reasoning.dataset.autoClosed !== "1") {
      reasoning.open = false;
      reasoning.dataset.autoClosed = "1";
    }
  }
  const content = view.querySelector(".content");
  if (changed("Content", message.content)) renderMarkdown(content, message.content, { final });
  content.classList.toggle("cursor", streaming);
  const error = view.querySelector(".error");
  error.hidden = !message.error;
  error.textContent = message.error ?? "";
  const stats = view.querySelector(".stats");
  const line = [store.formatStats(message.stats).replace("time to first token", "TTFT"), message.finishReason === "stopped" ? "stopped" : message.finishReason === "length" ? "max tokens reached" : ""]
    .filter(Boolean)
    .join(" · ");
  stats.hidden = !line;
  stats.textContent = line;
  if (message.stats) stats.title = statsTitle(message.stats);
  view.querySelector(".copy-reply").hidden = streaming || !message.content;
}

function statsTitle(stats) {
  const lines = [`Measured by ${stats.source === "server" ? "the server (timings)" : "this page"}`];
  if (Number.isFinite(stats.promptTokens)) lines.push(`Prompt: ${stats.promptTokens} tokens${Number.isFinite(stats.cachedTokens) ? `, ${stats.cachedTokens} from cache` : ""}`);
  if (Number.isFinite(stats.waitMs)) lines.push(`Waited ${(stats.waitMs / 1000).toFixed(2)} s for the first token`);
  return lines.join("\n");
}

function flash(button, text) {
  const old = button.textContent;
  button.textContent = text;
  setTimeout(() => (button.textContent = old), 1500);
}

function viewOf(message) {
  return ui.messages.querySelector(`[data-id="${CSS.escape(message.id)}"]`);
}

// ---------------------------------------------------------------- sending and streaming

function buildRequest(conversation) {
  const { settings } = state;
  // Errors and empty replies are not part of what the model said; the reply being written is not sent either.
  const history = conversation.messages.filter((m) => !m.pending && (m.role === "user" || m.content));
  const start = contextStart(history, settings.turnLimit);
  const messages = history.slice(start).map((m) => ({ role: m.role, content: m.content }));
  if (settings.systemPrompt.trim()) messages.unshift({ role: "system", content: settings.systemPrompt.trim() });
  const request = {
    messages,
    temperature: settings.temperature,
    top_p: settings.topP,
    max_tokens: settings.maxTokens,
    stream_options: { include_usage: true },
    chat_template_kwargs: { enable_thinking: settings.thinking },
  };
  if (state.model) request.model = state.model;
  if (settings.thinking && Number.isInteger(settings.reasoningBudget)) request.reasoning_budget = settings.reasoningBudget;
  return request;
}

async function send(text) {
  if (!text.trim()) return;
  if (state.generation) {
    toast("A reply is still being written: wait for it or press Stop (Escape).");
    return;
  }
  let conversation = state.conversation;
  if (!conversation) {
    conversation = store.createConversation();
    state.conversation = conversation;
    history.replaceState(null, "", `#${conversation.id}`);
  }
  const now = Date.now();
  const user = { id: store.newId(), role: "user", content: text, createdAt: now };
  if (!conversation.renamed && !conversation.messages.length) conversation.title = store.titleFrom(text);
  conversation.messages.push(user);
  const reply = { id: store.newId(), role: "assistant", content: "", reasoning: "", createdAt: now, pending: true };
  conversation.messages.push(reply);
  conversation.updatedAt = now;
  persist(conversation);
  ui.input.value = "";
  renderMessages();
  renderList();
  renderHeader();
  classifyMessage(conversation, user);
  await generate(conversation, reply);
}

async function generate(conversation, message) {
  const controller = new AbortController();
  state.generation = { controller, conversation, message };
  setBusy(true);
  const request = buildRequest(conversation);
  const started = performance.now();
  let first = null; // first piece of any kind
  let firstContent = null; // first piece of the answer (ends the reasoning time)
  let pieces = 0;
  let timings = null;
  let usage = null;
  let finishReason = null;
  let frame = 0;
  const draw = () => {
    frame = 0;
    const view = viewOf(message);
    if (!view) return; // another conversation is shown; it is drawn in full when opened again
    const stick = nearBottom();
    updateAssistantView(view, message, { final: false });
    if (stick) scrollToEnd();
  };
  try {
    for await (const chunk of streamChat(request, { signal: controller.signal, apiKey: state.settings.apiKey })) {
      if (chunk.timings) timings = chunk.timings;
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      if (choice.finish_reason) finishReason = choice.finish_reason;
      const delta = choice.delta ?? {};
      const piece = (delta.reasoning_content ?? "") + (delta.content ?? "");
      if (!piece) continue;
      first ??= performance.now();
      if (delta.content) firstContent ??= performance.now();
      pieces++;
      if (delta.reasoning_content) message.reasoning += delta.reasoning_content;
      if (delta.content) message.content += delta.content;
      frame ||= requestAnimationFrame(draw);
    }
    message.finishReason = finishReason ?? "stop";
  } catch (error) {
    if (controller.signal.aborted) message.finishReason = "stopped";
    else message.error = describeError(error);
  } finally {
    cancelAnimationFrame(frame);
    const end = performance.now();
    message.stats = measure({ started, first, firstContent, end, pieces, timings, usage });
    delete message.pending;
    conversation.updatedAt = Date.now();
    state.generation = null;
    persist(conversation);
    setBusy(false);
    const view = viewOf(message);
    if (view) {
      const stick = nearBottom();
      updateAssistantView(view, message, { final: true });
      if (stick) scrollToEnd();
    }
    renderList();
    renderHeader();
  }
}

/**
 * Speed and time to first token: the server's `timings` (last chunk) when it sent them, else what this page saw.
 * A stopped reply has no timings, so it is always measured here.
 */
function measure({ started, first, firstContent, end, pieces, timings, usage }) {
  if (first == null && !timings) return null;
  const stats = { source: "client" };
  if (first != null) stats.waitMs = first - started;
  if (firstContent != null && firstContent > first) stats.reasoningMs = firstContent - first;
  if (timings && Number.isFinite(timings.predicted_n) && timings.predicted_ms > 0) {
    stats.source = "server";
    stats.tokens = timings.predicted_n;
    stats.tokensPerSecond = (timings.predicted_n / timings.predicted_ms) * 1000;
    stats.ttftMs = Number.isFinite(timings.prompt_ms) ? timings.prompt_ms : stats.waitMs;
    if (Number.isFinite(timings.prompt_n)) stats.promptTokens = timings.prompt_n;
    if (Number.isFinite(timings.cache_n)) stats.cachedTokens = timings.cache_n;
    return stats;
  }
  // Each streamed chunk carries one token on llama.cpp-style servers; usage counts them exactly when present.
  stats.tokens = usage?.completion_tokens ?? pieces;
  if (first == null) return stats;
  stats.ttftMs = first - started;
  const generating = (end - first) / 1000;
  if (stats.tokens > 1 && generating > 0) stats.tokensPerSecond = (stats.tokens - 1) / generating;
  if (Number.isFinite(usage?.prompt_tokens)) stats.promptTokens = usage.prompt_tokens;
  return stats;
}

function describeError(error) {
  if (error instanceof ApiError) {
    if (error.status === 401) return "The server wants an API key: set it in Settings.";
    if (error.status === 503) return `The server is busy or still loading (${error.message}). Try again in a moment.`;
    return error.message;
  }
  return error instanceof TypeError ? "Cannot reach the server." : String(error?.message ?? error);
}

function stop() {
  state.generation?.controller.abort();
}

function setBusy(busy) {
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  ui.messages.setAttribute("aria-busy", String(busy));
  if (!busy && document.activeElement === document.body) ui.input.focus();
}

/** The sentiment badge: one classification per user message, kept with it; none while the server has no classifier. */
async function classifyMessage(conversation, message) {
  if (!state.classifier) return;
  try {
    const result = await classify(message.content, SENTIMENT_LABELS, { apiKey: state.settings.apiKey });
    if (!result) {
      state.classifier = false;
      document.body.classList.add("no-classifier");
      return;
    }
    message.sentiment = { label: result.label, probability: result.probabilities?.[result.label] ?? 0, probabilities: result.probabilities ?? {} };
    // The reply may still be streaming: saving now keeps the badge if the page closes before it ends.
    persist(conversation);
    const view = viewOf(message);
    if (view) showSentiment(view, message.sentiment);
  } catch {
    // A busy or failing classifier leaves this message without a badge; the chat itself is unaffected.
  }
}

// ---------------------------------------------------------------- templates

function renderTemplates() {
  ui.templateButtons.replaceChildren(
    ...state.templates.map((template) => {
      const button = el("button", { type: "button", class: "chip", title: template.text }, template.label);
      button.addEventListener("click", () => useTemplate(template));
      return button;
    }),
  );
}

function useTemplate(template) {
  const current = ui.input.value.trim();
  ui.input.value = current ? `${template.text.trimEnd()}\n\n${current}` : template.text;
  ui.input.focus();
  ui.input.setSelectionRange(ui.input.value.length, ui.input.value.length);
}

function templateRow(template) {
  const remove = el("button", { type: "button", class: "icon small", "aria-label": `Remove template ${template.label || ""}`.trim(), title: "Remove" }, "✕");
  const row = el(
    "li",
    { class: "template-row" },
    el("input", { type: "text", name: "label", value: template.label, required: true, "aria-label": "Template name", placeholder: "Name" }),
    el("textarea", { name: "text", value: template.text, rows: 2, required: true, "aria-label": "Template text", placeholder: "Text" }),
    remove,
  );
  remove.addEventListener("click", () => row.remove());
  return row;
}

function openTemplates() {
  ui.templateRows.replaceChildren(...state.templates.map(templateRow));
  ui.templatesDialog.showModal();
}

// Applied on submit, which runs with the click (the dialog's close event comes a task later).
ui.templatesForm.addEventListener("submit", (event) => {
  if (event.submitter?.value !== "save") return;
  state.templates = [...ui.templateRows.querySelectorAll(".template-row")]
    .map((row) => ({ label: row.querySelector("[name=label]").value.trim(), text: row.querySelector("[name=text]").value }))
    .filter((t) => t.label && t.text.trim());
  try {
    store.saveTemplates(state.templates);
  } catch (error) {
    toast(error.message);
  }
  renderTemplates();
});

// ---------------------------------------------------------------- settings

function fillSettings(settings) {
  const form = ui.settingsForm.elements;
  form.systemPrompt.value = settings.systemPrompt;
  form.temperature.value = settings.temperature;
  form.topP.value = settings.topP;
  form.maxTokens.value = settings.maxTokens;
  form.turnLimit.value = settings.turnLimit;
  form.reasoningBudget.value = settings.reasoningBudget ?? "";
  form.apiKey.value = settings.apiKey;
}

function openSettings() {
  fillSettings(state.settings);
  ui.settingsDialog.showModal();
}

ui.settingsForm.addEventListener("submit", (event) => {
  if (event.submitter?.value !== "save") return;
  const form = ui.settingsForm.elements;
  const budget = form.reasoningBudget.value.trim();
  state.settings = {
    ...state.settings,
    systemPrompt: form.systemPrompt.value,
    temperature: Number(form.temperature.value),
    topP: Number(form.topP.value),
    maxTokens: Math.round(Number(form.maxTokens.value)),
    turnLimit: Math.max(1, Math.round(Number(form.turnLimit.value))),
    reasoningBudget: budget === "" ? null : Math.max(0, Math.round(Number(budget))),
    apiKey: form.apiKey.value.trim(),
  };
  saveSettings();
  renderMessages();
  refreshModel();
});

function saveSettings() {
  try {
    store.saveSettings(state.settings);
  } catch (error) {
    toast(error.message);
  }
}

// ---------------------------------------------------------------- server status

async function refreshModel() {
  try {
    const [id] = await listModels({ apiKey: state.settings.apiKey });
    state.model = id ?? null;
    ui.model.textContent = id ? `· ${id}` : "";
  } catch {
    state.model = null; // requests then go without a model name, which the server answers with its only model
  }
}

async function watchHealth() {
  const status = await health();
  ui.status.dataset.state = status;
  ui.status.textContent = status === "ok" ? "Ready" : status === "loading" ? "Loading the model…" : "Server unreachable";
  if (status === "ok") {
    await refreshModel();
    return;
  }
  setTimeout(watchHealth, status === "loading" ? 1000 : 3000);
}

// ---------------------------------------------------------------- layout (narrow screens)

function closeSidebar() {
  ui.sidebar.classList.remove("open");
  $("toggle-sidebar").setAttribute("aria-expanded", "false");
}

$("toggle-sidebar").addEventListener("click", (event) => {
  event.stopPropagation();
  const open = ui.sidebar.classList.toggle("open");
  $("toggle-sidebar").setAttribute("aria-expanded", String(open));
});

// A tap beside the open drawer closes it, as drawers do.
document.querySelector(".chat").addEventListener("click", () => {
  if (ui.sidebar.classList.contains("open")) closeSidebar();
});

// ---------------------------------------------------------------- wiring

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send(ui.input.value);
});

ui.input.addEventListener("keydown", (event) => {
  // isComposing: Enter also confirms a word in an input method (Chinese, Japanese); that must not send.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send(ui.input.value);
  }
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && state.generation && !document.querySelector("dialog[open]")) {
    event.preventDefault();
    stop();
  }
});

ui.stop.addEventListener("click", stop);

ui.thinking.addEventListener("change", () => {
  state.settings.thinking = ui.thinking.checked;
  saveSettings();
});

ui.turnInfo.addEventListener("click", () => {
  openSettings();
  ui.settingsForm.elements.turnLimit.focus();
});

$("new-chat").addEventListener("click", () => {
  showConversation(null);
  closeSidebar();
  ui.input.focus();
});

$("export-md").addEventListener("click", () => {
  const c = state.conversation;
  if (c) store.download(store.fileName(c.title, "md"), store.conversationToMarkdown(c, { model: state.model }), "text/markdown;charset=utf-8");
});

$("export-json").addEventListener("click", () => {
  const c = state.conversation;
  if (c) store.download(store.fileName(c.title, "json"), store.conversationToJson(c, { model: state.model }), "application/json");
});

$("import-json").addEventListener("click", () => $("import-file").click());
$("import-file").addEventListener("change", async (event) => {
  const file = event.target.files?.[0];
  event.target.value = ""; // the same file can be chosen again
  if (!file) return;
  try {
    const conversation = store.parseImport(await file.text());
    persist(conversation);
    showConversation(conversation);
  } catch (error) {
    toast(`Cannot import ${file.name}: ${error.message}`);
  }
});

ui.themeToggle.addEventListener("click", toggleTheme);
systemDark.addEventListener("change", () => applyTheme(store.loadTheme()));
$("open-settings").addEventListener("click", openSettings);
$("settings-reset").addEventListener("click", () => fillSettings({ ...store.DEFAULT_SETTINGS, apiKey: ui.settingsForm.elements.apiKey.value }));
$("edit-templates").addEventListener("click", openTemplates);
$("template-add").addEventListener("click", () => {
  const row = templateRow({ label: "", text: "" });
  ui.templateRows.append(row);
  row.querySelector("input").focus();
});
$("templates-reset").addEventListener("click", () => ui.templateRows.replaceChildren(...store.DEFAULT_TEMPLATES.map(templateRow)));

// Copy buttons on code blocks: one listener for every block, present and future.
ui.messages.addEventListener("click", async (event) => {
  const button = event.target.closest(".copy-code");
  if (!button) return;
  const code = button.closest(".code-block")?.querySelector("code");
  if (code && (await copyText(code.textContent))) flash(button, "Copied");
});

// Another tab changed the stored conversations: keep the list (and an idle open conversation) in step.
addEventListener("storage", (event) => {
  if (!store.isOurKey(event.key)) return;
  if (state.conversation && !state.generation && event.key?.endsWith(state.conversation.id)) {
    const fresh = store.loadConversation(state.conversation.id);
    if (fresh) state.conversation = fresh;
    renderMessages();
    renderHeader();
  }
  renderList();
});

// A reply still streaming when the page goes away is saved as far as it got.
addEventListener("pagehide", () => {
  const g = state.generation;
  if (g) {
    delete g.message.pending;
    g.message.finishReason = "stopped";
    persist(g.conversation);
  }
});

// ---------------------------------------------------------------- start

applyTheme(store.loadTheme());
ui.thinking.checked = state.settings.thinking;
renderTemplates();
const initial = location.hash.slice(1);
const restored = initial ? store.loadConversation(initial) : null;
// An interrupted reply (page closed mid-stream) is not pending any more.
for (const m of restored?.messages ?? []) delete m.pending;
showConversation(restored);
watchHealth();
ui.input.focus();
