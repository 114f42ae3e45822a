// The console's only script (no framework): local times with a relative
// age, copy buttons, confirmation of actions, and live updates from the
// server-sent events at /events (the page's main part is fetched again when
// a transaction changes).
(function () {
  function span(s) {
    if (s < 90) return s + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    if (s < 129600) return Math.round(s / 3600) + " h";
    return Math.round(s / 86400) + " d";
  }
  function ago(ms) {
    var s = Math.round((Date.now() - ms) / 1000);
    return s < 0 ? "in " + span(-s) : span(s) + " ago";
  }
  function decorate(root) {
    root.querySelectorAll("time[data-ms]").forEach(function (t) {
      var ms = Number(t.getAttribute("data-ms"));
      t.title = t.textContent;
      t.textContent = new Date(ms).toLocaleString() + " (" + ago(ms) + ")";
    });
    root.querySelectorAll("button[data-copy]").forEach(function (b) {
      b.onclick = function () {
        if (navigator.clipboard) navigator.clipboard.writeText(b.getAttribute("data-copy"));
      };
    });
    root.querySelectorAll("form[data-confirm]").forEach(function (f) {
      f.onsubmit = function () { return window.confirm(f.getAttribute("data-confirm")); };
    });
  }
  decorate(document);
  if (document.body.getAttribute("data-live") !== "1" || !window.EventSource) return;
  var pending = null;
  function refresh() {
    pending = null;
    // Not while the operator is typing a reason.
    var a = document.activeElement;
    if (a && (a.tagName === "INPUT" || a.tagName === "SELECT")) { pending = setTimeout(refresh, 1000); return; }
    fetch(location.href, { credentials: "same-origin" }).then(function (r) { return r.text(); }).then(function (html) {
      var doc = new DOMParser().parseFromString(html, "text/html");
      var next = doc.getElementById("main");
      var main = document.getElementById("main");
      if (next && main) { main.innerHTML = next.innerHTML; decorate(main); }
    });
  }
  var events = new EventSource("/events");
  function soon() { if (!pending) pending = setTimeout(refresh, 300); }
  events.onmessage = soon;
  // What changed between rendering this page and subscribing is caught by
  // one refresh once the stream is open (and again after a reconnect).
  var opened = 0;
  events.onopen = function () { if (opened++ > 0 || document.readyState === "complete") soon(); };
})();
