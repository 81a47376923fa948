"""The web dashboard: `taskworker dashboard`, or `serve --dashboard`.

Plain WSGI (app.py routes a dozen paths; http.py parses requests and builds
responses with the standard library) and Jinja2 templates with autoescaping on
for every template, served by gevent's WSGI server on connections of its own
(pool.py). Counts and the chart come from a background sampler (sampler.py) that
runs only while someone looks; the task list pages by keyset (store.dashboard),
and its text search reads a side table that an indexer (indexer.py) keeps up to
date from finished tasks, off serve's hot path (store.search).
Every action is a POST behind a confirmation page and a CSRF token
(security.py), written to the log with who did it.
"""
