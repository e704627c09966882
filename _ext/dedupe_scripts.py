"""Sphinx extension: drop repeated <script> entries from every page.

Jupyter Book 1 emits sphinx-thebe's inline configuration script twice on every page (with
the file name None once and '' once), so each page declared ``const THEBE_JS_URL`` twice and the browser raised
"Identifier 'THEBE_JS_URL' has already been declared". Keeping the first of the inline scripts
with the same body (and of the files with the same name and attributes) fixes the page error.
"""


def _dedupe(app, pagename, templatename, context, doctree):
    seen, kept = set(), []
    for js in context.get("script_files", []):
        attrs = getattr(js, "attributes", {})
        key = ("inline", attrs["body"]) if attrs.get("body") else (str(js), repr(sorted(attrs.items())))
        if key not in seen:
            seen.add(key)
            kept.append(js)
    context["script_files"] = kept


def setup(app):
    app.connect("html-page-context", _dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
