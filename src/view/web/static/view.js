// chaosgate view: live updates without a build step.
// - Subscribes to /api/stream (server-sent events; the browser resends Last-Event-ID on
//   reconnect, so nothing is missed). On each change it re-fetches this page and swaps
//   the parts marked data-live, keeping scroll position and the filter form.
// - Copies an execution id or an approve request on click ([data-copy]).
// - Ticks the elapsed time of running runs ([data-since]) and relative times ([data-at]).
(function () {
  "use strict";
  var liveNote = document.getElementById("live");
  function setLive(on, text) {
    if (!liveNote) return;
    liveNote.className = on ? "live on" : "live";
    liveNote.lastChild.textContent = text;
  }
  function human(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    if (seconds < 60) return seconds + " s";
    var m = Math.floor(seconds / 60), s = seconds % 60;
    if (m < 60) return m + " min " + s + " s";
    var h = Math.floor(m / 60);
    return h + " h " + (m % 60) + " min";
  }
  function ago(seconds) {
    if (seconds < 5) return "just now";
    if (seconds < 60) return Math.floor(seconds) + " s ago";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min ago";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h ago";
    return Math.floor(seconds / 86400) + " d ago";
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-since]").forEach(function (el) {
      el.textContent = human((now - Date.parse(el.getAttribute("data-since"))) / 1000);
    });
    document.querySelectorAll("[data-at]").forEach(function (el) {
      el.textContent = ago((now - Date.parse(el.getAttribute("data-at"))) / 1000);
    });
  }
  setInterval(tick, 1000);
  tick();

  // Click on an execution id or an approve request ([data-copy]) copies it.
  document.addEventListener("click", function (e) {
    var el = e.target.closest ? e.target.closest("[data-copy]") : null;
    if (!el || !navigator.clipboard) return;
    navigator.clipboard.writeText(el.getAttribute("data-copy")).then(function () {
      el.classList.add("copied");
      setTimeout(function () { el.classList.remove("copied"); }, 900);
    }, function () {});
  });

  var pending = false;
  function refresh() {
    if (pending) return;
    pending = true;
    setTimeout(function () {
      fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) {
          var doc = new DOMParser().parseFromString(html, "text/html");
          var known = {};
          document.querySelectorAll("[data-row]").forEach(function (r) { known[r.getAttribute("data-row")] = r.outerHTML; });
          document.querySelectorAll("[data-live]").forEach(function (el) {
            var fresh = doc.querySelector('[data-live="' + el.getAttribute("data-live") + '"]');
            if (fresh && fresh.innerHTML !== el.innerHTML) el.innerHTML = fresh.innerHTML;
          });
          document.querySelectorAll("[data-row]").forEach(function (r) {
            if (known[r.getAttribute("data-row")] !== r.outerHTML) r.classList.add("flash");
          });
          tick();
        })
        .catch(function () {})
        .then(function () { pending = false; });
    }, 250);
  }
  if (window.EventSource && document.querySelector("[data-live]")) {
    // A page may narrow the stream to what it shows (data-stream on its live part).
    var narrowed = document.querySelector("[data-stream]");
    var source = new EventSource(narrowed ? narrowed.getAttribute("data-stream") : "/api/stream");
    source.addEventListener("open", function () { setLive(true, "live"); });
    source.addEventListener("error", function () { setLive(false, "reconnecting"); });
    source.addEventListener("change", function () { refresh(); });
  }
})();
