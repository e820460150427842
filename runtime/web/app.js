// emotiond's live page: one EventSource on /events (the daemon's JSON events, one per `data:` line). Frame events
// can come hundreds a second: only the newest is kept and drawn, once per animation frame. EventSource reconnects
// by itself; the stream image is reloaded when it does (the daemon may have restarted).
"use strict";

const $ = (id) => document.getElementById(id);
let newest = null; // the newest frame event not drawn yet
let lost = 0; // events dropped for this page (`dropped` notices): it read too slowly
let reconnecting = false;
const about = { source: "", model: "", version: "" }; // the header line

function number(value, digits) {
  return typeof value === "number" ? value.toFixed(digits) : "–";
}

// One row per face, kept across frames by its track id; one bar per expression, labels from the event.
function faceRow(container, key, labels) {
  let row = container.querySelector(`.face[data-face-id="${key}"]`);
  if (row) return row;
  row = document.createElement("div");
  row.className = "face";
  row.dataset.faceId = key;
  row.innerHTML = `<div class="title"></div>`;
  for (const label of labels) {
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.dataset.label = label;
    bar.innerHTML = `<span class="name"></span><span class="track"><span class="fill"></span></span><span class="value"></span>`;
    bar.querySelector(".name").textContent = label;
    row.append(bar);
  }
  container.append(row);
  return row;
}

function drawFaces(event) {
  const container = $("faces");
  const keys = new Set();
  event.faces.forEach((face, i) => {
    const key = face.id === null ? `still-${i}` : String(face.id);
    keys.add(key);
    const row = faceRow(container, key, Object.keys(face.probs));
    row.querySelector(".title").textContent =
      `face ${face.id ?? i + 1}: ${face.emotion} ${(100 * face.confidence).toFixed(0)}%`;
    for (const bar of row.querySelectorAll(".bar")) {
      const p = face.probs[bar.dataset.label];
      bar.dataset.prob = String(p);
      bar.classList.toggle("top", bar.dataset.label === face.emotion);
      bar.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
      bar.querySelector(".value").textContent = `${(100 * p).toFixed(0)}%`;
    }
  });
  for (const row of container.querySelectorAll(".face")) {
    if (!keys.has(row.dataset.faceId)) row.remove();
  }
  container.querySelector(".empty").hidden = keys.size > 0;
  container.dataset.seq = event.seq; // which event is on screen (the browser test compares it with /events)
  container.dataset.frame = event.frame;
}

function draw() {
  if (newest) drawFaces(newest);
  newest = null;
}

function describe(fields) {
  Object.assign(about, fields);
  const parts = [about.source, about.model && `model ${about.model}`, about.version && `emotiond ${about.version}`];
  $("source").textContent = parts.filter(Boolean).join(" · ");
}

const show = {
  hello(event) {
    describe({ source: event.source, model: event.model, version: event.version });
  },
  frame(event) {
    if (!newest) requestAnimationFrame(draw);
    newest = event;
  },
  status(event) {
    if (event.output) return; // an output's link (an MQTT broker), not the daemon or its camera
    if (event.model) describe({ model: event.model }); // a `hello` before the model loaded has none
    $("state").textContent = event.state;
    $("detail").textContent = event.detail;
  },
  stats(event) {
    $("fps").textContent = number(event.fps, 1);
    $("latency").textContent = `${number(event.latency_ms?.total?.p95, 1)} ms`;
    $("dropped").textContent = `${event.dropped} (${event.dropped_total ?? 0} since start)`;
  },
  dropped(event) {
    lost += event.dropped;
    $("lost").textContent = lost;
  },
};

function connected(state, text) {
  $("connection").dataset.state = state;
  $("connection").textContent = text;
}

const events = new EventSource("events");
events.onmessage = (message) => {
  const event = JSON.parse(message.data);
  show[event.type]?.(event); // types this page does not know are ignored, as the schema asks
};
events.onopen = () => {
  connected("live", "live");
  if (reconnecting) $("stream").src = `stream.mjpg?${Date.now()}`;
  reconnecting = false;
};
events.onerror = () => {
  connected("lost", "reconnecting…");
  reconnecting = true;
};
