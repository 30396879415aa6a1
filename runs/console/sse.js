// A run's event stream over fetch. EventSource cannot send an Authorization header, so the
// console reads the response body as a stream and parses it by the SSE rules itself.

import { SIGNED_OUT, authHeaders, id, session } from "./api.js";

export const TERMINAL = new Set(["run.completed", "run.failed", "run.cancelled"]);

/**
 * The event-stream parser of the HTML standard ("Server-sent events", "Parsing an event
 * stream"): lines end in CRLF, LF or CR (also split across chunks); a blank line dispatches;
 * `:` starts a comment; one optional space after the colon is dropped; `data` lines join with
 * LF; `id` sets the last event id (unless it holds NUL) and persists; `retry` takes digits.
 */
export class SseParser {
  constructor(onMessage) {
    this.onMessage = onMessage;
    this.buffer = "";
    this.data = [];
    this.eventType = "";
    this.lastEventId = "";
    this.retry = null;
    this.started = false;
    this.afterCR = false;
  }

  push(chunk) {
    let text = chunk;
    if (!this.started && text.length) {
      this.started = true;
      if (text.startsWith("\uFEFF")) text = text.slice(1);
    }
    if (this.afterCR && text.startsWith("\n")) text = text.slice(1);
    this.afterCR = false;
    text = this.buffer + text;
    let start = 0;
    for (let i = 0; i < text.length; i += 1) {
      const c = text[i];
      if (c !== "\r" && c !== "\n") continue;
      this.line(text.slice(start, i));
      if (c === "\r") {
        if (i + 1 === text.length) this.afterCR = true;
        else if (text[i + 1] === "\n") i += 1;
      }
      start = i + 1;
    }
    this.buffer = text.slice(start);
  }

  line(line) {
    if (line === "") {
      this.dispatch();
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const name = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "data") this.data.push(value);
    else if (name === "event") this.eventType = value;
    else if (name === "id" && !value.includes("\0")) this.lastEventId = value;
    else if (name === "retry" && /^[0-9]+$/.test(value)) this.retry = Number(value);
  }

  dispatch() {
    const { data, eventType } = this;
    this.data = [];
    this.eventType = "";
    if (!data.length) return;
    this.onMessage({ type: eventType || "message", data: data.join("\n"), lastEventId: this.lastEventId });
  }
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });

/**
 * Follow a run from `afterSeq`: `onEvent(frame)` once per event, in seq order, until its
 * terminal event. After a network loss (or a server restart) it reconnects with `after_seq`
 * set to the last id it saw, so nothing is missed and nothing is shown twice.
 * `onState(state, detail)`: "connecting", "live", "reconnecting", "ended", "error".
 * Returns `{stop()}`.
 */
export function followRun(runId, { afterSeq = 0, onEvent, onState }) {
  const controller = new AbortController();
  const { signal } = controller;
  let cursor = afterSeq;
  let ended = false;
  let retryMs = null;
  let backoff = 250;

  async function once() {
    const response = await fetch(`/v1/runs/${id(runId)}/events?after_seq=${cursor}`, {
      headers: { ...authHeaders(), Accept: "text/event-stream" },
      cache: "no-store",
      signal,
    });
    if (response.status === 401) {
      session.clear();
      window.dispatchEvent(new CustomEvent(SIGNED_OUT));
      return "fatal";
    }
    if (response.status >= 400 && response.status < 500) {
      onState("error", `the event stream answered ${response.status}`);
      return "fatal";
    }
    if (!response.ok || !response.body) return "retry";
    onState("live");
    backoff = 250;
    const parser = new SseParser((message) => {
      if (ended) return;
      const frame = JSON.parse(message.data);
      // The cursor is the frame's `id:`, as an EventSource would keep it.
      const seq = /^[0-9]+$/.test(message.lastEventId) ? Number(message.lastEventId) : frame.seq;
      if (seq <= cursor) return;
      cursor = seq;
      onEvent(frame);
      if (TERMINAL.has(frame.type)) ended = true;
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      while (!ended) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(value);
      }
    } finally {
      if (parser.retry !== null) retryMs = parser.retry;
      if (ended) reader.cancel().catch(() => {});
    }
    return ended ? "ended" : "retry";
  }

  (async () => {
    onState("connecting");
    while (!signal.aborted) {
      let outcome;
      try {
        outcome = await once();
      } catch {
        outcome = "retry"; // network loss, server restart, or stop()
      }
      if (signal.aborted || outcome === "fatal") return;
      if (outcome === "ended") {
        onState("ended");
        return;
      }
      onState("reconnecting");
      await sleep(retryMs ?? backoff, signal);
      backoff = Math.min(backoff * 2, 3000);
    }
  })();

  return {
    stop() {
      controller.abort();
    },
  };
}
