// Open every page of a built book in headless Chromium and check it (make check-book).
//
//   node scripts/check_book.mjs <html dir> [--screenshots DIR]
//
// Serves <html dir> on 127.0.0.1 (random port) and, for every .html page outside mathjax/:
//   * no request goes anywhere but that server, and none fails (network error or HTTP >= 400);
//   * no uncaught page error;
//   * a page with math (elements of class "math") has MathJax output (mjx-container) once
//     MathJax's startup promise resolves;
//   * every <img> has loaded with a non-zero natural size.
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
    return {
      math, typeset: document.querySelectorAll("mjx-container").length, mathjax: !!window.MathJax,
      images: imgs.length,
      broken: imgs.filter((i) => !(i.naturalWidth > 0 && i.naturalHeight > 0)).map((i) => i.getAttribute("src")),
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
  const shot = path.join(shotDir, rel.replace(/\//g, "__").replace(/\.html$/, ".png"));
  await page.screenshot({ path: shot, fullPage: true });
  await page.close();
  return { page: rel, ok: problems.length === 0, math: check.math, typeset: check.typeset, images: check.images,
           screenshot: shot, problems };
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
    console.log(`${result.ok ? "ok  " : "FAIL"} ${rel}  (math ${result.math}/${result.typeset} typeset, ` +
                `${result.images} images)${note}`);
    for (const p of result.problems.length ? result.problems : result.flaky || []) console.log(`       ${p}`);
  }
} finally {
  await browser.close();
  server.close();
}
const failed = results.filter((r) => !r.ok);
console.log(JSON.stringify({ pages: results.length, failed: failed.length, screenshots: shotDir, results }));
process.exit(failed.length ? 1 : 0);
