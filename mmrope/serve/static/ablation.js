// mmrope serve --ablation: draw what the /api/ answers hold. Every text goes in as textContent, never as HTML; the
// curves are SVG elements made one by one; nothing is fetched from anywhere but this server.
"use strict";
// common.js: $, element, showError, tableParts, idsParts

const SVG = "http://www.w3.org/2000/svg";
// the colours the report's plots give the arms, in the same order: matplotlib's tab10, or tab20 past 10 arms
const TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf"];
const TAB20 = ["#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896", "#9467bd",
               "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7", "#bcbd22", "#dbdb8d",
               "#17becf", "#9edae5"];
let summary = null;

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function options(select, values, labels, chosen) {
  select.replaceChildren(...values.map((value, i) => {
    const option = element("option", labels ? labels[i] : value);
    option.value = value;
    return option;
  }));
  if (chosen !== undefined && values.includes(chosen)) select.value = chosen;
}

async function get(path, query) {
  const response = await fetch(`${path}?${new URLSearchParams(query || {})}`, { cache: "no-store" });
  const answer = await response.json();
  if (answer.error) throw new Error(answer.error);
  return answer;
}

function colourOf(arm) {
  const i = summary.arms.indexOf(arm);
  return summary.arms.length <= TAB10.length ? TAB10[i] : TAB20[i % TAB20.length];
}

const pointKey = (p) => [p.protocol, p.factor, p.frames ?? ""].join("|");
function pointQuery(key) {
  const [protocol, factor, frames] = key.split("|");
  return { protocol, factor, frames };
}
const fixed = (x, digits) => (x === null || x === undefined ? "" : x.toFixed(digits));
const signed = (x, digits) => (x >= 0 ? "+" : "") + x.toFixed(digits);
const pValue = (p) => (p >= 1e-4 ? String(Number(p.toPrecision(2))) : "< 1e-4");

// --- the plan and the selects ---------------------------------------------------------------------------------

async function start() {
  try {
    summary = await get("/api/summary");
  } catch (err) {
    showError(`cannot read the ablation (${err.message})`);
    return;
  }
  const s = summary;
  const scored = Object.values(s.scored).reduce((n, seeds) => n + seeds.length, 0);
  $("plan").textContent = `preset ${s.preset} of ${s.grid} (base ${s.base}): ${s.arms.length} arms x ` +
    `${s.seeds.length} seed${s.seeds.length === 1 ? "" : "s"}, ${s.max_steps} steps each, ${s.n} scenes per split; ` +
    `trained at ${s.train_size} px; ${scored} of ${s.arms.length * s.seeds.length} runs scored; folder ${s.folder}`;
  if (s.refused.length) showError(s.refused.join("\n"));

  options($("split"), s.splits);
  options($("protocol"), s.protocols);
  options($("metric"), s.metrics);
  options($("series"), s.series, undefined, `val/${s.metric}`);
  const offPoints = s.points.filter((p) => !p.train);
  options($("scene-split"), s.splits);
  const trainPoint = s.points.find((p) => p.train);
  options($("scene-point"), s.points.map(pointKey), s.points.map((p) => p.label + (p.train ? " train" : "")),
          trainPoint ? pointKey(trainPoint) : undefined);
  options($("scene-seed"), s.seeds.map(String));
  const shows = ["all", "disagree", ...s.arms.flatMap((a) => [`wrong:${a}`, `right:${a}`])];
  options($("show"), shows, shows.map((v) => v.replace(":", " by ")), s.arms.length ? `wrong:${s.arms[0]}` : "all");
  const pair = s.comparisons.length ? s.comparisons[0].arms : s.arms.slice(0, 2);
  options($("arm-a"), s.arms, undefined, pair[0]);
  options($("arm-b"), s.arms, undefined, pair[1] ?? pair[0]);
  options($("inspect-seed"), s.seeds.map(String));
  options($("inspect-split"), s.splits);
  $("inspect-index").max = s.n - 1;
  options($("inspect-off"), offPoints.map(pointKey), offPoints.map((p) => p.label),
          offPoints.length ? pointKey(offPoints[offPoints.length - 1]) : undefined);

  for (const id of ["split", "protocol", "metric"]) $(id).addEventListener("change", drawTable);
  $("series").addEventListener("change", drawCurves);
  for (const id of ["scene-split", "scene-point", "scene-seed", "show"]) $(id).addEventListener("change", drawScenes);
  $("inspect-form").addEventListener("submit", (event) => { event.preventDefault(); inspect(); });

  drawComparisons();
  await Promise.all([drawTable(), drawCurves(), drawScenes()]);
}

// --- the arms x sizes table ------------------------------------------------------------------------------------

async function drawTable() {
  const metric = $("metric").value, split = $("split").value, protocol = $("protocol").value;
  let answer;
  try {
    answer = await get("/api/table", { metric });
  } catch (err) {
    showError(err.message);
    return;
  }
  const points = summary.points.filter((p) => p.protocol === protocol);
  const cells = new Map(answer.cells.filter((c) => c.split === split)
    .map((c) => [`${c.arm}|${pointKey(c)}`, c]));
  const head = element("tr");
  head.append(element("th", "arm"), ...points.map((p) => element("th", p.label + (p.train ? " train" : ""),
                                                                  p.train ? "train" : "")));
  const rows = summary.arms.map((arm) => {
    const row = element("tr");
    const name = element("th", arm);
    name.style.borderLeft = `4px solid ${colourOf(arm)}`;
    row.append(name);
    for (const p of points) {
      const c = cells.get(`${arm}|${pointKey(p)}`);
      const cell = element("td", undefined, p.train ? "train" : "");
      if (c) {
        cell.append(element("span", fixed(c.mean, 3), "mean"), " ",
                    element("span", `[${fixed(c.low, 2)}, ${fixed(c.high, 2)}]`, "interval"));
        cell.style.background = `rgba(59, 91, 219, ${(0.05 + 0.35 * c.mean).toFixed(3)})`;
        cell.title = `${c.seeds} seed${c.seeds === 1 ? "" : "s"}`;
      }
      row.append(cell);
    }
    return row;
  });
  $("table").replaceChildren(...tableParts(head, rows));
  $("table-note").textContent = `${metric} accuracy on ${split}` + (protocol === "scaled" ? "" : ` (${protocol})`) +
    ": mean over (seed, scene) and its 95% interval (two-level bootstrap: seeds, then scenes), as results.md. " +
    "Empty: not scored yet.";
}

function drawComparisons() {
  const results = summary.comparisons;
  if (!results.length) {
    $("compare-note").textContent = "The preset states no comparisons in advance (compare: in the grid).";
    $("comparisons").replaceChildren();
    return;
  }
  const m = results.filter((r) => !r.missing).length;
  const looks = summary.looks;
  const level = +summary.level.toPrecision(3); // the server's: 0.05 over the looks
  const confidence = `${+(100 * (1 - summary.level)).toPrecision(4)}%`;
  $("compare-note").textContent = "Stated in the grid before the runs; each on the paired (seed, scene) outcomes of " +
    `its two arms. p: exact McNemar on the discordant pairs; Holm: adjusted over these ${m}, significant below ` +
    `${level}; interval: two-level bootstrap of the difference, ${confidence}; MDD: the difference the test had an ` +
    "80% chance to detect (a null can miss a smaller one)." + (looks > 1 ? ` These were read ${looks} times, runs ` +
    `or seeds added after a look left one open, so each look gets ${level} (Bonferroni over the looks).` : "") +
    (results.some((r) => r.interaction) ? " An interaction row compares two arms' difference " +
    "with two others': p is the exact sign test on the per-pair contrast, the counts the pairs it favours A / B." : "");
  const head = element("tr");
  head.append(...["A", "B", "at", "A", "B", `A - B [${confidence} CI]`, "only A / only B right", "p", "Holm p", "MDD",
                  "reading"].map((t) => element("th", t)));
  const rows = results.map((r) => {
    const row = element("tr");
    if (r.missing) {
      row.append(...[r.a, r.b, r.where].map((t) => element("td", t)), element("td", "not scored yet", "muted"));
      row.lastChild.colSpan = 8;
      return row;
    }
    const reading = { a: "A > B", b: "B > A", runs_only: "these runs differ; the seeds' interval includes 0" }[r.verdict]
      ?? "no difference detected (MDD)";
    const mean = r.interaction ? signed : fixed; // an interaction's sides are differences
    row.append(...[r.a, r.b, `${r.where}: ${r.metric}`, mean(r.mean_a, 3), mean(r.mean_b, 3),
                   `${signed(r.diff, 3)} [${signed(r.low, 3)}, ${signed(r.high, 3)}]`, `${r.only_a} / ${r.only_b}`,
                   pValue(r.p), pValue(r.holm), fixed(r.mdd, 3), reading].map((t) => element("td", t)));
    row.lastChild.className = r.verdict === "null" ? "muted" : "verdict";
    return row;
  });
  $("comparisons").replaceChildren(...tableParts(head, rows));
}

// --- learning curves -------------------------------------------------------------------------------------------

async function drawCurves() {
  const series = $("series").value;
  if (!series) {
    $("curves").replaceChildren();
    $("curves-note").textContent = "No run has a CSV log (logs/version_*/metrics.csv) yet.";
    return;
  }
  let answer;
  try {
    answer = await get("/api/curves", { series });
  } catch (err) {
    showError(err.message);
    return;
  }
  const W = 760, H = 300, left = 52, right = 12, top = 14, bottom = 40;
  const all = answer.arms.flatMap((a) => Object.values(a.seeds).flat());
  const accuracy = series.startsWith("val/") && !series.endsWith("loss");
  const yMax = accuracy ? 1 : Math.max(...all.map((p) => p[1]), 1e-9) * 1.05;
  const xMax = Math.max(answer.max_steps, ...all.map((p) => p[0]));
  const x = (step) => left + (step / xMax) * (W - left - right);
  const y = (value) => top + (1 - value / yMax) * (H - top - bottom);
  const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
                            "aria-label": `${series} against training step` });
  for (let i = 0; i <= 4; i++) {
    const value = (yMax * i) / 4, step = Math.round((xMax * i) / 4);
    plot.append(svg("line", { x1: left, x2: W - right, y1: y(value), y2: y(value), class: "grid" }),
                svg("text", { x: left - 6, y: y(value) + 4, "text-anchor": "end", class: "tick" },
                    accuracy ? value.toFixed(2) : value.toPrecision(2)),
                svg("text", { x: x(step), y: H - bottom + 16, "text-anchor": "middle", class: "tick" }, step));
  }
  plot.append(svg("text", { x: (W + left) / 2, y: H - 6, "text-anchor": "middle", class: "axis" }, "training step"),
              svg("text", { x: 12, y: (H - bottom) / 2, transform: `rotate(-90 12 ${(H - bottom) / 2})`,
                            "text-anchor": "middle", class: "axis" }, series));
  if (answer.threshold !== null) {
    plot.append(svg("line", { x1: left, x2: W - right, y1: y(answer.threshold), y2: y(answer.threshold),
                              class: "threshold" }));
  }
  const line = (points) => points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`)
    .join("");
  let drawn = 0;
  for (const arm of answer.arms) {
    const colour = colourOf(arm.arm);
    for (const [seed, points] of Object.entries(arm.seeds)) {
      const path = svg("path", { d: line(points), stroke: colour, class: "seed" });
      path.append(svg("title", {}, `${arm.arm} seed ${seed}`));
      plot.append(path);
      drawn += 1;
    }
    if (arm.mean.length) {
      const path = svg("path", { d: line(arm.mean), stroke: colour, class: "mean", "data-arm": arm.arm });
      path.append(svg("title", {}, `${arm.arm}: mean over seeds`));
      plot.append(path);
    }
  }
  $("curves").replaceChildren(plot);
  $("legend").replaceChildren(...answer.arms.map((arm) => {
    const item = element("li", arm.arm);
    const swatch = element("span", undefined, "swatch");
    swatch.style.background = colourOf(arm.arm);
    item.prepend(swatch);
    if (!Object.keys(arm.seeds).length) item.className = "muted";
    return item;
  }));
  $("curves-note").textContent = `${series} from each run's CSV log: thin lines the seeds (${drawn} runs), thick ` +
    "the mean over an arm's seeds" + (answer.threshold !== null ? `; dashed: the preset's threshold ` +
    `${answer.threshold}` : "") + ".";
}

// --- scenes ----------------------------------------------------------------------------------------------------

async function drawScenes() {
  const query = { split: $("scene-split").value, seed: $("scene-seed").value, show: $("show").value,
                  ...pointQuery($("scene-point").value) };
  let answer;
  try {
    answer = await get("/api/scenes", query);
  } catch (err) {
    showError(err.message);
    return;
  }
  const arms = summary.arms;
  const head = element("tr");
  head.append(element("th", "scene"), element("th", "image"), element("th", "reference"),
              ...arms.map((arm) => element("th", arm)), element("th"));
  const rows = answer.rows.map((scene) => {
    const row = element("tr");
    const image = element("img");
    image.loading = "lazy";
    image.alt = `scene ${scene.index} at ${answer.point.label}`;
    image.src = `/api/image?${new URLSearchParams({ split: answer.split, index: scene.index,
                                                    ...pointQuery(pointKey(answer.point)) })}`;
    const picture = element("td");
    picture.append(image);
    row.append(element("td", scene.index, "index"), picture, element("td", scene.reference, "reference"));
    for (const arm of arms) {
      const written = scene.arms[arm];
      const outcome = !written || written.score === null ? "" : written.score >= 0.5 ? "right" : "wrong";
      row.append(element("td", written ? written.prediction || "(empty caption)" : "", `caption ${outcome}`));
    }
    const button = element("button", "inspect");
    button.type = "button";
    button.addEventListener("click", () => {
      $("inspect-split").value = answer.split;
      $("inspect-seed").value = String(answer.seed);
      $("inspect-index").value = scene.index;
      if (!answer.point.train) $("inspect-off").value = pointKey(answer.point);
      inspect();
    });
    const action = element("td");
    action.append(button);
    row.append(action);
    return row;
  });
  $("scenes").replaceChildren(...tableParts(head, rows));
  Object.assign($("scenes").dataset, { show: answer.show, point: pointKey(answer.point) });
  const counts = arms.map((arm) => `${arm} ${answer.counts[arm].wrong} wrong of ` +
    `${answer.counts[arm].right + answer.counts[arm].wrong}`).join("; ");
  $("scenes-note").textContent = `${answer.total} scene${answer.total === 1 ? "" : "s"} shown` +
    (answer.rows.length < answer.total ? ` (the first ${answer.rows.length} listed)` : "") +
    ` at ${answer.point.label}, seed ${answer.seed}, by ${answer.metric}: ${counts}. Green: right, red: wrong.`;
}

// --- one scene, two arms ---------------------------------------------------------------------------------------

async function inspect() {
  const query = { a: $("arm-a").value, b: $("arm-b").value, seed: $("inspect-seed").value,
                  split: $("inspect-split").value, index: $("inspect-index").value,
                  ...pointQuery($("inspect-off").value || "scaled|1|") };
  $("error").hidden = true;
  $("status").textContent = `inspecting scene ${query.index} with ${query.a} and ${query.b} ...`;
  let answer;
  try {
    answer = await get("/api/inspect", query);
  } catch (err) {
    showError(err.message);
    return;
  }
  $("status").textContent = `scene ${answer.index} of ${answer.split}, seed ${answer.seed}: ${answer.seconds} s`;
  const arms = [...new Set(answer.panels.map((p) => p.arm))];
  const sizes = [...new Set(answer.panels.map((p) => p.point.label))];
  $("panels").style.gridTemplateColumns = `repeat(${arms.length}, minmax(0, 1fr))`;
  $("panels").replaceChildren(...sizes.flatMap((label) => arms.map((arm) =>
    panel(answer.panels.find((p) => p.arm === arm && p.point.label === label), answer))));
  $("panels").dataset.scene = answer.index;
}

function panel(p, answer) {
  const box = element("article", undefined, "panel");
  const title = element("h3", p.arm);
  title.style.borderLeft = `4px solid ${colourOf(p.arm)}`;
  title.append(element("span", ` ${p.point.label}${p.point.train ? " (training size)" : ""}`, "muted"));
  const outcome = p.score === null ? "" : p.score >= 0.5 ? "right" : "wrong";
  const top = element("div", undefined, "panel-top");
  const image = element("img");
  image.src = p.image;
  image.alt = `scene ${answer.index} as ${p.arm} read it`;
  const words = element("div");
  words.append(element("p", "caption", "label"), element("p", p.caption || "(empty caption)", `caption ${outcome}`),
               element("p", `reference: ${answer.reference}`, "muted"),
               element("p", `${p.pos_encoding} + ${p.scheme}, read at ${p.size[1]}x${p.size[0]}`, "muted"));
  if (p.written !== null && p.written !== p.caption) {
    words.append(element("p", `predictions.csv holds: ${p.written}`, "muted"));
  }
  top.append(image, words);
  const overlays = element("div", undefined, "overlays");
  overlays.append(...p.words.map((word) => {
    const figure = element("figure");
    const overlay = element("img");
    overlay.src = word.overlay;
    overlay.alt = `attention for "${word.word}"`;
    const caption = element("figcaption", word.word);
    caption.append(element("div", `${Math.round(word.share * 100)}% on the image`, "share"));
    figure.append(overlay, caption);
    return figure;
  }));
  const details = element("details");
  details.append(element("summary", `(t, h, w) ids of the ${p.ids.tokens.length} tokens`), idsTable(p.ids));
  box.append(title, top, overlays, details);
  return box;
}

function idsTable(ids) {
  const table = element("table");
  table.append(...idsParts(ids));
  const wrap = element("div", undefined, "ids");
  wrap.append(table);
  return wrap;
}

document.addEventListener("DOMContentLoaded", start);
