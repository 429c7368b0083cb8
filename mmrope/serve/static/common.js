// What both pages draw alike: elements whose text goes in as textContent (never as HTML), errors, and the (t, h, w)
// ids of a sequence as a coloured table.
"use strict";

const $ = (id) => document.getElementById(id);

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("status").textContent = "";
}

// a table's header row and body rows -> its thead and tbody
function tableParts(head, rows) {
  const thead = element("thead");
  thead.append(head);
  const tbody = element("tbody");
  tbody.append(...rows);
  return [thead, tbody];
}

// viridis, five stops: low ids dark blue, high ids yellow
const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function viridis(x) {
  const at = Math.min(Math.max(x, 0), 1) * (STOPS.length - 1);
  const i = Math.min(Math.floor(at), STOPS.length - 2);
  const f = at - i;
  const rgb = STOPS[i].map((c, k) => Math.round(c + f * (STOPS[i + 1][k] - c)));
  return [`rgb(${rgb.join(",")})`, x > 0.6 ? "#000" : "#fff"];
}

// the ids {tokens, t, h, w} -> thead and tbody: a column per token, a row per axis, each cell coloured by its id
function idsParts(ids) {
  const all = [...ids.t, ...ids.h, ...ids.w];
  const low = Math.min(...all);
  const span = Math.max(...all) - low || 1;
  const head = element("tr");
  head.append(element("th"), ...ids.tokens.map((token) => element("th", token)));
  const rows = ["t", "h", "w"].map((axis) => {
    const row = element("tr");
    row.append(element("th", axis));
    for (const value of ids[axis]) {
      const cell = element("td", value);
      [cell.style.background, cell.style.color] = viridis((value - low) / span);
      row.append(cell);
    }
    return row;
  });
  return tableParts(head, rows);
}
