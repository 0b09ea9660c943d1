// metrictransfer search page: drop an image, see its nearest items, click one to search from it.
// Every text from the server goes into the page as text (textContent), never as HTML. The token, when the
// server needs one, is kept in sessionStorage (this tab only) and sent as an Authorization header; a
// ?token= in the address is taken once and removed from it, so it stays out of the history and bookmarks.
"use strict";

const TOKEN_KEY = "metrictransfer-token";
const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem(TOKEN_KEY), last: null, urls: [] };

(function takeTokenFromAddress() {
  const params = new URLSearchParams(location.search);
  if (!params.has("token")) return;
  state.token = params.get("token");
  sessionStorage.setItem(TOKEN_KEY, state.token);
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
})();

class ApiError extends Error {}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) $("token-form").hidden = false;
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try {
      message = (await response.json()).error || message;
    } catch (ignored) {
      // not JSON: keep the status line
    }
    throw new ApiError(message);
  }
  return response;
}

function setStatus(text, kind) {
  $("status").textContent = text;
  document.body.dataset.state = kind;
}

function searchParams() {
  const params = new URLSearchParams({ k: $("k").value || "12" });
  const where = $("where").value.trim();
  if (where) params.set("where", where);
  return params.toString();
}

// Images are fetched with the token and shown from blob: URLs (an <img src> cannot send a header).
async function showImage(img, itemId, size) {
  try {
    const response = await api("/items/" + encodeURIComponent(itemId) + "/image?size=" + size);
    const url = URL.createObjectURL(await response.blob());
    state.urls.push(url);
    img.src = url;
  } catch (err) {
    img.alt = "image unavailable: " + err.message;
  }
}

function forgetImages() {
  for (const url of state.urls) URL.revokeObjectURL(url);
  state.urls = [];
}

function card(hit, rank) {
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "card";
  button.dataset.id = String(hit.id);
  button.title = "search from this image";
  const img = document.createElement("img");
  img.alt = hit.name;
  button.append(img);
  const parts = [
    ["rank", "#" + rank + " · id " + hit.id],
    ["distance", hit.distance.toFixed(4)],
    ["label", hit.label === null ? "" : hit.label],
    ["name", hit.name],
  ];
  for (const [cls, text] of parts) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    button.append(span);
  }
  const keys = Object.keys(hit.metadata);
  if (keys.length) {
    const list = document.createElement("dl");
    for (const key of keys) {
      const term = document.createElement("dt");
      term.textContent = key;
      const value = document.createElement("dd");
      value.textContent = hit.metadata[key];
      list.append(term, value);
    }
    button.append(list);
  }
  button.addEventListener("click", () => searchItem(hit.id));
  item.append(button);
  showImage(img, hit.id, 320);
  return item;
}

function render(result, caption) {
  const grid = $("results");
  grid.replaceChildren(...result.neighbours.map((hit, i) => card(hit, i + 1)));
  $("query-caption").textContent = caption;
  const n = result.neighbours.length;
  setStatus(n + " result" + (n === 1 ? "" : "s") + " in " + Math.round(result.took_ms) + " ms", "done");
}

async function run(search) {
  state.last = search;
  setStatus("searching…", "searching");
  try {
    await search();
  } catch (err) {
    setStatus(err.message, "error");
  }
}

function searchFile(file) {
  return run(async () => {
    const body = new FormData();
    body.append("image", file, file.name);
    const response = await api("/search/image?" + searchParams(), { method: "POST", body });
    const result = await response.json();
    forgetImages();
    const url = URL.createObjectURL(file);
    state.urls.push(url);
    showQuery(url);
    render(result, "query: " + file.name);
  });
}

function searchItem(itemId) {
  return run(async () => {
    const response = await api("/search/item/" + encodeURIComponent(itemId) + "?" + searchParams());
    const result = await response.json();
    forgetImages();
    showQuery(null);
    await showImage($("query-image"), itemId, 480);
    render(result, "query: item " + result.item.id + " · " + result.item.name + (result.item.label ? " · " + result.item.label : ""));
    window.scrollTo({ top: 0 });
  });
}

function showQuery(url) {
  const img = $("query-image");
  img.hidden = false;
  if (url) img.src = url;
  $("drop-text").textContent = "Drop another image, or click to choose one";
}

async function describe() {
  try {
    const version = await (await api("/version")).json();
    const index = version.index;
    $("about").textContent =
      index.count + " items · " + index.dim + "-d " + index.metric + " · " + index.kind + " index · model: " + version.query_model;
    $("columns").textContent = "filter on: " + version.columns.join(", ") + " (conditions like label = red, joined by and)";
    $("where").placeholder = version.columns.length > 2 ? "e.g. " + version.columns[2] + " = …" : "e.g. label = …";
  } catch (err) {
    $("about").textContent = err.message;
  }
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) searchFile(file);
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) searchFile(file);
  });
  $("options").addEventListener("submit", (event) => {
    event.preventDefault();
    if (state.last) run(state.last);
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    $("token-form").hidden = true;
    describe();
    if (state.last) run(state.last);
  });
  describe();
}

setUp();
