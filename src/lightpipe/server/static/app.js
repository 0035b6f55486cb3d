// lightpipe playground: pick a served pipeline, fill the task's form, see the result the way
// the Hub's widgets show it. Talks to the server's own HF Inference API route (POST /models/ID);
// chat mode (chat.js) talks to /v1/chat/completions; snippets.js turns the request shown into
// curl and Python. Those two load first; this file starts the page.
"use strict";

const $ = (id) => document.getElementById(id);
const TASKS = [
  "text-classification", "token-classification", "question-answering", "zero-shot-classification",
  "fill-mask", "feature-extraction", "sentence-similarity", "text-generation", "summarization",
  "translation", "text2text-generation",
];
const EXAMPLES = {
  "text-classification": "I've been waiting for a HuggingFace course my whole life.",
  "token-classification": "My name is Sylvain and I work at Hugging Face in Brooklyn.",
  "zero-shot-classification": "This is a course about the Transformers library",
  "text-generation": "In this course, we will teach you how to",
  "summarization": "America has changed dramatically during recent years. Not only has the number of graduates in traditional engineering disciplines such as mechanical, civil, electrical, chemical, and aeronautical engineering declined, but in most of the premier American universities engineering curricula now concentrate on and encourage largely the study of engineering science.",
  "translation": "This course is produced by Hugging Face.",
  "text2text-generation": "translate English to French: This course is produced by Hugging Face.",
};
// the parameter each route reads to cut a too-long input (without it: 422). The embedding routes
// read TEI's / InferenceClient's `truncate`; the pipelines' routes transformers' `truncation`.
// Question answering (doc_stride) and zero-shot (always truncates) have none.
const TRUNCATION = {
  "text-classification": "truncation", "token-classification": "truncation", "fill-mask": "truncation",
  "feature-extraction": "truncate", "sentence-similarity": "truncate",
  "summarization": "truncation", "translation": "truncation", "text2text-generation": "truncation",
};
let info = { models: [], allow_load: false };
let current = null; // the selected model's info entry
let running = null; // the AbortController of the request in flight (the stop button aborts it)

// -- small DOM helpers (user text always goes in as textContent, never as HTML) ------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;
    else if (k in node && typeof v !== "string") node[k] = v;
    else node.setAttribute(k, v);
  }
  for (const child of children.flat()) {
    if (child == null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function field(label, input) {
  return el("div", {}, el("label", { for: input.id }, label), input);
}

function showError(message) {
  $("result").replaceChildren(el("div", { class: "error", role: "alert" }, message));
}

function modelPath(id) {
  return "/models/" + id.split("/").map(encodeURIComponent).join("/");
}

// -- API key (a server started with --api-key): kept for this tab, sent with every call ------

const KEY_STORE = "lightpipe-api-key";
const plainFetch = window.fetch.bind(window);
window.fetch = (path, options = {}) => {
  const key = sessionStorage.getItem(KEY_STORE);
  if (!key || typeof path !== "string" || !path.startsWith("/")) return plainFetch(path, options);
  const headers = new Headers(options.headers || {});
  headers.set("Authorization", "Bearer " + key);
  return plainFetch(path, { ...options, headers });
};

function setupApiKey() {
  const input = $("api-key");
  input.value = sessionStorage.getItem(KEY_STORE) || "";
  input.addEventListener("change", () => {
    if (input.value.trim()) sessionStorage.setItem(KEY_STORE, input.value.trim());
    else sessionStorage.removeItem(KEY_STORE);
    refresh().catch((e) => showError(`could not reach the server: ${e.message}`));
  });
}

// the headers of the requests a task sends (and of the curl / Python shown for them)
function requestHeaders() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { "Content-Type": "application/json", Authorization: "Bearer " + key } : { "Content-Type": "application/json" };
}

// an error body's message: {"error": "..."} (HF / TGI / TEI) or {"error": {"message": ...}} (OpenAI)
function errorText(body) {
  const error = body && body.error;
  if (error && typeof error === "object") return error.message || JSON.stringify(error);
  return error ? String(error) : "";
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const text = await response.text();
  let body;
  try { body = JSON.parse(text); } catch { body = text; }
  if (!response.ok) {
    const message = errorText(body) || `HTTP ${response.status}`;
    throw new Error(`${message} (${response.status}${body && body.error_type ? ", " + body.error_type : ""})`);
  }
  return body;
}

// -- models: served list, loading, search --------------------------------------------------

async function refresh(selectId) {
  info = await api("/info");
  const select = $("pipeline");
  const keep = selectId || select.value;
  select.replaceChildren(...info.models.map((m) =>
    el("option", { value: m.id, disabled: m.status !== "ready" },
      `${m.id} — ${m.task || "?"}${m.status === "ready" ? "" : " (" + m.status + ")"}`)));
  if (!info.models.length) select.append(el("option", { value: "", disabled: true }, "no pipeline served yet"));
  const ready = info.models.filter((m) => m.status === "ready");
  if (ready.some((m) => m.id === keep)) select.value = keep;
  else if (ready.length) select.value = ready[0].id;
  $("load-box").hidden = !info.allow_load;
  const failed = info.models.filter((m) => m.status === "error");
  $("pipeline-status").textContent = failed.map((m) => `${m.id}: ${m.error}`).join("\n");
  const loading = info.models.some((m) => m.status === "loading");
  $("models-busy").hidden = !loading;
  if (loading) setTimeout(() => refresh(), 1000);
  selectModel();
}

function selectModel() {
  const id = $("pipeline").value;
  const next = info.models.find((m) => m.id === id && m.status === "ready") || null;
  if (next && current && next.id === current.id && next.task === current.task) return;
  current = next;
  resetChat();
  renderForm();
}

async function loadModel() {
  const model = $("load-id").value.trim();
  if (!model) { $("load-status").textContent = "type a model id first"; return; }
  $("load-btn").disabled = true;
  $("load-busy").hidden = false;
  $("load-status").textContent = `loading ${model}…`;
  try {
    const task = $("load-task").value || undefined;
    await api("/api/load", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ model, task }) });
    for (;;) {
      await new Promise((r) => setTimeout(r, 700));
      info = await api("/info");
      const entry = info.models.find((m) => m.id === model);
      if (!entry || entry.status === "loading") continue;
      if (entry.status === "error") throw new Error(entry.error);
      $("load-status").textContent = `${model} is ready (${entry.task})`;
      await refresh(model);
      break;
    }
  } catch (e) {
    $("load-status").textContent = `could not load: ${e.message}`;
  } finally {
    $("load-btn").disabled = false;
    $("load-busy").hidden = true;
  }
}

async function searchModels() {
  const params = new URLSearchParams();
  if ($("search-task").value) params.set("task", $("search-task").value);
  if ($("search-language").value.trim()) params.set("language", $("search-language").value.trim());
  if ($("search-text").value.trim()) params.set("search", $("search-text").value.trim());
  params.set("limit", "20");
  params.set("all", "true");  // loadable ones first; the others greyed, saying why
  $("search-status").textContent = "searching…";
  $("search-results").replaceChildren();
  try {
    const models = await api("/api/models?" + params);
    $("search-status").textContent = models.length ? "" : "no model matches";
    $("search-results").replaceChildren(...models.map((m) => {
      const use = info.allow_load && m.loads ? el("button", { type: "button", title: "put this id in the load box",
        onclick: () => { $("load-id").value = m.id; if (m.pipeline_tag && TASKS.includes(m.pipeline_tag)) $("load-task").value = m.pipeline_tag; $("load-id").focus(); } }, "use") : null;
      const why = m.reason ? el("div", { class: "reason" }, (m.loads ? "" : "can't load: ") + m.reason) : null;
      return el("li", { class: m.loads ? "" : "unloadable" }, el("span", { class: "model-id" }, m.id),
        el("span", { class: "muted" }, ` ${m.pipeline_tag || ""} · ${m.model_type || "?"} · ↓${fmt(m.downloads)} · ♥${fmt(m.likes)}`), use, why);
    }));
  } catch (e) {
    $("search-status").textContent = e.message;
  }
}

function fmt(n) {
  if (n == null) return "0";
  return n >= 1e6 ? (n / 1e6).toFixed(1) + "M" : n >= 1e3 ? (n / 1e3).toFixed(1) + "k" : String(n);
}

// -- task forms ----------------------------------------------------------------------------

function textarea(id, value, placeholder = "") {
  return el("textarea", { id, placeholder }, value || "");
}
function input(id, value = "", placeholder = "", type = "text") {
  return el("input", { id, type, placeholder, value: String(value) });
}
function checkbox(id, label, checked) {
  return el("label", { class: "inline", for: id }, el("input", { type: "checkbox", id, checked }), label);
}
function numbers(...fields) {
  return el("div", { class: "row numbers" }, ...fields.map(([id, label, value, step]) =>
    el("div", {}, el("label", { for: id }, label), el("input", { id, type: "number", value: String(value), step: step || "1", min: "0" }))));
}

function renderForm() {
  const fields = $("fields");
  $("result").replaceChildren();
  $("timing").textContent = "";
  showRequest(null);
  $("run").disabled = !current;
  $("run").textContent = inChatMode() ? "Send" : "Run";
  $("clear-chat").hidden = !inChatMode();
  if (!current) {
    $("task-title").textContent = "Try it";
    fields.replaceChildren(el("p", { class: "muted" }, "No pipeline is ready yet."));
    return;
  }
  $("task-title").textContent = `${current.task} · ${current.id}`;
  fields.replaceChildren(...taskFields(current.task).filter(Boolean));
  if (inChatMode()) renderMessages();
}

function taskFields(task) {
  if (task === "text-generation") return inChatMode() ? chatFields() : generationFields();
  const parts = inputFields(task);
  if (task === "zero-shot-classification") {
    parts.push(field("Candidate labels (comma-separated)", input("labels", "education, politics, business")));
    parts.push(checkbox("multi_label", "several labels can be true", false));
  }
  if (task === "token-classification") {
    const select = el("select", { id: "aggregation" }, ...["simple", "first", "average", "max", "none"].map((s) => el("option", { value: s }, s)));
    parts.push(field("Aggregation", select));
  }
  if (["summarization", "translation", "text2text-generation"].includes(task)) {
    if (current.needs_languages) parts.push(languageFields());
    parts.push(numbers(["max_new_tokens", "Max new tokens", 60], ["num_beams", "Beams", 1]));
  }
  if (TRUNCATION[task]) parts.push(truncationToggle());
  return parts;
}

function inputFields(task) {
  if (task === "question-answering") {
    return [field("Question", input("question", "Where do I work?")),
      field("Context", textarea("context", "My name is Sylvain and I work at Hugging Face in Brooklyn."))];
  }
  if (task === "feature-extraction" || task === "sentence-similarity") {
    return [field("Source sentence", input("source", "I've been waiting for a HuggingFace course my whole life.")),
      field("Sentences to compare (one per line)", textarea("sentences", "I love learning.\nThe stock market fell today.\nThis course is amazing!"))];
  }
  if (task === "fill-mask") {
    const mask = current.mask_token || "[MASK]";
    return [field(`Text with ${mask}`, textarea("text", `This course will teach you all about ${mask} models.`)),
      numbers(["top_k", "Top k", 5])];
  }
  return [field("Text", textarea("text", EXAMPLES[task] || EXAMPLES["text-classification"]))];
}

function generationFields() {
  return [modeSwitch(), field("Text", textarea("text", EXAMPLES["text-generation"])), parameterFields(30, "greedy"),
    current.streaming ? el("div", {}, checkbox("stream", "stream tokens", true)) : null];
}

// generation parameters: [id, label, step, placeholder (what the server does when it is empty)]
const GENERATION_PARAMETERS = [
  ["temperature", "Temperature", "0.05", null], ["top_p", "Top p", "0.05", "1"], ["top_k", "Top k", "1", "off"],
  ["max_new_tokens", "Max new tokens", "1", "256"], ["repetition_penalty", "Repetition penalty", "0.05", "1"],
  ["seed", "Seed", "1", "random"],
];

// an empty field is not sent; temperature > 0 samples, 0 is greedy, empty is `unsetTemperature`
function parameterFields(maxNewTokens, unsetTemperature) {
  return el("fieldset", { class: "params" }, el("legend", {}, "Parameters (empty: not sent)"),
    el("div", { class: "grid" }, GENERATION_PARAMETERS.map(([id, label, step, placeholder]) =>
      el("div", {}, el("label", { for: id }, label),
        el("input", { id, type: "number", step, min: "0", placeholder: placeholder || unsetTemperature,
          value: id === "max_new_tokens" ? String(maxNewTokens) : "" })))));
}

function languageFields() {
  const defaults = current.language_defaults || {};
  const select = (id, chosen) => {
    const node = el("select", { id }, current.languages.map((code) => el("option", { value: code }, code)));
    node.value = chosen;
    return node;
  };
  return el("div", { class: "row languages" },
    el("div", {}, el("label", { for: "src_lang" }, "Source language"), select("src_lang", defaults.src_lang || current.languages[0])),
    el("div", {}, el("label", { for: "tgt_lang" }, "Target language"), select("tgt_lang", defaults.tgt_lang || current.languages[1])));
}

function truncationToggle() {
  const limit = current.max_input_tokens ? ` (${current.max_input_tokens} tokens)` : "";
  return el("div", {}, checkbox("truncation", `truncate inputs longer than the model takes${limit}`, false));
}

// -- requests ------------------------------------------------------------------------------

function value(id) { return $(id) ? $(id).value : ""; }
function num(id) { return $(id) && $(id).value !== "" ? Number($(id).value) : undefined; }
function setIf(target, key, v) { if (v !== undefined) target[key] = v; return target; }

// TGI's parameters: only those set; a temperature > 0 samples, 0 is greedy (TGI is greedy when none is set)
function tgiParameters() {
  const parameters = {};
  const temperature = num("temperature");
  if (temperature > 0) Object.assign(parameters, { temperature, do_sample: true });
  else if (temperature === 0) parameters.do_sample = false;
  for (const id of ["top_p", "top_k", "max_new_tokens", "repetition_penalty", "seed"]) setIf(parameters, id, num(id));
  return parameters;
}

function payload(task) {
  const body = taskPayload(task);
  const name = TRUNCATION[task];
  if (name && $("truncation") && $("truncation").checked) body.parameters = { ...body.parameters, [name]: true };
  return body;
}

function taskPayload(task) {
  const text = value("text");
  switch (task) {
    case "question-answering":
      return { inputs: { question: value("question"), context: value("context") } };
    case "feature-extraction":
    case "sentence-similarity":
      return { inputs: { source_sentence: value("source"), sentences: value("sentences").split("\n").map((s) => s.trim()).filter(Boolean) } };
    case "zero-shot-classification":
      return { inputs: text, parameters: { candidate_labels: value("labels").split(",").map((s) => s.trim()).filter(Boolean), multi_label: $("multi_label").checked } };
    case "token-classification":
      return { inputs: text, parameters: { aggregation_strategy: value("aggregation") } };
    case "fill-mask":
      return { inputs: text, parameters: setIf({}, "top_k", num("top_k")) };
    case "text-generation": {
      const body = { inputs: text, parameters: tgiParameters() };
      if ($("stream") && $("stream").checked) body.stream = true;
      return body;
    }
    case "summarization":
    case "translation":
    case "text2text-generation": {
      const parameters = {};
      const generate = setIf(setIf({}, "max_new_tokens", num("max_new_tokens")), "num_beams", num("num_beams"));
      if (Object.keys(generate).length) parameters.generate_parameters = generate;
      if ($("src_lang")) Object.assign(parameters, { src_lang: value("src_lang"), tgt_lang: value("tgt_lang") });
      return { inputs: text, parameters };
    }
    default:
      return { inputs: text };
  }
}

// {method, path, headers, body, stream, chat}: what submit() sends and the snippets show
function buildRequest() {
  if (inChatMode()) return chatRequest();
  const body = payload(current.task);
  return { method: "POST", path: modelPath(current.id), headers: requestHeaders(), body, stream: Boolean(body.stream), chat: false };
}

function fetchOptions(request, signal) {
  return { method: request.method, headers: request.headers, body: JSON.stringify(request.body), signal };
}

async function submit(event) {
  event.preventDefault();
  if (!current || running) return;
  let request;
  try {
    request = buildRequest();
  } catch (e) {
    showError(e.message);
    return;
  }
  showRequest(request);
  const signal = startBusy();
  $("timing").textContent = "";
  const start = performance.now();
  try {
    await send(request, signal);
    $("timing").textContent = `${Math.round(performance.now() - start)} ms`;
  } catch (e) {
    if (e.name === "AbortError") $("timing").textContent = "stopped";
    else showError(e.message);
  } finally {
    stopBusy();
  }
}

async function send(request, signal) {
  $("result").replaceChildren(request.chat ? "" : el("p", { class: "muted" }, "running…"));
  if (request.chat) await sendChat(request, signal);
  else if (request.stream) await streamGeneration(request, signal);
  else render(current.task, request.body, await api(request.path, fetchOptions(request, signal)));
}

// -- the loading indicator and the stop button ----------------------------------------------

function startBusy() {
  running = new AbortController();
  $("run").disabled = true;
  $("stop").hidden = false;
  $("busy").hidden = false;
  $("form").setAttribute("aria-busy", "true");
  return running.signal;
}

function stopBusy() {
  running = null;
  $("run").disabled = !current;
  $("stop").hidden = true;
  $("busy").hidden = true;
  $("form").removeAttribute("aria-busy");
}

function stopRequest() {
  if (running) running.abort();
}

// -- results -------------------------------------------------------------------------------

function bars(rows) {
  return el("div", { class: "bars" }, rows.map(({ label, score, title }) =>
    el("div", { class: "bar-row", title: title || "" },
      el("span", { class: "label" }, label),
      el("div", { class: "bar" }, el("span", { style: `width:${Math.max(0, Math.min(1, score)) * 100}%` })),
      el("span", { class: "score" }, score.toFixed(3)))));
}

function hue(label) {
  let h = 0;
  for (const c of label) h = (h * 31 + c.charCodeAt(0)) % 360;
  return h;
}

function highlight(text, spans, make) {
  const out = [];
  let at = 0;
  for (const span of [...spans].sort((a, b) => a.start - b.start)) {
    if (span.start == null || span.start < at) continue;
    out.push(text.slice(at, span.start));
    out.push(make(span, text.slice(span.start, span.end)));
    at = span.end;
  }
  out.push(text.slice(at));
  return el("div", { class: "text-box" }, out);
}

function render(task, body, result) {
  const box = $("result");
  if (task === "text-classification") {
    const rows = (Array.isArray(result[0]) ? result[0] : result).map((r) => ({ label: r.label, score: r.score }));
    box.replaceChildren(bars(rows));
  } else if (task === "zero-shot-classification") {
    box.replaceChildren(bars(result.labels.map((label, i) => ({ label, score: result.scores[i] }))));
  } else if (task === "fill-mask") {
    const rows = Array.isArray(result[0]) ? result[0] : result;
    box.replaceChildren(bars(rows.map((r) => ({ label: r.token_str, score: r.score, title: r.sequence }))),
      el("p", { class: "muted" }, rows.length ? rows[0].sequence : ""));
  } else if (task === "token-classification") {
    const labels = new Set();
    const view = highlight(body.inputs, result, (span, text) => {
      const label = span.entity_group || span.entity;
      labels.add(label);
      return el("mark", { class: "ent", "data-label": label, style: `--hue:${hue(label)}`, title: `${label} ${span.score.toFixed(3)}` }, text);
    });
    box.replaceChildren(view, el("div", { class: "legend muted" }, result.length ? [...labels].map((l) => el("span", { style: `color:hsl(${hue(l)} 70% 45%)` }, `■ ${l}`)) : "no entities found"));
  } else if (task === "question-answering") {
    const answers = Array.isArray(result) ? result : [result];
    const best = answers[0];
    box.replaceChildren(
      el("p", {}, el("strong", {}, "Answer: "), el("span", { class: "answer-text" }, best.answer), el("span", { class: "muted" }, `  score ${best.score.toFixed(3)}`)),
      highlight(body.inputs.context, [best], (span, text) => el("mark", { class: "answer" }, text)));
  } else if (task === "feature-extraction" || task === "sentence-similarity") {
    const table = el("table", { class: "sim" },
      el("thead", {}, el("tr", {}, el("th", {}, "Sentence"), el("th", {}, `Similarity to “${body.inputs.source_sentence}”`))),
      el("tbody", {}, body.inputs.sentences.map((s, i) => el("tr", {},
        el("td", {}, s),
        el("td", { class: "score-cell" }, el("div", { class: "bar" }, el("span", { style: `width:${Math.max(0, result[i]) * 100}%` })),
          el("span", { class: "score" }, result[i].toFixed(3)))))));
    box.replaceChildren(table);
  } else if (task === "text-generation") {
    const out = Array.isArray(result) ? result[0] : result;
    box.replaceChildren(el("div", { class: "text-box", id: "generated" }, el("span", { class: "prompt" }, body.inputs), out.generated_text));
  } else {
    const out = Array.isArray(result) ? result[0] : result;
    const text = out.summary_text ?? out.translation_text ?? out.generated_text ?? JSON.stringify(out);
    box.replaceChildren(el("div", { class: "text-box", id: "generated" }, text));
  }
}

async function streamGeneration(request, signal) {
  const response = await openStream(request, signal);
  const generated = el("span", { class: "cursor", id: "generated-text" });
  $("result").replaceChildren(el("div", { class: "text-box", id: "generated" }, el("span", { class: "prompt" }, request.body.inputs), generated));
  try {
    await readEvents(response, signal, (message) => {
      if (message.generated_text != null) generated.textContent = message.generated_text;
      else if (message.token) generated.textContent += message.token.text;
    });
  } finally {
    generated.classList.remove("cursor");
  }
}

// -- server-sent events (TGI's and OpenAI's streams) ---------------------------------------

async function openStream(request, signal) {
  const response = await fetch(request.path, fetchOptions(request, signal));
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(`${errorText(body) || "HTTP " + response.status} (${response.status})`);
  }
  return response;
}

// each `data:` line's JSON to onMessage until `data: [DONE]`; an aborted signal ends the read
// and throws AbortError (what came before it has been handed on)
async function readEvents(response, signal, onMessage) {
  const reader = response.body.getReader();
  const cancel = () => reader.cancel().catch(() => {});
  signal.addEventListener("abort", cancel);
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value: chunk, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(chunk, { stream: true }).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const data of eventData(event)) {
          if (data === "[DONE]") return;
          const message = JSON.parse(data);
          if (message.error) throw new Error(errorText(message));
          onMessage(message);
        }
      }
    }
  } finally {
    signal.removeEventListener("abort", cancel);
  }
  if (signal.aborted) throw new DOMException("stopped", "AbortError");
}

function eventData(event) {
  return event.split("\n").filter((line) => line.startsWith("data:")).map((line) => line.slice(5).trim());
}

// -- start ---------------------------------------------------------------------------------

function init() {
  setupApiKey();
  for (const task of TASKS) {
    $("search-task").append(el("option", { value: task }, task));
    $("load-task").append(el("option", { value: task }, task));
  }
  $("pipeline").addEventListener("change", selectModel);
  $("form").addEventListener("submit", submit);
  $("stop").addEventListener("click", stopRequest);
  $("clear-chat").addEventListener("click", clearChat);
  $("copy-curl").addEventListener("click", () => copySnippet("curl"));
  $("copy-python").addEventListener("click", () => copySnippet("python"));
  $("load-btn").addEventListener("click", loadModel);
  $("search-btn").addEventListener("click", searchModels);
  for (const id of ["search-language", "search-text"]) {
    $(id).addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); searchModels(); } });
  }
  refresh().catch((e) => showError(`could not reach the server: ${e.message}`));
}

init();
