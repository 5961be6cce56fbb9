// The welcome page's playground: a small image chat. The conversation lives in this page only and is
// sent whole on each request (so follow-ups refine the last image); an image to edit can be pasted,
// dropped or picked; the session's images stay in a strip.
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

  var MAX_IMAGE_BYTES = 4 * 1024 * 1024;
  var IMAGE_TYPES = ["image/png", "image/jpeg", "image/webp", "image/gif"];
  var history = [];      // [{role, content}] of this conversation, text only once answered
  var attached = null;   // the data URI of the image to edit with the next message
  var chatList = document.getElementById("chat");
  var detailLine = document.getElementById("detail");
  var strip = document.getElementById("strip");

  function setStatus(text, isError, detail) {
    statusLine.textContent = text;
    statusLine.className = isError ? "error" : "";
    detailLine.textContent = detail ? "Details: " + detail : "";
    detailLine.hidden = !detail;
  }

  // The gateway's error codes, said as sentences; the server's own message becomes the detail.
  var SENTENCES = {
    invalid_api_key: "The API key was not accepted. Use the key the gateway printed in the terminal" +
      " at start-up (it is also in the client-key file of its data directory).",
    authentication_error: "The API key was not accepted. Use the key the gateway printed in the" +
      " terminal at start-up (it is also in the client-key file of its data directory).",
    image_input_not_supported: "This model cannot edit images. Remove the image, or pick a model" +
      " that takes images.",
    image_input_too_large: "The image is too large for this gateway. Try a smaller one.",
    invalid_image_input: "The image could not be read. Try a PNG, JPEG, WebP or GIF file.",
    upstream_rejected: "The image provider refused this request, often because of the prompt's" +
      " content. Try rewording it.",
    upstream_timeout: "The image provider took too long to answer. Try again in a moment.",
    upstream_unavailable: "The image provider is not reachable right now. Try again later.",
    upstream_error: "The image provider answered with an error. Try again, or another model.",
    bad_answer: "The image provider's answer could not be read. Try again, or another model.",
    model_not_found: "This gateway does not serve that model. Pick one from the list.",
    request_too_large: "The request is too large. Try a smaller image or a shorter conversation.",
    too_large: "The request is too large. Try a smaller image or a shorter conversation.",
    rate_limited: "Too many requests at once. Wait a moment and try again.",
    internal_error: "The gateway failed unexpectedly. Try again; if it persists, see its log."
  };

  function explain(error, status) {
    var code = (error && error.code) || "";
    var message = (error && error.message) || "";
    var sentence = SENTENCES[code];
    if (!sentence && status === 401) { sentence = SENTENCES.invalid_api_key; }
    if (!sentence && status === 429) { sentence = SENTENCES.rate_limited; }
    if (!sentence && status === 413) { sentence = SENTENCES.too_large; }
    if (!sentence) { sentence = "The request failed" + (status ? " (HTTP " + status + ")" : "") + "."; }
    return { sentence: sentence, detail: message };
  }

  function showError(error, status) {
    var said = explain(error, status);
    setStatus(said.sentence, true, said.detail);
    addTurn("assistant error", said.sentence, null);
  }

  function addTurn(kind, text, imageUrl) {
    var item = document.createElement("li");
    item.className = kind;
    if (text) {
      var words = document.createElement("span");
      words.textContent = text;
      item.appendChild(words);
    }
    if (imageUrl) {
      var picture = document.createElement("img");
      picture.alt = kind.indexOf("user") === 0 ? "image to edit" : "generated image";
      picture.src = imageUrl;
      item.appendChild(document.createElement("br"));
      item.appendChild(picture);
    }
    chatList.appendChild(item);
    return item;
  }

  var EXTENSIONS = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif" };

  // A download is named by the image's real type, which only the gateway's answer tells (its
  // links do not show it). Until that is known the name has no extension, and the browser
  // gives it one from the type it downloads.
  function nameByType(anchor, url, stem) {
    anchor.download = stem;
    fetch(url, { method: "HEAD" }).then(function (response) {
      var type = (response.headers.get("Content-Type") || "").split(";")[0].trim().toLowerCase();
      if (response.ok && EXTENSIONS[type]) { anchor.download = stem + "." + EXTENSIONS[type]; }
    }).catch(function () { /* the browser names it from the type it downloads */ });
  }

  function addToStrip(url, alt) {
    document.getElementById("strip-title").hidden = false;
    var item = document.createElement("li");
    var link = document.createElement("a");
    link.href = url;
    link.target = "_blank";
    link.rel = "noopener";
    var picture = document.createElement("img");
    picture.src = url;
    picture.alt = alt;
    link.appendChild(picture);
    var actions = document.createElement("div");
    actions.className = "actions";
    var copy = document.createElement("button");
    copy.type = "button";
    copy.className = "small copy";
    copy.textContent = "Copy markdown";
    var markdown = "![" + alt.replace(/([\\\[\]])/g, "\\$1") + "](" + url + ")";
    copy.dataset.markdown = markdown;
    copy.addEventListener("click", function () {
      var done = function () { copy.textContent = "Copied"; };
      var fallback = function () { window.prompt("Copy this markdown:", markdown); };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(markdown).then(done, fallback);
      } else { fallback(); }
    });
    var download = document.createElement("a");
    download.className = "download";
    download.href = url;
    nameByType(download, url, "imagegate-" + (strip.children.length + 1));
    download.textContent = "Download";
    actions.appendChild(copy);
    actions.appendChild(download);
    item.appendChild(link);
    item.appendChild(actions);
    strip.appendChild(item);
  }

  // The raster type a data URI's first bytes show (its declared type is not trusted), or null.
  function sniffImageType(dataUri) {
    var comma = dataUri.indexOf(",");
    var head;
    try { head = window.atob(dataUri.slice(comma + 1, comma + 17)); } catch (error) { return null; }
    if (head.indexOf("\x89PNG") === 0) { return "image/png"; }
    if (head.indexOf("\xff\xd8\xff") === 0) { return "image/jpeg"; }
    if (head.indexOf("GIF8") === 0) { return "image/gif"; }
    if (head.indexOf("RIFF") === 0 && head.slice(8, 12) === "WEBP") { return "image/webp"; }
    return null;
  }

  // An image to edit: only raster images (checked by their first bytes too), at most 4 MiB.
  function attach(file) {
    if (!file) { return; }
    if (IMAGE_TYPES.indexOf(file.type) < 0) {
      setStatus("That file is not an image this playground can send: use a PNG, JPEG, WebP or GIF.", true);
      return;
    }
    if (file.size > MAX_IMAGE_BYTES) {
      setStatus("That image is larger than 4 MiB: pick a smaller one.", true);
      return;
    }
    var reader = new FileReader();
    reader.onload = function () {
      var sniffed = sniffImageType(reader.result);
      if (!sniffed) {
        setStatus("That file is not an image this playground can send: use a PNG, JPEG, WebP or GIF.", true);
        return;
      }
      attached = "data:" + sniffed + reader.result.slice(reader.result.indexOf(";"));
      document.getElementById("attachment-preview").src = attached;
      document.getElementById("attachment").hidden = false;
      setStatus("Image attached: it goes with your next message.");
    };
    reader.onerror = function () { setStatus("That image could not be read.", true); };
    reader.readAsDataURL(file);
  }
  function detach() {
    attached = null;
    document.getElementById("attach").value = "";
    document.getElementById("attachment").hidden = true;
  }
  document.getElementById("attach").addEventListener("change", function (event) {
    attach(event.target.files[0]);
  });
  document.getElementById("detach").addEventListener("click", detach);
  document.getElementById("prompt").addEventListener("paste", function (event) {
    var items = (event.clipboardData && event.clipboardData.files) || [];
    if (items.length) { event.preventDefault(); attach(items[0]); }
  });
  form.addEventListener("dragover", function (event) {
    event.preventDefault();
    form.querySelector(".attach").classList.add("dragging");
  });
  form.addEventListener("dragleave", function () {
    form.querySelector(".attach").classList.remove("dragging");
  });
  form.addEventListener("drop", function (event) {
    event.preventDefault();
    form.querySelector(".attach").classList.remove("dragging");
    var files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) { attach(files[0]); }
  });
  document.getElementById("reset").addEventListener("click", function () {
    history = [];
    chatList.textContent = "";
    detach();
    setStatus("A new conversation: the next message starts afresh.");
  });

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

  function showAnswer(content, asked) {
    var match = /!\[((?:\\.|[^\]\\])*)\]\((https?:\/\/[^)\s]+)\)/.exec(content);
    if (!match) {  // only http(s) links become images and hrefs: never javascript: or data:
      setStatus("The answer held no image.", true, content);
      addTurn("assistant error", content, null);
      return false;
    }
    var image = document.getElementById("image");
    image.onload = function () {
      setStatus("Done: " + image.naturalWidth + " x " + image.naturalHeight);
    };
    image.onerror = function () { setStatus("The image link did not load.", true); };
    var alt = match[1].replace(/\\(.)/g, "$1");
    image.alt = alt;
    image.src = match[2];
    var link = document.getElementById("link");
    link.href = match[2];
    var rest = content.slice(match.index + match[0].length).trim();
    // Without an optimised prompt in the answer, the caption is what was asked.
    document.getElementById("caption").textContent = rest || "Prompt: " + asked;
    document.getElementById("result").hidden = false;
    addTurn("assistant", rest, match[2]);
    addToStrip(match[2], alt || "image");
    return true;
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
    if (!prompt) { setStatus("Write what to draw first.", true); return; }
    var ratio = document.getElementById("ratio").value;
    if (ratio) { prompt += ", " + ratio; }
    var image = attached;
    // The message as sent: an image to edit goes as an image_url part beside the text.
    var content = image
      ? [{ type: "text", text: prompt }, { type: "image_url", image_url: { url: image } }]
      : prompt;
    var messages = history.concat([{ role: "user", content: content }]);
    addTurn("user", prompt, image);
    button.disabled = true;
    thinkingBox.textContent = "";
    thinkingBox.hidden = true;
    setStatus("Sending...");
    var started = Date.now();
    var answer = "";
    var failed = false;
    fetch("/v1/chat/completions", {
      method: "POST",
      headers: authHeaders(),
      body: JSON.stringify({ model: modelSelect.value, stream: true, messages: messages })
    }).then(function (response) {
      if (!response.ok) {
        failed = true;
        return response.json().then(function (body) {
          showError(body && body.error, response.status);
        }, function () { showError(null, response.status); });
      }
      setStatus("Generating...");
      return readStream(response, function (data) {
        if (data === null) {
          setStatus("Generating... " + Math.round((Date.now() - started) / 1000) + " s");
          return;
        }
        if (data === "[DONE]") { return; }
        var chunk = JSON.parse(data);
        if (chunk.error) { failed = true; showError(chunk.error, 0); return; }
        (chunk.choices || []).forEach(function (choice) {
          var delta = choice.delta || {};
          if (delta.reasoning_content) {
            thinkingBox.hidden = false;
            thinkingBox.textContent += delta.reasoning_content;
          }
          if (delta.content) { answer += delta.content; }
        });
      });
    }).then(function () {
      if (failed || !answer) { return; }
      if (showAnswer(answer, prompt)) {
        // The answer's link carries the image from now on: the upload is not sent again.
        history.push({ role: "user", content: prompt });
        history.push({ role: "assistant", content: answer });
        document.getElementById("prompt").value = "";
        detach();
      }
    }).catch(function (error) {
      setStatus("The gateway could not be reached. Check that it is running.", true, String(error));
    }).finally(function () { button.disabled = false; });
  });
})();
