"""The app's job queue on disk: one directory per job under ``ROOT/jobs``, run one at a time.

A job directory ``ROOT/jobs/NNNN-KIND-NAME/`` holds ``job.json`` (what to do, written once),
``state.json`` (queued / running / done / failed / stopped, the phase, a one-line message),
``log.txt`` (everything the job printed) and its inputs and outputs:

* a **train** job (KIND ``train``, NAME the subject): ``input.*`` (the uploaded clip), then the
  quickstart's layout: ``data/subject`` (data_prep), ``runs/codebook`` and ``runs/driver`` (the two
  stages), ``report/`` (eval.evaluate);
* a **drive** job (NAME the subject it drives): ``driving.*`` (the uploaded clip),
  ``result.mp4`` and ``result_driving/`` (the driving clip prepared by vpgc_jax.reenact).

Jobs are made complete in a temporary sibling and renamed into place while holding the queue's
lock (`vpgc_jax.outputs.lock` on ``ROOT/jobs``), so the worker never sees half a job and two
page loads that submit at once make one job: a subject name is taken once, and a drive job that
matches a queued, running or finished one (same subject, driving clip, settings) is that job.
The worker (`vpgc_jax.app.worker`) holds ``ROOT/.worker.lock`` while it runs; a job left
``running`` without a live worker was interrupted, and `resume` queues it again (training resumes
from the last checkpoint). Nothing here imports JAX.
"""

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from vpgc_jax import outputs, quickstart

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STATES = ("queued", "running", "done", "failed", "stopped", "interrupted")
TRANSFERS = ("both", "expression", "pose")
VIEWS = ("side-by-side", "result", "full-frame")
JOB_ID = re.compile(r"^\d{4}-(train|drive)-[a-z0-9_-]+$")  # not the NAME.tmp-* of a job in making


@dataclasses.dataclass(frozen=True)
class Budget:
    """A training budget: the quickstart's step flags and, for the smoke test, a toy model.

    Attributes:
      label: what the page shows.
      codebook_steps: stage-1 steps (quickstart ``--codebook-steps``).
      driver_steps: stage-2 steps (quickstart ``--driver-steps``).
      max_frames: use only the clip's first N frames (0: all).
      eval_frames: score at most N test frames in the report (0: all).
      codebook: stage-1 config fields set on top of ``configs/codebook.py:cpu128`` (nested).
      driver: stage-2 config fields set on top of ``configs/driver.py:cpu128`` (nested).
    """

    label: str
    codebook_steps: int
    driver_steps: int
    max_frames: int = 0
    eval_frames: int = 0
    codebook: dict = dataclasses.field(default_factory=dict)
    driver: dict = dataclasses.field(default_factory=dict)

    def checkpoint_every(self, steps: int) -> int:
        """About 5 checkpoints per stage: what a stopped or killed job resumes from."""
        return max(1, steps // 5)


# The smoke test's toy model: 32 px, one downsampling (tests/conftest.py's tiny model).
_TOY_ENCODER = {"ch": 32, "ch_mult": (1, 2), "num_res_blocks": 1}
BUDGETS = {
    "smoke": Budget(
        "smoke test: a toy 32 px model, 2 steps per stage (a few minutes; checks the path only)",
        codebook_steps=2,
        driver_steps=2,
        max_frames=60,
        eval_frames=8,
        codebook={
            "resolution": 32,
            "model": {
                "encoder": {**_TOY_ENCODER, "attn_resolutions": (16,), "z_channels": 20},
                "embed_dim": 12,
                "codebook": {"K_c": 8, "r": 2},
            },
            "disc": {"ndf": 8},
            "batch_size": 8,
            "frames_per_group": 4,
            "loss": {"disc_start": 2},
            "num_sample_frames": 2,
        },
        driver={
            "model": {
                "encoder": {**_TOY_ENCODER, "attn_resolutions": ()},
                "transformer": {"depth": 1, "heads": 2, "dim_head": 8, "mlp_dim": 24},
            },
            "num_sample_frames": 2,
        },
    ),
    # Stage-1 steps of `configs/codebook.py:cpu128`'s batch 2.
    "quick": Budget("quick: 120 + 250 steps (about 12 min on 2 CPU cores)", 120, 250),
    "standard": Budget(
        "standard: the quickstart's {} + {} steps (about 30 min on 2 CPU cores)".format(
            *quickstart.BUDGETS["30m"]
        ),
        *quickstart.BUDGETS["30m"],
    ),
    "long": Budget("long: 2000 + 4000 steps (about 2 h on 2 CPU cores)", 2000, 4000),
}


class JobError(ValueError):
    """A request the queue refuses (a taken name, an unknown job); one line for the page."""


def jobs_dir(root: str) -> str:
    return os.path.join(root, "jobs")


def _read_json(path: str) -> dict:
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        with open(path) as f:
            return json.load(f)
    return {}


def _write_json(path: str, obj: dict) -> None:
    """Atomic: a reader sees the old or the new file, never half of one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def read_job(job_dir: str) -> dict:
    """``job.json`` with ``state.json`` merged in and 'id', 'dir' added; {} if not a job."""
    spec = _read_json(os.path.join(job_dir, "job.json"))
    if not spec:
        return {}
    return {**spec, **_read_json(os.path.join(job_dir, "state.json")), "dir": job_dir}


def set_state(job_dir: str, state: str, **fields) -> None:
    """Updates ``state.json`` (keeps fields not given)."""
    path = os.path.join(job_dir, "state.json")
    _write_json(path, {**_read_json(path), **fields, "state": state, "updated": time.time()})


def list_jobs(root: str) -> list[dict]:
    """Every job, oldest first; a 'running' job without a live worker reads 'interrupted'."""
    top = jobs_dir(root)
    names = sorted(n for n in os.listdir(top) if JOB_ID.match(n)) if os.path.isdir(top) else []
    jobs = [j for j in (read_job(os.path.join(top, n)) for n in names) if j]
    if any(j.get("state") == "running" for j in jobs) and worker_pid(root) is None:
        for j in jobs:
            if j.get("state") == "running":
                j["state"] = "interrupted"
    return jobs


def find(root: str, job_id: str) -> dict:
    """The job `job_id`.

    Raises:
      JobError: no such job.
    """
    for job in list_jobs(root):
        if job["id"] == job_id:
            return job
    raise JobError(f"no job {job_id!r}")


def subjects(root: str) -> list[str]:
    """Names of the subjects whose training finished, oldest first."""
    return [j["name"] for j in list_jobs(root) if j["kind"] == "train" and j["state"] == "done"]


def subject_job(root: str, name: str) -> dict:
    """The finished train job of subject `name`.

    Raises:
      JobError: no finished subject of that name.
    """
    for j in list_jobs(root):
        if j["kind"] == "train" and j["name"] == name and j["state"] == "done":
            return j
    raise JobError(f"no trained subject {name!r}; train one on the Train page first")


def clean_name(text: str) -> str:
    """A subject name from free text or a file name: lower-case letters, digits, '_' and '-'."""
    stem = os.path.splitext(os.path.basename(text or ""))[0].lower()
    return re.sub(r"[^a-z0-9_-]+", "_", stem).strip("_-")[:40]


def _add(root: str, kind: str, name: str, spec: dict, clip: str, clip_name: str) -> dict:
    """Writes a queued job with a copy of `clip`; call holding the queue lock."""
    top = jobs_dir(root)
    numbers = [int(n[:4]) for n in os.listdir(top) if re.match(r"\d{4}-", n)]  # tmp-* too
    job_id = f"{max(numbers, default=0) + 1:04d}-{kind}-{name}"
    final = os.path.join(top, job_id)
    tmp = outputs.make_temp_dir(final)
    try:
        ext = os.path.splitext(clip)[1].lower() or ".mp4"
        shutil.copyfile(clip, os.path.join(tmp, clip_name + ext))
        spec = {"id": job_id, "kind": kind, "name": name, "clip": clip_name + ext, **spec}
        _write_json(os.path.join(tmp, "job.json"), {**spec, "created": time.time()})
        _write_json(os.path.join(tmp, "state.json"), {"state": "queued", "updated": time.time()})
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return read_job(final)


def add_train(root: str, clip: str, name: str, budget: str) -> dict:
    """Queues a train job for subject `name` on `clip` (checked with `uploads.check_clip`).

    Raises:
      JobError: an unknown budget, an empty name, or a subject of that name already exists.
    """
    if budget not in BUDGETS:
        raise JobError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    name = clean_name(name)
    if not name:
        raise JobError("give the subject a name (letters, digits, '_' or '-')")
    with queue_lock(root):
        for j in list_jobs(root):
            if j["kind"] == "train" and j["name"] == name:
                raise JobError(
                    f"a subject named {name!r} exists (job {j['id']}, {j['state']}); "
                    "pick another name, or resume that job"
                )
        return _add(root, "train", name, {"budget": budget}, clip, "input")


def add_drive(
    root: str, subject: str, clip: str, transfer: str, view: str, max_frames: int = 0
) -> dict:
    """Queues a drive job of `subject` by `clip`, or returns the same job queued or made before.

    Raises:
      JobError: no finished subject `subject`, or an unknown transfer mode or view.
    """
    if transfer not in TRANSFERS or view not in VIEWS:
        raise JobError(f"transfer must be one of {TRANSFERS} and view one of {VIEWS}")
    from data_prep.prepare import sha256  # Lazy: tensorflow_datasets, only for drive jobs.

    subject_job(root, subject)
    settings = {
        "subject": subject,
        "sha256": sha256(clip),
        "transfer": transfer,
        "view": view,
        "max_frames": int(max_frames or 0),
    }
    with queue_lock(root):
        for j in list_jobs(root):
            same = all(j.get(k) == v for k, v in settings.items())
            if j["kind"] == "drive" and same and j["state"] in ("queued", "running", "done"):
                return j
        return _add(root, "drive", clean_name(subject), settings, clip, "driving")


@contextlib.contextmanager
def queue_lock(root: str):
    """Serialises changes to the queue between processes (blocks; they take milliseconds)."""
    os.makedirs(jobs_dir(root), exist_ok=True)
    for _ in range(200):
        try:
            with outputs.lock(jobs_dir(root)):
                yield
            return
        except outputs.OutputError:
            time.sleep(0.05)
    raise JobError("the job queue stayed locked for 10 s; try again")


def next_queued(root: str) -> dict | None:
    return next((j for j in list_jobs(root) if j["state"] == "queued"), None)


def worker_pid(root: str) -> int | None:
    """The pid of the live worker of `root`, or None."""
    try:
        with open(os.path.join(root, ".worker.lock")) as f:
            pid = int(f.read().strip() or 0)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            alive = b"vpgc_jax.app.worker" in f.read()
    except (OSError, ValueError):
        return None
    return pid if alive else None


def ensure_worker(root: str, idle_exit_s: float = 120.0) -> int | None:
    """Starts the worker when jobs are queued and none runs; returns its pid (None: not needed).

    The worker is its own session (`start_new_session`): it outlives the page, the browser and the
    app, and exits `idle_exit_s` after the queue empties. Two calls at once may start two; the
    second finds the lock taken and exits at once.
    """
    pid = worker_pid(root)
    if pid is not None or next_queued(root) is None:
        return pid
    os.makedirs(root, exist_ok=True)
    log = open(os.path.join(root, "worker.log"), "ab")
    cmd = [sys.executable, "-m", "vpgc_jax.app.worker", "--root", root]
    proc = subprocess.Popen(
        [*cmd, "--idle-exit", str(idle_exit_s)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return proc.pid


def stop(root: str, job_id: str) -> str:
    """Stops a queued job, or asks the worker to stop the running one (it saves a checkpoint).

    Returns:
      A one-line message for the page.
    """
    job = find(root, job_id)
    if job["state"] == "queued":
        with queue_lock(root):
            set_state(job["dir"], "stopped", message="stopped before it started")
        return f"{job_id}: removed from the queue"
    pid = worker_pid(root)
    if job["state"] != "running" or pid is None:
        return f"{job_id}: not running ({job['state']})"
    open(os.path.join(job["dir"], "stop"), "w").close()
    os.kill(pid, signal.SIGTERM)
    return f"{job_id}: stopping (a running training step saves a checkpoint first)"


def resume(root: str, job_id: str) -> str:
    """Queues a failed, stopped or interrupted job again; finished phases are skipped."""
    job = find(root, job_id)
    if job["state"] not in ("failed", "stopped", "interrupted"):
        return f"{job_id}: {job['state']}, nothing to resume"
    with queue_lock(root):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(job["dir"], "stop"))
        set_state(job["dir"], "queued", message="queued again: resumes from its last checkpoint")
    ensure_worker(root)
    return f"{job_id}: queued again"
