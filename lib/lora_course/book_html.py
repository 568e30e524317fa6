"""A Sphinx extension for the book's pages: no errors in a reader's browser console.

_config.yml loads it (`sphinx: extra_extensions`). The browser check
(lora_course.site_check) fails on any console error; with jupyter-book 1.0.4
two come from the stack itself, on every page:

- sphinx-thebe's inline script `const THEBE_JS_URL = ...` is added to each page
  twice (its set-up runs on two reads of the sources), and the second copy
  throws "Identifier 'THEBE_JS_URL' has already been declared". Each page here
  keeps the first copy of every script.
- pydata-sphinx-theme writes `data-mode=""` when no default colour mode is set,
  and its script logs "Got invalid theme mode" on a reader's first visit. The
  default becomes "auto" (follow the reader's system setting).
"""

from __future__ import annotations


def _page(app, pagename, templatename, context, doctree) -> None:
    if not context.get("default_mode"):  # the theme's template reads this context value
        context["default_mode"] = "auto"
    seen, kept = set(), []
    for js in context.get("script_files") or []:
        # Two copies differ at most in their load priority: same file (or none, inline) and same attributes.
        attrs = getattr(js, "attributes", {})
        key = (str(getattr(js, "filename", js) or ""), tuple(sorted((k, str(v)) for k, v in attrs.items())))
        if key not in seen:
            seen.add(key)
            kept.append(js)
    if "script_files" in context:
        context["script_files"] = kept


def setup(app):
    app.connect("html-page-context", _page, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
