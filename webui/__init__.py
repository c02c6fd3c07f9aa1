"""The web chat page: plain HTML, CSS and JavaScript served by Flask, with no build step.

The page talks to the same JSON API as everyone else (``/api/question`` streamed as SSE, the
conversation routes). It loads nothing from outside the machine, and its Content-Security-Policy
makes the browser refuse anything that tries: privacy is the product.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

STATIC = Path(__file__).parent / "static"

# Only this origin: no CDN, no web fonts, no analytics, no frames. Links to a source's web page
# still work (navigation is not a fetch), and send no Referer.
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; "
          "frame-ancestors 'none'")

webui_blueprint = Blueprint("webui", __name__, static_folder=STATIC, static_url_path="/ui")


@webui_blueprint.get("/")
def index() -> Response:
    response = send_from_directory(STATIC, "index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response


@webui_blueprint.after_request
def _private(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = POLICY
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
