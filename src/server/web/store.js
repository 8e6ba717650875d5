// Everything the page keeps in the browser (localStorage): settings, templates, theme and conversations, plus the
// Markdown and JSON exports of a conversation. One key per conversation, so saving a reply rewrites that one only.

const PREFIX = "qwen-gguf:";
const INDEX_KEY = `${PREFIX}conversations`;
const conversationKey = (id) => `${PREFIX}conversation:${id}`;

export const DEFAULT_SETTINGS = Object.freeze({
  systemPrompt: "",
  temperature: 0.7,
  topP: 0.8,
  maxTokens: 1024,
  turnLimit: 5,
  reasoningBudget: null,
  apiKey: "",
  thinking: false,
});

export const DEFAULT_TEMPLATES = Object.freeze([
  { label: "Write a Python game", text: "Write a small, complete Python game that runs in the terminal (only the standard library). Explain how to run it." },
  { label: "Write an SQL query", text: "Write an SQL query that does the following. Tables and columns:\n\n" },
  { label: "Explain this code", text: "Explain what this code does, step by step, and point out any bugs:\n\n" },
  { label: "Summarize this text", text: "Summarize this text in five bullet points:\n\n" },
  { label: "Improve my writing", text: "Improve the clarity and grammar of this text, keep its meaning and tone:\n\n" },
  { label: "Translate to English", text: "Translate this into natural English:\n\n" },
]);

function read(key, fallback) {
  try {
    const raw = localStorage.getItem(key);
    return raw == null ? fallback : JSON.parse(raw);
  } catch {
    return fallback; // corrupt or unavailable storage must not break the page
  }
}

/** Throws a readable error when the browser's quota is reached, so the page can say what to do. */
function write(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch (error) {
    if (error?.name === "QuotaExceededError") throw new Error("Browser storage is full: export and delete old conversations.");
    throw error;
  }
}

// ---- settings, templates, theme ----

export function loadSettings() {
  const stored = read(`${PREFIX}settings`, {});
  return { ...DEFAULT_SETTINGS, ...(stored && typeof stored === "object" ? stored : {}) };
}

export function saveSettings(settings) {
  write(`${PREFIX}settings`, settings);
}

export function loadTemplates() {
  const stored = read(`${PREFIX}templates`, null);
  const valid = Array.isArray(stored) && stored.every((t) => typeof t?.label === "string" && typeof t?.text === "string");
  return valid ? stored : DEFAULT_TEMPLATES.map((t) => ({ ...t }));
}

export function saveTemplates(templates) {
  write(`${PREFIX}templates`, templates);
}

/** "dark", "light" or null (follow the system). */
export function loadTheme() {
  const theme = read(`${PREFIX}theme`, null);
  return theme === "dark" || theme === "light" ? theme : null;
}

export function saveTheme(theme) {
  if (theme) write(`${PREFIX}theme`, theme);
  else localStorage.removeItem(`${PREFIX}theme`);
}

// ---- conversations ----

export function newId() {
  return crypto.randomUUID?.() ?? `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

export function titleFrom(text) {
  const line = text.replace(/\s+/g, " ").trim();
  return line.length > 48 ? `${line.slice(0, 47)}…` : line || "New chat";
}

export function createConversation() {
  const now = Date.now();
  return { id: newId(), title: "New chat", createdAt: now, updatedAt: now, messages: [] };
}

/** The list shown in the sidebar, newest first: id, title and updatedAt only. */
export function listConversations() {
  const index = read(INDEX_KEY, []);
  return (Array.isArray(index) ? index : []).filter((c) => typeof c?.id === "string").sort((a, b) => b.updatedAt - a.updatedAt);
}

export function loadConversation(id) {
  const conversation = read(conversationKey(id), null);
  return conversation && Array.isArray(conversation.messages) ? conversation : null;
}

export function saveConversation(conversation) {
  write(conversationKey(conversation.id), conversation);
  const index = listConversations().filter((c) => c.id !== conversation.id);
  index.push({ id: conversation.id, title: conversation.title, updatedAt: conversation.updatedAt });
  write(INDEX_KEY, index);
}

export function deleteConversation(id) {
  localStorage.removeItem(conversationKey(id));
  write(INDEX_KEY, listConversations().filter((c) => c.id !== id));
}

/** True when a storage event from another tab touched our keys (the list must be re-read). */
export function isOurKey(key) {
  return key == null || key.startsWith(PREFIX);
}

// ---- export ----

export function formatStats(stats) {
  if (!stats) return "";
  const parts = [];
  if (Number.isFinite(stats.tokensPerSecond)) parts.push(`${stats.tokensPerSecond.toFixed(1)} tok/s`);
  if (Number.isFinite(stats.ttftMs)) parts.push(`time to first token ${(stats.ttftMs / 1000).toFixed(2)} s`);
  if (Number.isFinite(stats.tokens)) parts.push(`${stats.tokens} tokens`);
  return parts.join(" · ");
}

export function conversationToMarkdown(conversation, { model } = {}) {
  const lines = [`# ${conversation.title}`, ""];
  const meta = [`Exported from qwen-gguf on ${new Date().toISOString()}`];
  if (model) meta.push(`model ${model}`);
  lines.push(`*${meta.join(" · ")}*`, "");
  for (const message of conversation.messages) {
    lines.push(message.role === "user" ? "## User" : "## Assistant", "");
    if (message.role === "user" && message.sentiment) {
      lines.push(`*Sentiment: ${message.sentiment.label} (${Math.round(message.sentiment.probability * 100)}%)*`, "");
    }
    if (message.reasoning) lines.push("<details><summary>Reasoning</summary>", "", message.reasoning.trim(), "", "</details>", "");
    if (message.content) lines.push(message.content.trim(), "");
    if (message.error) lines.push(`> Error: ${message.error}`, "");
    const stats = formatStats(message.stats);
    const note = [stats, message.finishReason === "stopped" ? "stopped" : ""].filter(Boolean).join(" · ");
    if (note) lines.push(`*${note}*`, "");
  }
  return `${lines.join("\n").trimEnd()}\n`;
}

export function conversationToJson(conversation, { model } = {}) {
  const document = { format: "qwen-gguf-conversation", version: 1, exportedAt: new Date().toISOString(), model: model ?? null, conversation };
  return `${JSON.stringify(document, null, 2)}\n`;
}

/**
 * A conversation from an exported JSON file (ours, or a bare conversation object), under a new id so that importing
 * never overwrites one kept here. Only known fields of the right type are kept.
 */
export function parseImport(text) {
  const document = JSON.parse(text);
  const source = document?.format === "qwen-gguf-conversation" ? document.conversation : document;
  if (!source || !Array.isArray(source.messages)) throw new Error("not a conversation: no messages");
  const str = (v) => (typeof v === "string" ? v : undefined);
  const num = (v) => (Number.isFinite(v) ? v : undefined);
  const numbers = (o) => (o && typeof o === "object" ? Object.fromEntries(Object.entries(o).filter(([, v]) => Number.isFinite(v))) : undefined);
  const messages = source.messages
    .filter((m) => (m?.role === "user" || m?.role === "assistant") && typeof m.content === "string")
    .map((m) => {
      const message = { id: newId(), role: m.role, content: m.content, createdAt: num(m.createdAt) ?? Date.now() };
      if (m.role === "assistant") {
        message.reasoning = str(m.reasoning) ?? "";
        const stats = numbers(m.stats);
        if (stats) message.stats = { ...stats, source: m.stats.source === "server" ? "server" : "client" };
        if (str(m.finishReason)) message.finishReason = m.finishReason;
        if (str(m.error)) message.error = m.error;
      } else if (m.sentiment && str(m.sentiment.label) && num(m.sentiment.probability) !== undefined) {
        message.sentiment = { label: m.sentiment.label, probability: m.sentiment.probability, probabilities: numbers(m.sentiment.probabilities) ?? {} };
      }
      return message;
    });
  if (!messages.length) throw new Error("the conversation has no messages");
  const now = Date.now();
  const title = str(source.title)?.trim().slice(0, 200) || titleFrom(messages[0].content);
  return { id: newId(), title, createdAt: num(source.createdAt) ?? now, updatedAt: now, messages, renamed: true };
}

export function fileName(title, extension) {
  const slug = title.toLowerCase().normalize("NFKD").replace(/[^\p{L}\p{N}]+/gu, "-").replace(/^-+|-+$/g, "").slice(0, 60);
  return `${slug || "conversation"}.${extension}`;
}

export function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = Object.assign(document.createElement("a"), { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
