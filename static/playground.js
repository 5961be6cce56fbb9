// The welcome page's playground: one chat completion, its markdown image shown as an image.
(function () {
  "use strict";
  var form = document.getElementById("play");
  var keyInput = document.getElementById("key");
  var statusLine = document.getElementById("status");
  var stored = window.localStorage.getItem("imagegate-key");
  if (stored) { keyInput.value = stored; }

  function setStatus(text, isError) {
    statusLine.textContent = text;
    statusLine.className = isError ? "error" : "";
  }

  function showAnswer(content) {
    var match = /!\[((?:\\.|[^\]])*)\]\(([^)\s]+)\)/.exec(content);
    if (!match) { setStatus("The answer held no image: " + content, true); return; }
    var image = document.getElementById("image");
    image.onload = function () { setStatus("Done: " + image.naturalWidth + "x" + image.naturalHeight); };
    image.onerror = function () { setStatus("The image link did not load.", true); };
    image.alt = match[1].replace(/\\(.)/g, "$1");
    image.src = match[2];
    var rest = content.slice(match.index + match[0].length).trim();
    document.getElementById("caption").textContent = rest;
    document.getElementById("result").hidden = false;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var key = keyInput.value.trim();
    window.localStorage.setItem("imagegate-key", key);
    var prompt = document.getElementById("prompt").value.trim();
    var ratio = document.getElementById("ratio").value;
    if (ratio) { prompt += ", " + ratio; }
    var button = document.getElementById("go");
    button.disabled = true;
    setStatus("Generating...");
    fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Authorization": "Bearer " + key, "Content-Type": "application/json" },
      body: JSON.stringify({
        model: document.getElementById("model").value,
        messages: [{ role: "user", content: prompt }]
      })
    }).then(function (response) {
      return response.json().then(function (body) { return { ok: response.ok, body: body }; });
    }).then(function (answer) {
      if (!answer.ok) { setStatus(answer.body.error ? answer.body.error.message : "Request failed", true); return; }
      showAnswer(answer.body.choices[0].message.content);
    }).catch(function (error) {
      setStatus("Request failed: " + error, true);
    }).finally(function () { button.disabled = false; });
  });
})();
