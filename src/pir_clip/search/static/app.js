// pir-clip search page: plain JavaScript, no network use beyond this server's own API.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { lastSearch: null, selectedId: null, objectUrls: [] };

// --- access token: from "#token=..." in the address (never sent to the server as part of a URL) or typed in
function readTokenFromAddress() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    sessionStorage.setItem("pirClipToken", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}
function authHeaders(extra = {}) {
  const token = sessionStorage.getItem("pirClipToken");
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: authHeaders(options.headers || {}) });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      message = (body.error && body.error.message) || body.detail || message;
    } catch (_) { /* not JSON */ }
    if (response.status === 401) $("token-box").hidden = false;
    throw new ApiError(response.status, message);
  }
  return response;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// --- images: fetched with the token header when they scroll into view, shown through object URLs
const imageObserver = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    imageObserver.unobserve(entry.target);
    loadImage(entry.target, entry.target.dataset.src);
  }
}, { rootMargin: "400px" });

async function loadImage(img, src) {
  try {
    const blob = await (await api(src)).blob();
    const url = URL.createObjectURL(blob);
    state.objectUrls.push(url);
    img.src = url;
  } catch (error) {
    img.alt = `image unavailable (${error.message})`;
  }
}

function releaseImages() {
  for (const url of state.objectUrls) URL.revokeObjectURL(url);
  state.objectUrls = [];
}

function baseName(source) {
  const withoutKey = source.includes("#") ? source.split("#").pop() : source;
  return withoutKey.split(/[\\/]/).pop();
}

// --- results
function renderHits(result, description) {
  imageObserver.disconnect();
  releaseImages();
  const grid = $("grid");
  const template = $("card-template").content;
  const fragment = document.createDocumentFragment();
  for (const hit of result.hits) {
    const card = template.firstElementChild.cloneNode(true);
    card.dataset.id = hit.id;
    card.querySelector(".rank").textContent = `#${hit.rank}`;
    card.querySelector(".score").textContent = hit.score.toFixed(3);
    const source = card.querySelector(".source");
    source.textContent = baseName(hit.source) + (hit.window ? ` [${hit.window[0]},${hit.window[1]}]` : "");
    source.title = hit.source;
    const img = card.querySelector("img");
    img.dataset.src = `api/items/${hit.id}/image?size=256`;
    img.alt = source.textContent;
    imageObserver.observe(img);
    card.addEventListener("click", () => showDetail(hit, card));
    card.addEventListener("keydown", (event) => { if (event.key === "Enter") showDetail(hit, card); });
    fragment.appendChild(card);
  }
  grid.replaceChildren(fragment);
  setStatus(`${result.hits.length} hits for ${description}`);
}

async function runSearch(params, description) {
  const k = $("k").value;
  const query = new URLSearchParams({ ...params, k });
  setStatus(`searching ${description}…`);
  try {
    const result = await (await api(`api/search?${query}`)).json();
    state.lastSearch = { ...params, k };
    $("geojson-button").disabled = false;
    renderHits(result, description);
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function searchByImage(file) {
  const k = $("k").value;
  setStatus(`searching images like ${file.name}…`);
  try {
    const response = await api(`api/search/image?k=${k}`, {
      method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" },
    });
    state.lastSearch = null;
    $("geojson-button").disabled = true;  // an uploaded image cannot be repeated by URL
    renderHits(await response.json(), `images like ${file.name}`);
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function showDetail(hit, card) {
  document.querySelectorAll(".card.selected").forEach((c) => c.classList.remove("selected"));
  card.classList.add("selected");
  state.selectedId = hit.id;
  const detail = $("detail");
  detail.hidden = false;
  const img = $("detail-image");
  img.removeAttribute("src");
  img.alt = baseName(hit.source);
  loadImage(img, `api/items/${hit.id}/image?size=768`);
  try {
    const item = await (await api(`api/items/${hit.id}`)).json();
    const rows = [["id", item.id], ["score", hit.score.toFixed(4)], ["rank", hit.rank], ["source", item.source]];
    if (item.window) rows.push(["window (col, row, w, h)", item.window.join(", ")]);
    if (item.crs) rows.push(["CRS", item.crs]);
    if (item.bounds_wgs84) rows.push(["bounds WGS84 (W, S, E, N)", item.bounds_wgs84.map((v) => v.toFixed(6)).join(", ")]);
    if (item.width && item.height) rows.push(["size", `${item.width} × ${item.height}`]);
    const table = $("detail-table");
    table.replaceChildren(...rows.map(([key, value]) => {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      const td = document.createElement("td");
      th.textContent = key;
      td.textContent = String(value);
      tr.append(th, td);
      return tr;
    }));
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function downloadGeoJSON() {
  if (!state.lastSearch) return;
  try {
    const response = await api(`api/search.geojson?${new URLSearchParams(state.lastSearch)}`);
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = "hits.geojson";
    link.click();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function showIndexInfo() {
  try {
    const health = await (await api("api/health")).json();
    const m = health.manifest || {};
    $("index-info").textContent = `${health.items.toLocaleString()} items · model ${(m.model && m.model.name) || "?"}`;
    $("token-box").hidden = true;
  } catch (error) {
    $("index-info").textContent = error.message;
  }
}

function init() {
  readTokenFromAddress();
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const q = $("query").value.trim();
    if (q) runSearch({ q }, `“${q}”`);
  });
  $("upload").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) searchByImage(file);
    event.target.value = "";
  });
  $("more-like-this").addEventListener("click", () => {
    if (state.selectedId !== null) runSearch({ like: state.selectedId }, `items like #${state.selectedId}`);
  });
  $("detail-close").addEventListener("click", () => { $("detail").hidden = true; });
  $("geojson-button").addEventListener("click", downloadGeoJSON);
  $("token-button").addEventListener("click", () => {
    sessionStorage.setItem("pirClipToken", $("token").value);
    showIndexInfo();
  });
  showIndexInfo();
}

document.addEventListener("DOMContentLoaded", init);
