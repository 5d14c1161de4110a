"""The app's background worker: runs the queued jobs of ROOT one at a time, exits when idle.

  python -m vpgc_jax.app.worker --root ROOT [--idle-exit 120]

Started by the app (`vpgc_jax.app.jobs.ensure_worker`) in a session of its own, so a job goes on
when the browser tab or the app closes. One worker per ROOT: it holds ``ROOT/.worker.lock``
(`vpgc_jax.outputs.lock`); a second one exits at once. Each job's output goes to its
``log.txt``; its phases are the project's entry points:

* train: `vpgc_jax.quickstart`'s phases: `prepare` (data_prep), `train` stage 1 and stage 2
  (checkpoints about every fifth of each stage's steps), then `eval.evaluate` (the report);
* drive: `vpgc_jax.reenact.main` (the driving clip is prepared by reenact itself).

A finished phase is skipped when a job runs again, and a stage resumes from its last checkpoint.
SIGTERM with the job's ``stop`` file present (the page's Stop button) stops the job (a training
step in flight saves a checkpoint first; the job reads 'stopped'); without it (a shutdown) the job
reads 'interrupted' and the worker exits. Either can be resumed from the page.
"""

import argparse
import contextlib
import os
import signal
import sys
import time

from absl import logging as absl_logging

from vpgc_jax import outputs, quickstart
from vpgc_jax.app import jobs

SUBJECT_SIZE = 128  # crop side of the cpu128 configs the quickstart trains


class JobStopped(Exception):
    """The page asked to stop the running job."""


class JobInterrupted(Exception):
    """SIGTERM without a stop request: the worker exits."""


class JobFailed(Exception):
    """A phase failed; the message is its one-line error."""


def subject_paths(job_dir: str) -> dict[str, str]:
    """The quickstart's layout inside a train job's directory."""
    return {
        "data": os.path.join(job_dir, "data", "subject"),
        "codebook": os.path.join(job_dir, "runs", "codebook"),
        "driver": os.path.join(job_dir, "runs", "driver"),
        "report": os.path.join(job_dir, "report"),
    }


def last_error(log_path: str) -> str:
    """The last 'error: ...' line a phase printed (its one-line reason), or ''."""
    with contextlib.suppress(OSError), open(log_path, errors="replace") as f:
        lines = [ln.strip() for ln in f.read().replace("\r", "\n").splitlines()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        if errors:
            return errors[-1][len("error:") :].strip()
    return ""


@contextlib.contextmanager
def output_to(path: str):
    """Sends this process's stdout and stderr (file descriptors 1 and 2) to `path` (appended)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


class Worker:
    """Runs jobs; `phase` records progress in the job's state.json for the page."""

    def __init__(self, root: str):
        self.root = root
        self.job: dict | None = None
        self.phases: list[str] = []

    def on_sigterm(self, signum, frame) -> None:
        del signum, frame
        if self.job is None:
            raise SystemExit(0)
        if self.stop_requested():
            raise JobStopped()
        raise JobInterrupted()

    def stop_requested(self) -> bool:
        return self.job is not None and os.path.exists(os.path.join(self.job["dir"], "stop"))

    def phase(self, name: str, run: str | None = None, total: int = 0) -> None:
        print(f"\n=== {name} ===", flush=True)
        jobs.set_state(
            self.job["dir"],
            "running",
            phase=name,
            phase_index=self.phases.index(name),
            phases=self.phases,
            phase_started=time.time(),
            run=run,
            total=total,
            message=f"{name}",
            pid=os.getpid(),
        )

    def train_stage(self, stage: str, workdir: str, steps: int, fields: dict) -> None:
        budget = jobs.BUDGETS[self.job["budget"]]
        every = budget.checkpoint_every(steps)
        quickstart.train(
            stage,
            workdir,
            steps,
            checkpoint_every=every,
            log_every=max(1, min(25, steps // 50)),
            sample_every=every,
            **fields,
        )
        if not quickstart.finished(workdir, steps):  # the trainer saved and returned on SIGTERM
            raise JobStopped() if self.stop_requested() else JobInterrupted()

    def run_train(self) -> None:
        from eval import evaluate

        job, budget = self.job, jobs.BUDGETS[self.job["budget"]]
        paths = subject_paths(job["dir"])
        self.phases = ["prepare", "stage 1", "stage 2", "report"]
        self.phase("prepare")
        clip = os.path.join(job["dir"], job["clip"])
        try:
            quickstart.prepare(clip, paths["data"], SUBJECT_SIZE, budget.max_frames)
        except SystemExit as e:
            raise JobFailed(last_error(self.log) or f"data_prep exited with {e.code}") from e
        self.phase("stage 1", paths["codebook"], budget.codebook_steps)
        fields = {**budget.codebook, "dataset_dir": paths["data"]}
        self.train_stage("codebook", paths["codebook"], budget.codebook_steps, fields)
        self.phase("stage 2", paths["driver"], budget.driver_steps)
        fields = {**budget.driver, "codebook_workdir": paths["codebook"]}
        self.train_stage("driver", paths["driver"], budget.driver_steps, fields)
        self.phase("report", paths["driver"])  # the page keeps showing stage 2's metrics
        if not os.path.isfile(os.path.join(paths["report"], "report.md")):
            evaluate.evaluate(
                paths["codebook"],
                paths["data"],
                paths["report"],
                driver_dir=paths["driver"],
                max_frames=budget.eval_frames,
            )

    def run_drive(self) -> None:
        from vpgc_jax import reenact

        job = self.job
        paths = subject_paths(jobs.subject_job(self.root, job["subject"])["dir"])
        self.phases = ["drive"]
        self.phase("drive")
        argv = [
            f"--driver={paths['driver']}",
            f"--target={paths['data']}",
            f"--driving={os.path.join(job['dir'], job['clip'])}",
            f"--out={os.path.join(job['dir'], 'result.mp4')}",
            f"--transfer={job['transfer']}",
        ]
        argv += {"side-by-side": ["--side-by-side"], "full-frame": ["--full-frame"]}.get(
            job["view"], []
        )
        if job["max_frames"]:
            argv.append(f"--max-frames={job['max_frames']}")
        code = reenact.main(argv)
        if code:
            raise JobFailed(last_error(self.log) or f"reenact exited with {code}")

    def run_one(self, job: dict) -> str:
        """Runs `job`; returns its final state."""
        self.job, self.log = job, os.path.join(job["dir"], "log.txt")
        state, message = "done", "finished"
        with output_to(self.log):
            print(f"--- {job['id']} started {time.ctime()} (worker pid {os.getpid()}) ---")
            try:
                self.run_train() if job["kind"] == "train" else self.run_drive()
            except JobStopped:
                state, message = "stopped", "stopped on request; resume continues from here"
            except JobInterrupted:
                state, message = "interrupted", "the worker was stopped; resume continues from here"
            except JobFailed as e:
                state, message = "failed", str(e)
            except Exception as e:  # noqa: BLE001 - any other error fails this job, not the queue
                state, message = "failed", f"{type(e).__name__}: {e}".splitlines()[0][:400]
                import traceback

                traceback.print_exc()
            print(f"--- {job['id']} {state}: {message} ---", flush=True)
        jobs.set_state(job["dir"], state, message=message)
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(job["dir"], "stop"))
        self.job = None
        return state

    def run(self, idle_exit_s: float) -> int:
        """Runs queued jobs until none has come for `idle_exit_s` seconds."""
        signal.signal(signal.SIGTERM, self.on_sigterm)
        for job in jobs.list_jobs(self.root):  # left 'running' by a worker that died
            if job["state"] == "running":
                jobs.set_state(job["dir"], "interrupted", message="the worker died; resume it")
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < idle_exit_s:
            job = jobs.next_queued(self.root)
            if job is None:
                time.sleep(1.0)
                continue
            if self.run_one(job) == "interrupted":
                return 1
            idle_since = time.monotonic()
        return 0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m vpgc_jax.app.worker", description=__doc__.split("\n")[0]
    )
    p.add_argument("--root", required=True, help="the app's directory (its jobs/ queue)")
    p.add_argument(
        "--idle-exit", type=float, default=120.0, help="exit after this many idle seconds"
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    absl_logging.set_verbosity(absl_logging.ERROR)
    root = outputs.resolve(args.root)
    try:
        with outputs.lock(os.path.join(root, "worker")):
            return Worker(root).run(args.idle_exit)
    except outputs.OutputError:
        print(f"{root}: another worker runs this queue; exiting")
        return 0


if __name__ == "__main__":
    sys.exit(main())
