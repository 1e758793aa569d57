"""The webhook benchmark's server: metersync's FastAPI app under uvicorn, plus a baseline
endpoint on the same app that answers 200 without verifying or storing anything (the
ceiling of the server itself).

Run by ``python -m tests.bench.webhooks``; settings come from the environment.
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI, Request, Response

from webhooks.app import create_app


def make_app() -> FastAPI:
    """metersync's app with ``POST /_baseline`` added."""
    app = create_app()

    @app.post("/_baseline")
    async def baseline(request: Request) -> Response:
        """Read the body and answer 200: no signature, no database, no broker."""
        await request.body()
        return Response(b'{"received": true}', media_type="application/json")

    return app


def main() -> None:
    """Serve on 127.0.0.1:PORT until terminated."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    uvicorn.run(
        "tests.bench.webhook_server:make_app",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
