// taskworker dashboard: refreshes the overview's live region every few seconds
// (the page works without this script: its Refresh link reloads it).
"use strict";
(function () {
  var region = document.getElementById("live");
  if (!region || !window.fetch) { return; }
  var url = region.getAttribute("data-live-url");
  var every = 3000;
  function refresh() {
    if (document.hidden) { setTimeout(refresh, every); return; }
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (!response.ok) { throw new Error(response.status); }
        return response.text();
      })
      .then(function (html) {
        // The fragment is rendered by the server with every value escaped.
        var parsed = new DOMParser().parseFromString(html, "text/html");
        region.replaceChildren.apply(region, Array.prototype.slice.call(parsed.body.childNodes));
        region.removeAttribute("data-stale");
      })
      .catch(function () { region.setAttribute("data-stale", "true"); })
      .then(function () { setTimeout(refresh, every); });
  }
  setTimeout(refresh, every);
})();
