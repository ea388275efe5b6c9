"""A Flask app whose dependencies are locked by Poetry (poetry.lock), no Procfile.

The python buildpack installs the lock's main group with pip (hashes checked)
and infers the web process from this file: `gunicorn app:app`.
`langdetect` is published only as a source distribution, so the build has to
build its wheel.
"""

from flask import Flask, request
from langdetect import DetectorFactory, detect

DetectorFactory.seed = 0  # langdetect is random by default
app = Flask(__name__)


@app.route("/")
def index():
    return "Hello from Flask (Poetry) on slugrunner!\n"


@app.route("/detect")
def detect_language():
    return detect(request.args.get("text", "")) + "\n"
