// The console's only script: live regions, confirmations that count, "select all".
// Every page reads fully without it; it adds updates every few seconds and dialogs.
(function () {
  "use strict";

  var stopped = false;

  function notice(text) {
    var box = document.getElementById("live-notice");
    if (!box) { return; }
    box.textContent = "";
    box.appendChild(document.createTextNode(text + " "));
    var link = document.createElement("a");
    link.href = "/admin/login?next=" + encodeURIComponent(location.pathname + location.search);
    link.textContent = "Log in again";
    box.appendChild(link);
    box.hidden = false;
  }

  function checkedIds(region) {
    var ids = {};
    region.querySelectorAll("input[type=checkbox][name=ids]:checked").forEach(function (box) {
      ids[box.value] = true;
    });
    return ids;
  }

  // A region with data-refresh="URL" is replaced by a fresh copy of itself every
  // data-interval ms; with data-refresh-while="queued running" only while it says it is in
  // one of those states.
  function live(region) {
    var url = region.getAttribute("data-refresh");
    var every = parseInt(region.getAttribute("data-interval"), 10) || 5000;
    var whileState = region.getAttribute("data-refresh-while");
    var busy = false;

    function running() {
      if (!whileState) { return true; }
      var state = region.querySelector("[data-state]");
      return state !== null &&
        whileState.split(" ").indexOf(state.getAttribute("data-state")) >= 0;
    }

    function tick() {
      if (stopped || busy || document.hidden) { return; }
      if (!running()) { return; }
      busy = true;
      fetch(url, {credentials: "same-origin", headers: {"Accept": "text/html"}})
        .then(function (response) {
          if (response.status === 401) {
            stopped = true;
            notice("Your session has expired: live updates stopped.");
            return null;
          }
          return response.ok ? response.text() : null;
        })
        .then(function (html) {
          if (html === null) { return; }
          var keep = checkedIds(region);
          region.innerHTML = html;
          region.querySelectorAll("input[type=checkbox][name=ids]").forEach(function (box) {
            box.checked = keep[box.value] === true;
          });
          region.setAttribute("data-refreshed", String(Date.now()));
        })
        .catch(function () { /* the next tick tries again */ })
        .then(function () { busy = false; });
    }

    window.setInterval(tick, every);
  }

  // A form with data-confirm asks first; "{n}" in the question is the number of boxes
  // checked for it (data-confirm-count names them). Accepted, it posts confirmed=yes, so the
  // server does not ask again.
  function confirmSubmit(event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-confirm")) { return; }
    var question = form.getAttribute("data-confirm");
    var countName = form.getAttribute("data-confirm-count");
    if (countName) {
      var n = 0;
      Array.prototype.forEach.call(form.elements, function (el) {
        if (el.name === countName && el.checked) { n += 1; }
      });
      if (n === 0) {
        event.preventDefault();
        window.alert("Select at least one row first.");
        return;
      }
      question = question.replace("{n}", String(n));
    }
    if (!window.confirm(question)) {
      event.preventDefault();
      return;
    }
    if (!form.querySelector("input[name=confirmed]")) {
      var yes = document.createElement("input");
      yes.type = "hidden";
      yes.name = "confirmed";
      yes.value = "yes";
      form.appendChild(yes);
    }
  }

  function selectAll(event) {
    var box = event.target;
    if (!(box instanceof HTMLInputElement) || !box.hasAttribute("data-select-all")) { return; }
    var name = box.getAttribute("data-select-all");
    var table = box.closest("table");
    if (!table) { return; }
    table.querySelectorAll("input[type=checkbox][name=" + name + "]").forEach(function (b) {
      b.checked = box.checked;
    });
  }

  document.addEventListener("submit", confirmSubmit);
  document.addEventListener("change", selectAll);
  document.querySelectorAll("[data-refresh]").forEach(live);
  document.documentElement.setAttribute("data-console-js", "ready");
}());
