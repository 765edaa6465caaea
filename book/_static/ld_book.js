// The book's own script (registered in _config.yml: html_js_files).
// Following a link to a scorecard chapter, or to a claim inside a folded table, unfolds it.
(function () {
  function unfold() {
    const id = decodeURIComponent(window.location.hash.slice(1));
    const target = id && document.getElementById(id);
    if (!target) return;
    let opened = false;
    for (let d = target.closest("details"); d; d = d.parentElement.closest("details")) {
      if (!d.open) { d.open = true; opened = true; }
    }
    if (target.matches("section.scorecard-chapter")) {
      for (const d of target.querySelectorAll(":scope > details.scorecard-dropdown")) {
        if (!d.open) { d.open = true; opened = true; }
      }
    }
    if (opened) target.scrollIntoView();
  }
  window.addEventListener("hashchange", unfold);
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", unfold);
  else unfold();
})();
