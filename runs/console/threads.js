// Threads: the list with a form to create one, and one thread with its messages, a form to
// post a message and one to start a run (route and persona are optional).

import { api, id, query } from "./api.js";
import { field, h, replace, statusBadge } from "./dom.js";
import { shortId, when } from "./format.js";

const PAGE = 50;
const REFRESH_MS = 2000;

export function renderThreads(main) {
  const cursors = [];
  let before = null;
  let page = [];
  let stopped = false;
  const body = h("tbody");
  const error = h("p", { class: "error", role: "alert" });
  const empty = h("p", { class: "empty", text: "No threads yet: create one above.", hidden: true });
  const title = h("input", { type: "text", maxlength: 500, autocomplete: "off", placeholder: "A title for a new thread" });
  const create = h("button", { type: "submit", class: "primary", text: "Create thread" });
  const newer = h("button", { type: "button", text: "Newer" });
  const older = h("button", { type: "button", text: "Older" });

  async function load() {
    try {
      page = await api("GET", `/v1/threads${query({ limit: PAGE, before })}`);
      if (stopped) return;
      replace(body, page.map((t) => h("tr", {},
        h("th", { scope: "row" }, h("a", { href: `#/threads/${t.id}`, text: t.title || "Untitled thread" })),
        h("td", { class: "nowrap", text: when(t.created_at) }),
        h("td", {}, t.active_run_id
          ? h("a", { href: `#/runs/${t.active_run_id}`, class: "mono", text: shortId(t.active_run_id) })
          : "—"))));
      empty.hidden = page.length > 0;
      newer.disabled = before === null;
      older.disabled = page.length < PAGE;
    } catch (err) {
      if (!stopped) error.textContent = `Could not load threads: ${err.message}`;
    }
  }
  newer.addEventListener("click", () => {
    before = cursors.pop() ?? null;
    load();
  });
  older.addEventListener("click", () => {
    cursors.push(before);
    before = page[page.length - 1].id;
    load();
  });

  const form = h("form", {
    class: "card inline-form",
    method: "post",
    "aria-label": "New thread",
    onsubmit: async (event) => {
      event.preventDefault();
      create.disabled = true;
      try {
        const thread = await api("POST", "/v1/threads", { title: title.value.trim() || null });
        location.hash = `#/threads/${thread.id}`;
      } catch (err) {
        error.textContent = `Not created: ${err.message}`;
        create.disabled = false;
      }
    },
  }, field("Title", title), create);

  replace(main,
    h("div", { class: "page-head" }, h("h1", { text: "Threads" })),
    form, error,
    h("div", { class: "table-wrap" }, h("table", {},
      h("caption", { class: "visually-hidden", text: "Threads, newest first" }),
      h("thead", {}, h("tr", {}, ["Title", "Created", "Live run"].map((c) => h("th", { scope: "col", text: c })))),
      body)),
    empty,
    h("div", { class: "pager" }, newer, older));
  load();
  return () => {
    stopped = true;
  };
}

export function renderThread(main, threadId) {
  let stopped = false;
  let timer = null;
  let lastMessages = "";
  const heading = h("h1", { text: "Thread" });
  const meta = h("p", { class: "meta" });
  const messages = h("ol", { class: "messages" });
  const runs = h("ul", { class: "thread-runs" });
  const error = h("p", { class: "error", role: "alert" });
  const message = h("textarea", { rows: 4, required: true });
  const send = h("button", { type: "submit", class: "primary", text: "Send message" });
  const route = h("input", { type: "text", autocomplete: "off", placeholder: "default" });
  const persona = h("input", { type: "text", autocomplete: "off", placeholder: "default@1" });
  const start = h("button", { type: "submit", class: "primary", text: "Start run" });

  async function load() {
    clearTimeout(timer);
    try {
      const [thread, list, threadRuns] = await Promise.all([
        api("GET", `/v1/threads/${id(threadId)}`),
        api("GET", `/v1/threads/${id(threadId)}/messages?limit=200`),
        api("GET", `/v1/threads/${id(threadId)}/runs?limit=20`),
      ]);
      if (stopped) return;
      heading.textContent = thread.title || "Untitled thread";
      replace(meta, "Created ", when(thread.created_at), " · ", h("span", { class: "mono", text: thread.id }));
      const signature = JSON.stringify(list);
      if (signature !== lastMessages) {
        lastMessages = signature;
        replace(messages, list.length ? list.map((m) => h("li", { class: `message ${m.role}` },
          h("div", { class: "message-head" },
            h("span", { class: "role", text: m.role }),
            h("time", { datetime: m.created_at, text: when(m.created_at) }),
            m.run_id ? h("a", { href: `#/runs/${m.run_id}`, text: `run ${shortId(m.run_id)}` }) : null),
          h("p", { class: "text", text: m.content }))) : h("li", { class: "empty", text: "No messages yet." }));
      }
      replace(runs, threadRuns.map((r) => h("li", {},
        h("a", { href: `#/runs/${r.run_id}`, class: "mono", text: shortId(r.run_id) }), " ",
        statusBadge(r.status), " ", h("span", { class: "hint", text: when(r.created_at) }))));
      // While a run is live its answer is still to come: look again shortly.
      if (thread.active_run_id) timer = setTimeout(load, REFRESH_MS);
    } catch (err) {
      if (!stopped) error.textContent = `Could not load the thread: ${err.message}`;
    }
  }

  const messageForm = h("form", {
    class: "card",
    method: "post",
    "aria-label": "Post to the thread",
    onsubmit: async (event) => {
      event.preventDefault();
      if (!message.value.trim()) return;
      send.disabled = true;
      error.textContent = "";
      try {
        await api("POST", `/v1/threads/${id(threadId)}/messages`, { content: message.value });
        message.value = "";
        await load();
      } catch (err) {
        error.textContent = `Not sent: ${err.message}`;
      } finally {
        send.disabled = false;
      }
    },
  }, field("Message", message, "With the scripted route, lines like /slow 50, /ask TEXT or /tool NAME {json} steer the reply."),
  h("div", { class: "actions" }, send));

  const runForm = h("form", {
    class: "card",
    method: "post",
    "aria-label": "Start a run",
    onsubmit: async (event) => {
      event.preventDefault();
      start.disabled = true;
      error.textContent = "";
      try {
        const created = await api("POST", `/v1/threads/${id(threadId)}/runs`, {
          route_id: route.value.trim() || null,
          persona_id: persona.value.trim() || null,
        });
        location.hash = `#/runs/${created.run_id}`;
      } catch (err) {
        error.textContent = `Not started: ${err.message}`;
        start.disabled = false;
      }
    },
  }, h("h2", { text: "Start a run" }),
  h("div", { class: "row" }, field("Route", route, "Empty: the default."), field("Persona", persona, "key@version; empty: the default.")),
  h("div", { class: "actions" }, start));

  replace(main,
    h("p", { class: "crumbs" }, h("a", { href: "#/threads", text: "Threads" }), " / ", h("span", { class: "mono", text: threadId })),
    heading, meta, error,
    h("div", { class: "columns" },
      h("section", { class: "conversation", "aria-label": "Conversation" }, messages, messageForm),
      h("aside", { class: "side" }, runForm, h("section", { class: "card" }, h("h2", { text: "Runs" }), runs))));
  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
