"""The local web app: train on a clip, drive it, read its report, in the browser.

  python -m vpgc_jax.app [--root runs/app] [--port 7860] [--host 127.0.0.1] [--max-upload-mb 500]

`jobs` is the job queue on disk (no JAX, no Gradio), `worker` the background process that runs
it, `ui` the Gradio pages, `__main__` the command line. Gradio and Playwright are an optional
extra: ``pip install -r requirements-app.txt``.
"""
