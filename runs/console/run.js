// One run: its header, a live timeline from the SSE stream, the answer box or Approve/Deny
// while it waits for input, a Cancel button while it is live, and the replay slider (the run
// as it stood at any seq, as `GET /v1/runs/{id}?as_of_seq=N` folds it from the log).

import { api, id } from "./api.js";
import { field, h, replace, statusBadge } from "./dom.js";
import { clock, cost, dash, duration, integer, json, percent, shortId, when } from "./format.js";
import { TERMINAL, followRun } from "./sse.js";

const LIVE = new Set(["running", "waiting_for_input"]);
// The status an event leaves the run in (the header shows it at once, before its refresh).
const STATUS_AFTER = {
  "run.waiting_for_input": "waiting_for_input",
  "run.input_provided": "running",
  "run.resumed": "running",
  "run.completed": "completed",
  "run.failed": "failed",
  "run.cancelled": "cancelled",
};

function detailList(run) {
  const rows = [
    ["Model", run.model],
    ["Route", run.route_id],
    ["Persona", dash(run.persona_id)],
    ["Thread", h("a", { href: `#/threads/${run.thread_id}`, class: "mono", title: run.thread_id, text: shortId(run.thread_id) })],
    ["Creator", run.created_by_user_name || run.created_by_email || run.created_by_user_id],
    ["Created", when(run.created_at)],
    ["Duration", duration(run.duration_ms)],
    ["Tokens in / out", `${integer(run.total_input_tokens)} / ${integer(run.total_output_tokens)}`],
    ["Cost", cost(run.total_cost_usd)],
    ["Cache hit rate", percent(run.cache_hit_rate)],
    ["Credits", integer(run.credits_used)],
    ["Trace id", h("span", { class: "mono", text: run.trace_id }), "wide"],
  ];
  return h("dl", { class: "details" }, rows.map(([k, v, wide]) => h("div", { class: wide }, h("dt", { text: k }), h("dd", {}, v))));
}

/** The timeline: one element with `data-seq` per event, deltas as spans of a text block. */
class Timeline {
  constructor() {
    this.el = h("div", { class: "timeline", role: "log", "aria-label": "Timeline", "aria-live": "polite" });
    this.block = null; // the assistant text block that deltas currently extend
    this.blocks = new Map(); // model call number -> its text blocks
    this.limit = Infinity;
  }

  entry(frame, label, kind, ...body) {
    this.block = null;
    const el = h(
      "div",
      { class: `entry ${kind}`, dataset: { seq: frame.seq, type: frame.type } },
      h("div", { class: "entry-head" },
        h("span", { class: "seq", text: `#${frame.seq}` }),
        h("span", { class: "label", text: label }),
        h("time", { datetime: frame.created_at, text: clock(frame.created_at) })),
      body,
    );
    el.hidden = frame.seq > this.limit;
    this.el.append(el);
    return el;
  }

  delta(frame) {
    const call = frame.data.call ?? 1;
    if (!this.block || this.block.call !== call) {
      const text = h("p", { class: "text" });
      const seqs = h("span", { class: "seq" });
      const el = h(
        "div",
        { class: "entry assistant", dataset: { first: frame.seq, call } },
        h("div", { class: "entry-head" }, seqs, h("span", { class: "label", text: "Assistant" }),
          h("time", { datetime: frame.created_at, text: clock(frame.created_at) })),
        text,
      );
      this.block = { el, text, seqs, call, first: frame.seq };
      if (!this.blocks.has(call)) this.blocks.set(call, []);
      this.blocks.get(call).push(this.block);
      el.hidden = frame.seq > this.limit;
      this.el.append(el);
    }
    const span = h("span", { dataset: { seq: frame.seq, type: frame.type }, text: frame.data.content });
    span.hidden = frame.seq > this.limit;
    this.block.text.append(span);
    this.block.seqs.textContent = `#${this.block.first}–${frame.seq}`;
  }

  add(frame) {
    const d = frame.data || {};
    switch (frame.type) {
      case "message.delta":
        this.delta(frame);
        return;
      case "run.started":
        this.entry(frame, "Run started", "info", h("p", { text: `${d.model} on route ${d.route_id}, persona ${dash(d.persona_id)}` }));
        return;
      case "tool.call":
        this.entry(frame, `Tool call: ${d.name}`, "tool", h("pre", { text: json(d.arguments ?? {}) }));
        return;
      case "tool.result":
        this.entry(frame, `Tool result: ${d.name}${d.is_error ? " (error)" : ""}`, d.is_error ? "tool bad" : "tool",
          h("pre", { text: d.output }));
        return;
      case "run.waiting_for_input":
        this.entry(frame, d.kind === "confirmation" ? `Waiting for confirmation: ${d.tool_name}` : "Waiting for an answer", "wait",
          h("p", { text: d.prompt }), d.arguments ? h("pre", { text: json(d.arguments) }) : null);
        return;
      case "run.input_provided":
        this.entry(frame, "Input", "input", h("p", { text: d.content }));
        return;
      case "run.usage":
        this.entry(frame, `Usage, call ${d.call ?? 1}`, "usage", h("p", {
          text: `${d.model}: ${integer(d.input_tokens)} in, ${integer(d.output_tokens)} out, ` +
            `cache ${integer(d.cache_read_tokens)} read / ${integer(d.cache_write_tokens)} written, ${cost(d.cost_usd)}`,
        }));
        return;
      case "run.retried":
        for (const block of this.blocks.get(d.discarded_call) || []) block.el.classList.add("replaced");
        this.entry(frame, `Retried: call ${d.discarded_call} replaced by call ${d.call}`, "warn",
          h("p", { text: `attempt ${d.attempt}: ${d.reason}` }));
        return;
      case "run.resumed":
        this.entry(frame, "Resumed", "info", h("p", { text: `the service restarted; continued after seq ${d.from_seq} (${d.reason})` }));
        return;
      case "run.cancel_requested":
        this.entry(frame, "Cancel requested", "warn");
        return;
      case "run.cancelled":
        this.entry(frame, "Cancelled", "end cancelled");
        return;
      case "run.completed":
        this.entry(frame, "Completed", "end completed");
        return;
      case "run.failed":
        this.entry(frame, "Failed", "end failed", h("p", { text: `${d.error_class}: ${d.message}` }));
        return;
      default:
        this.entry(frame, frame.type, "info", h("pre", { text: json(d) }));
    }
  }

  /** Show only the events up to `seq` (Infinity: all). */
  showUpTo(seq) {
    this.limit = seq;
    for (const el of this.el.querySelectorAll("[data-seq]")) el.hidden = Number(el.dataset.seq) > seq;
    for (const el of this.el.querySelectorAll(".assistant")) el.hidden = Number(el.dataset.first) > seq;
  }
}

function inputPanel(runId, waiting, onError) {
  const error = h("p", { class: "error", role: "alert" });
  async function send(content, buttons) {
    for (const b of buttons) b.disabled = true;
    error.textContent = "";
    try {
      await api("POST", `/v1/runs/${id(runId)}/input`, { content });
    } catch (err) {
      error.textContent = `Not sent: ${err.message}`;
      for (const b of buttons) b.disabled = false;
      onError?.(err);
    }
  }
  if (waiting.kind === "confirmation") {
    const approve = h("button", { type: "button", class: "primary", text: "Approve" });
    const deny = h("button", { type: "button", class: "danger", text: "Deny" });
    approve.addEventListener("click", () => send("approve", [approve, deny]));
    deny.addEventListener("click", () => send("deny", [approve, deny]));
    return h("section", { class: "card waiting", "aria-label": "Confirmation" },
      h("h2", { text: `Confirm tool call: ${waiting.tool_name}` }),
      h("p", { text: waiting.prompt }),
      waiting.arguments ? h("pre", { text: json(waiting.arguments) }) : null,
      error, h("div", { class: "actions" }, approve, deny));
  }
  const answer = h("textarea", { rows: 3, required: true });
  const button = h("button", { type: "submit", class: "primary", text: "Send" });
  const form = h("form", {
    class: "card waiting",
    method: "post",
    "aria-label": "Reply to the run",
    onsubmit: (event) => {
      event.preventDefault();
      if (answer.value.trim()) send(answer.value, [button]);
    },
  },
  h("h2", { text: "The run asks" }),
  h("p", { class: "question", text: waiting.prompt }),
  field("Answer", answer), error, h("div", { class: "actions" }, button));
  return form;
}

export function renderRun(main, runId) {
  let run = null;
  let pending = null; // the open run.waiting_for_input, if any
  let lastSeq = 0;
  let ended = false;
  let replaySeq = null; // null: following live
  let replayToken = 0;
  let refreshTimer = null;
  let stopped = false;
  let stream = null;

  const title = h("h1", {}, "Run ", h("span", { class: "mono", text: shortId(runId) }));
  const badge = h("span");
  const details = h("div");
  const failure = h("p", { class: "error-box", hidden: true });
  const cancel = h("button", { type: "button", class: "danger", text: "Cancel run", hidden: true });
  const actionsError = h("p", { class: "error", role: "alert" });
  const inputSlot = h("div");
  const connection = h("span", { class: "connection", role: "status" });
  const timeline = new Timeline();

  const slider = h("input", { type: "range", min: 0, max: 0, value: 0, step: 1, disabled: true });
  const position = h("output", { for: "replay", class: "mono" });
  const replayStatus = h("p", { id: "replay-status", class: "replay-status", "aria-live": "polite" });
  const live = h("button", { type: "button", class: "quiet", text: "Back to live", hidden: true });
  slider.id = "replay";

  function showHeader() {
    if (!run) return;
    replace(badge, statusBadge(run.status));
    replace(details, detailList(run));
    failure.hidden = !run.error_class;
    failure.textContent = run.error_class ? `${run.error_class}: ${run.error_message ?? ""}` : "";
    cancel.hidden = !LIVE.has(run.status);
  }

  function showInput() {
    replace(inputSlot, pending && !stopped ? inputPanel(runId, pending) : null);
  }

  async function refresh() {
    try {
      run = await api("GET", `/v1/runs/${id(runId)}`);
      if (!stopped) showHeader();
    } catch (err) {
      if (!stopped && !run) replace(main, h("h1", { text: "Run" }), h("p", { class: "error", role: "alert", text: `Could not load the run: ${err.message}` }));
    }
  }

  function refreshSoon() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(refresh, 100);
  }

  function showPosition() {
    position.textContent = `seq ${slider.value} of ${lastSeq}`;
    live.hidden = replaySeq === null;
    if (replaySeq !== null) return;
    delete replayStatus.dataset.status;
    if (!lastSeq) replayStatus.textContent = "";
    else if (ended) replayStatus.textContent = `All ${lastSeq} events. Move the slider to see the run as it stood at an earlier seq.`;
    else replayStatus.textContent = `Following the run as it happens (seq ${lastSeq}).`;
  }

  async function replayTo(seq) {
    const token = ++replayToken;
    replayStatus.textContent = `At seq ${seq}: loading…`;
    try {
      const then = await api("GET", `/v1/runs/${id(runId)}?as_of_seq=${seq}`);
      if (token !== replayToken || stopped) return;
      replace(replayStatus,
        `At seq ${seq}: `, statusBadge(then.status),
        ` · tokens ${integer(then.total_input_tokens)} / ${integer(then.total_output_tokens)} · ${cost(then.total_cost_usd)}`,
        then.error_class ? ` · ${then.error_class}` : "");
      replayStatus.dataset.status = then.status;
    } catch (err) {
      if (token === replayToken) replayStatus.textContent = `At seq ${seq}: ${err.message}`;
    }
  }

  slider.addEventListener("input", () => {
    const seq = Number(slider.value);
    replaySeq = seq >= lastSeq ? null : seq;
    timeline.showUpTo(replaySeq ?? Infinity);
    showPosition();
    if (replaySeq !== null) replayTo(seq);
    else replayToken += 1;
  });
  live.addEventListener("click", () => {
    slider.value = String(lastSeq);
    slider.dispatchEvent(new Event("input"));
    slider.focus();
  });
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    actionsError.textContent = "";
    try {
      await api("POST", `/v1/runs/${id(runId)}:cancel`);
      refreshSoon();
    } catch (err) {
      actionsError.textContent = `Not cancelled: ${err.message}`;
    } finally {
      cancel.disabled = false;
    }
  });

  function onEvent(frame) {
    if (stopped) return;
    lastSeq = frame.seq;
    ended = TERMINAL.has(frame.type);
    timeline.add(frame);
    slider.disabled = false;
    slider.min = "1";
    slider.max = String(lastSeq);
    if (replaySeq === null) slider.value = String(lastSeq);
    showPosition();
    if (frame.type === "run.waiting_for_input") pending = frame.data;
    else if (frame.type === "run.input_provided" || TERMINAL.has(frame.type)) pending = null;
    if (frame.type !== "message.delta") {
      showInput();
      if (run && STATUS_AFTER[frame.type] && run.status !== STATUS_AFTER[frame.type]) {
        run = { ...run, status: STATUS_AFTER[frame.type] };
        showHeader();
      }
      refreshSoon();
    }
  }

  const connectionText = {
    connecting: "Connecting…",
    live: "Live",
    reconnecting: "Connection lost: reconnecting…",
    ended: "Finished",
  };

  replace(
    main,
    h("p", { class: "crumbs" }, h("a", { href: "#/runs", text: "Runs" }), " / ", h("span", { class: "mono", text: runId })),
    h("div", { class: "page-head" }, h("div", { class: "title" }, title, badge), h("div", { class: "actions" }, connection, cancel)),
    actionsError,
    failure,
    details,
    inputSlot,
    h("section", { class: "card replay", "aria-label": "Replay" },
      h("div", { class: "replay-row" }, field("Replay to seq", slider), position, live),
      replayStatus),
    h("h2", { text: "Timeline" }),
    timeline.el,
  );

  refresh().then(() => {
    if (stopped || !run) return;
    stream = followRun(runId, {
      afterSeq: 0,
      onEvent,
      onState: (state, detail) => {
        if (stopped) return;
        connection.textContent = state === "error" ? `Stream error: ${detail}` : connectionText[state];
        connection.dataset.state = state;
      },
    });
  });

  return () => {
    stopped = true;
    clearTimeout(refreshTimer);
    stream?.stop();
  };
}
