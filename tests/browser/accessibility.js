// Run in the page by tests/browser/conftest.py (assert_accessible): what a screen reader
// or keyboard user would miss on the page as shown now. Returns the problems found.
() => {
  const problems = [];
  const shown = (el) => !el.closest("[hidden]");
  const text = (el) => (el.textContent || "").replace(/\s+/g, " ").trim();
  const byIds = (value) => (value || "").split(/\s+/).filter(Boolean)
    .map((id) => document.getElementById(id));
  const describe = (el) => el.outerHTML.slice(0, 120);
  const nameOf = (el) => {
    if ((el.getAttribute("aria-label") || "").trim()) return el.getAttribute("aria-label");
    const by = byIds(el.getAttribute("aria-labelledby"));
    if (by.length && by.every((n) => n && text(n))) return by.map(text).join(" ");
    if (el.labels && [...el.labels].some((l) => text(l))) return [...el.labels].map(text).join(" ");
    if ((el.getAttribute("title") || "").trim()) return el.getAttribute("title");
    return "";
  };
  if (!(document.documentElement.getAttribute("lang") || "").trim()) problems.push("<html> has no lang");
  if (!document.title.trim()) problems.push("the page has no <title>");
  const mains = document.querySelectorAll("main");
  if (mains.length !== 1) problems.push(`${mains.length} <main> elements (want exactly one)`);
  for (const el of document.querySelectorAll("input, select, textarea")) {
    if (el.type === "hidden" || !shown(el)) continue;
    if (["submit", "button", "reset"].includes(el.type)) {
      if (!(el.value || "").trim() && !nameOf(el)) problems.push("button without a name: " + describe(el));
    } else if (!nameOf(el)) problems.push("field without a label: " + describe(el));
  }
  for (const el of document.querySelectorAll("button")) {
    if (shown(el) && !text(el) && !nameOf(el)) problems.push("button without a name: " + describe(el));
  }
  for (const el of document.querySelectorAll("a[href]")) {
    const alt = [...el.querySelectorAll("img[alt]")].map((i) => i.alt).join("");
    if (shown(el) && !text(el) && !nameOf(el) && !alt.trim()) problems.push("link without text: " + describe(el));
  }
  for (const el of document.querySelectorAll("img")) {
    if (!el.hasAttribute("alt")) problems.push("image without alt: " + describe(el));
  }
  for (const el of document.querySelectorAll("video, audio")) {
    if (!nameOf(el)) problems.push("media without a name: " + describe(el));
  }
  const headings = [...document.querySelectorAll("h1, h2, h3, h4, h5, h6")].filter(shown);
  const h1s = headings.filter((h) => h.tagName === "H1").length;
  if (h1s !== 1) problems.push(`${h1s} <h1> headings (want exactly one)`);
  let level = 0;
  for (const h of headings) {
    const next = Number(h.tagName[1]);
    if (level === 0 && next !== 1) problems.push(`the first heading is ${h.tagName}, not H1`);
    if (level && next > level + 1) problems.push(`heading level skipped: ${h.tagName} "${text(h)}" after H${level}`);
    level = next;
  }
  const ids = new Map();
  for (const el of document.querySelectorAll("[id]")) ids.set(el.id, (ids.get(el.id) || 0) + 1);
  for (const [id, count] of ids) if (count > 1) problems.push(`id "${id}" used ${count} times`);
  for (const el of document.querySelectorAll("[aria-describedby]")) {
    if (byIds(el.getAttribute("aria-describedby")).some((n) => !n)) problems.push("aria-describedby names a missing id: " + describe(el));
  }
  return problems;
}
