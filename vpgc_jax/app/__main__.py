"""The local web app's command line.

  python -m vpgc_jax.app [--root runs/app] [--port 7860] [--host 127.0.0.1] [--max-upload-mb 500]

Serves the Train, Drive and Report pages (`vpgc_jax.app.ui`) on http://HOST:PORT; jobs and their
outputs live under ROOT (`vpgc_jax.app.jobs`). Needs the optional extra:
``pip install -r requirements-app.txt``.
"""

import argparse
import importlib.util
import ipaddress
import os
import sys

from vpgc_jax import outputs

LOOPBACK = "127.0.0.1"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vpgc_jax.app", description=__doc__.split("\n")[0])
    p.add_argument("--root", default="runs/app", help="where jobs and their outputs are kept")
    p.add_argument("--port", type=int, default=7860, help="TCP port")
    p.add_argument(
        "--host",
        default=LOOPBACK,
        help="address to listen on (default: this machine only; the app has no login)",
    )
    p.add_argument(
        "--max-upload-mb", type=float, default=500.0, help="largest accepted upload in MiB"
    )
    args = p.parse_args(argv)
    if not 0 < args.port < 65536 or args.max_upload_mb <= 0:
        p.error("--port must be 1..65535 and --max-upload-mb positive")
    return args


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def launch(args: argparse.Namespace, block: bool = True):
    """Builds the pages for ``args.root`` and serves them; returns the Gradio Blocks.

    Args:
      args: from `parse_args`.
      block: serve until interrupted (False: return at once, serving from a thread; call
        ``.close()`` on the result to stop).

    Raises:
      ImportError: Gradio is not installed (the optional extra).
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home; works offline
    root = outputs.resolve(args.root)
    os.makedirs(root, exist_ok=True)
    os.environ.setdefault("GRADIO_TEMP_DIR", os.path.join(root, "uploads"))
    from vpgc_jax.app import ui

    if not is_loopback(args.host):
        print(
            f"warning: listening on {args.host}: anyone who can reach this machine on port "
            f"{args.port} can use the app and read its outputs (there is no login)",
            file=sys.stderr,
        )
    demo = ui.build(root, int(args.max_upload_mb * 2**20))
    demo.queue(default_concurrency_limit=4)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=int(args.max_upload_mb * 2**20),
        allowed_paths=[root],
        prevent_thread_lock=not block,
        ssr_mode=False,
        show_error=True,
        quiet=not block,
    )
    return demo


def main(argv=None) -> int:
    args = parse_args(argv)
    if importlib.util.find_spec("gradio") is None:
        print(
            "error: the web app needs Gradio: pip install -r requirements-app.txt", file=sys.stderr
        )
        return 2
    print(f"vpgc_jax app: jobs and outputs in {outputs.resolve(args.root)}")
    launch(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
