"""``mmrope serve``: a local web page to caption an image or a clip and see why, and ``mmrope serve --ablation OUT``,
a page to read an ablation folder.

    local_server.py     what both pages share: loopback only, security headers, one line per failure, loaded models
    server.py           the caption page: checkpoints, uploads, limits; serve(), which runs either page
    explain.py          what the caption page shows of a caption: attention per word, (t, h, w) ids
    ablation_server.py  the ablation page: GET only, every name checked against the plan
    ablation.py         what the ablation page reads of a folder: the plan, the runs, tables, curves, the tests
    ablation_scenes.py  the ablation page's scenes: every arm's captions, a scene as a PNG, the inspector
    static/             the pages (index.*, ablation.*, common.js, style.css), package data

Why a plain page on Python's standard library (``http.server``) rather than Gradio or Streamlit, the usual tools
for such demos: the page needs one upload, a few fields and some pictures, which a few hundred lines of HTML and
JavaScript do; Gradio would add dozens of packages (FastAPI, uvicorn, pydantic, pandas, ...) to an install that has
none of them, its default theme loads its fonts from Google and it sends usage analytics unless told not to, where
this page must run offline from the installed package with no new dependency. The page and its assets ship inside
the package (package data), are read once at start, and are the only files the server hands out.
"""
