// The welcome page's playground: a streamed chat completion, its markdown image shown as an image.
(function () {
  "use strict";
  var form = document.getElementById("play");
  var keyInput = document.getElementById("key");
  var modelSelect = document.getElementById("model");
  var statusLine = document.getElementById("status");
  var thinkingBox = document.getElementById("thinking");
  var button = document.getElementById("go");
  var stored = window.localStorage.getItem("imagegate-key");
  if (stored) { keyInput.value = stored; }

  function setStatus(text, isError) {
    statusLine.textContent = text;
    statusLine.className = isError ? "error" : "";
  }

  function authHeaders() {
    return { "Authorization": "Bearer " + keyInput.value.trim(), "Content-Type": "application/json" };
  }

  // Fill the model list from /v1/models once a key is known (the page lists them too).
  function loadModels() {
    if (!keyInput.value.trim()) { return; }
    fetch("/v1/models", { headers: authHeaders() }).then(function (response) {
      if (!response.ok) { return null; }
      return response.json();
    }).then(function (listing) {
      if (!listing || !listing.data) { return; }
      var current = modelSelect.value;
      modelSelect.textContent = "";
      listing.data.forEach(function (model) {
        var option = document.createElement("option");
        option.textContent = model.id;
        modelSelect.appendChild(option);
      });
      if (current) { modelSelect.value = current; }
      if (!modelSelect.value && modelSelect.options.length) { modelSelect.selectedIndex = 0; }
    }).catch(function () { /* the server-rendered list stays */ });
  }
  keyInput.addEventListener("change", function () {
    window.localStorage.setItem("imagegate-key", keyInput.value.trim());
    loadModels();
  });
  loadModels();

  function showAnswer(content) {
    var match = /!\[((?:\\.|[^\]\\])*)\]\(([^)\s]+)\)/.exec(content);
    if (!match) { setStatus("The answer held no image: " + content, true); return; }
    var image = document.getElementById("image");
    image.onload = function () {
      setStatus("Done: " + image.naturalWidth + " x " + image.naturalHeight);
    };
    image.onerror = function () { setStatus("The image link did not load.", true); };
    image.alt = match[1].replace(/\\(.)/g, "$1");
    image.src = match[2];
    var link = document.getElementById("link");
    link.href = match[2];
    var rest = content.slice(match.index + match[0].length).trim();
    document.getElementById("caption").textContent = rest;
    document.getElementById("result").hidden = false;
  }

  // Read Server-Sent Events from a fetch body: comments keep the line open, data lines carry chunks.
  function readStream(response, onEvent) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    function pump() {
      return reader.read().then(function (part) {
        if (part.done) { return; }
        buffer += decoder.decode(part.value, { stream: true });
        var blocks = buffer.split("\n\n");
        buffer = blocks.pop();
        blocks.forEach(function (block) {
          if (block.indexOf(":") === 0) { onEvent(null); return; }
          if (block.indexOf("data: ") === 0) { onEvent(block.slice(6)); }
        });
        return pump();
      });
    }
    return pump();
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    window.localStorage.setItem("imagegate-key", keyInput.value.trim());
    var prompt = document.getElementById("prompt").value.trim();
    var ratio = document.getElementById("ratio").value;
    if (ratio) { prompt += ", " + ratio; }
    button.disabled = true;
    thinkingBox.textContent = "";
    thinkingBox.hidden = true;
    setStatus("Sending...");
    var started = Date.now();
    var content = "";
    var failed = false;
    fetch("/v1/chat/completions", {
      method: "POST",
      headers: authHeaders(),
      body: JSON.stringify({
        model: modelSelect.value,
        stream: true,
        messages: [{ role: "user", content: prompt }]
      })
    }).then(function (response) {
      if (!response.ok) {
        return response.json().then(function (body) {
          failed = true;
          setStatus(body.error ? body.error.message : "Request failed (" + response.status + ")", true);
        });
      }
      setStatus("Generating...");
      return readStream(response, function (data) {
        if (data === null) {
          setStatus("Generating... " + Math.round((Date.now() - started) / 1000) + " s");
          return;
        }
        if (data === "[DONE]") { return; }
        var chunk = JSON.parse(data);
        if (chunk.error) { failed = true; setStatus(chunk.error.message, true); return; }
        (chunk.choices || []).forEach(function (choice) {
          var delta = choice.delta || {};
          if (delta.reasoning_content) {
            thinkingBox.hidden = false;
            thinkingBox.textContent += delta.reasoning_content;
          }
          if (delta.content) { content += delta.content; }
        });
      });
    }).then(function () {
      if (!failed && content) { showAnswer(content); }
    }).catch(function (error) {
      setStatus("Request failed: " + error, true);
    }).finally(function () { button.disabled = false; });
  });
})();
