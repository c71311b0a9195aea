"""The page ``GET /`` serves: one self-contained HTML file (inline CSS and JS, nothing fetched but
``POST /predict``) where a person drops an image, types a text or pastes a row and sees the
predictions as bars."""

from __future__ import annotations

import html
import json

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>deepworks: __TITLE__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.3rem}#drop{border:2px dashed #888;border-radius:8px;padding:2rem;text-align:center;cursor:pointer}
#drop.over{background:#eef5ff;border-color:#36c}textarea{width:100%;min-height:6rem;font:inherit}
#preview{max-width:8rem;max-height:8rem;image-rendering:pixelated;display:none;margin:1rem auto}
.row{display:flex;align-items:center;gap:.5rem;margin:.3rem 0}.label{width:9rem;text-align:right;overflow:hidden}
.track{flex:1;background:#eee;height:1.1rem;border-radius:3px}.bar{background:#36c;height:100%;border-radius:3px}
.prob{width:4.5rem;font-variant-numeric:tabular-nums}#error{color:#b00;white-space:pre-wrap}
button{margin-top:.5rem;font:inherit}
</style></head><body>
<h1>deepworks &middot; __TITLE__</h1>
<p>__HINT__</p>
<div id="input"></div>
<div id="error" role="alert"></div>
<div id="results" aria-live="polite"></div>
<script>
const KIND = __KIND__, TOP_K = __TOPK__;
const input = document.getElementById("input"), results = document.getElementById("results"),
      errorBox = document.getElementById("error");
function show(predictions) {
  results.innerHTML = "";
  for (const p of predictions) {
    const row = document.createElement("div"); row.className = "row prediction";
    const label = document.createElement("span"); label.className = "label"; label.textContent = p.label;
    const track = document.createElement("div"); track.className = "track";
    const bar = document.createElement("div"); bar.className = "bar";
    bar.style.width = (100 * p.probability).toFixed(1) + "%"; track.appendChild(bar);
    const prob = document.createElement("span"); prob.className = "prob";
    prob.textContent = (100 * p.probability).toFixed(1) + "%";
    row.append(label, track, prob); results.appendChild(row);
  }
}
async function send(body, headers) {
  errorBox.textContent = ""; results.textContent = "predicting\u2026";
  try {
    const r = await fetch("/predict?top_k=" + TOP_K, {method: "POST", body, headers});
    const data = await r.json();
    if (!r.ok) { results.textContent = ""; errorBox.textContent = r.status + ": " + (data.error || r.statusText); return; }
    if (data.predictions) show(data.predictions);
    else if (data.results && data.results[0].predictions) show(data.results[0].predictions);
    else results.textContent = JSON.stringify(data.results || data);
  } catch (e) { results.textContent = ""; errorBox.textContent = String(e); }
}
if (KIND === "image") {
  input.innerHTML = '<label id="drop">Drop an image here, or click to choose one'
    + '<input id="file" type="file" accept="image/*" hidden></label><img id="preview" alt="">';
  const drop = document.getElementById("drop"), file = document.getElementById("file"),
        preview = document.getElementById("preview");
  function upload(f) {
    preview.src = URL.createObjectURL(f); preview.style.display = "block";
    const form = new FormData(); form.append("file", f); send(form);
  }
  file.addEventListener("change", () => file.files[0] && upload(file.files[0]));
  drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files[0]) upload(e.dataTransfer.files[0]); });
} else {
  const example = KIND === "text" ? "a fine film" : '{"column": "value"}';
  input.innerHTML = '<textarea id="text" placeholder=\\'' + example + '\\'></textarea><br><button id="go">Predict</button>';
  document.getElementById("go").addEventListener("click", () => {
    const value = document.getElementById("text").value;
    let body;
    if (KIND === "text") body = {texts: [value]};
    else { try { body = {rows: [JSON.parse(value)]}; }
           catch (e) { errorBox.textContent = "the row must be a JSON object: " + e; return; } }
    send(JSON.stringify(body), {"Content-Type": "application/json"});
  });
}
</script></body></html>
"""

_HINTS = {
    "image": "Drop an image to see the model's top predictions.",
    "text": "Type a text and press Predict.",
    "table": "Paste a row as a JSON object (column: value) and press Predict.",
}


def page_html(title: str, kind: str, top_k: int) -> str:
    """The page for a run named ``title`` that reads ``kind`` input (image, text or table)."""
    return (_PAGE.replace("__TITLE__", html.escape(title)).replace("__HINT__", _HINTS[kind])
            .replace("__KIND__", json.dumps(kind)).replace("__TOPK__", str(int(top_k))))
