// The kiosk's start page (a file: URL, so it shows even when lockerd is down): it
// probes lockerd's server with an image, which needs no CORS, and goes to the
// screen as soon as it answers.
"use strict";
(function () {
  var params = new URLSearchParams(location.search);
  var target = params.get("url") || "http://127.0.0.1:8080/";
  if (!/^http:\/\/(127\.[0-9.]+|localhost|\[::1\])(:[0-9]+)?\/$/.test(target)) {
    target = "http://127.0.0.1:8080/";
  }
  function probe() {
    var img = new Image();
    img.onload = function () { location.replace(target); };
    img.onerror = function () { setTimeout(probe, 2000); };
    img.src = target + "api/ping?t=" + Date.now();
  }
  probe();
})();
