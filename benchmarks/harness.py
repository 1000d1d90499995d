"""The benchmark harness: suites (declarative TOML) -> jobs -> trained and scored cells -> records.

A suite is parsed by :mod:`affbench.benchmarks.suite` and planned into jobs by
:mod:`affbench.benchmarks.plan`; this module runs the jobs and writes their records.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from affbench.benchmarks.claims import JobClaims, RankZeroClaims, append_run, find_job, run_shared
from affbench.benchmarks.plan import DataCache, Job, Plan, make_plan, task_specs
from affbench.benchmarks.records import JobSummary, describe_device, git_commit, task_baselines
from affbench.benchmarks.suite import DerivedTask, Suite, load_suite, validate_encoders
from affbench.encoders.registry import WEIGHT_OPTIONS
from affbench.errors import AffbenchError
from affbench.reporting.records import DamagedRecordError, read_record, write_json_atomic, write_record
from affbench.runtime.files import file_sha256, write_text_atomic
from affbench.runtime.run_folder import JobFolder, RunFolder
from affbench.runtime.version import __version__
from affbench.training.ddp import SINGLE, Distribution
from affbench.training.tensorboard import open_tracker

# ----------------------------------------------------------------------------------------- running


@dataclass
class RunReport:
    """What :func:`run_benchmark` did."""

    suite: str
    run_dir: Path
    cells_total: int = 0
    cells_skipped: int = 0
    cells_written: int = 0
    jobs_trained: int = 0
    jobs_resumed: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    is_main: bool = True  # False on torchrun's other ranks, which neither write nor print results


class _Runner:
    def __init__(self, plan: Plan, data: DataCache, run_dir: Path, device: str, *, num_workers: int | None,
                 progress: bool, log: Callable[[str], None], on_epoch_end, decoded_cache: bool = True,
                 distribution: Distribution = SINGLE, claims: JobClaims | None = None):
        self.plan, self.data, self.run_dir = plan, data, run_dir
        self.folder = RunFolder(run_dir)
        self.claims = claims or JobClaims(run_dir)  # which process runs which job (see benchmarks.claims)
        self.suite = plan.suite
        self.device, self.num_workers = device, num_workers
        self.progress, self.log, self.on_epoch_end = progress, log, on_epoch_end
        # Under torchrun every rank runs each job together; rank 0 alone reads what decides
        # (it may set damaged files aside) and writes (see affbench.training.ddp).
        self.dist = distribution
        self.commit = git_commit()
        self.decoded_cache = decoded_cache
        self.device_text = describe_device(device)

    # -- bookkeeping

    def job_folder(self, job: Job) -> JobFolder:
        return self.folder.job(job.key)

    def cells_finished(self, job: Job) -> bool:
        """True when every cell of ``job`` has a record made with the same configuration."""
        finished = True
        for cell in job.cells(self.suite.name):
            path = cell.path(self.run_dir)
            if not path.is_file():
                finished = False
                continue
            try:
                record = read_record(path)
            except DamagedRecordError:
                from affbench.training.checkpoints import set_aside

                # The job's done.json (or its training) rewrites it; the damaged file is kept.
                self.log(f"warning: {path} is not a valid result record; moved it to {set_aside(path).name} "
                         "and writing that cell again.")
                finished = False
                continue
            if record.get("config_hash") != job.config_hash:
                raise AffbenchError(
                    f"{path} holds a result of cell {cell} made with other settings "
                    f"(configuration {str(record.get('config_hash'))[:10]}, now {job.config_hash[:10]}); "
                    "use another --out folder, or delete that file to redo the cell."
                )
        return finished and not self.weights_damaged(job)

    def weights_damaged(self, job: Job) -> bool:
        """Whether a finished job's kept ``best.pt`` cannot be read; if so it is moved aside and the
        job's summary and records removed (training makes them again), so that the job trains again
        (as the README promises) instead of leaving weights that export-model and predict refuse."""
        from affbench.training.checkpoints import DamagedCheckpointError, load_model_state, set_aside

        folder = self.job_folder(job)
        if job.experiment.is_evaluation or not folder.weights.is_file():
            return False
        try:
            load_model_state(folder.weights)
        except DamagedCheckpointError as exc:
            moved = set_aside(folder.weights)
            folder.done.unlink(missing_ok=True)  # made again, with the weights, by the training below
            for cell in job.cells(self.suite.name):
                cell.path(self.run_dir).unlink(missing_ok=True)
            self.log(f"warning: {folder.weights} is damaged ({exc.reason}); moved it to {moved.name} and training "
                     f"job {job.key} again.")
            return True
        return False

    # -- tasks

    def task_data(self, job: Job):
        from affbench.scoring.protocols import Protocol
        from affbench.training.tasks import TaskData, apply_selection

        experiment = job.experiment
        prepared = self.data.get(experiment.dataset)
        protocol = Protocol.from_dict(prepared.protocol_dict).repartitioned(job.partition)
        specs = task_specs(experiment, self.suite, protocol)
        meta = prepared.meta
        tasks, splits = [], {}
        for spec in specs:
            derived = self.suite.derived_tasks.get(spec.name)
            if derived is None:
                self._require_columns(prepared, spec, protocol)
                split = protocol.split_indices(meta, spec.name, job.fold,
                                               exclude_fallback=experiment.training.exclude_fallback_crops)
                y, mask = protocol.targets(meta, spec.name)
                rows = {r: np.asarray(split[r], dtype=np.int64) for r in ("train", "val", "test")}
            else:
                split, rows, y, mask = self._derived_rows(derived, protocol, prepared, job.fold,
                                                          experiment.training.exclude_fallback_crops)
            splits[spec.name] = split
            tasks.append(TaskData(spec, y, mask, rows))
        if not experiment.is_evaluation:
            tasks = apply_selection(tasks, experiment.training)
        return prepared, tasks, splits

    def _require_columns(self, prepared, spec, protocol) -> None:
        needed = list(spec.label_columns)
        if spec.split_column:
            needed.append(spec.split_column)
        group = getattr(protocol.split, "group_column", None)
        if group:
            needed.append(group)
        missing = [c for c in needed if c not in prepared.meta.columns]
        if not missing:
            return
        available = [c for c in missing if c in prepared.reader.columns]
        if available:  # present in the shards, not loaded yet: load them now
            extra = prepared.reader.table(available).to_pandas()
            for column in available:
                prepared.meta[column] = extra[column].to_numpy()
            missing = [c for c in missing if c not in available]
        if missing:
            raise AffbenchError(
                f"The {prepared.dataset} shards in {prepared.folder} have no column(s) {', '.join(missing)}, "
                f"which task {spec.name!r} needs; its labels are absent from these shards."
            )

    def _derived_rows(self, derived: DerivedTask, protocol, prepared, fold: int, exclude_fallback: bool):
        source = protocol.task(derived.source_task)
        self._require_columns(prepared, source, protocol)
        split = protocol.split_indices(prepared.meta, derived.source_task, fold,
                                       exclude_fallback=exclude_fallback)
        y_source, mask_source = protocol.targets(prepared.meta, derived.source_task)
        if not source.is_classification:
            raise AffbenchError(f"Derived task {derived.name!r} selects classes of {derived.source_task!r}, which has none.")
        names = [n.lower() for n in source.label_names]
        wanted = []
        for cls in derived.classes:
            if cls.lower() not in names:
                raise AffbenchError(f"{prepared.dataset} {derived.source_task} has no class {cls!r}; its classes are: "
                                    f"{', '.join(source.label_names)}.")
            wanted.append(names.index(cls.lower()))
        candidates = np.asarray(split[derived.role], dtype=np.int64)
        keep = candidates[np.isin(y_source[candidates], wanted) & mask_source[candidates]]
        n = len(prepared.meta)
        y = np.zeros((n, len(derived.label_names)), np.float32)
        for label in derived.assume_active:
            y[:, derived.label_names.index(label)] = 1.0
        mask = np.ones_like(y, dtype=bool)
        rows = {"train": np.zeros(0, np.int64), "val": np.zeros(0, np.int64), "test": np.zeros(0, np.int64)}
        rows["test"] = keep
        split = dict(split, derived={"source_task": derived.source_task, "classes": list(derived.classes),
                                     "rows": int(len(keep))})
        return split, rows, y, mask

    # -- models

    def source_weights(self, job: Job) -> Path:
        """The selected weights of the job ``job`` starts from or evaluates."""
        source = _source_of(job)
        path = self.job_folder(source).weights
        if not path.is_file():
            raise AffbenchError(f"{job.key} needs the weights of {source.key}, which are missing: {path}.")
        return path

    def encoder_options(self, job: Job) -> dict[str, Any]:
        options = dict(job.experiment.options)
        init = job.experiment.init
        if init is not None and init.option is not None:
            options[init.option] = str(self.source_weights(job))
        return options

    def images_for(self, prepared, encoder_spec, augmentation):
        """The crops at the model's input size: from the decoded cache (built on first use) unless it
        is switched off or cannot be written; and the cache used (None: the PNG shards)."""
        from affbench.data.cache import images_with_cache
        from affbench.data.loader import crop_landmarks

        points = crop_landmarks(prepared) if "heatmaps" in encoder_spec.heads else None
        images, cache = images_with_cache(prepared.folder, encoder_spec.input_size, augmentation, points=points,
                                          use_cache=self.decoded_cache, log=lambda m: self.log(f"  {m}"))
        if cache is not None:
            how = f"built in {cache.build_seconds:.1f} s" if cache.built else "reused"
            self.log(f"  decoded cache {cache.folder} ({cache.side}x{cache.side}, {cache.nbytes / 2**30:.2f} GiB, {how})")
        return images, cache

    # -- jobs

    def read_done(self, job: Job) -> JobSummary | None:
        """A finished job's summary; None when it has none, or a damaged one (moved aside, with a warning)."""
        from affbench.training.checkpoints import set_aside

        path = self.job_folder(job).done
        if not path.is_file():
            return None
        try:
            summary = json.loads(path.read_text())
            if isinstance(summary, dict) and summary.get("config_hash") == job.config_hash:
                return JobSummary.from_dict(summary)
            problem = "it is not this job's summary"
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            problem = f"not valid JSON: {getattr(exc, 'msg', exc)}"
        except (KeyError, TypeError) as exc:
            problem = f"it lacks {exc}"
        moved = set_aside(path)
        self.log(f"warning: {path} is damaged ({problem}); moved it to {moved.name} and running job {job.key} again.")
        return None

    def ensure_source_weights(self, job: Job, report: RunReport) -> None:
        """The job ``job`` starts from or evaluates has readable selected weights (and summary).

        Weights that are damaged (moved aside) or were not kept (``keep_weights = false`` in an
        earlier run) are made again by training that job again, so that no file blocks the run.
        """
        from affbench.training.checkpoints import DamagedCheckpointError, load_model_state, set_aside

        source = _source_of(job)
        path = self.job_folder(source).weights

        def find_problem() -> str | None:
            if not path.is_file():
                return f"the selected weights of {source.key} were not kept"
            try:
                load_model_state(path)
            except DamagedCheckpointError as exc:
                return f"{path} is damaged ({exc.reason}); moved it to {set_aside(path).name}"
            if job.experiment.is_evaluation and self.read_done(source) is None:
                return f"the summary of {source.key} is missing"
            return None

        with self.claims.holding(source.key, self.log):  # no other process trains it again meanwhile
            problem = self.dist.decide(find_problem)
            if problem is None:
                return
            self.log(f"warning: {problem}; training job {source.key} again, which {job.key} needs.")
            self.train_job(source, report, again=True)

    def run_job(self, job: Job, report: RunReport) -> None:
        if job.depends is not None:
            self.ensure_source_weights(job, report)
        if job.experiment.published is not None:
            self.score_released(job, report)
        elif job.experiment.is_evaluation:
            self.evaluate_job(job, report)
        else:
            self.train_job(job, report)

    def train_job(self, job: Job, report: RunReport, *, again: bool = False) -> None:
        """Train ``job`` (or only write its records from its summary, unless ``again``) and score it."""
        summary = None if again else self.dist.decide(lambda: self.read_done(job))
        if summary is not None:
            if self.dist.is_main:
                self.write_records(job, summary, report)
            return
        started = time.perf_counter()
        prepared, tasks, splits = self.task_data(job)
        model = self.build_model(job, tasks)
        settings = job.experiment.training
        images, cache = self.images_for(prepared, model.spec, settings.augmentation)
        folder = self.job_folder(job)
        folder.path.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            write_json_atomic(folder.job_file, {"key": job.key, "config": job.config, "suite": self.suite.name,
                                                "experiment": job.experiment.id})
        self.log(f"{'resume' if folder.last.is_file() else 'train'} {job.key}: {job.experiment.encoder} on "
                 f"{job.experiment.dataset} {'+'.join(job.experiment.tasks)}, fold {job.fold}, "
                 f"{len(tasks[0].rows['train'])} training rows"
                 + (f", {self.dist.world_size} processes" if self.dist.active else ""))
        notes: dict[str, list[str]] = {}
        kept: dict[str, np.ndarray] = {}
        result, test = self.fit_and_test(job, model, tasks, images, notes, kept)
        # This process's time plus that of the epochs an earlier, interrupted run finished.
        seconds = time.perf_counter() - started + sum(h.get("seconds", 0.0)
                                                      for h in result.history[: result.resumed_from or 0])
        uncertainty = self.keep_outputs(job, tasks, prepared, model.spec, kept) if self.dist.is_main else {}
        summary = JobSummary(
            **self.common_summary(job, tasks, splits, test, model, prepared, cache, result.history, seconds, notes),
            **uncertainty, mode="train", validation_split={t.name: splits[t.name].get("validation") for t in tasks},
            **_training_summary(job, tasks, model, result),
        )
        report.jobs_trained += 1
        report.jobs_resumed += bool(result.resumed_from)
        if not self.dist.is_main:
            return
        self.describe_model(job, model, tasks, prepared, settings, test)  # before done.json: a kill in between redoes it
        write_json_atomic(folder.done, summary.to_dict())
        self.write_records(job, summary, report)
        folder.last.unlink(missing_ok=True)  # the optimiser state is not needed once done
        if not settings.keep_weights and not self.weights_needed(job):
            folder.weights.unlink(missing_ok=True)

    def build_model(self, job: Job, tasks):
        """The job's encoder, built with its options (and the weights it starts from), seeded."""
        from affbench.encoders.registry import create_encoder, get_encoder_spec
        from affbench.training.fit import seed_everything
        from affbench.training.tasks import check_compatible

        options = self.encoder_options(job)
        spec = get_encoder_spec(job.experiment.encoder, **options)  # checkpoints given may imply the structure
        for task in tasks:
            check_compatible(task.spec, spec)
        seed_everything(job.experiment.training.seed)
        with _warnings_to(self.log):
            return create_encoder(job.experiment.encoder, **options)

    def fit_and_test(self, job: Job, model, tasks, images, notes: dict[str, list[str]],
                     kept: dict[str, np.ndarray]):
        """Fit the model in the job's folder, load the selected weights and score them on the test rows."""
        from affbench.training.checkpoints import load_model_state
        from affbench.training.evaluation import evaluate_tasks
        from affbench.training.fit import fit

        settings, folder = job.experiment.training, self.job_folder(job)
        tracker = open_tracker(self.run_dir, job.key) if self.dist.is_main else None

        def epoch_end(epoch: int, entry: dict[str, Any]) -> None:
            if tracker is not None:
                tracker.log_epoch(entry)
            if self.on_epoch_end is not None:
                self.on_epoch_end(job, epoch, entry)

        try:
            result = fit(model, tasks, images, settings, workdir=folder.path, device=self.device,
                         progress=self.progress, log=lambda m: self.log(f"  {m}"), on_epoch_end=epoch_end,
                         distribution=self.dist)
            model.load_state_dict(load_model_state(folder.weights))
            eval_batch = settings.eval_batch_size or 2 * settings.batch_size
            test = evaluate_tasks(model, tasks, images, role="test", device=self.device,
                                  batch_size=max(1, eval_batch // self.dist.world_size),
                                  num_workers=settings.num_workers if self.num_workers is None else self.num_workers,
                                  progress=self.progress, notes=notes, distribution=self.dist, kept=kept)
            if tracker is not None:
                tracker.log_test(test, result.best_epoch or 0)
        finally:
            if tracker is not None:
                tracker.close()
        return result, test

    def keep_outputs(self, job: Job, tasks, prepared, encoder_spec, kept: dict[str, np.ndarray]) -> dict[str, Any]:
        """Write each task's test outputs into the job folder and make its intervals from them, and
        those of the trivial baselines that predict a constant: the summary's ``test_outputs``,
        ``ci``, ``scoring`` and ``baselines_ci`` fields."""
        from affbench.reporting.outputs import (
            ROW_COLUMNS,
            baseline_intervals,
            interval_record,
            outputs_intervals,
            outputs_table,
            read_outputs,
            scoring_versions,
            write_outputs,
        )
        from affbench.scoring.baselines import fitted_constants
        from affbench.scoring.protocols import Protocol

        protocol = Protocol.from_dict(prepared.protocol_dict).repartitioned(job.partition)
        version = protocol.fingerprint()
        found: dict[str, dict[str, Any]] = {"test_outputs": {}, "ci": {}, "scoring": {}, "baselines_ci": {}}
        for task in tasks:
            if task.name not in kept:
                continue
            rows = task.rows["test"]
            meta = prepared.meta.iloc[rows]
            clusters, unit = protocol.cluster_ids(meta)
            table = outputs_table(task.spec, meta[[c for c in ROW_COLUMNS if c in meta.columns]], clusters,
                                  task.y[rows], task.mask[rows], kept[task.name], fold=job.fold, cluster_unit=unit,
                                  au_output=encoder_spec.au_output, protocol_version=version,
                                  baseline_constants=fitted_constants(task.spec, task.y, task.mask, task.rows))
            path = write_outputs(self.job_folder(job).test_outputs(task.name), table)
            found["test_outputs"][task.name] = path.relative_to(self.run_dir).as_posix()
            outputs = read_outputs(path)
            found["ci"][task.name] = interval_record(outputs_intervals([outputs], self.suite.ci), unit)
            found["scoring"][task.name] = scoring_versions(task.spec, version)
            # From the file, as rescore draws them again: the same rows, the same kept constants.
            found["baselines_ci"][task.name] = baseline_intervals(outputs, self.suite.ci)
        return found

    def common_summary(self, job: Job, tasks, splits, test, model, prepared, cache, history, seconds: float,
                       notes: dict[str, list[str]]) -> dict[str, Any]:
        """The summary fields a trained and an evaluation-only job fill alike (``seconds``: its wall time)."""
        from affbench.data.cache import describe_loading

        return {
            "job": job.key, "config_hash": job.config_hash, "metrics": test, "baselines": task_baselines(tasks),
            "excluded": {t.name: splits[t.name].get("excluded") for t in tasks},
            "fallback_crops": {t.name: splits[t.name].get("fallback_crops") for t in tasks},
            "test_groups": {t.name: splits[t.name].get("test_groups") for t in tasks},
            "primary_metric": {t.name: t.spec.primary_metric for t in tasks},
            "kind": {t.name: t.spec.kind for t in tasks},
            "metric_warnings": notes, "encoder_options": dict(job.experiment.options),
            "encoder_spec": {"input_size": model.spec.input_size, "heads": dict(model.spec.heads),
                             "au_output": model.spec.au_output, "family": model.spec.family},
            "device": self.device_text, "git_commit": self.commit, "affbench_version": __version__,
            "world_size": self.dist.world_size, "leakage": job.config.get("leakage"),
            "data": {"folder": str(prepared.folder), "fingerprint": prepared.fingerprint},
            "data_loading": describe_loading(cache, history),
            "wall_seconds": round(seconds, 3),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def weights_needed(self, job: Job) -> bool:
        """Whether an experiment of the suite starts from or evaluates ``job``'s experiment: asked of
        the whole suite, not this (perhaps narrowed) plan, since another process may run that one."""
        sources = (other.init or other.evaluate for other in self.suite.experiments)
        return any(source is not None and source.experiment == job.experiment.id for source in sources)

    def describe_model(self, job: Job, model, tasks, prepared, settings, metrics) -> None:
        """``model.json`` beside ``best.pt``: what ``affbench export-model`` and ``predict`` need."""
        from affbench.inference.bundle import describe_trained_model, write_job_description

        trained_on = {"job": job.key, "suite": self.suite.name, "experiment": job.experiment.id,
                      "dataset": job.experiment.dataset, "fold": job.fold, "data_fingerprint": prepared.fingerprint,
                      "git_commit": self.commit, "affbench_version": __version__}
        description = describe_trained_model(job.key, model.spec, [t.spec for t in tasks],
                                             prepared.manifest.get("parameters", {}),
                                             eval_crop=settings.augmentation.eval_crop, metrics=metrics,
                                             trained_on=trained_on)
        write_job_description(self.job_folder(job).path, description)

    def evaluate_job(self, job: Job, report: RunReport) -> None:
        from affbench.encoders.registry import create_encoder
        from affbench.training.checkpoints import load_model_state
        from affbench.training.tasks import check_compatible

        started = time.perf_counter()
        experiment = job.experiment
        source_job = _source_of(job)
        source = self.dist.decide(lambda: self.read_done(source_job))
        if source is None:
            raise AffbenchError(f"Job {source_job.key} has not finished; it must run before {job.key}.")
        prepared, tasks, splits = self.task_data(job)
        architecture = {k: v for k, v in experiment.options.items() if k not in WEIGHT_OPTIONS}
        with _warnings_to(self.log):
            model = create_encoder(experiment.encoder, **architecture)
        for task in tasks:
            check_compatible(task.spec, model.spec)
        model.load_state_dict(load_model_state(self.source_weights(job)))
        images, cache = self.images_for(prepared, model.spec, source_job.experiment.training.augmentation)
        self.log(f"evaluate {source_job.key} on {experiment.dataset} {'+'.join(experiment.tasks)}, fold {job.fold}")

        def log_test(test: dict[str, Any]) -> None:
            tracker = open_tracker(self.run_dir, job.key)
            if tracker is not None:
                tracker.log_test(test, source.selected_epoch or 0)
                tracker.close()

        self.test_untrained(job, report, model, tasks, splits, prepared, images, cache, started,
                            validation_split={t.name: splits[t.name].get("derived") for t in tasks},
                            specific=_evaluation_summary(job, tasks, source), on_test=log_test)

    def score_released(self, job: Job, report: RunReport) -> None:
        """Score the released file of ``job``'s fold on its test rows, as a trained cell is scored."""
        from affbench.data.augment import Augmentation
        from affbench.encoders.published import get_published
        from affbench.encoders.registry import create_encoder
        from affbench.training.tasks import check_compatible

        summary = self.dist.decide(lambda: self.read_done(job))
        if summary is not None:
            if self.dist.is_main:
                self.write_records(job, summary, report)
            return
        started = time.perf_counter()
        released = job.config["published"]
        published = get_published(released["tag"])
        prepared, tasks, splits = self.task_data(job)
        with _warnings_to(self.log):
            model = create_encoder(released["tag"], pretrained=released["file"])
        for task in tasks:
            check_compatible(task.spec, model.spec)
        images, cache = self.images_for(prepared, model.spec, Augmentation(eval_crop=published.eval_crop))
        self.log(f"score {released['tag']} ({released['name']}) on {job.experiment.dataset} "
                 f"{'+'.join(job.experiment.tasks)}, fold {job.fold}")
        self.test_untrained(job, report, model, tasks, splits, prepared, images, cache, started,
                            validation_split={t.name: None for t in tasks},
                            specific=_released_summary(tasks, model, released))

    def test_untrained(self, job: Job, report: RunReport, model, tasks, splits, prepared, images, cache,
                       started: float, *, validation_split: dict[str, Any], specific: dict[str, Any],
                       on_test: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Score weights that were not trained here (another job's, a released file) on the job's
        test rows, keep the outputs and write done.json and the records, as a trained job does."""
        from affbench.training.evaluation import evaluate_tasks

        notes: dict[str, list[str]] = {}
        kept: dict[str, np.ndarray] = {}
        test = evaluate_tasks(model, tasks, images, role="test", device=self.device,
                              num_workers=self.num_workers, progress=self.progress, notes=notes,
                              distribution=self.dist, kept=kept)
        if not self.dist.is_main:
            return
        if on_test is not None:
            on_test(test)
        summary = JobSummary(
            **self.common_summary(job, tasks, splits, test, model, prepared, cache, [],
                                  time.perf_counter() - started, notes),
            **self.keep_outputs(job, tasks, prepared, model.spec, kept),
            mode="evaluate", validation_split=validation_split, **specific,
        )
        self.job_folder(job).path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.job_folder(job).done, summary.to_dict())
        self.write_records(job, summary, report)

    def write_records(self, job: Job, summary: JobSummary, report: RunReport) -> None:
        for cell in job.cells(self.suite.name):
            write_record(self.run_dir, summary.cell_record(cell, job))
            report.cells_written += 1


def _source_of(job: Job) -> Job:
    """The job that ``job`` starts from or evaluates (the planner sets one for such jobs)."""
    if job.depends is None:
        raise AssertionError(f"job {job.key} has no source job")
    return job.depends


def _training_summary(job: Job, tasks, model, result) -> dict[str, Any]:
    """The summary fields of a trained job that come from its training."""
    settings = job.experiment.training
    selected: dict[str, Any] = next((h for h in result.history if h["epoch"] == result.best_epoch), {})
    return {
        "validation_metrics": selected.get("val", {}),
        "n": {t.name: {r: int(len(t.rows[r])) for r in ("train", "val", "test")} for t in tasks},
        "epochs": result.epochs_run, "epochs_planned": settings.epochs, "selected_epoch": result.best_epoch,
        "selection": result.selection, "selection_protocol": settings.selection,
        "validation_metric_warnings": selected.get("val_warnings", {}),
        "steps": result.steps, "resumed_from": result.resumed_from,
        "train_seconds": result.train_seconds, "loss": result.losses,
        "curve": {t.name: [
            {"epoch": h["epoch"], "train_loss": h["train_loss"].get(t.name), "lr": h["lr"],
             "val": (h.get("val") or {}).get(t.name, {}).get(t.spec.primary_metric)}
            for h in result.history] for t in tasks},
        "initialisation": model.spec.init, "fresh_parameters": list(model.spec.fresh),
        "init_from": None if job.depends is None else {"job": job.depends.key, "experiment": job.depends.experiment.id,
                                                       "fold": job.depends.fold},
        "seed": settings.seed, "training": settings.to_dict(),
        # The suite's batch_size is the global batch: each of world_size processes took an equal share.
        "global_batch_size": settings.batch_size,
    }


def _evaluation_summary(job: Job, tasks, source: JobSummary) -> dict[str, Any]:
    """The summary fields of an evaluation-only job: its source job's training, nothing trained here."""
    source_job = _source_of(job)
    return {
        "validation_metrics": {},
        # Nothing was trained here: the model's own training rows are in the source job's records.
        "n": {t.name: {"train": 0, "val": 0, "test": int(len(t.rows["test"]))} for t in tasks},
        "epochs": source.epochs, "epochs_planned": source.epochs_planned,
        "selected_epoch": source.selected_epoch, "selection": f"the model of {source_job.key}",
        "selection_protocol": source.selection_protocol,
        "steps": source.steps, "resumed_from": None, "train_seconds": 0.0, "loss": {},
        "curve": {t.name: [] for t in tasks},
        "initialisation": f"evaluation only: selected weights of {source_job.key} ({source.initialisation})",
        "fresh_parameters": source.fresh_parameters,
        "init_from": {"job": source_job.key, "experiment": source_job.experiment.id, "fold": source_job.fold},
        "seed": source.seed, "training": None, "global_batch_size": None,
    }


def _released_summary(tasks, model, released: dict[str, Any]) -> dict[str, Any]:
    """The summary fields of a released file scored without training: nothing was trained here."""
    return {
        "validation_metrics": {},
        "n": {t.name: {"train": 0, "val": 0, "test": int(len(t.rows["test"]))} for t in tasks},
        "epochs": None, "epochs_planned": None, "selected_epoch": None,
        "selection": f"released weights {released['tag']}", "selection_protocol": "released",
        "steps": None, "resumed_from": None, "train_seconds": 0.0, "loss": {},
        "curve": {t.name: [] for t in tasks},
        "initialisation": model.spec.init, "fresh_parameters": list(model.spec.fresh),
        "init_from": {"published": released["tag"], "file": released["file"],
                      "sha256": file_sha256(released["file"])},
        "seed": None, "training": None, "global_batch_size": None,
    }


@contextlib.contextmanager
def _warnings_to(log: Callable[[str], None]):
    """Show warnings raised while building a model (e.g. weights that did not fit) as log lines."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        log(f"  note: {warning.message}")


def _check_weights(plan: Plan, runner: _Runner) -> None:
    """Every pretrained file the unfinished jobs need is there: a missing ImageNet file stops the run
    before the first job trains, not hours later when its job comes."""
    from affbench.encoders import check_weights_available
    from affbench.encoders.weights import MissingWeightsError

    missing: dict[str, None] = {}
    for job in plan.jobs:
        if not job.experiment.is_evaluation and not runner.cells_finished(job):
            try:
                check_weights_available(job.experiment.encoder, **job.experiment.options)
            except MissingWeightsError as exc:
                missing[exc.instruction] = None
    if missing:
        raise AffbenchError(
            f"This run needs {len(missing)} ImageNet weights file(s) that are not in the torch cache, and affbench "
            f"never downloads: {'; '.join(missing)} (a file's SHA-256, from sha256sum, starts with the hex digits "
            "in its name; docs/benchmarks.md, Pretrained weights)."
        )


def _check_output_folder(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise AffbenchError(f"--out {run_dir} is a file, not a folder; give a folder for the run.")
    if RunFolder(run_dir).holds_other_files():
        raise AffbenchError(f"--out {run_dir} is not empty and holds no affbench run; choose an empty or new folder "
                            "(or the folder of an earlier run to resume it).")


def run_benchmark(
    suite: Suite | str | os.PathLike,
    data_root: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    encoders: Sequence[str] | None = None,
    folds: Sequence[int] | None = None,
    epochs: int | None = None,
    max_steps: int | None = None,
    device: str = "auto",
    num_workers: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_epoch_end: Callable[[Job, int, dict[str, Any]], None] | None = None,
    decoded_cache: bool = True,
    job: str | None = None,
    claims: JobClaims | None = None,
    weights: str | os.PathLike | None = None,
) -> RunReport:
    """Run (or resume) a suite: every unfinished job in dependency order, one record per cell.

    Any number of processes may run the same suite into the same ``run_dir`` at once: each job is
    trained by one of them (see :mod:`affbench.benchmarks.claims`).

    Parameters
    ----------
    suite : Suite, suite name or TOML path
    data_root : path
        Folder with one prepared dataset per sub-folder (``disfa``, ``caer-s``, ``affwild2``).
    run_dir : path
        Results, checkpoints and plots; re-use it to resume.
    encoders, folds, epochs, max_steps : optional
        Narrow the run (see :func:`make_plan`).
    device : {"auto", "cpu", "cuda", "cuda:N"}
        Under torchrun (``WORLD_SIZE`` > 1) each process trains every job together with the others
        (DDP), on ``cuda:LOCAL_RANK`` when the device is a GPU; only rank 0 logs and writes.
    num_workers : int, optional
        DataLoader workers for every job (default: the suite's, else chosen by device).
    on_epoch_end : callable, optional
        ``(job, epoch, history_entry)`` after each epoch's checkpoint (tests interrupt here).
    decoded_cache : bool
        Train and score from the decoded cache beside each dataset's shards (:mod:`affbench.data.cache`;
        built on first use, rebuilt when the shards change); False reads the PNG shards.
    job : str, optional
        Run only the job with this id (one of :func:`list_jobs`), e.g. one task of a job array.
    claims : JobClaims, optional
        Who runs which job (default: a lock per job in ``run_dir``, taken by rank 0 under torchrun).
    weights : path, optional
        Where the relative paths of ``[experiment.published]`` files are read (default: the current folder).
    """
    started = time.perf_counter()
    distribution = Distribution.from_environment()
    if not distribution.is_main:
        log, progress = (lambda message: None), False
    planned_suite, plan, data, selected, device = _plan_run(
        suite, data_root, run_dir, distribution, encoders=encoders, folds=folds, epochs=epochs, max_steps=max_steps,
        device=device, num_workers=num_workers, job=job, weights=weights)
    run_dir = Path(run_dir)
    distribution.start(device)
    try:
        claims = claims or JobClaims(run_dir)
        if distribution.active:  # all ranks train the same job: rank 0 claims for them
            claims = RankZeroClaims(claims, distribution)
        runner = _Runner(plan, data, run_dir, device, num_workers=num_workers, progress=progress, log=log,
                         on_epoch_end=on_epoch_end, decoded_cache=decoded_cache, distribution=distribution,
                         claims=claims)
        report = RunReport(planned_suite.name, run_dir, notes=list(plan.skipped), is_main=distribution.is_main)
        distribution.decide(lambda: _check_weights(replace(plan, jobs=selected), runner))
        report.cells_total = sum(len(j.cells(planned_suite.name)) for j in selected)

        def skip(finished: Job) -> None:
            report.cells_skipped += len(finished.cells(planned_suite.name))
            log(f"skip {finished.key}: {len(finished.cells(planned_suite.name))} cell(s) already finished")

        run_shared(selected, claims, finished=lambda j: distribution.decide(lambda: runner.cells_finished(j)),
                   run=lambda j: runner.run_job(j, report), skip=skip, log=log)
        report.seconds = round(time.perf_counter() - started, 3)
        if distribution.is_main:
            _write_run_summary(run_dir, planned_suite, report, device, log, distribution.world_size)
    finally:
        distribution.stop()
    return report


def _plan_run(suite: Suite | str | os.PathLike, data_root: str | os.PathLike, run_dir: str | os.PathLike,
              distribution: Distribution, *, encoders: Sequence[str] | None, folds: Sequence[int] | None,
              epochs: int | None, max_steps: int | None, device: str, num_workers: int | None,
              job: str | None, weights: str | os.PathLike | None = None) -> tuple[Suite, Plan, DataCache, list[Job], str]:
    """Everything settled before the first job: the suite, its plan and data, the jobs this process
    may run, the device; the run folder made, with the suite's text kept in it."""
    from affbench.runtime.devices import resolve_device

    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    validate_encoders(suite)
    device = distribution.device(resolve_device(device))
    run_dir = Path(run_dir)
    _check_output_folder(run_dir)
    folder = RunFolder(run_dir)
    # Rank 0 checks the shards against their manifest (the others would only read them all again).
    data = DataCache(Path(data_root), suite, verify_cache=folder.verified_shards if distribution.is_main else None)
    plan = make_plan(suite, data_root, encoders=encoders, folds=folds, epochs=epochs, max_steps=max_steps,
                     data_cache=data, weights=weights)
    run_dir.mkdir(parents=True, exist_ok=True)
    folder.suites.mkdir(exist_ok=True)
    if suite.text and distribution.is_main:
        write_text_atomic(folder.suite_copy(suite.name), suite.text)
    if num_workers is not None:
        for planned in plan.jobs:
            planned.experiment = replace(planned.experiment,
                                         training=planned.experiment.training.merged({"num_workers": num_workers}))
    selected = plan.jobs if job is None else [find_job(plan, job)]
    for planned in selected:
        if not planned.experiment.is_evaluation:
            distribution.per_rank_batch(planned.experiment.training.batch_size, f"batch_size of {planned.experiment.id}")
    return suite, plan, data, selected, device


def _write_run_summary(run_dir: Path, suite: Suite, report: RunReport, device: str, log: Callable[[str], None],
                       world_size: int = 1) -> None:
    append_run(run_dir, {
        "suite": suite.name, "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device, "world_size": world_size, "cells": report.cells_total, "skipped": report.cells_skipped,
        "written": report.cells_written, "seconds": report.seconds, "affbench_version": __version__,
    }, log)
