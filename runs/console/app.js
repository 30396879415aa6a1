// The console's entry point: a router over the URL's fragment (#/runs, #/runs/<id>,
// #/threads, #/threads/<id>) and the sign-in gate. Each view returns a function that stops
// whatever it started (streams, timers) when another view replaces it.

import { SIGNED_OUT, session } from "./api.js";
import { renderRun } from "./run.js";
import { renderRuns } from "./runs.js";
import { renderSignIn } from "./signin.js";
import { renderThread, renderThreads } from "./threads.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const signOut = document.getElementById("sign-out");
let stopView = () => {};

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  const [section, item] = parts;
  if (section === "runs" && item) return () => renderRun(main, decodeURIComponent(item));
  if (section === "threads" && item) return () => renderThread(main, decodeURIComponent(item));
  if (section === "threads") return () => renderThreads(main);
  return () => renderRuns(main);
}

function render(notice) {
  stopView();
  stopView = () => {};
  const signedIn = Boolean(session.token);
  nav.hidden = !signedIn;
  signOut.hidden = !signedIn;
  for (const link of nav.querySelectorAll("a")) {
    const current = location.hash.startsWith(link.getAttribute("href"));
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!signedIn) {
    renderSignIn(main, notice, () => render());
    return;
  }
  stopView = route()() || (() => {});
}

signOut.addEventListener("click", () => {
  session.clear();
  render("You are signed out.");
});
window.addEventListener(SIGNED_OUT, () => render("Your session ended: sign in again."));
window.addEventListener("hashchange", () => {
  render();
  main.focus({ preventScroll: true });
});
if (!location.hash) history.replaceState(null, "", "#/runs");
render();
