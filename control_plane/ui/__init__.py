"""The dashboard under `/ui/`: server-rendered pages (Jinja2, htmx vendored) over the HTTP API.

Every page reads through the API itself (`control_plane.ui.api`), with the token the person
logged in with: what a page may show or do is exactly what that token may through the API.
"""
