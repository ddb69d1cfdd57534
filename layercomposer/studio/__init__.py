"""`lc studio`: the layered canvas in a browser, over the same canvas files as the CLI.

`server.py` builds the Starlette app and serves it; `api.py` holds the JSON endpoints;
`workspace.py` confines every path to the canvas folder; `roundtrip.py` writes canvas YAML back
keeping the user's comments; `jobs.py` runs one render at a time; `static/` is the page (plain
ES modules, no build step).
"""
