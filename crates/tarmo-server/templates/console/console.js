// The console's one script: the segment builder's live count. As one
// edits, the builder's form (with its CSRF token) is posted to
// /console/segments/count and the count put in the page's polite live
// region. Without this script the Count button does the same.
"use strict";
(function () {
  var form = document.querySelector("form[data-live-count]");
  if (!form) return;
  var out = document.getElementById("live-count");
  var tree = document.getElementById("live-rule");
  var timer = null;
  var seq = 0;
  function update() {
    var mine = ++seq;
    var body = new URLSearchParams(new FormData(form));
    body.delete("action");
    fetch(form.getAttribute("data-live-count"), {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/x-www-form-urlencoded", Accept: "application/json" },
      body: body.toString(),
    })
      .then(function (r) {
        return r.json().catch(function () {
          return { error: "Could not count; press Count." };
        });
      })
      .then(function (j) {
        if (mine !== seq) return;
        if (typeof j.count === "number") {
          out.textContent = j.count + " people match now.";
        } else {
          out.textContent = "Not counted: " + (j.error || "press Count.");
        }
        if (tree && j.rule) tree.textContent = JSON.stringify(j.rule, null, 2);
      })
      .catch(function () {
        if (mine === seq) out.textContent = "Not counted: press Count.";
      });
  }
  function later() {
    clearTimeout(timer);
    timer = setTimeout(update, 400);
  }
  form.addEventListener("input", later);
  form.addEventListener("change", later);
})();
