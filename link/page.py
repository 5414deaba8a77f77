"""The page ``xel-serve`` answers at ``GET /``: paste a sentence, select the mention, pick the language, link; or
paste a paragraph and see every mention the run's detector finds, highlighted with its entity, score and NIL
decision (``POST /link`` with ``documents``)."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>xel: link a mention</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; }
  textarea { width: 100%; height: 6rem; font-size: 1rem; }
  label { display: inline-block; margin: .5rem 1rem .5rem 0; }
  table { border-collapse: collapse; margin-top: 1rem; width: 100%; }
  td, th { border-bottom: 1px solid #ddd; padding: .3rem .6rem; text-align: left; }
  tr.pred { background: #e8f5e9; font-weight: bold; }
  #error { color: #b00020; }
  #verdict { margin-top: 1rem; font-size: 1.1rem; }
  small { color: #666; }
  #marked { margin-top: 1rem; line-height: 1.9; white-space: pre-wrap; }
  mark { background: #c8e6c9; border-radius: 3px; padding: 0 2px; }
  mark.nil { background: #ffe0b2; }
  mark sup { font-size: .7rem; color: #333; margin-left: 2px; }
</style>
</head>
<body>
<h1>Link a mention</h1>
<p><small>Model: {{MODEL}}. Paste a sentence, select the mention in it with the mouse (or type it below), pick
the sentence's language and press Link; or paste a paragraph and press "Find and link all mentions" to see every
mention the run's detector finds (green: linked, orange: NIL).</small></p>
<textarea id="text" placeholder="Wir waren letztes Jahr in Moskau im Urlaub."></textarea>
<div>
  <label>Mention <input id="mention" size="30" placeholder="Moskau"></label>
  <label>Language <select id="lang"></select></label>
  <label>Top <input id="k" type="number" min="1" max="100" value="10" style="width:4rem"></label>
  <button id="go">Link</button>
  <button id="all" title="find every mention of the text with the run's detector, and link each">Find and link all
  mentions</button>
  <label>Spotter <select id="spotter"><option value="tagger">detector</option>
  <option value="gazetteer">gazetteer (KB names)</option></select></label>
</div>
<div id="error" role="alert"></div>
<div id="verdict"></div>
<div id="marked"></div>
<table id="mentions" hidden>
  <thead><tr><th>Mention</th><th>Characters</th><th>Entity</th><th>KB id</th><th>Score</th><th>Detector</th></tr>
  </thead>
  <tbody></tbody>
</table>
<table id="results" hidden>
  <thead><tr><th>#</th><th>KB id</th><th>Name</th><th>Score</th><th>Source</th></tr></thead>
  <tbody></tbody>
</table>
<script>
const LANGS = {{LANGS}};
const $ = (id) => document.getElementById(id);
for (const code of LANGS) {
  const opt = document.createElement("option");
  opt.value = code; opt.textContent = code; if (code === "en") opt.selected = true;
  $("lang").appendChild(opt);
}
let span = null;
$("text").addEventListener("mouseup", () => {
  const t = $("text");
  if (t.selectionEnd > t.selectionStart) {
    span = [t.selectionStart, t.selectionEnd];
    $("mention").value = t.value.slice(span[0], span[1]);
  }
});
$("mention").addEventListener("input", () => { span = null; });
$("text").addEventListener("input", () => { span = null; });
function currentSpan() {
  const text = $("text").value, mention = $("mention").value;
  if (span && text.slice(span[0], span[1]) === mention) return span;
  const at = mention ? text.indexOf(mention) : -1;
  return at < 0 ? null : [at, at + mention.length];
}
function cell(row, value) { const td = document.createElement("td"); td.textContent = value; row.appendChild(td); }
function clear() {
  $("error").textContent = ""; $("verdict").textContent = ""; $("results").hidden = true;
  $("mentions").hidden = true; $("marked").replaceChildren();
}
$("all").addEventListener("click", async () => {
  clear();
  const text = $("text").value;
  const body = {documents: [{id: "page", text: text, lang: $("lang").value}], spotter: $("spotter").value,
                k: parseInt($("k").value, 10) || 10};
  const resp = await fetch("/link", {method: "POST", headers: {"Content-Type": "application/json"},
                                     body: JSON.stringify(body)});
  const data = await resp.json();
  if (!resp.ok) { $("error").textContent = data.detail; return; }
  const mentions = data.documents[0].mentions;
  $("verdict").textContent = `${mentions.length} mention(s) found, ` +
    `${mentions.filter((m) => m.pred !== null).length} linked, the rest NIL`;
  let at = 0;
  const tbody = $("mentions").querySelector("tbody");
  tbody.replaceChildren();
  for (const m of mentions) {
    $("marked").appendChild(document.createTextNode(text.slice(at, m.start)));
    const mark = document.createElement("mark");
    if (m.pred === null) mark.className = "nil";
    mark.textContent = text.slice(m.start, m.end);
    mark.title = m.pred === null ? `NIL (best score ${m.score})` : `${m.name} (${m.pred}), score ${m.score}`;
    const sup = document.createElement("sup");
    sup.textContent = m.pred === null ? "NIL" : m.name;
    mark.appendChild(sup);
    $("marked").appendChild(mark);
    at = m.end;
    const row = document.createElement("tr");
    [m.text, `${m.start}-${m.end}`, m.pred === null ? "NIL" : m.name, m.pred ?? "", m.score.toFixed(4),
     m.detect_score.toFixed(3)].forEach((v) => cell(row, v));
    tbody.appendChild(row);
  }
  $("marked").appendChild(document.createTextNode(text.slice(at)));
  $("mentions").hidden = mentions.length === 0;
});
$("go").addEventListener("click", async () => {
  clear();
  const text = $("text").value, s = currentSpan();
  if (!s) {
    $("error").textContent = "Select the mention in the sentence, or type a mention that occurs in it.";
    return;
  }
  const body = {items: [{id: "page", text: text, start: s[0], end: s[1], lang: $("lang").value}],
                k: parseInt($("k").value, 10) || 10};
  const resp = await fetch("/link", {method: "POST", headers: {"Content-Type": "application/json"},
                                     body: JSON.stringify(body)});
  const data = await resp.json();
  if (!resp.ok) { $("error").textContent = data.detail; return; }
  const link = data.links[0];
  $("verdict").textContent = link.pred === null
    ? `"${text.slice(s[0], s[1])}" is NIL (no entity above the threshold; best score ${link.score})`
    : `"${text.slice(s[0], s[1])}" is ${link.name} (${link.pred}), score ${link.score}`;
  const tbody = $("results").querySelector("tbody");
  tbody.replaceChildren();
  link.candidates.forEach((c, i) => {
    const row = document.createElement("tr");
    if (c[0] === link.pred) row.className = "pred";
    [i + 1, c[0], c[2], c[1].toFixed(4), link.sources[i]].forEach((v) => cell(row, v));
    tbody.appendChild(row);
  });
  $("results").hidden = false;
});
</script>
</body>
</html>
"""
