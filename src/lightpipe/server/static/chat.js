// lightpipe playground, chat mode: a conversation with a served text-generation model whose
// tokenizer has a chat template (/info says "chat": true), its replies streamed token by token
// from /v1/chat/completions (OpenAI's server-sent events). Loaded before app.js, which uses
// these functions and the shared helpers (el, field, textarea, num, setIf, openStream, readEvents).
"use strict";

let conversation = []; // the turns so far, [{role, content}], without the system prompt
let chatMode = true; // for a chat model: chat (messages) or plain text generation

function inChatMode() {
  return Boolean(current && current.task === "text-generation" && current.chat && chatMode);
}

function resetChat() {
  conversation = [];
}

function clearChat() {
  resetChat();
  renderMessages();
  $("result").replaceChildren();
}

// chat or plain text, for a model that can do both
function modeSwitch() {
  if (!current.chat) return null;
  const option = (mode, label) => el("label", { class: "inline", for: `mode-${mode}` },
    el("input", { type: "radio", name: "mode", id: `mode-${mode}`, value: mode, checked: chatMode === (mode === "chat"),
      onchange: () => { chatMode = mode === "chat"; renderForm(); } }),
    label);
  return el("div", { class: "mode", role: "radiogroup", "aria-label": "mode" }, option("chat", "Chat"), option("text", "Plain text"));
}

function chatFields() {
  const message = textarea("chat-input", "", "Type a message (Enter sends, Shift+Enter starts a new line)");
  message.rows = 2;
  message.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      $("form").requestSubmit();
    }
  });
  return [
    modeSwitch(),
    field("System prompt (optional)", textarea("system", "", "You are a helpful assistant.")),
    el("div", { id: "messages", class: "messages", "aria-live": "polite" }),
    field("Message", message),
    // OpenAI samples at temperature 1 when none is sent
    parameterFields(256, "1 (samples)"),
  ];
}

function messageView(message) {
  return el("div", { class: `msg ${message.role}` },
    el("div", { class: "role" }, message.role),
    el("div", { class: "content" }, message.content));
}

function renderMessages() {
  const box = $("messages");
  if (!box) return;
  box.replaceChildren(...conversation.map(messageView));
  if (!conversation.length) box.append(el("p", { class: "muted empty" }, "No messages yet."));
}

// OpenAI's names for the parameters that are set; top_k and repetition_penalty are extensions
// lightpipe (like vLLM and TGI) accepts
function openaiParameters() {
  const out = {};
  setIf(out, "max_tokens", num("max_new_tokens"));
  for (const id of ["temperature", "top_p", "top_k", "repetition_penalty", "seed"]) setIf(out, id, num(id));
  return out;
}

function chatRequest() {
  const text = value("chat-input").trim();
  if (!text) throw new Error("type a message first");
  const system = value("system").trim();
  const messages = [...(system ? [{ role: "system", content: system }] : []), ...conversation, { role: "user", content: text }];
  const body = { model: current.id, messages, stream: true, ...openaiParameters() };
  return { method: "POST", path: "/v1/chat/completions", headers: requestHeaders(), body, stream: true, chat: true };
}

// the user's turn joins the conversation and the reply streams into a new assistant bubble; a
// stopped reply keeps what came, a failed turn gives the message back to the input box
async function sendChat(request, signal) {
  const user = request.body.messages[request.body.messages.length - 1];
  conversation.push(user);
  $("chat-input").value = "";
  renderMessages();
  const reply = { role: "assistant", content: "" };
  const view = messageView(reply);
  const content = view.querySelector(".content");
  content.classList.add("cursor");
  $("messages").append(view);
  try {
    await readEvents(await openStream(request, signal), signal, (chunk) => {
      const delta = chunk.choices && chunk.choices.length ? chunk.choices[0].delta : null;
      if (delta && delta.content) {
        reply.content += delta.content;
        content.textContent = reply.content;
        $("messages").scrollTop = $("messages").scrollHeight;
      }
    });
    conversation.push(reply);
  } catch (e) {
    if (e.name === "AbortError" && reply.content) {
      conversation.push(reply);
      view.classList.add("stopped");
    } else {
      conversation.pop();
      view.remove();
      renderMessages();
      $("chat-input").value = user.content;
    }
    throw e;
  } finally {
    content.classList.remove("cursor");
  }
}
