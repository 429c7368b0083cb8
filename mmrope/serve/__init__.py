"""``mmrope serve``: a local web page to caption an image or a clip and see why (``server.py``: HTTP, checkpoints,
limits; ``explain.py``: what is shown; ``static/``: the page), and ``mmrope serve --ablation OUT``, a page to read an
ablation folder (``ablation.py``: what it shows; ``static/ablation.*``: the page).

Why a plain page on Python's standard library (``http.server``) rather than Gradio or Streamlit, the usual tools
for such demos: the page needs one upload, a few fields and some pictures, which a few hundred lines of HTML and
JavaScript do; Gradio would add dozens of packages (FastAPI, uvicorn, pydantic, pandas, ...) to an install that has
none of them, its default theme loads its fonts from Google and it sends usage analytics unless told not to, where
this page must run offline from the installed package with no new dependency. The page and its assets ship inside
the package (package data), are read once at start, and are the only files the server hands out.
"""
