// The org's runs, newest first: a status filter, pages by `before`, and a refresh every few
// seconds so live runs change without a reload.

import { api, query } from "./api.js";
import { field, h, replace, statusBadge } from "./dom.js";
import { cost, dash, duration, integer, percent, shortId, when } from "./format.js";

const PAGE = 25;
const REFRESH_MS = 2500;
export const STATUSES = ["running", "waiting_for_input", "completed", "failed", "cancelled"];
const COLUMNS = [
  "Run", "Status", "Model", "Persona", "Tokens in / out", "Cost",
  "Cache hit", "Credits", "Duration", "Creator", "Created",
];

export function runRow(run) {
  const creator = run.created_by_user_name || run.created_by_email || shortId(run.created_by_user_id);
  return h(
    "tr",
    {},
    h("th", { scope: "row" }, h("a", { href: `#/runs/${run.run_id}`, class: "mono", title: run.run_id, text: shortId(run.run_id) })),
    h("td", {}, statusBadge(run.status)),
    h("td", { text: run.model }),
    h("td", { text: dash(run.persona_id) }),
    h("td", { class: "num", text: `${integer(run.total_input_tokens)} / ${integer(run.total_output_tokens)}` }),
    h("td", { class: "num", text: cost(run.total_cost_usd) }),
    h("td", { class: "num", text: percent(run.cache_hit_rate) }),
    h("td", { class: "num", text: integer(run.credits_used) }),
    h("td", { class: "num", text: duration(run.duration_ms) }),
    h("td", { text: creator }),
    h("td", { class: "nowrap", text: when(run.created_at) }),
  );
}

export function renderRuns(main) {
  const cursors = []; // `before` of each earlier page
  let before = null;
  let status = "";
  let last = "";
  let timer = null;
  let stopped = false;

  const filter = h(
    "select",
    {
      onchange: () => {
        status = filter.value;
        before = null;
        cursors.length = 0;
        load();
      },
    },
    h("option", { value: "", text: "All" }),
    STATUSES.map((s) => h("option", { value: s, text: s.replaceAll("_", " ") })),
  );
  const body = h("tbody");
  const table = h(
    "table",
    { class: "runs" },
    h("caption", { class: "visually-hidden", text: "Runs, newest first" }),
    h("thead", {}, h("tr", {}, COLUMNS.map((c) => h("th", { scope: "col", text: c })))),
    body,
  );
  const empty = h("p", { class: "empty", hidden: true });
  const error = h("p", { class: "error", role: "alert" });
  const newer = h("button", {
    type: "button",
    text: "Newer",
    onclick: () => {
      before = cursors.pop() ?? null;
      load();
    },
  });
  const older = h("button", { type: "button", text: "Older" });
  let page = [];
  older.addEventListener("click", () => {
    cursors.push(before);
    before = page[page.length - 1].run_id;
    load();
  });

  async function load() {
    clearTimeout(timer);
    try {
      const runs = await api("GET", `/v1/runs${query({ limit: PAGE, before, status })}`);
      if (stopped) return;
      error.textContent = "";
      const signature = JSON.stringify(runs);
      if (signature !== last) {
        // Rows are rebuilt only when something changed, so focus and selection survive refreshes.
        last = signature;
        page = runs;
        replace(body, runs.map(runRow));
        empty.hidden = runs.length > 0;
        empty.textContent = status ? `No ${status.replaceAll("_", " ")} runs.` : "No runs yet: start one from a thread.";
      }
      newer.disabled = before === null;
      older.disabled = runs.length < PAGE;
    } catch (err) {
      if (!stopped) error.textContent = `Could not load runs: ${err.message}`;
    }
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  }

  replace(
    main,
    h("div", { class: "page-head" }, h("h1", { text: "Runs" }), field("Filter by status", filter)),
    error,
    h("div", { class: "table-wrap" }, table),
    empty,
    h("div", { class: "pager" }, newer, older),
  );
  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
