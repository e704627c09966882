// Open every page of a built book in headless Chromium and check it (make check-book).
//
//   node scripts/check_book.mjs <html dir> [--screenshots DIR]
//
// Serves <html dir> on 127.0.0.1 (random port) and, for every .html page outside mathjax/:
//   * no request goes anywhere but that server, and none fails (network error or HTTP >= 400);
//   * no uncaught page error;
//   * a page with math (elements of class "math") has MathJax output (mjx-container) once
//     MathJax's startup promise resolves;
//   * every <img> has loaded with a non-zero natural size;
//   * nothing a reader would miss: no element inside the content column (article.bd-article) reaches
//     past its right edge, and no code block, printed output or table hides part of itself
//     (scrollWidth > clientWidth);
//   * every figure (an image in a notebook cell's output) is shown at least 600 CSS px wide, is
//     sharp (an SVG, or a PNG whose natural width is at least 1.5x its shown width), and its text is
//     not shrunk out of reach: its own width in inches (an SVG's width attribute; a PNG's natural
//     pixels over the dpi of its pHYs chunk) is at most 1.33x its shown width (CSS px / 96), so
//     10 pt labels show at 7.5 pt or more.
// A full-page screenshot of each page goes to DIR (default: <html dir>/../screenshots).
// A page with a problem is looked at once more: it fails only if the second look sees a problem
// too (a page that passes the second time is printed as FLAKY, with what the first look saw).
// Prints one line per page and a JSON summary; exits 1 if any page fails, 2 on bad usage.
// Needs playwright-core (PLAYWRIGHT_CORE = its folder) and Chromium (CHROMIUM = its path).
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { createRequire } from "node:module";

const args = process.argv.slice(2);
if (args.length < 1) {
  console.error("usage: node scripts/check_book.mjs <html dir> [--screenshots DIR]");
  process.exit(2);
}
const root = path.resolve(args[0]);
const shotDir = path.resolve(args.includes("--screenshots") ? args[args.indexOf("--screenshots") + 1]
                                                            : path.join(root, "..", "screenshots"));
if (!fs.existsSync(path.join(root, "index.html"))) {
  console.error(`no index.html in ${root}: build the book first (make book)`);
  process.exit(2);
}
const require = createRequire(import.meta.url);
const { chromium } = require(process.env.PLAYWRIGHT_CORE || "playwright-core");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".png": "image/png",
  ".svg": "image/svg+xml", ".woff": "font/woff", ".woff2": "font/woff2", ".json": "application/json",
  ".ico": "image/x-icon", ".jpg": "image/jpeg", ".gif": "image/gif", ".txt": "text/plain" };

function pages(dir) {
  const out = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) {
      if (!["mathjax", "_static", "_sources", "_images"].includes(e.name)) out.push(...pages(p));
    } else if (e.name.endsWith(".html")) out.push(p);
  }
  return out.sort();
}

const server = http.createServer((req, res) => {
  const rel = decodeURIComponent(new URL(req.url, "http://x").pathname);
  let file = path.join(root, rel);
  if (!file.startsWith(root)) { res.writeHead(403); res.end(); return; }
  if (fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, "index.html");
  fs.readFile(file, (err, data) => {
    if (err) { res.writeHead(404); res.end("not found"); return; }
    res.writeHead(200, { "Content-Type": TYPES[path.extname(file)] || "application/octet-stream" });
    res.end(data);
  });
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const origin = `http://127.0.0.1:${server.address().port}`;

fs.mkdirSync(shotDir, { recursive: true });
const browser = await chromium.launch({ executablePath, args: ["--headless", "--no-sandbox"] });
const results = [];
async function look(rel) {          // checkPage, with a crash (e.g. a timeout) as the page's problem
  try {
    return await checkPage(rel);
  } catch (e) {
    return { page: rel, ok: false, math: 0, typeset: 0, images: 0, screenshot: null,
             problems: [`the check could not finish: ${e.message.split("\n")[0]}`] };
  }
}

async function checkPage(rel) {
  const problems = [];
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith(origin) && !u.startsWith("data:") && !u.startsWith("blob:") && !u.startsWith("about:"))
      problems.push(`request leaves localhost: ${u}`);
  });
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} (${r.failure()?.errorText})`));
  page.on("response", (r) => { if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`); });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  await page.goto(`${origin}/${rel}`, { waitUntil: "load" });
  const inspect = () => page.evaluate(async () => {
    const math = document.querySelectorAll(".math").length;
    if (math && window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) {
      await window.MathJax.startup.promise;
    }
    const imgs = [...document.images];
    await Promise.all(imgs.map((i) => (i.complete ? null : new Promise((r) => { i.onload = i.onerror = r; }))));
    const art = document.querySelector("article.bd-article");
    const sticking = [], hidden = [], figures = [];
    if (art) {
      const right = art.getBoundingClientRect().right;
      const describe = (e) => `${e.tagName.toLowerCase()}${e.className && typeof e.className === "string"
        ? "." + e.className.trim().split(/\s+/).join(".") : ""} "${(e.textContent || "").trim().slice(0, 40)}"`;
      const clipped = (e) => {     // inside a box that clips or scrolls: not visibly past the column
        for (let a = e.parentElement; a && a !== art; a = a.parentElement)
          if (getComputedStyle(a).overflowX !== "visible") return true;
        return false;
      };
      for (const e of art.querySelectorAll("*")) {
        const r = e.getBoundingClientRect();
        if (r.width > 0 && r.right > right + 1 && !sticking.some((s) => s.el.contains(e)) && !clipped(e))
          sticking.push({ el: e, text: `${describe(e)} reaches ${Math.round(r.right - right)} px past the column` });
      }
      for (const e of art.querySelectorAll("pre, table, div.cell_output, div.output")) {
        if (e.scrollWidth > e.clientWidth + 1)
          hidden.push(`${describe(e)} hides ${e.scrollWidth - e.clientWidth} px (scrollWidth ${e.scrollWidth} > ` +
                      `clientWidth ${e.clientWidth})`);
      }
      for (const i of art.querySelectorAll("div.cell_output img"))
        figures.push({ src: i.getAttribute("src"), shown: i.getBoundingClientRect().width, natural: i.naturalWidth });
    }
    return {
      math, typeset: document.querySelectorAll("mjx-container").length, mathjax: !!window.MathJax,
      images: imgs.length,
      broken: imgs.filter((i) => !(i.naturalWidth > 0 && i.naturalHeight > 0)).map((i) => i.getAttribute("src")),
      sticking: sticking.map((s) => s.text), hidden, figures,
    };
  });
  let check;
  try {
    check = await inspect();
  } catch (e) {      // a page that redirects (index.html) navigates away while being inspected
    await page.waitForLoadState("load");
    check = await inspect();
  }
  if (check.math && !check.typeset) problems.push(`${check.math} math element(s) but nothing typeset (MathJax loaded: ${check.mathjax})`);
  for (const src of check.broken) problems.push(`image with zero natural size: ${src}`);
  for (const t of check.sticking) problems.push(`wider than the column: ${t}`);
  for (const t of check.hidden) problems.push(`cut off: ${t}`);
  const figures = check.figures.map((f) => ({ ...f, ...figureSize(rel, f.src) }));
  for (const f of figures) problems.push(...figureProblems(f));
  const shot = path.join(shotDir, rel.replace(/\//g, "__").replace(/\.html$/, ".png"));
  await page.screenshot({ path: shot, fullPage: true });
  await page.close();
  return { page: rel, ok: problems.length === 0, math: check.math, typeset: check.typeset, images: check.images,
           figures, screenshot: shot, problems };
}

// A figure's own width in inches, from its file: an SVG's width attribute, a PNG's pixels over its pHYs dpi.
function figureSize(rel, src) {
  const file = path.join(root, path.dirname(rel), decodeURIComponent(src.split("?")[0]));
  if (!fs.existsSync(file)) return { inches: null, kind: "missing" };
  const data = fs.readFileSync(file);
  if (file.endsWith(".svg")) {
    const m = /<svg\b[^>]*?\swidth="([\d.]+)(pt|px|in|cm|mm)?"/.exec(data.toString("utf8", 0, 4096));
    if (!m) return { inches: null, kind: "svg" };
    const per = { pt: 72, px: 96, in: 1, cm: 2.54, mm: 25.4 }[m[2] || "px"];
    return { inches: parseFloat(m[1]) / per, kind: "svg" };
  }
  if (file.endsWith(".png")) {
    const width = data.readUInt32BE(16);
    for (let off = 8; off + 8 <= data.length;) {
      const len = data.readUInt32BE(off), type = data.toString("ascii", off + 4, off + 8);
      if (type === "pHYs" && data[off + 16] === 1) return { inches: width / (data.readUInt32BE(off + 8) * 0.0254), kind: "png" };
      if (type === "IDAT") break;
      off += 12 + len;
    }
    return { inches: null, kind: "png (no pHYs)" };
  }
  return { inches: null, kind: path.extname(file) };
}

function figureProblems(f) {
  const out = [], name = f.src.split("/").pop();
  if (f.shown < 600) out.push(`figure ${name} is shown ${Math.round(f.shown)} px wide (at least 600)`);
  if (f.kind !== "svg" && !(f.natural >= 1.5 * f.shown))
    out.push(`figure ${name} is blurry: ${f.kind}, ${f.natural} px drawn at ${Math.round(f.shown)} px (needs SVG or 1.5x)`);
  if (f.inches == null) out.push(`figure ${name}: cannot tell its size in inches (${f.kind})`);
  else if (f.inches > 1.33 * f.shown / 96)
    out.push(`figure ${name} is ${f.inches.toFixed(1)} in wide shown at ${(f.shown / 96).toFixed(1)} in: ` +
             `its text shows at ${Math.round(100 * f.shown / 96 / f.inches)}% of its size (at least 75%)`);
  return out;
}

try {
  for (const file of pages(root)) {
    const rel = path.relative(root, file).split(path.sep).join("/");
    let result = await look(rel);
    if (result.problems.length) {      // look again once: a problem seen twice fails the page
      const first = result.problems;
      result = await look(rel);
      if (!result.problems.length) result.flaky = first;
    }
    results.push(result);
    const note = result.flaky ? "  FLAKY: passed on a second look; the first look saw the problems below" : "";
    const figs = (result.figures || []).map((f) => `${Math.round(f.shown)} px`).join(", ");
    console.log(`${result.ok ? "ok  " : "FAIL"} ${rel}  (math ${result.math}/${result.typeset} typeset, ` +
                `${result.images} images${figs ? `, figures shown at ${figs}` : ""})${note}`);
    const shown = result.problems.length ? result.problems : result.flaky || [];
    for (const p of shown.slice(0, 15)) console.log(`       ${p}`);
    if (shown.length > 15) console.log(`       ... and ${shown.length - 15} more (see the JSON summary)`);
  }
} finally {
  await browser.close();
  server.close();
}
const failed = results.filter((r) => !r.ok);
console.log(JSON.stringify({ pages: results.length, failed: failed.length, screenshots: shotDir, results }));
process.exit(failed.length ? 1 : 0);
