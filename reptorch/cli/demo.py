"""`reptorch demo`: the drawing demo, served locally from a trained model (nothing downloaded).

Draw a few symbols as new classes, one to five drawings each, and a query: the network is
fine-tuned on the drawings exactly as `reptorch eval` fine-tunes on a task, and the query's class
probabilities appear after every stroke. Needs the `demo` extra (FastAPI, uvicorn).

`--export DIR` writes the same page as a static site instead, fine-tuning in the visitor's
browser (reptorch/demo/export.py): nothing to serve but files, no extra needed.
"""

from __future__ import annotations

import argparse
import socket

from reptorch.errors import ConfigError

DEFAULT_MODEL = "omniglot-5way"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="serve the drawing demo: teach the network new symbols in the browser",
        description="Serves a web page where you draw N new symbols (K drawings each) and a "
        "query; the model is fine-tuned on them as `reptorch eval` does and shows the query's "
        "class probabilities. The JSON API is documented at /docs.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help=f"a model shipped with reptorch (default: {DEFAULT_MODEL})")
    source.add_argument("--checkpoint", help="run directory of an Omniglot `reptorch train`")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument(
        "--export",
        metavar="DIR",
        help="instead of serving, write a static site to DIR that fine-tunes in the browser "
        "(publish it by copying DIR to any static host)",
    )
    parser.set_defaults(func=run)


def load_model(args: argparse.Namespace):
    from reptorch.demo.model import from_checkpoint, from_pretrained

    if args.checkpoint:
        return from_checkpoint(args.checkpoint)
    return from_pretrained(args.model or DEFAULT_MODEL)


def export(args: argparse.Namespace) -> int:
    """`--export DIR`: the static site, and how to look at it and publish it."""
    from reptorch.demo.export import export_site

    model = load_model(args)
    summary = export_site(model, args.export)
    mib = 1 << 20
    print(
        f"reptorch demo: wrote {summary.directory} ({summary.total_bytes / mib:.2f} MiB: "
        f"model {summary.weights_bytes / mib:.2f} MiB, page and engine "
        f"{summary.engine_bytes / 1024:.0f} KiB) for {model.name}"
    )
    print(f"reptorch demo: try it: python3 -m http.server -d {summary.directory} 8000")
    print(f"reptorch demo: publish it: copy {summary.directory} to any static host")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.export:
        return export(args)
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: choose a port from 0 to 65535")
    try:
        import uvicorn

        from reptorch.demo.server import create_app, listen
    except ImportError as error:
        raise ConfigError(
            f"the demo needs the 'demo' extra ({error.name} is missing): "
            f"pip install 'reptorch[demo]'"
        ) from None
    from reptorch.chain_threads import cpu_threads
    from reptorch.demo.engine import Engine

    model = load_model(args)
    cpu_threads()  # one thread: a single task is too small to split (see Engine)
    engine = Engine(model)
    engine.warm_up()
    app = create_app(engine)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    try:  # bound here so that a busy port is one line, and --port 0 shows the port it got
        sock = listen(args.host, args.port)
    except OSError as error:
        raise ConfigError(
            f"cannot listen on {args.host}:{args.port} ({error.strerror or error}): "
            f"choose another --port or --host"
        ) from None
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    print(f"reptorch demo: {model.name}, up to {model.ways} classes", flush=True)
    print(f"reptorch demo: open http://{shown}:{port}/  (API: /docs; Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
    return 0
