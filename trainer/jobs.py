"""A fit as a job: on a Ray cluster when an address is given (`ray job submit` semantics), else here.

    job_id = submit("http://head:8265", FitJob(...))      # returns at once
    state, run_id = status("http://head:8265", job_id)    # "RUNNING", "3f2a..." (the MLflow run)

The job is `python -m trainer.jobs '<FitJob as JSON>'` run by the cluster's job server
(`ray.job_submission.JobSubmissionClient`, served by the head's dashboard: start the head with
`ray start --head --include-dashboard=true`; the address is the dashboard's, port 8265 by
default). Everything the job needs is in the JSON: the `FitConfig`, where the data and its
audio cache are (paths the cluster's nodes can read: a shared filesystem), the output folder
and the MLflow tracking URI. The code must be importable there: the project installed with its
`train` extra, or shipped with `runtime_env={"working_dir": ...}`.

How status finds the MLflow run id: the job prints `EXPLORER_MLFLOW_RUN_ID=<id>` as soon as its
run exists, and `status` reads the job's logs for the last such line. A job's metadata is fixed
at submission (before the run exists), and the logs are the one channel Ray keeps per job on
every cluster without shared storage; a job that fails before its run exists shows no run id.

Locally (`address=None`) `submit` runs the same `run_fit_job` in this process and returns when
it is done; `status` then answers from what it recorded. `DataSource` is also how
`trainer.tune` tells each trial where its data is.
"""

from __future__ import annotations

import json
import shlex
import sys
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RUN_ID_MARK = "EXPLORER_MLFLOW_RUN_ID="
RESULT_MARK = "EXPLORER_FIT_RESULT="
_LOCAL: dict[str, tuple[str, str | None]] = {}
"""Jobs run in this process: id -> (state, MLflow run id)."""


@dataclass
class DataSource:
    """Where a fit's examples and their decoded audio are; JSON-able, so a Ray trial or job
    rebuilds the same examples on its node.

    Attributes:
        cache: The audio cache folder (`trainer.audio_cache`).
        birdclef: A BirdCLEF 2025 folder (train.csv, taxonomy.csv, train_audio/, train_soundscapes/).
        lists: Plain labelled lists (path,label,...: the guides' confirmed clips).
        shared: A folder with recordings.csv / recordings_more.csv (the project's shared recordings).
    """

    cache: str
    birdclef: str | None = None
    lists: list[str] = field(default_factory=list)
    shared: str | None = None

    def examples(self):
        """(training examples, unlabelled soundscapes), as `explorer-train` reads them.

        Raises:
            ValueError: the source names no examples.
        """
        from trainer.birdclef import load_birdclef, soundscape_examples
        from trainer.labelled import examples_from_recordings, read_examples

        examples, soundscapes = [], []
        labels = None
        if self.birdclef:
            data = load_birdclef(Path(self.birdclef))
            examples += data.examples
            soundscapes += soundscape_examples(data)
            labels = data.labels
        for path in self.lists:
            examples += read_examples(Path(path))
        if self.shared:
            found = examples_from_recordings(Path(self.shared))
            examples += [e for e in found if not e.background]
            soundscapes += [e for e in found if e.background]
        if not examples:
            raise ValueError("data source names no examples: give birdclef, lists or shared")
        return examples, soundscapes, labels

    def prepare(self, progress: bool = False):
        """Build (or complete) the cache for every example and soundscape; the opened cache.
        Run once before trials start: two builds of one cache at once refuse each other."""
        from trainer.audio_cache import AudioCache, build_cache, items_from_examples

        examples, soundscapes, _ = self.examples()
        build_cache(Path(self.cache), items_from_examples(examples + soundscapes), bar=progress)
        return AudioCache(Path(self.cache))

    def load(self):
        """(examples, soundscapes, labels or None, cache) with clips the cache skipped left out."""
        from trainer.audio_cache import AudioCache

        examples, soundscapes, labels = self.examples()
        cache = AudioCache(Path(self.cache))
        return ([e for e in examples if e.clip_id in cache], [s for s in soundscapes if s.clip_id in cache],
                labels, cache)


@dataclass
class FitJob:
    """Everything one fit needs, as plain data (the job's command line carries it as JSON)."""

    config: dict[str, Any]
    """`dataclasses.asdict(FitConfig)`."""
    data: DataSource
    out_dir: str
    tracking_uri: str | None = None
    """MLflow tracking URI (None: `$MLFLOW_TRACKING_URI`, else the SQLite store in tracking_dir)."""
    tracking_dir: str | None = None
    """The data directory of a local MLflow store (`trainer.tracking`); with neither: no tracking."""
    experiment: str = "explorer-heads"
    run_name: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FitJob":
        raw = json.loads(text)
        raw["data"] = DataSource(**raw["data"])
        return cls(**raw)


def fit_config(config: dict[str, Any]):
    """A `FitConfig` from its dict, naming any key it does not have."""
    from dataclasses import fields

    from trainer.fit import FitConfig

    known = {f.name for f in fields(FitConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"FitConfig has no field(s) {unknown}; known: {sorted(known)}")
    return FitConfig(**config)


def run_fit_job(job: FitJob, *, announce: bool = False, progress: bool = False):
    """Run the fit here: (FitResult, MLflow run id or None). With `announce` the run id and a
    result summary are printed as the job-log lines `status` reads."""
    from trainer.fit import fit

    config = fit_config(job.config)
    job.data.prepare(progress=progress)
    examples, soundscapes, labels, cache = job.data.load()
    run = open_run(job.tracking_uri, job.tracking_dir, job.experiment, job.run_name, job.config,
                   {"kind": "fit-job"})
    if announce and run.run_id:
        print(f"{RUN_ID_MARK}{run.run_id}", flush=True)
    try:
        result = fit(config, examples, cache, Path(job.out_dir), labels=labels, backgrounds=soundscapes,
                     on_epoch=run.on_epoch, progress=progress)
    except BaseException:
        run.finish("FAILED")
        raise
    run.finish("FINISHED", result)
    if announce:
        print(f"{RESULT_MARK}{json.dumps({'best': str(result.best_path), 'metric': result.best_metric})}", flush=True)
    return result, run.run_id


class Run:
    """One trial's or job's MLflow run (`trainer.tracking.Tracker`), opened at once and ended by
    `finish`; a no-op without a tracking URI or directory."""

    def __init__(self, tracking_uri: str | None, tracking_dir: str | None, experiment: str, run_name: str | None,
                 params: dict, tags: dict | None = None):
        self.tracker, self.run_id = None, None
        if not (tracking_uri or tracking_dir):
            return
        from trainer.tracking import Tracker

        self.tracker = Tracker(Path(tracking_dir) if tracking_dir else None, experiment, uri=tracking_uri,
                               run_name=run_name, tags=tags).__enter__()
        self.run_id = self.tracker.run_id
        self.tracker.log_params(params)

    def on_epoch(self, result) -> None:
        if self.tracker is not None:
            self.tracker.on_epoch(result)

    def tag(self, key: str, value: str) -> None:
        if self.tracker is not None:
            self.tracker.set_tags({key: value})

    def finish(self, state: str = "FINISHED", result=None, checkpoint: bool = True) -> None:
        """End the run (FINISHED, FAILED, KILLED); with a `FitResult`, log its best evaluation and
        thresholds, and (with `checkpoint`) the best checkpoint as an artifact."""
        if self.tracker is None:
            return
        if result is not None:
            self.tracker.log_fit(result)
            best = Path(result.best_path)
            self.tag("best_checkpoint", str(best))
            if checkpoint and best.is_file():
                self.tracker.log_checkpoint(best)
        self.tracker.client.set_terminated(self.run_id, status=state)


def open_run(tracking_uri: str | None, tracking_dir: str | None = None, experiment: str = "explorer-heads",
             run_name: str | None = None, params: dict | None = None, tags: dict | None = None) -> Run:
    """The MLflow run a fit logs into (see `Run`)."""
    return Run(tracking_uri, tracking_dir, experiment, run_name, params or {}, tags)


def entrypoint(job: FitJob) -> str:
    """The shell command the cluster runs for `job` (the cluster's `python`, not this one's)."""
    return f"python -m trainer.jobs {shlex.quote(job.to_json())}"


def submit(address: str | None, job: FitJob, runtime_env: dict | None = None) -> str:
    """Start `job` and return its id at once (on a cluster) or when done (locally).

    Args:
        address: The Ray dashboard address (`http://head:8265`); None runs the fit in-process.
        job: The fit.
        runtime_env: Ray's runtime environment for the job (e.g. {"working_dir": "."} to ship
            the code, {"env_vars": {...}}); None: the cluster's environment as it is.
    """
    if address is None:
        job_id = f"local-{uuid.uuid4().hex[:12]}"
        _LOCAL[job_id] = ("RUNNING", None)
        try:
            _, run_id = run_fit_job(job)
        except BaseException:
            _LOCAL[job_id] = ("FAILED", None)
            raise
        _LOCAL[job_id] = ("SUCCEEDED", run_id)
        return job_id
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    return client.submit_job(entrypoint=entrypoint(job), runtime_env=runtime_env,
                             metadata={"kind": "explorer-fit", "out_dir": job.out_dir})


def status(address: str | None, job_id: str) -> tuple[str, str | None]:
    """(state, MLflow run id or None): PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED.

    Raises:
        KeyError: a local job id this process did not run.
    """
    if address is None:
        if job_id not in _LOCAL:
            raise KeyError(f"{job_id}: no such local job in this process")
        return _LOCAL[job_id]
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    state = str(client.get_job_status(job_id).value)
    return state, run_id_from_logs(client.get_job_logs(job_id))


def run_id_from_logs(logs: str) -> str | None:
    """The last `EXPLORER_MLFLOW_RUN_ID=` line's id in a job's logs."""
    found = None
    for line in logs.splitlines():
        if line.startswith(RUN_ID_MARK):
            found = line[len(RUN_ID_MARK):].strip() or None
    return found


def main(argv: list[str] | None = None) -> int:
    """The job's entrypoint: `python -m trainer.jobs '<FitJob JSON>'`."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m trainer.jobs '<FitJob as JSON>'", file=sys.stderr)
        return 2
    run_fit_job(FitJob.from_json(argv[0]), announce=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
