// DOM helpers. Text only ever enters the page as text nodes (textContent), never as markup:
// everything a model, a tool or a user wrote is shown exactly as written and runs nothing.

/**
 * Make an element. `attrs`: `class`, `text`, `dataset`, `on<event>` handlers, booleans, or
 * plain attributes. Children: nodes, strings (as text), arrays of those, or null.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = String(value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** A labelled form field: `<label>` tied to its control by id. */
let fieldCount = 0;
export function field(label, control, hint) {
  fieldCount += 1;
  control.id = control.id || `field-${fieldCount}`;
  const parts = [h("label", { for: control.id, text: label }), control];
  if (hint) {
    const hintEl = h("small", { id: `${control.id}-hint`, class: "hint", text: hint });
    control.setAttribute("aria-describedby", hintEl.id);
    parts.push(hintEl);
  }
  return h("div", { class: "field" }, parts);
}

export function statusBadge(status) {
  return h("span", { class: `status status-${status}`, text: status.replaceAll("_", " ") });
}
