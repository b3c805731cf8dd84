"""Fill the model cache at image build time, so a container starts in seconds.

Starts the server in-process on a loopback port with the same flags and EMBEDLENS_*
variables as `embedlens serve`, waits until every model and index is loaded (built and written
to the cache on the first run), then asks each model one cosine and one dot-product Nearest
question through the real client, so that the index each metric uses is cached too. A failure
here fails the image build: an image that cannot answer a query is never pushed.

    python warm_cache.py [embedlens serve flags]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from embedlens.config import add_serve_arguments, from_args
from embedlens.server import create_server
from embedlens_client import Client

METRICS = ("cosine", "dot")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_serve_arguments(parser)
    config = from_args(parser.parse_args(argv))
    # Only this process talks to it: loopback, any free port, no /metrics.
    config = dataclasses.replace(config, host="127.0.0.1", port=0, metrics_port=-1)
    t0 = time.perf_counter()
    app, port = create_server(config)
    app.start()
    try:
        if not app.wait_ready(timeout=1800):
            print(f"warm_cache: models did not load: {app.registry.failure!r}", file=sys.stderr)
            return 1
        with Client(f"127.0.0.1:{port}", timeout=120) as client:
            for model in client.models():
                for metric in METRICS:
                    query = 1000 % model.vocab_size  # an id: every model has one
                    hits = client.nearest(query, k=3, metric=metric, model=model.name)
                    print(f"warm_cache: {model.name} {metric}: {[h.token for h in hits]}")
        # The server builds the other metrics' indexes in the background (answering exactly
        # meanwhile): wait until they are built and written to the cache.
        deadline = time.monotonic() + 1800
        for space in app.registry.all():
            ready = getattr(space.index, "approximate_ready", None)
            while ready is not None and not all(ready(m) for m in METRICS):
                if time.monotonic() > deadline:
                    print(f"warm_cache: {space.name}: indexes not built in time", file=sys.stderr)
                    return 1
                time.sleep(0.2)
    finally:
        app.stop(0)
    print(f"warm_cache: cache {config.cache_dir} ready in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
