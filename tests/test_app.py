"""The web app (issue 21): upload checks and the job queue, then the pages in a real browser.

The browser test starts the app in-process on a free local port, drives headless Chromium (Debian's
`chromium`, through Playwright's `executable_path`: Playwright's own browser download needs the
network) like a user: a too-short clip is refused in the page, the macron sample is trained with
the smoke budget (a toy model, 2 steps per stage) by the app's background worker process, a 2 s
cut of the news anchor drives it, and the result video's file and the report table are checked.
A screenshot of each page state goes to the test's temporary directory.
"""

import os
import re
import shutil
import signal
import socket
import threading
import time
import urllib.parse
import urllib.request

import av
import numpy as np
import pytest

gr = pytest.importorskip("gradio", reason="the app's optional extra: requirements-app.txt")

from vpgc_jax.app import jobs, progress, uploads  # noqa: E402

PORTRAITS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "portraits")
MACRON = os.path.join(PORTRAITS, "macron_address_512.mp4")
ANCHOR = os.path.join(PORTRAITS, "news_anchor_de_512.mp4")
MIB = 2**20


def cut(src: str, dst: str, seconds: float) -> int:
    """Copies the first `seconds` of `src` (video and audio packets, no re-encoding) to `dst`.

    Returns:
      The number of frames a decoder gets from `dst`.
    """
    with av.open(src) as inp, av.open(dst, "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is None:
                continue
            if packet.pts is not None and packet.pts * packet.time_base >= seconds:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return count_frames(dst)


def count_frames(path: str) -> int:
    with av.open(path) as c:
        return sum(1 for _ in c.decode(video=0))


def write_noise_clip(path: str, frames: int) -> None:
    """A 64-frame-long 128x128 clip of random grey: a video with no face."""
    rng = np.random.default_rng(0)
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width = s.height = 128
        s.pix_fmt = "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 256, (128, 128, 3), np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        c.mux(s.encode())


@pytest.fixture(scope="module")
def clips(tmp_path_factory, macron_video):
    d = tmp_path_factory.mktemp("clips")
    if not os.path.isfile(ANCHOR):
        pytest.skip(f"shared sample data not found at {ANCHOR}")
    short = str(d / "macron_1s.mp4")
    driving = str(d / "anchor_2s.mp4")
    return {
        "short": (short, cut(str(macron_video), short, 1.0)),
        "driving": (driving, cut(ANCHOR, driving, 2.0)),
        "dir": d,
    }


def test_bad_uploads_get_one_line_each(clips, tmp_path):
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video\n")
    noise = str(tmp_path / "noise.mp4")
    write_noise_clip(noise, 64)
    short, short_frames = clips["short"]
    cases = [
        (None, "no subject clip"),
        (str(not_video), "notes.mp4: "),
        (short, f"too short for a subject clip: {short_frames} frames"),
        (noise, "no face found"),
        (MACRON, "over the 1 MiB upload limit"),
    ]
    for path, message in cases:
        limit = MIB if path == MACRON else 100 * MIB
        with pytest.raises(uploads.UploadError, match=re.escape(message)) as e:
            uploads.check_clip(path, 60, limit, "subject clip")
        assert "\n" not in str(e.value)
    info = uploads.check_clip(MACRON, 60, 100 * MIB, "subject clip")
    assert info.frames == 1510 and info.has_audio and info.face_px > 64


def test_queue_names_dedupes_and_resumes(tmp_path, monkeypatch):
    """Concurrent submissions get distinct ids; a taken name and a repeated drive job are one job;
    a 'running' job without a live worker reads 'interrupted' and resume queues it again."""
    monkeypatch.setattr(jobs, "ensure_worker", lambda root: None)
    root = str(tmp_path / "app")
    made, errors = [], []

    def submit(name):
        try:
            made.append(jobs.add_train(root, MACRON, name, "smoke")["id"])
        except jobs.JobError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=submit, args=(n,)) for n in ("Anna", "Bob", "anna")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(int(i[:4]) for i in made) == [1, 2] and len(errors) == 1
    assert "a subject named 'anna' exists" in errors[0]
    assert sorted(os.listdir(os.path.join(root, "jobs"))) == sorted(made)  # no half-made job
    anna = jobs.find(root, next(i for i in made if i.endswith("anna")))
    assert anna["state"] == "queued" and os.path.isfile(os.path.join(anna["dir"], "input.mp4"))

    with pytest.raises(jobs.JobError, match="no trained subject 'anna'"):
        jobs.add_drive(root, "anna", MACRON, "both", "result")
    jobs.set_state(anna["dir"], "done")
    first = jobs.add_drive(root, "anna", MACRON, "both", "result")
    assert jobs.add_drive(root, "anna", MACRON, "both", "result")["id"] == first["id"]
    assert jobs.add_drive(root, "anna", MACRON, "pose", "result")["id"] != first["id"]

    bob = jobs.find(root, next(i for i in made if i.endswith("bob")))
    jobs.set_state(bob["dir"], "running", phase="stage 1")
    assert jobs.find(root, bob["id"])["state"] == "interrupted"  # no worker holds the queue
    assert jobs.resume(root, bob["id"]) == f"{bob['id']}: queued again"
    assert jobs.find(root, bob["id"])["state"] == "queued"
    assert "nothing to resume" in jobs.resume(root, first["id"])


def test_progress_reads_the_current_phase_from_the_log(tmp_path):
    """Step, total and ETA come from the last progress bar after the last phase header."""
    log = (
        "=== stage 1 ===\nstage 1: 100%|##########| 2/2 [00:10<00:00, 5.0s/step]\n"
        "\n=== stage 2 ===\nstage 2:  40%|####      | 4/10 [00:08<00:12, 2.0s/step, loss=1]"
        "\rstage 2:  50%|#####     | 5/10 [01:02<01:05, 2.0s/step, loss=0.9]"
    )
    assert progress.bar_progress(log) == ("stage 2", 5, 10, 65.0)
    assert progress.bar_progress(log + "\n\n=== report ===\n") is None
    job_dir = tmp_path / "0001-train-x"
    job_dir.mkdir()
    (job_dir / "log.txt").write_text(log)
    job = {"id": job_dir.name, "dir": str(job_dir), "state": "running", "message": "stage 2"}
    job.update(phases=["prepare", "stage 1", "stage 2", "report"], phase_index=2)
    page = progress.status_html(job)
    assert "<progress value='5' max='10'" in page and "ETA 1 min 05 s" in page
    assert page.count("&#10003;") == 2  # prepare and stage 1 done
    assert progress.log_tail(job, 2) == "=== stage 2 ===\n" + log.rsplit("\r", 1)[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_state(page, selector: str, want: str, timeout_s: float, job_log: str) -> None:
    """Waits until the job state shown at `selector` is `want`; fails early on 'failed'."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        state = page.locator(selector).first.text_content(timeout=5000) or ""
        if state == want:
            return
        if state in ("failed", "interrupted", "stopped"):
            break
        page.wait_for_timeout(1000)
    tail = progress.log_tail({"dir": os.path.dirname(job_log)}, 20) or "(no log)"
    pytest.fail(f"job state {state!r}, not {want!r} after {timeout_s:.0f} s; log tail:\n{tail}")


def test_app_in_a_browser(clips, tmp_path, monkeypatch, tiny_driver_run):
    """Upload -> train (smoke budget) -> drive -> report, in headless Chromium.

    `tiny_driver_run` is built once per session anyway; the smoke budget's toy model is the same
    model, so the worker process (which inherits the session's XLA cache) mostly loads its
    compilations instead of compiling.
    """
    del tiny_driver_run
    sync_api = pytest.importorskip("playwright.sync_api", reason="requirements-app.txt")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium binary (Debian: apt-get install chromium)")
    from vpgc_jax.app import __main__ as cli

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # else launch sets it for good
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    root, port = tmp_path / "app", free_port()
    args = cli.parse_args(["--root", str(root), "--port", str(port), "--max-upload-mb", "20"])
    demo = cli.launch(args, block=False)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})

            def shot(name):
                page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#train-start", timeout=120_000)
            shot("1-train-empty")

            # A 1 s clip is refused in the page, and no job is made.
            page.locator("#subject-video input[type=file]").set_input_files(clips["short"][0])
            page.wait_for_selector("#subject-video video", timeout=60_000)
            page.click("#train-start")
            message = page.locator("#train-message")
            sync_api.expect(message).to_contain_text("too short", timeout=180_000)
            shot("2-train-too-short")
            assert not (root / "jobs").exists() or not os.listdir(root / "jobs")

            # The macron sample with the smoke budget.
            page.locator("#subject-video button[aria-label='Clear']").first.click()
            page.locator("#subject-video input[type=file]").set_input_files(MACRON)
            page.wait_for_selector("#subject-video video", timeout=60_000)
            page.get_by_label(jobs.BUDGETS["smoke"].label).check()
            page.click("#train-start")
            sync_api.expect(message).to_contain_text("Queued", timeout=180_000)
            job = jobs.list_jobs(str(root))[0]
            assert job["id"] == "0001-train-macron_address_512" and job["budget"] == "smoke"
            log = os.path.join(job["dir"], "log.txt")
            wait_for_state(page, "#train-status .job-state", "running", 300, log)
            shot("3-train-running")
            page.reload()  # the job goes on without the page; reopening shows it
            page.wait_for_selector("#train-status .job-state", timeout=120_000)
            wait_for_state(page, "#train-status .job-state", "done", 900, log)
            page.wait_for_selector("#train-status .job-phases", timeout=10_000)
            # The finished job still shows what stage 2 logged: step 1 and 2 with their losses.
            cells: list[str] = []
            for _ in range(30):
                cells = page.locator("#train-metrics td").all_text_contents()
                if any(re.fullmatch(r"\d+\.\d+", c.strip()) for c in cells):
                    break
                page.wait_for_timeout(1000)
            assert any(re.fullmatch(r"\d+\.\d+", c.strip()) for c in cells), cells
            shot("4-train-done")

            # Drive it with a 2 s cut of the news anchor.
            page.get_by_role("tab", name="Drive").click()
            sync_api.expect(page.locator("#drive-subject input")).to_have_value(
                "macron_address_512", timeout=30_000
            )
            driving, driving_frames = clips["driving"]
            page.locator("#drive-video input[type=file]").set_input_files(driving)
            page.wait_for_selector("#drive-video video", timeout=60_000)
            page.click("#drive-start")
            sync_api.expect(page.locator("#drive-message")).to_contain_text(
                "Queued", timeout=180_000
            )
            drive_log = os.path.join(jobs.list_jobs(str(root))[-1]["dir"], "log.txt")
            wait_for_state(page, "#drive-status .job-state", "done", 600, drive_log)
            video = page.locator("#drive-result video")
            video.wait_for(timeout=60_000)
            page.wait_for_function(
                "() => { const v = document.querySelector('#drive-result video');"
                " return v && v.readyState >= 1 && v.duration > 0; }",
                timeout=60_000,
            )
            src = video.get_attribute("src")
            got = tmp_path / "downloaded.mp4"
            with urllib.request.urlopen(urllib.parse.urljoin(page.url, src)) as r:
                got.write_bytes(r.read())
            assert count_frames(str(got)) == driving_frames
            with av.open(str(got)) as c:
                assert c.streams.audio, "the driving clip's audio is in the result"
                stream = c.streams.video[0]  # driving | landmarks | result at the model's 32 px
                assert (stream.width, stream.height) == (3 * 32, 32)
            assert page.locator("#drive-download a[href]").count() >= 1
            shot("5-drive-done")

            # The report: Table 1 with numbers, baseline rows, the example strip.
            page.get_by_role("tab", name="Report").click()
            table = page.locator("#report-text table").first
            table.wait_for(timeout=30_000)
            cells = table.locator("td").all_text_contents()
            numbers = [c for c in cells if re.fullmatch(r"-?\d+\.\d+", c.strip())]
            assert len(numbers) >= 6, cells
            assert any("baseline" in c.lower() or "thumbnail" in c.lower() for c in cells), cells
            page.wait_for_selector("#report-examples img", timeout=30_000)
            shot("6-report")
            browser.close()
    finally:
        demo.close()
        pid = jobs.worker_pid(str(root))
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if jobs.worker_pid(str(root)) is None:
                    break
                time.sleep(0.1)
        print(f"screenshots in {shots}")
