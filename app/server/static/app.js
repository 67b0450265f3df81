// The page: strokes on a canvas, sent as a PNG to POST /predict after each one, or a picture
// dropped or chosen, sent as it is. Pointer events cover the mouse, a pen and touch alike. The
// model says what it reads (/health): the pad is for models of drawn-like pictures only.
"use strict";

const pad = document.getElementById("pad");
const ink = pad.getContext("2d");
const digit = document.getElementById("digit");
const chosen = document.getElementById("chosen");
const statusLine = document.getElementById("status");
const bars = document.getElementById("bars");
let drawing = false;
let asked = 0;  // the latest request: an older answer arriving late is ignored

function blank() {
  ink.fillStyle = "#fff";
  ink.fillRect(0, 0, pad.width, pad.height);
  ink.strokeStyle = "#000";
  ink.lineWidth = 18;  // about a 2-pixel pen once scaled to 28x28, like MNIST's
  ink.lineCap = ink.lineJoin = "round";
}

function at(event) {
  // The drawing surface starts inside the border: clientLeft/Top, clientWidth/Height.
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left - pad.clientLeft) * pad.width / pad.clientWidth,
          (event.clientY - box.top - pad.clientTop) * pad.height / pad.clientHeight];
}

pad.addEventListener("pointerdown", (event) => {
  drawing = true;
  pad.setPointerCapture(event.pointerId);
  const [x, y] = at(event);
  ink.beginPath();
  ink.moveTo(x, y);
  ink.lineTo(x + 0.1, y);  // a tap leaves a dot
  ink.stroke();
});

pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const [x, y] = at(event);
  ink.lineTo(x, y);
  ink.stroke();
});

function endStroke() {
  if (!drawing) return;
  drawing = false;
  predict();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function show(prediction) {
  if (prediction.refusal) {  // "not a digit: a dash": say so, and no bars for a guess
    digit.textContent = "–";
    statusLine.textContent = prediction.refusal;
    statusLine.classList.remove("error");
    bars.replaceChildren();
    return;
  }
  digit.textContent = prediction.label;
  statusLine.textContent = `${(prediction.probability * 100).toFixed(1)} % sure`;
  statusLine.classList.remove("error");
  bars.replaceChildren(...prediction.top
    .slice().sort((a, b) => a.label.localeCompare(b.label, undefined, {numeric: true}))
    .map((entry) => {
      const row = document.createElement("li");
      row.dataset.testid = `bar-${entry.label}`;
      row.dataset.probability = entry.probability;
      if (entry.label === prediction.label) row.classList.add("best");
      const percent = (entry.probability * 100).toFixed(1);
      row.innerHTML = '<span class="name"></span><span class="track"><span class="fill">' +
                      '</span></span><span class="value"></span>';
      row.querySelector(".name").textContent = entry.label;
      row.querySelector(".fill").style.width = `${percent}%`;
      row.querySelector(".value").textContent = `${percent} %`;
      return row;
    }));
}

function fail(message) {
  digit.textContent = "?";
  statusLine.textContent = message;
  statusLine.classList.add("error");
  bars.replaceChildren();
}

async function send(picture, name) {
  const mine = ++asked;
  const form = new FormData();
  form.append("file", picture, name);
  let response;
  try {
    response = await fetch("/predict", {method: "POST", body: form});
  } catch (error) {
    if (mine === asked) fail(`cannot reach the server (${error.message})`);
    return;
  }
  // A proxy's HTML error page is no JSON; FastAPI's own validation errors list details.
  const body = await response.json().catch(() => ({}));
  if (mine !== asked) return;
  if (response.ok) {
    show(body);
  } else {
    const detail = Array.isArray(body.detail)
      ? body.detail.map((d) => d.msg).join("; ") : body.detail;
    fail(detail || `the server answered ${response.status}`);
  }
}

function predict() {
  pad.toBlob((png) => send(png, "drawing.png"), "image/png");
}

function sendChosen(file) {
  if (!file) return;
  chosen.src = URL.createObjectURL(file);
  chosen.hidden = false;
  send(file, file.name);
}

document.getElementById("choose").addEventListener("change", (event) => {
  sendChosen(event.target.files[0]);
});
document.addEventListener("dragover", (event) => {
  event.preventDefault();
  document.body.classList.add("dragging");
});
document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
document.addEventListener("drop", (event) => {
  event.preventDefault();
  document.body.classList.remove("dragging");
  sendChosen(event.dataTransfer.files[0]);
});

document.getElementById("clear").addEventListener("click", () => {
  asked += 1;  // an answer still on its way is for the old drawing: ignore it
  blank();
  chosen.hidden = true;
  digit.textContent = "?";
  statusLine.textContent = "Draw something.";
  statusLine.classList.remove("error");
  bars.replaceChildren();
});

// The model says what it reads: a digit, a piece of clothing (both drawn on the pad), or one of
// its classes, from a picture only.
const TITLES = {digit: "Draw a digit", clothing: "Draw a piece of clothing"};
fetch("/health").then((response) => response.json()).then((health) => {
  const title = TITLES[health.prepare] || `Which is it: ${health.class_names.join(", ")}?`;
  document.title = document.querySelector("h1").textContent = title;
  if (!(health.prepare in TITLES)) {
    pad.hidden = document.getElementById("clear").hidden = true;
    statusLine.textContent = "Drop a picture here, or choose one.";
    document.getElementById("hint").firstChild.textContent = "The model reads a picture: ";
  }
}).catch(() => {});

blank();
