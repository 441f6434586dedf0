// The live run page: server-sent events replace the rows that changed, and the run's
// body once it is finished. Everything inserted is HTML the server rendered (escaped);
// this file is the only script the page may run (Content-Security-Policy).
"use strict";
(function () {
  function clock(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    var h = Math.floor(seconds / 3600), m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    return h ? h + ":" + pad(m) + ":" + pad(s) : m + ":" + pad(s);
  }
  function tick() {
    var now = Date.now() / 1000;
    document.querySelectorAll("[data-since]").forEach(function (el) {
      el.textContent = clock(now - Number(el.getAttribute("data-since")));
    });
  }
  function replace(id, html) {
    var el = document.getElementById(id);
    if (el) { el.outerHTML = html; }
  }
  function follow(root) {
    var source = new EventSource(root.getAttribute("data-live"));
    source.addEventListener("head", function (e) { replace("run-head", JSON.parse(e.data).html); });
    source.addEventListener("cand", function (e) {
      var d = JSON.parse(e.data);
      replace("cand-" + d.id, d.html);
    });
    source.addEventListener("final", function () {
      source.close();
      fetch(root.getAttribute("data-body"), {credentials: "same-origin"})
        .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
        .then(function (html) {
          root.innerHTML = html;
          root.removeAttribute("data-live");
          root.setAttribute("data-finished", "1");
        })
        .catch(function () { window.location.reload(); });
    });
    source.addEventListener("gone", function () { source.close(); });
  }
  document.addEventListener("DOMContentLoaded", function () {
    setInterval(tick, 1000);
    var root = document.querySelector("[data-live]");
    if (root && window.EventSource) { follow(root); }
  });
})();
