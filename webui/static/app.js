// Hearth's chat page: plain JavaScript over Hearth's JSON API, no build step, nothing external.
"use strict";

const $ = (selector) => document.querySelector(selector);
const store = {
  get user() { return localStorage.getItem("hearth.user") || ""; },
  set user(value) { localStorage.setItem("hearth.user", value); },
  get apiKey() { return localStorage.getItem("hearth.apiKey") || ""; },
  set apiKey(value) {
    if (value) localStorage.setItem("hearth.apiKey", value);
    else localStorage.removeItem("hearth.apiKey");
  },
};

const state = {
  conversationId: null,  // the conversation on screen; null for a new one
  controller: null,      // the AbortController of the answer being streamed
  conversations: [],
  collections: [],       // those the user may read: [{name, description, mine, ...}]
  chosen: null,          // the names ticked under "Ask in"; null: every one
  polling: 0,            // uploads whose job upload() follows
  documentsTimer: null,  // the next refresh of "My documents" while one is indexing
};

// Errors the user can act on: what went wrong, and what to do.
class HearthError extends Error {
  constructor(code, message) { super(message); this.code = code; }
}

const UNREACHABLE = "Hearth is not reachable: is `hearth serve` still running? Nothing was sent.";
const UPLOAD_TOO_LARGE = "These files are too large to upload at once: send fewer or smaller files.";
const NONE_CHOSEN = "Choose at least one collection under “Ask in” to send a question.";
const LOST = "The connection to Hearth was lost before the answer was finished; the answer was not saved.";
const CONFIDENCE_HINT = "How sure the model was of the words it wrote (the mean probability it " +
  "gave each of them, 0 to 1). A hint, not the chance that the answer is right: read the evidence.";

// status: the response's HTTP status; null for an error event in a stream that had begun (its
// status was 200, which says nothing of the error).
function explain(status, code, message, retryAfter) {
  const wait = retryAfter ? ` Try again in ${retryAfter} s.` : " Try again shortly.";
  switch (code) {
    case "unauthorized":
      return `This Hearth needs a valid API key: enter yours under “You” (${message}).`;
    case "forbidden":
      return `Your API key may not do that: ${message}.`;
    case "rate_limited":
      return `Too many requests for now.${wait}`;
    case "busy":
      return `The model is busy answering other questions.${wait}`;
    case "question_too_long":
      return `Your question is too long: ${message}. Shorten it and send it again.`;
    case "body_too_large":
      return "Your question is too large to send. Shorten it and send it again.";
    case "llm_unavailable":
      return `The language model is not available: ${message}`;
    case "llm_timeout":
      return `The language model took too long to answer: ${message}`;
    case "vector_store_unavailable":
      return `The document index is not available: ${message}`;
    case "history_unavailable":
      return `The history store is not available: ${message}`;
    case "conversation_not_found":
      return "This conversation no longer exists (was it deleted elsewhere?). Start a new one.";
    case "internal_error":
      return "Hearth failed unexpectedly; the details are in its log.";
    case "shutting_down":
      return "Hearth is shutting down (or restarting): this answer was not finished or saved. " +
             "Send your question again in a moment.";
    default:
      if (status === 429) return `Too many requests for now.${wait}`;
      if (status === null) return `Hearth could not finish the answer (${code}): ${message}`;
      return `Hearth answered with an error (HTTP ${status}${code ? ", " + code : ""}): ${message}`;
  }
}

async function errorFrom(response) {
  let code = "", message = response.statusText || "no details";
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || "";
      message = body.error.message || message;
    }
  } catch { /* not JSON: a proxy's page, say */ }
  const error = new HearthError(code || `http_${response.status}`,
    explain(response.status, code, message, response.headers.get("Retry-After")));
  error.status = response.status;
  return error;
}

function headers(extra = {}) {
  const all = { Accept: "application/json", ...extra };
  if (store.apiKey) all.Authorization = `Bearer ${store.apiKey}`;
  return all;
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: headers(options.headers) });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new HearthError("unreachable", UNREACHABLE);
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

const userQuery = () => `user_id=${encodeURIComponent(store.user)}`;

// Server-Sent Events from a fetch response: yields {event, data}.
async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

// Rendering. Text always goes in as textContent: an answer or a document can hold anything.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

// A small, safe part of Markdown, which language models write anyway: paragraphs, lists, fenced
// code, `code` and **bold**. Built as DOM nodes, never as HTML.
function renderMarkdown(target, text) {
  const nodes = [];
  let block = null, list = null, code = null, codeLines = 0;
  for (const line of text.split("\n")) {
    if (code) {
      if (/^\s*```/.test(line)) code = null;
      else code.textContent += (codeLines++ ? "\n" : "") + line;
      continue;
    }
    if (/^\s*```/.test(line)) {
      block = list = null;
      code = el("code");
      codeLines = 0;
      nodes.push(el("pre", {}, code));
      continue;
    }
    if (!line.trim()) { block = list = null; continue; }
    const item = /^\s*(?:[-*+•]|(\d+)[.)])\s+(.*)$/.exec(line);
    if (item) {
      const ordered = item[1] !== undefined;
      if (!list || list.tagName !== (ordered ? "OL" : "UL")) {
        list = el(ordered ? "ol" : "ul");
        if (ordered && item[1] !== "1") list.start = Number(item[1]);
        nodes.push(list);
      }
      block = el("li");
      list.append(block);
      inline(block, item[2]);
      continue;
    }
    const heading = /^#{1,6}\s+(.*)$/.exec(line);
    if (heading) {
      list = null;
      block = el("p", { class: "heading" });
      nodes.push(block);
      inline(block, heading[1]);
      block = null;
      continue;
    }
    if (block) {
      block.append(" ");
    } else {
      list = null;
      block = el("p");
      nodes.push(block);
    }
    inline(block, line.trim());
  }
  target.replaceChildren(...nodes);
}

function inline(node, text) {
  let last = 0;
  for (const match of text.matchAll(/`[^`]+`|\*\*[^*]+\*\*/g)) {
    node.append(text.slice(last, match.index));
    const token = match[0];
    node.append(token.startsWith("`") ? el("code", { text: token.slice(1, -1) })
                                      : el("strong", { text: token.slice(2, -2) }));
    last = match.index + token.length;
  }
  node.append(text.slice(last));
}

function baseName(path) {
  const parts = path.split(/[\\/]/);
  return parts[parts.length - 1] || path;
}

// A passage's text with the evidence sentences in it marked. The server's offsets count
// characters (code points), as Python does; a JavaScript string counts UTF-16 units, two for
// an emoji: the passage is cut as an array of code points.
function highlighted(snippet, ranges) {
  const chars = Array.from(snippet);
  const slice = (from, to) => chars.slice(from, to).join("");
  const parts = [];
  let at = 0;
  for (const { start, end } of [...ranges].sort((a, b) => a.start - b.start)) {
    if (start < at || end > chars.length || start >= end) continue;
    parts.push(slice(at, start), el("mark", { text: slice(start, end) }));
    at = end;
  }
  parts.push(slice(at));
  return parts;
}

function sourceItem(source, n, ranges = []) {
  const item = el("li");
  const web = /^https?:\/\//i.test(source.source);
  if (web) {
    item.append(el("a", { href: source.source, target: "_blank", rel: "noopener noreferrer",
                          text: source.title || source.source }));
  } else {
    item.append(el("span", { class: "file", title: source.source, text: baseName(source.source) }));
    if (source.title && source.title !== baseName(source.source)) {
      item.append(el("span", { class: "where", text: ` (${source.title})` }));
    }
  }
  if (source.page) item.append(el("span", { class: "where", text: `, page ${source.page}` }));
  if (source.section) item.append(el("span", { class: "where", text: ` · ${source.section}` }));
  if (source.collection && source.collection !== "default") {
    item.append(el("span", { class: "collection", title: "the collection it is in",
                             text: ` [${source.collection}]` }));
  }
  const id = `snippet-${Math.random().toString(36).slice(2)}-${n}`;
  const toggle = el("button", { type: "button", class: "toggle", "aria-expanded": "false",
                                "aria-controls": id, text: "Show passage" });
  const quote = el("blockquote", { id, class: "snippet" }, ...highlighted(source.snippet, ranges));
  quote.hidden = true;
  toggle.addEventListener("click", () => {
    quote.hidden = !quote.hidden;
    toggle.setAttribute("aria-expanded", String(!quote.hidden));
    toggle.textContent = quote.hidden ? "Show passage" : "Hide passage";
  });
  item.append(" ", toggle, quote);
  return item;
}

function renderSources(answerNode, sources, evidence = []) {
  answerNode.querySelector(".sources")?.remove();
  answerNode.sources = sources || [];
  if (!sources || !sources.length) return;
  const list = el("ol");
  sources.forEach((source, n) => list.append(
    sourceItem(source, n, evidence.filter((e) => e.source === n))));
  answerNode.append(el("section", { class: "sources", "aria-label": "Sources" },
                       el("h3", { text: "Sources" }), list));
}

// Under the answer: the sentences of the sources that back it; the sources' passages mark them.
// An answer the grounding check flagged (HEARTH_UNSUPPORTED_ANSWERS=flag) ends with Hearth's
// own note naming what no source says, for every client: the page marks it, adds none. An
// answer Hearth withheld says why itself: under it, the sentences closest to the question and
// the model's draft, folded and marked unverified. Then how sure the model was, where the
// backend says.
function renderGrounding(answerNode, answer) {
  answerNode.querySelector(".evidence")?.remove();
  answerNode.querySelector(".draft")?.remove();
  answerNode.querySelector(".confidence")?.remove();
  const withheld = Boolean(answer.draft);
  const sources = answerNode.sources || [];
  const evidence = answer.evidence || [];
  if (evidence.length) {
    const list = el("ol");
    for (const e of evidence) {
      const from = sources[e.source];
      list.append(el("li", {}, el("q", { text: e.text }),
        el("span", { class: "where", text: ` [${e.source + 1}]${from ? " " + baseName(from.source) : ""}` })));
    }
    const heading = withheld ? "Closest to your question" : "Evidence";
    answerNode.querySelector(".sources")?.before(el("section", { class: "evidence", "aria-label": heading },
      el("h3", { text: heading }), list));
    renderSources(answerNode, sources, evidence);
    answerNode.querySelector(".sources")?.before(answerNode.querySelector(".evidence"));
  }
  answerNode.classList.toggle("ungrounded", answer.grounded === false);
  if (withheld) {
    answerNode.classList.add("refused");  // a stored turn too: it was not given as an answer
    const draft = el("details", { class: "draft" },
      el("summary", { text: (answer.unsupported || []).length
        ? "The model's draft (unverified: it names things your documents do not contain)"
        : "The model's draft (unverified: the answer above says why it was withheld)" }),
      el("div", { class: "draft-text" }));
    renderMarkdown(draft.querySelector(".draft-text"), answer.draft);
    answerNode.querySelector(".text").after(draft);
  }
  if (typeof answer.confidence === "number") {
    const line = el("p", { class: "confidence", title: CONFIDENCE_HINT,
      text: `Model's confidence${withheld ? " in its draft" : ""} ${answer.confidence.toFixed(2)}` });
    const below = answerNode.querySelector(".evidence") || answerNode.querySelector(".sources");
    if (below) below.before(line); else answerNode.append(line);
  }
}

function addTurn(question) {
  $("#empty").hidden = true;
  const answer = el("div", { class: "answer" }, el("div", { class: "text" }));
  const turn = el("article", { class: "turn" }, el("div", { class: "question", text: question }), answer);
  $("#messages").append(turn);
  return answer;
}

function renderTurn(turn) {
  const answer = addTurn(turn.question);
  renderMarkdown(answer.querySelector(".text"), turn.answer);
  renderSources(answer, turn.sources);
  renderGrounding(answer, turn);
  feedbackBar(answer, turn.feedback);
}

// Helpful or wrong: marked on the stored turn (its position among the stored answers).
function feedbackBar(answerNode, given = null) {
  answerNode.dataset.stored = "1";
  const status = el("span", { class: "thanks", role: "status" });
  const buttons = [["helpful", "👍 Helpful"], ["wrong", "👎 Wrong"]].map(([rating, label]) => {
    const button = el("button", { type: "button", class: `mark ${rating}`, text: label,
                                  "aria-pressed": String(Boolean(given && given.rating === rating)) });
    button.addEventListener("click", () => mark(answerNode, rating, buttons, status));
    return button;
  });
  if (given) status.textContent = given.rating === "wrong" ? "Marked wrong." : "Marked helpful.";
  answerNode.append(el("div", { class: "feedback" }, ...buttons, status));
}

async function mark(answerNode, rating, buttons, status) {
  if (!state.conversationId) return;
  const turn = [...document.querySelectorAll("#messages .answer[data-stored]")].indexOf(answerNode);
  let comment = "";
  if (rating === "wrong") {
    comment = prompt("What was wrong? (optional)");
    if (comment === null) return;  // Cancel: nothing is marked
  }
  try {
    await api(`/api/conversations/${encodeURIComponent(state.conversationId)}/feedback`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user_id: store.user, turn, rating, comment }),
    });
    buttons.forEach((b) => b.setAttribute("aria-pressed", String(b.classList.contains(rating))));
    status.textContent = rating === "wrong" ? "Marked wrong: thank you." : "Marked helpful: thank you.";
  } catch (error) {
    status.textContent = error.message;
  }
}

function note(answerNode, text, isError) {
  answerNode.querySelector(".note")?.remove();
  answerNode.append(el("p", { class: isError ? "note error" : "note", role: isError ? "alert" : "status",
                              text }));
}

function scrollToEnd() {
  const box = $("#messages");
  if (box.scrollHeight - box.scrollTop - box.clientHeight < 160) box.scrollTop = box.scrollHeight;
}

function clearMessages() {
  for (const turn of document.querySelectorAll("#messages .turn")) turn.remove();
  $("#empty").hidden = false;
}

// Asking.
function setBusy(busy) {
  // The button pressed is hidden: its focus goes on, Send to Stop, Stop to the question box.
  const focused = document.activeElement;
  $("#send").hidden = busy;
  $("#stop").hidden = !busy;
  if (busy && focused === $("#send")) $("#stop").focus();
  else if (!busy && focused === $("#stop")) $("#question").focus();
  $("#messages").setAttribute("aria-busy", String(busy));
}

async function ask(question) {
  if (!store.user) { openSettings(); return; }
  const answerNode = addTurn(question);
  const text = answerNode.querySelector(".text");
  const working = el("div", { class: "working", role: "status", text: "Hearth is looking through your documents…" });
  answerNode.prepend(working);
  answerNode.scrollIntoView({ block: "nearest" });
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  let finished = false;
  let raw = "";
  try {
    const body = { question, user_id: store.user, stream: true };
    if (state.conversationId) body.conversation_id = state.conversationId;
    const chosen = chosenCollections();
    if (chosen) body.collections = chosen;
    const response = await api("/api/question", {
      method: "POST", body: JSON.stringify(body), signal: controller.signal,
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
    });
    for await (const { event, data } of sseEvents(response)) {
      if (event === "token") {
        working.remove();
        raw += data.text;
        renderMarkdown(text, raw);
        scrollToEnd();
      } else if (event === "sources") {
        renderSources(answerNode, data);
      } else if (event === "done") {
        finished = true;
        renderMarkdown(text, data.answer || raw);
        answerNode.classList.toggle("refused", Boolean(data.refused));
        renderGrounding(answerNode, data);
        showConversation(data.conversation_id);
        feedbackBar(answerNode);
      } else if (event === "error") {
        throw new HearthError(data.code, explain(null, data.code, data.message));
      }
    }
    if (!finished) throw new HearthError("lost", LOST);
  } catch (error) {
    working.remove();
    if (error.name === "AbortError") {
      note(answerNode, "Stopped. This answer was not saved in your history.", false);
    } else {
      const message = error instanceof HearthError ? error.message : LOST;
      note(answerNode, message, true);
      if (!$("#question").value) $("#question").value = question;  // ready to send again
      if (error.code === "unauthorized") openSettings();
      if (error.code === "conversation_not_found") showConversation(null);
    }
  } finally {
    state.controller = null;
    setBusy(false);
    scrollToEnd();
    loadConversations();
  }
}

function stop() {
  if (state.controller) state.controller.abort();
}

// Conversations.
function showConversation(id) {
  state.conversationId = id;
  $("#export").hidden = !id;
  history.replaceState(null, "", id ? `#c=${encodeURIComponent(id)}` : location.pathname);
  for (const item of document.querySelectorAll("#conversations li")) {
    const current = item.dataset.id === id;
    item.classList.toggle("current", current);
    const open = item.querySelector(".open");
    if (current) open.setAttribute("aria-current", "true");
    else open.removeAttribute("aria-current");
  }
}

function listStatus(text, isError = false) {
  const status = $("#list-status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

const when = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "numeric",
                                                   minute: "2-digit" });

async function loadConversations() {
  if (!store.user) return;
  try {
    const response = await api(`/api/conversations?${userQuery()}`);
    state.conversations = (await response.json()).conversations;
  } catch (error) {
    listStatus(error.message, true);
    return;
  }
  const list = $("#conversations");
  list.replaceChildren(...state.conversations.map((c) => {
    const open = el("button", { type: "button", class: "open", title: c.title },
      el("span", { class: "title", text: c.title }),
      el("small", { text: `${when.format(new Date(c.updated_at * 1000))} · ${c.turn_count} ` +
                          (c.turn_count === 1 ? "question" : "questions") }));
    open.addEventListener("click", () => openConversation(c.id));
    const remove = el("button", { type: "button", class: "delete", title: "Delete",
                                  "aria-label": `Delete conversation: ${c.title}`, text: "✕" });
    remove.addEventListener("click", () => deleteConversation(c));
    const item = el("li", {}, open, remove);
    item.dataset.id = c.id;
    return item;
  }));
  listStatus(state.conversations.length ? "" : "No conversations yet.");
  showConversation(state.conversationId);
}

async function openConversation(id) {
  if (state.controller) stop();
  closeList();
  try {
    const response = await api(`/api/conversations/${encodeURIComponent(id)}?${userQuery()}`);
    const conversation = await response.json();
    clearMessages();
    conversation.turns.forEach(renderTurn);
    const last = conversation.turns[conversation.turns.length - 1];
    state.chosen = last && last.collections ? last.collections : null;
    renderCollections();
    showConversation(conversation.id);
    $("#messages").scrollTop = $("#messages").scrollHeight;
    $("#question").focus();
  } catch (error) {
    listStatus(error.message, true);
    if (error.code === "conversation_not_found") {
      showConversation(null);
      loadConversations();
    }
  }
}

function newConversation() {
  if (state.controller) stop();
  clearMessages();
  state.chosen = null;
  renderCollections();
  showConversation(null);
  closeList();
  $("#question").focus();
}

async function deleteConversation(conversation) {
  if (!confirm(`Delete the conversation “${conversation.title}”? This cannot be undone.`)) return;
  try {
    await api(`/api/conversations/${encodeURIComponent(conversation.id)}?${userQuery()}`,
              { method: "DELETE" });
    if (state.conversationId === conversation.id) newConversation();
    await loadConversations();
    listStatus("Conversation deleted.");
  } catch (error) {
    listStatus(error.message, true);
  }
}

async function eraseHistory() {
  if (!store.user) return;
  if (!confirm(`Erase all of ${store.user}'s conversations from Hearth? This cannot be undone.`)) return;
  try {
    const response = await api(`/api/users/${encodeURIComponent(store.user)}/history`,
                               { method: "DELETE" });
    const { deleted } = await response.json();
    newConversation();
    await loadConversations();
    listStatus(`Erased ${deleted} ${deleted === 1 ? "conversation" : "conversations"}.`);
  } catch (error) {
    listStatus(error.message, true);
  }
}

// The side list on a phone-sized screen.
function closeList() {
  const sidebar = $("#sidebar");
  // Hidden, the list would take the focus with it: it goes back to the button that opened it.
  const hadFocus = sidebar.classList.contains("open") && sidebar.contains(document.activeElement);
  sidebar.classList.remove("open");
  $("#toggle-list").setAttribute("aria-expanded", "false");
  if (hadFocus) $("#toggle-list").focus();
}

function toggleList() {
  const open = $("#sidebar").classList.toggle("open");
  $("#toggle-list").setAttribute("aria-expanded", String(open));
  if (open) $("#new-conversation").focus();
}

// Who the user is.
function openSettings() {
  $("#user-name").value = store.user;
  $("#api-key").value = store.apiKey;
  $("#settings-error").textContent = "";
  $("#settings-cancel").hidden = !store.user;  // the first time, a name is needed
  if (!$("#settings").open) $("#settings").showModal();
  $("#user-name").focus();
}

// The API's rule for a user id (stripped, 1 to 128 characters, no "/" and no control
// character), and no name of dots only, which a URL path would read as "." or "..".
function nameProblem(name) {
  if (!name) return "Enter a name: Hearth keeps your conversations under it.";
  if (Array.from(name).length > 128) return "Your name is too long: at most 128 characters.";
  if (/[\u0000-\u001f\u007f/]/.test(name)) return "Your name may not contain “/” or control characters.";
  if (/^\.+$/.test(name)) return "Your name may not be only dots.";
  return "";
}

function saveSettings(event) {
  event.preventDefault();
  const name = $("#user-name").value.trim();
  const problem = nameProblem(name);
  if (problem) {
    $("#settings-error").textContent = problem;
    $("#user-name").focus();
    return;
  }
  const changedUser = name !== store.user;
  store.user = name;
  store.apiKey = $("#api-key").value.trim();
  $("#settings").close();
  showUser();
  if (changedUser) newConversation();
  loadConversations();
  loadDocuments().then(loadCollections);
  $("#question").focus();
}

// Collections: which this conversation reads.
function collectionLabel(c) {
  return c.mine ? "My documents" : c.name;
}

function renderCollections() {
  const list = $("#collections");
  list.replaceChildren(...state.collections.map((c) => {
    const box = el("input", { type: "checkbox", value: c.name, id: `col-${c.name}` });
    box.checked = !state.chosen || state.chosen.includes(c.name);
    box.addEventListener("change", () => {
      state.chosen = [...document.querySelectorAll("#collections input:checked")].map((b) => b.value);
      showChoice();
    });
    return el("li", {}, box, el("label", { for: `col-${c.name}`, title: c.description || c.name,
                                           text: collectionLabel(c) }));
  }));
  showChoice();
}

// The collections to send: those ticked, always, every one included (a follow-up that names
// none reads what its conversation read before, whatever the boxes say). null before the
// list has loaded: the server then reads every one, or what the conversation read.
function chosenCollections() {
  if (!state.collections.length) return null;
  return state.collections.map((c) => c.name)
    .filter((name) => !state.chosen || state.chosen.includes(name));
}

// With no collection ticked there is nothing to ask in: Send waits for one, and says so.
function noneChosen() {
  const chosen = chosenCollections();
  return chosen !== null && chosen.length === 0;
}

function showChoice() {
  const none = noneChosen();
  $("#send").disabled = none;
  $("#choose-error").textContent = none ? NONE_CHOSEN : "";
}

async function loadCollections() {
  if (!store.user) return;
  try {
    const response = await api(`/api/collections?${userQuery()}`);
    state.collections = (await response.json()).collections;
  } catch (error) {
    listStatus(error.message, true);
    return;
  }
  renderCollections();
}

// My documents: upload, follow, list, delete.
function uploadStatus(text, isError = false) {
  const status = $("#upload-status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

const STATES = { queued: "indexing…", indexed: "ready", failed: "failed" };

async function loadDocuments() {
  if (!store.user) return [];
  let documents;
  try {
    const response = await api(`/api/collections/mine/documents?${userQuery()}`);
    documents = (await response.json()).documents;
  } catch (error) {
    uploadStatus(error.message, true);
    return [];
  }
  $("#documents").replaceChildren(...documents.map((d) => {
    const remove = el("button", { type: "button", class: "delete", title: "Remove",
                                  "aria-label": `Remove document: ${d.name}`, text: "✕" });
    remove.addEventListener("click", () => removeDocument(d));
    const info = el("span", { class: "doc" }, el("span", { class: "title", text: d.name }),
      el("small", { class: `state ${d.state}`, title: d.error || "",
                    text: d.error ? `${STATES[d.state]}: ${d.error}` : STATES[d.state] }));
    const item = el("li", {}, info, remove);
    item.dataset.id = d.id;
    return item;
  }));
  followIndexing(documents);
  return documents;
}

// A document still indexing (after a reload, say, or one another tab uploaded) is looked at
// again every 2 s until none is, unless an upload on this page is already following its job.
function followIndexing(documents) {
  if (state.documentsTimer || state.polling) return;
  if (!documents.some((d) => d.state === "queued")) return;
  state.documentsTimer = setTimeout(async () => {
    state.documentsTimer = null;
    if (!state.polling) await loadDocuments();
  }, 2000);
}

// XMLHttpRequest, not fetch: only it reports how much of the upload has been sent.
function send(files) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    for (const file of files) form.append("files", file, file.name);
    const request = new XMLHttpRequest();
    request.open("POST", `/api/collections/mine/documents?${userQuery()}`);
    for (const [name, value] of Object.entries(headers())) request.setRequestHeader(name, value);
    const bar = $("#upload-progress");
    bar.hidden = false;
    bar.value = 0;
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) bar.value = Math.round((100 * event.loaded) / event.total);
    });
    request.addEventListener("load", () => {
      let body = {};
      try { body = JSON.parse(request.responseText); } catch { /* not JSON */ }
      if (request.status === 202) resolve(body);
      else if (request.status === 413) reject(new HearthError("upload_too_large", UPLOAD_TOO_LARGE));
      else {
        const error = body.error || {};
        reject(new HearthError(error.code || "http_error",
                               explain(request.status, error.code, error.message || request.statusText)));
      }
    });
    request.addEventListener("error", () => reject(new HearthError("unreachable", UNREACHABLE)));
    request.send(form);
  });
}

async function upload(files) {
  if (!store.user) { openSettings(); return; }
  if (!files.length) return;
  uploadStatus(`Uploading ${files.length} ${files.length === 1 ? "file" : "files"}…`);
  let started;
  try {
    started = await send(files);
  } catch (error) {
    $("#upload-progress").hidden = true;
    uploadStatus(error.message, true);
    return;
  }
  const refused = started.refused.map((r) => `${r.name}: ${r.reason}`);
  uploadStatus(`Indexing ${started.documents.length} of ${files.length}…` +
               (refused.length ? ` Refused: ${refused.join("; ")}` : ""), refused.length > 0);
  state.polling += 1;  // follow() follows the job: loadDocuments need not
  let shown = null;
  try {
    await loadDocuments();
    await loadCollections();
    shown = await follow(started);
  } finally {
    state.polling -= 1;
  }
  if (shown) followIndexing(shown);  // another upload's documents may still be indexing
  else await loadDocuments();
}

// The upload's job, until it ends; then the documents, as they are shown (null on an error).
async function follow(started) {
  for (;;) {
    await new Promise((done) => setTimeout(done, 1000));
    let job;
    try {
      job = await (await api(`${started.job.url}?${userQuery()}`)).json();
    } catch (error) {
      uploadStatus(error.message, true);
      return null;
    }
    const bar = $("#upload-progress");
    const { chunks = 0, chunks_indexed: indexed = 0 } = job.progress || {};
    bar.hidden = false;
    if (chunks) bar.value = Math.round((100 * indexed) / chunks);
    if (job.state === "done" || job.state === "failed") {
      bar.hidden = true;
      const shown = await loadDocuments();
      const failed = shown.filter((d) => d.job === started.job.id && d.state === "failed");
      uploadStatus(failed.length ? `Could not read: ${failed.map((d) => `${d.name} (${d.error})`).join("; ")}`
                                 : "Your documents are ready to ask about.", failed.length > 0);
      return shown;
    }
  }
}

async function removeDocument(doc) {
  if (!confirm(`Remove “${doc.name}”? Hearth will no longer answer from it.`)) return;
  try {
    await api(`/api/collections/mine/documents/${encodeURIComponent(doc.id)}?${userQuery()}`,
              { method: "DELETE" });
    uploadStatus(`Removed ${doc.name}.`);
  } catch (error) {
    uploadStatus(error.message, true);
  }
  await loadDocuments();
}

// Export the conversation on screen, with its sources.
function download(name, type, text) {
  const link = el("a", { href: URL.createObjectURL(new Blob([text], { type })), download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// A conversation as Markdown: each answer with what backs it (the evidence, or for one
// Hearth withheld the sentences closest to the question and the model's draft), how sure
// the model was, and its sources with their passages.
function asMarkdown(conversation) {
  const lines = [`# ${conversation.title}`, ""];
  const oneLine = (text) => text.replace(/\s+/g, " ").trim();
  for (const turn of conversation.turns) {
    lines.push(`## ${turn.question}`, "", turn.answer, "");
    if (turn.draft) {
      lines.push("The model's draft (unverified):", "", ...turn.draft.split("\n").map((l) => `> ${l}`), "");
    }
    if ((turn.evidence || []).length) {
      lines.push(turn.draft ? "Closest to the question:" : "Evidence:", "");
      for (const e of turn.evidence) lines.push(`- “${oneLine(e.text)}” [${e.source + 1}]`);
      lines.push("");
    }
    if (typeof turn.confidence === "number") {
      lines.push(`Model's confidence${turn.draft ? " in its draft" : ""}: ${turn.confidence.toFixed(2)}`, "");
    }
    if (turn.sources.length) {
      lines.push("Sources:", "");
      turn.sources.forEach((s, n) => {
        const where = [s.title, s.page ? `page ${s.page}` : "", s.collection && s.collection !== "default" ? `collection ${s.collection}` : ""]
          .filter(Boolean).join(", ");
        lines.push(`${n + 1}. ${s.source}${where ? ` (${where})` : ""}`);
        lines.push(`   > ${oneLine(s.snippet)}`);
      });
      lines.push("");
    }
  }
  return lines.join("\n");
}

async function exportConversation(format) {
  if (!state.conversationId) return;
  try {
    const response = await api(`/api/conversations/${encodeURIComponent(state.conversationId)}?${userQuery()}`);
    const conversation = await response.json();
    const stem = `hearth-${conversation.id}`;
    if (format === "json") download(`${stem}.json`, "application/json", JSON.stringify(conversation, null, 2));
    else download(`${stem}.md`, "text/markdown", asMarkdown(conversation));
  } catch (error) {
    listStatus(error.message, true);
  }
}

function showUser() {
  $("#who").textContent = store.user || "not set";
}

function start() {
  $("#composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const question = $("#question").value.trim();
    if (!question || state.controller) return;
    if (noneChosen()) {  // Enter in the question box submits even while Send is disabled
      showChoice();
      return;
    }
    $("#question").value = "";
    ask(question);
  });
  $("#question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("#composer").requestSubmit();
    } else if (event.key === "Escape" && state.controller) {
      stop();
    }
  });
  $("#stop").addEventListener("click", stop);
  // The skip link focuses the question box without changing the address, which names the
  // conversation on screen (#c=…): a reload then still opens it.
  $("a.skip").addEventListener("click", (event) => {
    event.preventDefault();
    $("#question").focus();
  });
  $("#new-conversation").addEventListener("click", newConversation);
  $("#erase-history").addEventListener("click", eraseHistory);
  $("#toggle-list").addEventListener("click", toggleList);
  $("#close-list").addEventListener("click", closeList);
  $("#open-settings").addEventListener("click", openSettings);
  $("#settings-form").addEventListener("submit", saveSettings);
  $("#settings-cancel").addEventListener("click", () => $("#settings").close());
  $("#export-md").addEventListener("click", () => exportConversation("md"));
  $("#export-json").addEventListener("click", () => exportConversation("json"));
  $("#upload-files").addEventListener("change", (event) => {
    upload([...event.target.files]);
    event.target.value = "";
  });
  const zone = $("#dropzone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    upload([...event.dataTransfer.files]);
  });
  $("#settings").addEventListener("cancel", (event) => { if (!store.user) event.preventDefault(); });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && $("#sidebar").classList.contains("open")) closeList();
  });

  showUser();
  if (!store.user) {
    openSettings();
    return;
  }
  const match = /^#c=(.+)$/.exec(location.hash);
  loadDocuments().then(loadCollections).then(() => {
    if (match) openConversation(decodeURIComponent(match[1]));
  });
  loadConversations();
  $("#question").focus();
}

start();
