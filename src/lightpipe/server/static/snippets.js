// lightpipe playground: the request shown, as a curl command and as Python (the openai client
// for chat, `requests` for the HF Inference API routes), with the exact URL, headers and JSON
// body, to copy. Loaded before app.js.
"use strict";

let lastRequest = null; // {method, path, headers, body, stream, chat}, or null before the first

// keyword arguments of openai's chat.completions.create(); the rest travels in extra_body
const OPENAI_CHAT_ARGUMENTS = new Set(["model", "messages", "stream", "max_tokens", "max_completion_tokens", "temperature",
  "top_p", "seed", "stop", "n", "stream_options", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty"]);

function showRequest(request) {
  lastRequest = request;
  $("request").textContent = request ? `${request.method} ${request.path}\n${JSON.stringify(request.body, null, 2)}` : "";
  $("request-tools").hidden = !request;
  const box = $("snippet");
  if (request && box.dataset.kind) box.textContent = snippet(box.dataset.kind, request);
  box.hidden = !request || !box.dataset.kind;
  $("copy-status").textContent = "";
}

function snippet(kind, request) {
  return kind === "curl" ? curlSnippet(request) : pythonSnippet(request);
}

async function copySnippet(kind) {
  if (!lastRequest) return;
  const text = snippet(kind, lastRequest);
  const box = $("snippet");
  box.textContent = text;
  box.dataset.kind = kind;
  box.hidden = false;
  const name = kind === "curl" ? "curl command" : "Python";
  $("copy-status").textContent = (await copyText(text)) ? `${name} copied` : `select the ${name} below to copy it`;
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // no clipboard permission (an unfocused page, a plain-http host): the old way
  }
  const area = el("textarea", { style: "position:fixed;top:0;opacity:0" }, text);
  document.body.append(area);
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  return copied;
}

function absoluteUrl(path) {
  return new URL(path, location.href).href;
}

// -- curl -----------------------------------------------------------------------------------

function shellQuote(text) {
  return "'" + text.replace(/'/g, "'\\''") + "'";
}

function curlSnippet(request) {
  const lines = [`curl -sS${request.stream ? " -N" : ""} -X ${request.method} ${shellQuote(absoluteUrl(request.path))}`];
  for (const [name, value] of Object.entries(request.headers)) lines.push(`  -H ${shellQuote(`${name}: ${value}`)}`);
  lines.push(`  -d ${shellQuote(JSON.stringify(request.body))}`);
  return lines.join(" \\\n");
}

// -- Python ---------------------------------------------------------------------------------

// a JSON value as a Python literal (JSON strings and numbers are valid Python; true/false/null
// outside strings become True/False/None), its lines after the first indented by `indent`
function pyLiteral(value, indent = "") {
  const json = JSON.stringify(value, null, 4)
    .replace(/"(?:[^"\\]|\\.)*"|\btrue\b|\bfalse\b|\bnull\b/g, (token) =>
      token === "true" ? "True" : token === "false" ? "False" : token === "null" ? "None" : token);
  return json.split("\n").join("\n" + indent);
}

function pythonSnippet(request) {
  return request.chat ? openaiSnippet(request) : requestsSnippet(request);
}

function apiKey(headers) {
  const auth = headers.Authorization || headers.authorization || "";
  return auth.startsWith("Bearer ") ? auth.slice(7) : "-";
}

function openaiSnippet(request) {
  const args = [], extra = {};
  for (const [key, value] of Object.entries(request.body)) {
    if (OPENAI_CHAT_ARGUMENTS.has(key)) args.push(`    ${key}=${pyLiteral(value, "    ")},`);
    else extra[key] = value;
  }
  if (Object.keys(extra).length) args.push(`    extra_body=${pyLiteral(extra, "    ")},`);
  const output = request.body.stream
    ? ["for chunk in response:", "    if chunk.choices:", '        print(chunk.choices[0].delta.content or "", end="", flush=True)', "print()"]
    : ["print(response.choices[0].message.content)"];
  return [
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${pyLiteral(absoluteUrl("/v1"))}, api_key=${pyLiteral(apiKey(request.headers))})`,
    "response = client.chat.completions.create(",
    ...args,
    ")",
    ...output,
  ].join("\n");
}

function requestsSnippet(request) {
  const call = [
    `requests.${request.method.toLowerCase()}(`,
    `    ${pyLiteral(absoluteUrl(request.path))},`,
    `    headers=${pyLiteral(request.headers, "    ")},`,
    `    json=${pyLiteral(request.body, "    ")},`,
  ];
  if (!request.stream) {
    return ["import requests", "", `response = ${call.join("\n")}`, ")", "response.raise_for_status()", "print(response.json())"].join("\n");
  }
  return [  // TGI's events: one token each, the last one with the whole text; [DONE] ends them
    "import json",
    "",
    "import requests",
    "",
    `with ${call.join("\n")}`,
    "    stream=True,",
    ") as response:",
    "    response.raise_for_status()",
    '    text = ""',
    "    for line in response.iter_lines(decode_unicode=True):",
    '        if not line.startswith("data:") or line[5:].strip() == "[DONE]":',
    "            continue",
    "        event = json.loads(line[5:])",
    '        if event["generated_text"] is not None:  # the last event: the whole text',
    '            piece = event["generated_text"][len(text):]',
    "        else:",
    '            piece = event["token"]["text"]',
    "        text += piece",
    '        print(piece, end="", flush=True)',
    "    print()",
  ].join("\n");
}
