"""The Gradio pages: Train, Drive and Report (Gradio is the optional extra requirements-app.txt).

Every action goes through the job queue (`vpgc_jax.app.jobs`); the pages only read what the
worker writes, polling every `POLL_S` seconds, so a closed or reloaded tab loses nothing and
reopening it shows the running or finished jobs. Nothing here imports JAX.
"""

import glob
import os
import re

import gradio as gr

from vpgc_jax import quickstart
from vpgc_jax.app import jobs, progress, uploads

POLL_S = 2.0
MIN_SUBJECT_FRAMES = 60  # the smoke budget's 60 frames; the paper trains on minutes of video
MIN_DRIVING_FRAMES = 8
NO_SAMPLE = "(upload a clip)"
INTRO = """# vpgc_jax
Train a personal talking-head model on a clip of one person talking to a static camera (**Train**),
make it follow someone else's face (**Drive**), and read its held-out scores (**Report**). Jobs
run one at a time in a background process: closing this tab does not stop them."""


def sample_clips() -> list[str]:
    """The shared sample clips next to the repository, if present (`quickstart.SAMPLES`)."""
    return sorted(glob.glob(os.path.join(str(quickstart.SAMPLES), "*.mp4")))


def _clip(upload: str | None, sample: str | None) -> str | None:
    if upload:
        return upload
    return sample if sample and sample != NO_SAMPLE else None


def _fail(e: Exception) -> str:
    return f"**Not started.** {e}"


def jobs_table(root: str) -> list[list[str]]:
    """One row per job, newest first: id, kind, subject, state, message."""
    rows = []
    for j in reversed(jobs.list_jobs(root)):
        budget = j.get("budget") or j.get("view", "")
        rows.append([j["id"], j["kind"], budget, j["state"], str(j.get("message", ""))[:120]])
    return rows


def _pick(root: str, kind: str, selected: str | None) -> dict | None:
    """The selected job of `kind`, else the running one, else the newest."""
    of_kind = [j for j in jobs.list_jobs(root) if j["kind"] == kind]
    for j in of_kind:
        if j["id"] == selected:
            return j
    running = [j for j in of_kind if j["state"] in ("running", "queued")]
    return (running or of_kind)[-1] if of_kind else None


def build(root: str, max_upload_bytes: int) -> gr.Blocks:
    """The app's pages for the job queue at `root` (an absolute path)."""
    samples = [NO_SAMPLE, *sample_clips()]
    budgets = [(b.label, key) for key, b in jobs.BUDGETS.items()]

    def train_ids() -> list[str]:
        """The training jobs' ids, the choices of the Train page's job dropdown."""
        return [j["id"] for j in jobs.list_jobs(root) if j["kind"] == "train"]

    def start_train(upload, sample, name, budget):
        clip = _clip(upload, sample)
        try:
            info = uploads.check_clip(clip, MIN_SUBJECT_FRAMES, max_upload_bytes, "subject clip")
            job = jobs.add_train(root, clip, name or jobs.clean_name(clip), budget)
        except (uploads.UploadError, jobs.JobError) as e:
            return _fail(e), gr.update()
        jobs.ensure_worker(root)
        note = " Under 30 s of video gives a weak model." if info.seconds < 30 else ""
        # The dropdown's choices come with its value: a value outside them fails the next poll.
        message = f"Queued **{job['id']}** ({info.describe()}).{note}"
        return message, gr.update(choices=train_ids(), value=job["id"])

    def refresh_train(selected, shown):
        job = _pick(root, "train", selected)
        sample = progress.latest_sample(job)
        return (
            gr.update(choices=train_ids(), value=job["id"] if job else None),
            progress.status_html(job),
            gr.update() if sample == shown else sample,  # unchanged: no reload, no flicker
            sample,
            progress.metrics_rows(job),
            progress.log_tail(job),
            jobs_table(root),
        )

    def act(fn, selected):
        try:
            return fn(root, selected) if selected else "Select a job first."
        except jobs.JobError as e:
            return str(e)

    def start_drive(subject, upload, sample, transfer, view, max_frames):
        clip = _clip(upload, sample)
        try:
            if not subject:
                raise jobs.JobError("no trained subject yet: train one on the Train page first")
            uploads.check_clip(clip, MIN_DRIVING_FRAMES, max_upload_bytes, "driving clip")
            job = jobs.add_drive(root, subject, clip, transfer, view, int(max_frames or 0))
        except (uploads.UploadError, jobs.JobError) as e:
            return _fail(e), None
        jobs.ensure_worker(root)
        return f"Queued **{job['id']}**.", job["id"]

    def refresh_drive(job_id, subject, shown):
        names = jobs.subjects(root)
        value = subject if subject in names else (names[-1] if names else None)
        job = _pick(root, "drive", job_id)  # after a reload: the running or newest drive
        result = os.path.join(job["dir"], "result.mp4") if job else None
        if job is None or job["state"] != "done" or not os.path.isfile(result):
            result = None
        same = result == shown  # a video set again would reload and stop playing
        return (
            gr.update(choices=names, value=value),
            progress.status_html(job) if job else "",
            gr.update() if same else result,
            gr.update() if same else result,
            result,
        )

    def show_report(subject):
        try:
            job = jobs.subject_job(root, subject) if subject else None
        except jobs.JobError as e:
            return str(e), None
        if job is None:
            return "No trained subject yet.", None
        report = os.path.join(job["dir"], "report")
        if not os.path.isfile(os.path.join(report, "report.md")):
            return f"{subject}: no report (the job's report phase did not run).", None
        with open(os.path.join(report, "report.md")) as f:
            text = re.sub(r"!\[[^\]]*\]\([^)]*\)\n?", "", f.read())  # the strip is shown below
        examples = os.path.join(report, "examples.png")
        return text, examples if os.path.isfile(examples) else None

    def refresh_report(subject, shown):
        names = jobs.subjects(root)
        value = subject if subject in names else (names[-1] if names else None)
        if value == shown:
            return gr.update(choices=names), gr.update(), gr.update(), shown
        return (gr.update(choices=names, value=value), *show_report(value), value)

    blocks = gr.Blocks(title="vpgc_jax", analytics_enabled=False, delete_cache=(3600, 24 * 3600))
    with blocks as demo:
        gr.Markdown(INTRO)
        with gr.Tab("Train", id="train"):
            with gr.Row():
                with gr.Column(scale=1):
                    t_video = gr.Video(
                        label="Subject clip", sources=["upload"], elem_id="subject-video"
                    )
                    t_sample = gr.Dropdown(samples, value=NO_SAMPLE, label="or a sample clip")
                    t_name = gr.Textbox(label="Subject name (default: the file name)")
                    t_budget = gr.Radio(budgets, value="standard", label="Training budget")
                    t_start = gr.Button("Start training", variant="primary", elem_id="train-start")
                    t_message = gr.Markdown(elem_id="train-message")
                with gr.Column(scale=2):
                    t_job = gr.Dropdown([], label="Training job", elem_id="train-job")
                    t_status = gr.HTML(elem_id="train-status")
                    with gr.Row():
                        t_stop = gr.Button("Stop", size="sm")
                        t_resume = gr.Button("Resume", size="sm", elem_id="train-resume")
                    t_sample_img = gr.Image(label="Latest held-out sample", type="filepath")
                    t_metrics = gr.Dataframe(
                        headers=list(progress.METRIC_COLUMNS),
                        label="Logged metrics",
                        elem_id="train-metrics",
                    )
                    with gr.Accordion("Log", open=False):
                        t_log = gr.Textbox(lines=15, max_lines=15, show_label=False)
            queue = gr.Dataframe(
                headers=["job", "kind", "budget / view", "state", "message"], label="All jobs"
            )
        with gr.Tab("Drive", id="drive"):
            with gr.Row():
                with gr.Column():
                    d_subject = gr.Dropdown([], label="Trained subject", elem_id="drive-subject")
                    d_video = gr.Video(
                        label="Driving clip (someone else)",
                        sources=["upload"],
                        elem_id="drive-video",
                    )
                    d_sample = gr.Dropdown(samples, value=NO_SAMPLE, label="or a sample clip")
                    d_transfer = gr.Radio(
                        list(jobs.TRANSFERS), value="both", label="Transfer from the driver"
                    )
                    d_view = gr.Radio(
                        [
                            ("driving | landmarks | result", "side-by-side"),
                            ("result only (the face crop)", "result"),
                            ("full frame (pasted into the subject's video)", "full-frame"),
                        ],
                        value="side-by-side",
                        label="Output",
                    )
                    d_frames = gr.Number(
                        0, label="Frames to render (0: the whole clip)", precision=0
                    )
                    d_start = gr.Button("Drive", variant="primary", elem_id="drive-start")
                    d_message = gr.Markdown(elem_id="drive-message")
                with gr.Column():
                    d_job = gr.Textbox(visible=False)
                    d_status = gr.HTML(elem_id="drive-status")
                    d_result = gr.Video(label="Result", interactive=False, elem_id="drive-result")
                    d_file = gr.File(label="Download", interactive=False, elem_id="drive-download")
        with gr.Tab("Report", id="report"):
            r_subject = gr.Dropdown([], label="Trained subject", elem_id="report-subject")
            r_text = gr.Markdown(elem_id="report-text")
            r_examples = gr.Image(label="Examples", type="filepath", elem_id="report-examples")

        t_shown, d_shown, r_shown = gr.State(None), gr.State(None), gr.State(None)
        train_out = [t_job, t_status, t_sample_img, t_shown, t_metrics, t_log, queue]
        drive_out = [d_subject, d_status, d_result, d_file, d_shown]
        report_out = [r_subject, r_text, r_examples, r_shown]
        t_start.click(start_train, [t_video, t_sample, t_name, t_budget], [t_message, t_job])
        t_stop.click(lambda s: act(jobs.stop, s), t_job, t_message)
        t_resume.click(lambda s: act(jobs.resume, s), t_job, t_message)
        t_job.input(refresh_train, [t_job, t_shown], train_out)
        d_start.click(
            start_drive,
            [d_subject, d_video, d_sample, d_transfer, d_view, d_frames],
            [d_message, d_job],
        )
        r_subject.input(refresh_report, [r_subject, r_shown], report_out)
        timer = gr.Timer(POLL_S)
        for fn, inputs, outputs in (
            (refresh_train, [t_job, t_shown], train_out),
            (refresh_drive, [d_job, d_subject, d_shown], drive_out),
            (refresh_report, [r_subject, r_shown], report_out),
        ):
            demo.load(fn, inputs, outputs)
            timer.tick(fn, inputs, outputs, show_progress="hidden")
        demo.load(lambda: jobs.ensure_worker(root) and None)
    return demo
