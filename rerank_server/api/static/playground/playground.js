// The rerank playground: a query and documents scored by one or two models through this server's own API.
//
// Every call goes to this server, by relative address (the page's Content-Security-Policy allows nothing else), and
// every text that comes from a person or the API is written with textContent: markup in a document, a model name or
// an error message stays text. The page's Trusted Types policy makes any string-to-markup assignment throw.
"use strict";

const KEY_STORAGE = "rerank-playground-api-key";
const SIDES = ["a", "b"];
const byId = (id) => document.getElementById(id);

let modelsLoaded = false;
// GET /v1/models' cards by model id: what each model's scores mean and its license, shown beside its results.
const cardsById = new Map();

function setState(state) {
  byId("playground").dataset.state = state;
}

// --- talking to the API --------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function apiKey() {
  return byId("api-key").value.trim();
}

function requestHeaders() {
  const headers = { "Content-Type": "application/json", Accept: "application/json" };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

// The API's own words: vLLM's {"error": {"message"}}, TEI's {"error": "..."}; a proxy's page gets its status line.
async function failure(response) {
  let message = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") message = body.error;
    else if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message);
}

async function callApi(path, options) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: requestHeaders(), cache: "no-store" });
  } catch (error) {
    throw new ApiError(0, `Could not reach the server: ${error.message}`);
  }
  if (!response.ok) throw await failure(response);
  return response.json();
}

// --- errors ----------------------------------------------------------------------------------------------------------

function clearErrors() {
  const box = byId("error");
  box.replaceChildren();
  box.hidden = true;
}

function showError(label, error) {
  const box = byId("error");
  const line = document.createElement("p");
  const status = error.status ? ` (${error.status})` : "";
  line.textContent = `${label}${status}: ${error.message}`;
  box.append(line);
  if (error.status === 401) {
    const hint = document.createElement("p");
    hint.textContent = "This server needs an API key: type it in the API key field, then run again.";
    box.append(hint);
    byId("key-field").hidden = false;
  }
  box.hidden = false;
}

// --- models ----------------------------------------------------------------------------------------------------------

function modelOption(card) {
  const option = document.createElement("option");
  option.value = card.id;
  option.dataset.recipe = card.recipe || "cross-encoder";
  const notes = [
    card.recipe,
    card.default ? "default" : "",
    card.score && card.score.kind === "calibrated" ? "calibrated" : "",
    card.non_commercial ? "non-commercial license" : "",
    card.status === "failed" ? "failed to load" : card.loaded ? "" : "loads on first use",
  ];
  option.textContent = `${card.id} (${notes.filter(Boolean).join(", ")})`;
  return option;
}

function fillModels(cards) {
  const selectA = byId("model-a");
  const selectB = byId("model-b");
  const previousA = selectA.value;
  const previousB = selectB.value;
  selectA.replaceChildren(...cards.map(modelOption));
  const none = document.createElement("option");
  none.value = "";
  none.textContent = "(none)";
  const firstFill = selectB.options.length <= 1; // only "(none)": the page has just opened
  selectB.replaceChildren(none, ...cards.map(modelOption));
  const fallback = cards.find((card) => card.default) || cards[0];
  const ids = cards.map((card) => card.id);
  selectA.value = ids.includes(previousA) ? previousA : fallback ? fallback.id : "";
  // With two models or more stored, B opens on another one (a loaded one first): comparing is what the page is for.
  // "(none)", once chosen, stays chosen.
  const others = cards.filter((card) => card.id !== selectA.value && card.status !== "failed");
  const other = others.find((card) => card.loaded) || others[0];
  selectB.value = ids.includes(previousB) ? previousB : firstFill && other ? other.id : "";
  updateInstructionField();
}

async function loadModels() {
  const body = await callApi("v1/models", { method: "GET" });
  cardsById.clear();
  for (const card of body.data) cardsById.set(card.id, card);
  fillModels(body.data);
  modelsLoaded = true;
}

function recipeOf(select) {
  const option = select.selectedOptions[0];
  return option && option.value ? option.dataset.recipe : null;
}

function takesInstruction(recipe) {
  // Cross-encoders and late-interaction (ColBERT) models read no instruction; the LLM rerankers do.
  return recipe !== null && recipe !== "cross-encoder" && recipe !== "colbert";
}

function updateInstructionField() {
  const recipes = [recipeOf(byId("model-a")), recipeOf(byId("model-b"))];
  byId("instruction-field").hidden = !recipes.some(takesInstruction);
}

// --- one model's request ---------------------------------------------------------------------------------------------

// The documents typed, each with the line of the box it starts on (what "doc N" is matched to): one per line, or,
// for multi-paragraph chunks, separated by a blank line. Blank lines are never documents.
function documentsTyped() {
  const lines = byId("documents").value.split(/\r?\n/);
  const found = [];
  if (byId("separator").value === "blank") {
    let current = null;
    lines.forEach((line, number) => {
      if (line.trim() === "") current = null;
      else if (current) current.text += `\n${line}`;
      else found.push((current = { text: line, line: number + 1 }));
    });
  } else {
    lines.forEach((line, number) => line.trim() !== "" && found.push({ text: line, line: number + 1 }));
  }
  return found;
}

function requestBody(model, recipe, typed) {
  const body = { model, query: byId("query").value, documents: typed.map((doc) => doc.text) };
  const topN = byId("top-n").value.trim();
  if (topN !== "") body.top_n = Number(topN);
  const instruction = byId("instruction").value.trim();
  if (instruction && takesInstruction(recipe)) body.instruction = instruction;
  body.return_documents = true;
  return body;
}

function shellQuoted(text) {
  // POSIX single quotes: nothing inside is special but the quote itself, which closes, is escaped, and reopens.
  return `'${text.replaceAll("'", "'\\''")}'`;
}

function curlCommand(body) {
  const url = new URL("v1/rerank", document.baseURI).href;
  const lines = [`curl -X POST ${shellQuoted(url)}`, "-H 'Content-Type: application/json'"];
  // The variable, never the key itself: a pasted command must not leak it.
  if (apiKey()) lines.push('-H "Authorization: Bearer $RERANK_API_KEY"');
  lines.push(`-d ${shellQuoted(JSON.stringify(body, null, 2))}`);
  return lines.join(" \\\n  ");
}

async function rerank(side, model, recipe) {
  const typed = documentsTyped();
  const body = requestBody(model, recipe, typed);
  byId(`curl-${side}`).textContent = curlCommand(body);
  const started = performance.now();
  const answer = await callApi("v1/rerank", { method: "POST", body: JSON.stringify(body) });
  return { answer, latency: performance.now() - started, documents: body.documents, lines: typed.map((d) => d.line) };
}

// --- results ---------------------------------------------------------------------------------------------------------

function span(className, text) {
  const element = document.createElement("span");
  element.className = className;
  element.textContent = text;
  return element;
}

// Past this many characters a document is shown collapsed to its first lines, with a button to show it all.
const LONG_DOCUMENT_CHARS = 600;

// At least this many tokens: every word is one token or more, and so is every CJK character.
function fewestTokens(text) {
  const cjk = (text.match(/[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]/g) || []).length;
  const words = text.replace(/[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]/g, " ").split(/\s+/).filter(Boolean);
  return cjk + words.length;
}

// Below the text of a long document: how much of it the model could read, and a button to show all of it.
function longDocumentNote(text, textElement, maxLength) {
  const more = document.createElement("div");
  more.className = "more";
  if (maxLength && fewestTokens(text) > maxLength) {
    const note = span("truncated", `truncated at ${maxLength} tokens: the model read only the beginning of this document (with the query)`);
    note.title = "The model's limit per (query, document) pair, unless the server splits long documents into windows (RERANK_MAX_CHUNKS_PER_DOC)";
    more.append(note);
  }
  if (text.length > LONG_DOCUMENT_CHARS) {
    textElement.classList.add("collapsed");
    const toggle = document.createElement("button");
    toggle.type = "button";
    toggle.className = "secondary";
    toggle.textContent = `show all (${text.length.toLocaleString()} characters)`;
    toggle.setAttribute("aria-expanded", "false");
    toggle.addEventListener("click", () => {
      const collapsed = textElement.classList.toggle("collapsed");
      toggle.setAttribute("aria-expanded", String(!collapsed));
      toggle.textContent = collapsed ? `show all (${text.length.toLocaleString()} characters)` : "show less";
    });
    more.append(toggle);
  }
  return more.childElementCount ? more : null;
}

function resultItem(result, rank, documents, lines, maxLength) {
  const item = document.createElement("li");
  item.dataset.index = String(result.index);
  item.dataset.score = String(result.relevance_score);
  item.dataset.rank = String(rank);
  const bar = span("bar", "");
  bar.setAttribute("aria-hidden", "true");
  const fill = span("fill", "");
  fill.style.width = `${Math.max(0, Math.min(1, result.relevance_score)) * 100}%`;
  bar.append(fill);
  const text = document.createElement("p");
  text.className = "text";
  text.dir = "auto";
  const content = result.document ? result.document.text : documents[result.index];
  text.textContent = content;
  // "doc N" is the Nth document; where blank lines (or paragraphs) make its line of the box another number, say so.
  const line = lines[result.index];
  const position = span("position", line === result.index + 1 ? `doc ${result.index + 1}` : `doc ${result.index + 1} (line ${line})`);
  position.dataset.line = String(line);
  item.append(span("rank", String(rank)), span("score", result.relevance_score.toFixed(4)), bar, position, text);
  const more = longDocumentNote(content, text, maxLength);
  if (more) item.append(more);
  return item;
}

// What this model's scores mean, and a flag for a license that forbids commercial use.
function showScoring(side, modelId) {
  const card = cardsById.get(modelId);
  const scoring = byId(`scoring-${side}`);
  const kind = card && card.score ? card.score.kind : "";
  scoring.dataset.scoreKind = kind;
  if (kind === "calibrated") {
    const { scale, bias } = card.score.calibration;
    scoring.textContent = `calibrated: probability of relevance, sigmoid(${scale.toPrecision(4)} \u00D7 (raw \u2212 ${bias.toPrecision(4)}))`;
  } else {
    const meanings = {
      "p-yes": "not calibrated: p(yes) of the model",
      "mean-maxsim": "not calibrated: MaxSim over the query length (a mean cosine)",
      cosine: "not calibrated: cosine in [\u22121, 1], read with all the documents together (listwise)",
    };
    scoring.textContent = meanings[kind] || "not calibrated: sigmoid of the raw score";
  }
  const flag = byId(`license-${side}`);
  flag.hidden = !(card && card.non_commercial);
  flag.textContent = card && card.non_commercial ? ` \u00B7 ${card.license}: non-commercial use only` : "";
}

// The threshold typed (a number), or null: results scored below it are dimmed under a line.
function thresholdTyped() {
  const typed = byId("threshold").value.trim();
  return typed === "" || !Number.isFinite(Number(typed)) ? null : Number(typed);
}

function markThreshold(side) {
  const threshold = thresholdTyped();
  const items = [...byId(`results-${side}`).children];
  for (const item of items) {
    item.classList.remove("below", "first-below");
    delete item.dataset.threshold;
  }
  if (threshold === null) return;
  const below = items.filter((item) => Number(item.dataset.score) < threshold);
  for (const item of below) item.classList.add("below");
  if (below.length) {
    below[0].classList.add("first-below");
    below[0].dataset.threshold = String(threshold);
  }
}

function showResults(side, model, outcome) {
  const { answer, latency, documents, lines } = outcome;
  byId(`name-${side}`).textContent = answer.model || model;
  showScoring(side, answer.model || model);
  byId(`figures-${side}`).hidden = false;
  const tokens = byId(`tokens-${side}`);
  tokens.dataset.tokens = String(answer.usage.prompt_tokens);
  tokens.textContent = `${answer.usage.prompt_tokens} tokens seen`;
  const took = byId(`latency-${side}`);
  took.dataset.latencyMs = latency.toFixed(1);
  took.textContent = `${Math.round(latency)} ms`;
  const card = cardsById.get(answer.model || model);
  const maxLength = card ? card.max_length : null;
  byId(`results-${side}`).replaceChildren(
    ...answer.results.map((result, i) => resultItem(result, i + 1, documents, lines, maxLength)),
  );
  markThreshold(side);
}

// How each document of B's ranking moved from its place in A's: up (a better rank in B), down, or not in A's list.
function showRankChanges() {
  const rankInA = new Map();
  for (const item of byId("results-a").children) rankInA.set(item.dataset.index, Number(item.dataset.rank));
  for (const item of byId("results-b").children) {
    const before = rankInA.get(item.dataset.index);
    const move = span("move", "");
    if (before === undefined) {
      item.dataset.rankChange = "";
      move.textContent = "new";
      move.title = "not in model A's results";
    } else {
      const change = before - Number(item.dataset.rank);
      item.dataset.rankChange = String(change);
      move.textContent = change > 0 ? `\u25B2 ${change}` : change < 0 ? `\u25BC ${-change}` : "=";
      move.title = change === 0 ? "same rank as in model A" : `rank ${before} in model A`;
      move.classList.add(change > 0 ? "up" : change < 0 ? "down" : "same");
    }
    item.querySelector(".position").after(move);
  }
  byId("moves-b").hidden = false;
}

function clearResults() {
  for (const side of SIDES) {
    byId(`column-${side}`).hidden = true;
    byId(`results-${side}`).replaceChildren();
    byId(`curl-${side}`).textContent = "";
    byId(`copied-${side}`).textContent = "";
    // A model that fails this run must not keep the last run's numbers beside its error.
    byId(`name-${side}`).textContent = byId(`model-${side}`).value;
    for (const id of [`tokens-${side}`, `latency-${side}`, `scoring-${side}`]) {
      byId(id).textContent = "";
      for (const key of Object.keys(byId(id).dataset)) delete byId(id).dataset[key];
    }
    byId(`license-${side}`).hidden = true;
    byId(`figures-${side}`).hidden = true;
  }
  byId("moves-b").hidden = true;
}

// --- running ---------------------------------------------------------------------------------------------------------

async function run(event) {
  event.preventDefault();
  if (byId("playground").dataset.state === "running") return;
  setState("running");
  byId("run").disabled = true;
  clearErrors();
  clearResults();
  try {
    if (!modelsLoaded) await loadModels();
    const chosen = SIDES.map((side) => [side, byId(`model-${side}`)]).filter(([, select]) => select.value);
    if (chosen.length === 0) throw new ApiError(0, "the server's store holds no model: import one (import_models.py)");
    const shown = [];
    // One model after the other: each latency is then its own, not shared with the other model's work.
    for (const [side, select] of chosen) {
      byId(`column-${side}`).hidden = false;
      try {
        showResults(side, select.value, await rerank(side, select.value, recipeOf(select)));
        shown.push(side);
      } catch (error) {
        showError(`Model ${side.toUpperCase()} (${select.value})`, error);
      }
    }
    if (shown.length === 2) showRankChanges();
  } catch (error) {
    showError("Models", error);
  } finally {
    byId("run").disabled = false;
    setState("done");
  }
}

async function copyCurl(side) {
  const command = byId(`curl-${side}`);
  const status = byId(`copied-${side}`);
  if (!command.textContent) {
    status.textContent = "Run first";
    return;
  }
  try {
    // The clipboard API exists on https and localhost only: elsewhere the command is shown, selected, to copy.
    await navigator.clipboard.writeText(command.textContent);
    status.textContent = "Copied";
  } catch (_) {
    command.closest("details").open = true;
    window.getSelection().selectAllChildren(command);
    status.textContent = "Selected: press Ctrl+C to copy";
  }
}

function rememberKey() {
  const key = apiKey();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  modelsLoaded = false;
}

async function start() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) {
    byId("api-key").value = key;
    byId("key-field").hidden = false;
  }
  const form = byId("form");
  form.addEventListener("submit", run);
  form.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  byId("model-a").addEventListener("change", updateInstructionField);
  byId("model-b").addEventListener("change", updateInstructionField);
  // The threshold line moves as it is typed; no new request.
  byId("threshold").addEventListener("input", () => SIDES.forEach(markThreshold));
  byId("api-key").addEventListener("input", rememberKey);
  // A key typed after a 401 fills the model lists at once; a failure is told by the next run.
  byId("api-key").addEventListener("change", () =>
    loadModels().then(
      () => byId("playground").dataset.state === "running" || clearErrors(),
      () => {},
    ),
  );
  for (const side of SIDES) byId(`copy-${side}`).addEventListener("click", () => copyCurl(side));
  try {
    await loadModels();
  } catch (error) {
    showError("Models", error);
  }
  setState("ready");
}

start();
