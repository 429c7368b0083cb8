// mmrope serve: upload one file, draw what /api/caption answers. Every text goes in as textContent, never as HTML.
"use strict";
// common.js: $, element, showError, idsParts

let info = { checkpoints: [], max_bytes: 0, max_pixels: 0, max_beams: 8 };
let lastFile = null;

async function loadInfo() {
  const response = await fetch("/api/info", { cache: "no-store" });
  info = await response.json();
  const select = $("ckpt");
  const chosen = select.value;
  select.replaceChildren(...info.checkpoints.map((name) => element("option", name)));
  if (info.checkpoints.includes(chosen)) select.value = chosen;
  else select.value = info.checkpoints.find((name) => name.endsWith("last.ckpt")) || info.checkpoints[0] || "";
  $("beams").max = info.max_beams;
  $("limits").textContent = `up to ${(info.max_bytes / 2 ** 20).toFixed(0)} MiB and ` +
    `${(info.max_pixels / 1e6).toFixed(0)} megapixels; ${info.checkpoints.length} checkpoint${info.checkpoints.length === 1 ? "" : "s"} offered`;
  if (!info.checkpoints.length) showError("no checkpoints under the served folder yet (.ckpt files or exported folders)");
}

async function upload(file) {
  lastFile = file;
  $("error").hidden = true;
  if (file.size > info.max_bytes) {  // the server refuses it too, before reading it
    showError(`${file.name}: ${file.size} bytes is over the upload limit of ${info.max_bytes} bytes`);
    return;
  }
  const query = new URLSearchParams({ ckpt: $("ckpt").value, strategy: $("strategy").value,
                                      beams: $("beams").value, name: file.name });
  $("status").textContent = `captioning ${file.name} ...`;
  let answer;
  try {
    const response = await fetch(`/api/caption?${query}`, {
      method: "POST", body: file,
      headers: { "Content-Type": "application/octet-stream", "X-Requested-With": "mmrope" },
    });
    answer = await response.json();
  } catch (err) {
    showError(`${file.name}: no answer from the server (${err.message})`);
    return;
  }
  if (answer.error) {
    showError(answer.error);
    return;
  }
  $("status").textContent = `${answer.name}: ${answer.seconds} s with ${answer.checkpoint}`;
  draw(answer);
}

function draw(answer) {
  $("result").hidden = false;
  $("input").src = answer.image;
  const [h, w] = answer.size;
  const what = answer.kind === "clip" ? `${answer.frames}-frame clip` : "image";
  $("meta").textContent = `${answer.name}: ${what} read at ${w}x${h}; ${answer.pos_encoding} + ${answer.scheme}`;
  $("caption").textContent = answer.caption || "(empty caption)";
  $("caption").dataset.strategy = answer.strategy;
  $("alternatives").replaceChildren(...answer.alternatives.map((text) =>
    element("li", text || "(empty)", text === answer.caption ? "chosen" : "")));

  $("overlays").replaceChildren(...answer.words.map((word) => {
    const figure = element("figure");
    const image = element("img");
    image.src = word.overlay;
    image.alt = `attention for "${word.word}"`;
    const caption = element("figcaption", word.word);
    caption.append(element("div", `${Math.round(word.share * 100)}% on the image`, "share"));
    figure.append(image, caption);
    return figure;
  }));
  drawIds(answer.ids, answer.scheme);
}

function drawIds(ids, scheme) {
  $("ids").replaceChildren(...idsParts(ids));
  $("ids-note").textContent = `${ids.tokens.length} tokens under position_scheme=${scheme}: the prompt ` +
    "(vision start, media tokens, vision end), then the caption";
}

function start() {
  loadInfo().catch((err) => showError(`cannot reach the server (${err.message})`));
  $("file").addEventListener("change", () => { if ($("file").files.length) upload($("file").files[0]); });
  for (const id of ["ckpt", "strategy", "beams"]) {
    $(id).addEventListener("change", () => { if (lastFile) upload(lastFile); });
  }
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) upload(event.dataTransfer.files[0]);
  });
}

document.addEventListener("DOMContentLoaded", start);
