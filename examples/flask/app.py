"""A minimal Flask app: built by the python buildpack, served by gunicorn."""

import os

from flask import Flask

app = Flask(__name__)


@app.route("/")
def index():
    return "Hello from Flask on slugrunner!\n"


@app.route("/env")
def env():
    return f"PORT={os.environ.get('PORT', '')}\n"


if __name__ == "__main__":
    app.run(host="0.0.0.0", port=int(os.environ.get("PORT", "5000")))
