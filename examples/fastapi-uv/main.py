"""A minimal FastAPI app: dependencies locked in uv.lock, no Procfile.

The python buildpack installs exactly what uv.lock pins (`uv sync --locked`)
and infers the web process from this file: `uvicorn main:app`.
"""

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

app = FastAPI()


@app.get("/", response_class=PlainTextResponse)
def index() -> str:
    return "Hello from FastAPI (uv) on slugrunner!\n"


@app.get("/versions")
def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("fastapi", "starlette", "uvicorn")}
