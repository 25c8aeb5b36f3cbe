// EdgeFleet dashboard: confirmations for destructive verbs and an opt-in auto-refresh. No framework.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  const toggle = document.getElementById("auto-refresh");
  if (!toggle) return;
  toggle.checked = window.localStorage.getItem("edgefleet-auto-refresh") === "1";
  let timer = null;
  const arm = () => {
    if (timer) window.clearTimeout(timer);
    timer = toggle.checked ? window.setTimeout(() => window.location.reload(), 5000) : null;
  };
  toggle.addEventListener("change", () => {
    window.localStorage.setItem("edgefleet-auto-refresh", toggle.checked ? "1" : "0");
    arm();
  });
  arm();
});
