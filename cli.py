"""The ``affbench`` command line: each command parses its options, makes one library call, prints
what the library returns and exits with the code the library decides.

Installed as ``affbench.cli`` (see setup.py). Imports of torch and friends happen inside the
commands so that ``affbench --help`` answers at once. The prepare commands are made from the
dataset registry (``affbench.pipelines.DATASETS``).
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import click

from affbench.errors import AffbenchError, os_error_sentence
from affbench.pipelines import DATASETS, DatasetSpec, OptionSpec
from affbench.runtime.version import __version__


class _AffbenchGroup(click.Group):
    """Turns the errors a user can cause into one sentence and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AffbenchError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            sentence = os_error_sentence(exc)
            if sentence is None:
                raise
            raise click.ClickException(sentence) from None
        except KeyboardInterrupt:
            click.echo("\nInterrupted: finished work is kept; re-run the same command to resume.", err=True)
            ctx.exit(130)


def _quiet_openmp() -> None:
    """Let idle OpenMP threads sleep instead of spin (set before torch loads; the user's value wins).

    Spinning threads fight DataLoader workers and other processes for the cores; on a busy 2-core
    machine that made CPU convolutions about ten times slower.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _echo_lines(lines, *, err: bool = False) -> None:
    for line in lines:
        click.echo(line, err=err)


@click.group(cls=_AffbenchGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="affbench")
@click.option("--max-pixels", default=None, type=click.IntRange(1), metavar="N",
              help="Largest image or video frame read, in pixels (width x height); default 64000000. Larger "
                   "inputs are refused (each with one sentence) before they are decoded.")
def app(max_pixels: int | None) -> None:
    """affbench: prepare facial-affect datasets, train and score encoders, export result tables.

    \b
    Typical use:
      affbench prepare disfa /data/DISFA --out prepared/disfa
      affbench run-benchmark --suite disfa-au --data prepared --out runs/disfa-au
      affbench export runs/disfa-au --csv disfa-au.csv --wide
    Try it end to end on generated sample data with `affbench demo`.
    """
    if max_pixels is not None:
        from affbench.runtime.pixels import set_max_pixels

        set_max_pixels(max_pixels)


# ----------------------------------------------------------------------------------------- prepare


@app.group(cls=_AffbenchGroup)
def prepare() -> None:
    """Detect, align and crop faces from a raw dataset into Parquet shards with a manifest.

    Re-running the same command resumes: finished units (videos, image folders) are skipped unless
    their input files changed or they listed failures, and a run with different preprocessing
    options into the same --out folder, or while another run works in it, is refused.
    """


class _WorkerCount(click.ParamType):
    """``auto`` or a whole number from 1 to 256."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if isinstance(value, int) or value == "auto":
            return value
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if not 1 <= number <= 256:
            self.fail(f"{value!r} is not 'auto' or a whole number from 1 to 256.", param, ctx)
        return number


_WORKERS = _WorkerCount()


def _common_prepare_options(spec: DatasetSpec) -> list:
    options = [
        click.argument("root", type=click.Path(path_type=Path)),
        click.option("--out", "out", required=True, type=click.Path(path_type=Path),
                     help="Output folder for manifest.json and shards/ (created if missing)."),
        click.option("--size", default=spec.size, show_default=True, type=click.IntRange(16, 1024),
                     help="Side of the square face crop in pixels."),
        click.option("--codec", default=spec.codec, show_default=True, type=click.Choice(["png", "jpeg", "webp"]),
                     help=spec.codec_help),
        click.option("--quality", default=95, show_default=True, type=click.IntRange(1, 100),
                     help="JPEG/WebP quality; ignored for PNG."),
        click.option("--workers", default="auto", show_default=True, type=_WORKERS,
                     help="Parallel worker processes (joblib), one unit of work each; auto: one per CPU core "
                          "(with CUDA, no more than the GPU's free memory holds). The number used is printed "
                          "and recorded in manifest.json."),
        click.option("--scheduler", default=None, metavar="ADDRESS",
                     help="Run each unit as a task on the Dask cluster of this scheduler (tcp://host:8786) "
                          "instead of --workers; ROOT and --out must be at the same paths on every worker. "
                          "Needs pip install \"affbench[dask]\"."),
        click.option("--device", default="auto", show_default=True,
                     help="Where MTCNN runs: auto (CUDA when available), cpu or cuda[:N]."),
        click.option("--rows-per-shard", default=1000, show_default=True, type=click.IntRange(1),
                     help="Rows per Parquet shard file."),
        click.option("--quiet", is_flag=True,
                     help="No progress display (by default a bar on a terminal, a line every 30 s in a log)."),
    ]
    return options + [_dataset_option(option) for option in spec.options]


def _dataset_option(option: OptionSpec):
    if option.choices:
        kind: Any = click.Choice(list(option.choices))
    elif option.integer:
        kind = click.IntRange(1, 4096)
    elif option.path:
        kind = click.Path(path_type=Path)
    else:
        kind = str
    return click.option(option.flag, option.name, default=option.default, show_default=option.default is not None,
                        type=kind, help=option.help)


def _prepare_command(spec: DatasetSpec) -> click.Command:
    def command(root: Path, out: Path, workers: int | str, scheduler: str | None, quiet: bool, **options: Any) -> None:
        from affbench.pipelines import prepare_dataset

        if not spec.uses_device:
            options.pop("device")
        report = prepare_dataset(spec.name, root, out, options, workers=workers, progress=not quiet,
                                 scheduler=scheduler)
        _echo_lines(report.lines)
        if report.warning:
            click.echo(report.warning, err=True)
        sys.exit(report.exit_code)

    command.__doc__ = spec.help
    for option in reversed(_common_prepare_options(spec)):
        command = option(command)
    return click.command(spec.name)(command)


for _spec in DATASETS.values():
    prepare.add_command(_prepare_command(_spec))


# ----------------------------------------------------------------------------------------- sample data


@app.command("sample-data")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--datasets", "names", default="disfa,bp4d,caer-s,affwild2", show_default=True,
              help="Comma-separated datasets to generate.")
@click.option("--frames", default=None, type=click.IntRange(4, 10000),
              help="Frames per DISFA video / BP4D task / Aff-Wild2 video (default: small demo size).")
def sample_data(directory: Path, names: str, frames: int | None) -> None:
    """Write small, deterministic datasets in the exact on-disk layouts of DISFA, BP4D, CAER-S and Aff-Wild2.

    The faces are real (scikit-image's astronaut photograph and LFW crops), moved, rotated and
    scaled frame by frame, so that MTCNN must find and align them; a few frames and images have
    no face. Labels follow the documented pattern in affbench.pipelines.sample_data.
    """
    from affbench.pipelines import sample_data as generator

    chosen = [n.strip() for n in names.split(",") if n.strip()]
    written = generator.write_sample_data(directory, datasets=chosen, frames=frames)
    for name, root in written.items():
        click.echo(f"{name:9s} {root}")


# ----------------------------------------------------------------------------------------- benchmark


@app.command("run-benchmark")
@click.option("--suite", required=True, help="A suite name (see `affbench list suites`) or a suite TOML file.")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Folder holding the prepared datasets (one sub-folder per dataset).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Run folder for results, checkpoints and plots; re-use it to resume.")
@click.option("--encoders", default=None, help="Comma-separated encoders to run (and what they start from).")
@click.option("--folds", default=None, help="Comma-separated folds to run, e.g. 1 or 1,3.")
@click.option("--epochs", default=None, type=click.IntRange(1), help="Override every experiment's epochs.")
@click.option("--max-steps", default=None, type=click.IntRange(1),
              help="At most this many training steps per epoch (quick runs).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when available), cpu or cuda[:N].")
@click.option("--workers", "num_workers", default=None, type=click.IntRange(0, 256),
              help="DataLoader worker processes per job (default: chosen by device).")
@click.option("--decoded-cache/--no-decoded-cache", default=True, show_default=True,
              help="Read crops from a decoded cache beside each dataset's shards (built once, rebuilt when the "
                   "shards change) instead of decoding PNG every epoch.")
@click.option("--plots/--no-plots", default=None,
              help="Write training curves, per-label bars and the paper comparison (default: when matplotlib is installed).")
@click.option("--quiet", is_flag=True,
              help="Only the final tables: no progress display and no per-job or per-epoch lines.")
@click.option("--weights", default=None, type=click.Path(path_type=Path),
              help="Folder where the released files of [experiment.published] are read (relative paths; "
                   "default: the current folder).")
@click.option("--list-jobs", is_flag=True,
              help="Print the ids of the jobs, one a line, in dependency order, and train nothing.")
@click.option("--job", "job", default=None, metavar="ID",
              help="Run only this job (an id from --list-jobs with the same options), e.g. one task of a job array.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run the jobs on the Dask cluster of this scheduler (tcp://host:8786), each after the job it "
                   "starts from. A worker runs one job at a time per thread: a worker is one GPU, so start one per "
                   "GPU with `CUDA_VISIBLE_DEVICES=N dask worker ADDRESS --nthreads 1`. --data and --out must be "
                   "at the same paths on every worker. Needs pip install \"affbench[dask]\".")
def run_benchmark(suite: str, data: Path, out: Path, encoders: str | None, folds: str | None, epochs: int | None,
                  max_steps: int | None, device: str, num_workers: int | None, decoded_cache: bool, plots: bool | None,
                  quiet: bool, weights: Path | None, list_jobs: bool, job: str | None, scheduler: str | None) -> None:
    """Train and score every encoder variant of a suite under the datasets' standard protocols.

    \b
    Each (dataset, task, encoder, fold) cell writes one record under OUT/results/; checkpoints
    live in OUT/jobs/. Run the same command again after an interruption: finished cells are
    skipped and an unfinished one continues from its last finished epoch. Any number of
    processes may run the same command into one OUT at once: each job trains in one of them.
    """
    _quiet_openmp()
    from affbench.benchmarks.cluster_jobs import run_suite
    from affbench.benchmarks.plan import list_jobs as plan_jobs
    from affbench.reporting.export import suite_markdown
    from affbench.reporting.plots import plot_run_if_wanted

    narrowing: dict[str, Any] = dict(encoders=_split_names(encoders), folds=_split_folds(folds), epochs=epochs,
                                     max_steps=max_steps, weights=weights)
    if list_jobs:
        _echo_lines(plan_jobs(suite, data, **narrowing))
        return
    report = run_suite(suite, data, out, scheduler=scheduler, job=job, device=device, num_workers=num_workers,
                       decoded_cache=decoded_cache, progress=not quiet,
                       log=(lambda _: None) if quiet else click.echo, **narrowing)
    if not report.is_main:
        return  # under torchrun, rank 0 reports
    click.echo(f"{report.cells_total} cell(s): {report.cells_skipped} already finished, "
               f"{report.cells_written} written, in {report.seconds:.1f} s.")
    _echo_lines(f"note: {note}" for note in report.notes)
    markdown, records = suite_markdown(out, report.suite)
    click.echo("")
    click.echo(markdown)
    _echo_lines(plot_run_if_wanted(out, records, plots))


def _split_names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def _split_folds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise AffbenchError(f"--folds takes comma-separated fold numbers such as 1,2; got {text!r}.") from None


@app.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--csv", "csv_path", required=True, type=click.Path(path_type=Path), help="CSV file to write.")
@click.option("--wide/--long", default=False, show_default=True,
              help="Also write the paper-style tables (one CSV per dataset and task, and tables.md) into "
                   "CSV_STEM-tables/; the tidy long CSV is always written.")
@click.option("--latex", is_flag=True, help="Also write the paper-style tables as LaTeX (tables.tex; implies --wide).")
@click.option("--plots/--no-plots", default=None,
              help="Write training curves, per-label bars and the paper comparison into RUN_DIR/plots "
                   "(default: when matplotlib is installed).")
@click.option("--force", is_flag=True, default=False,
              help="Replace --csv even when it is not an earlier affbench export.")
def export(run_dir: Path, csv_path: Path, wide: bool, latex: bool, plots: bool | None, force: bool) -> None:
    """Export a run folder's results: a tidy CSV (one row per value, with provenance), the published
    numbers beside affbench's (CSV_STEM-vs-paper.csv, when the suites declare them) and, with --wide
    or --latex, paper-style tables. The headline tables are printed as Markdown.

    An existing --csv file is replaced only when it is an earlier affbench export, unless --force
    is given.
    """
    from affbench.reporting.export import SCHEMA_VERSION
    from affbench.reporting.export import export as export_run
    from affbench.reporting.plots import plot_run_if_wanted
    from affbench.reporting.records import load_records

    exported = export_run(run_dir, csv_path, wide=wide, latex=latex, force=force)
    click.echo(exported.markdown)
    click.echo("")
    click.echo(f"{len(exported.long)} row(s) written to {csv_path} (tidy long format, schema {SCHEMA_VERSION}).")
    _echo_lines(f"written: {path}" for path in exported.written[1:])
    _echo_lines(plot_run_if_wanted(run_dir, load_records(run_dir), plots))


def _bootstrap_settings(resamples: int | None, level: float | None, seed: int | None):
    from affbench.scoring.bootstrap import BootstrapSettings

    return BootstrapSettings.from_options(resamples=resamples, level=level, seed=seed)


_INTERVAL_OPTIONS = [
    click.option("--resamples", type=int, default=None, help="Bootstrap resamples (default: the records' own, 2000)."),
    click.option("--level", type=float, default=None, help="Confidence level (default: the records' own, 0.95)."),
    click.option("--seed", type=int, default=None, help="Bootstrap seed (default: the records' own, 0)."),
]


def _interval_options(command):
    for option in reversed(_INTERVAL_OPTIONS):
        command = option(command)
    return command


@app.command("rescore")
@click.argument("run_dir", type=click.Path(path_type=Path))
@_interval_options
def rescore(run_dir: Path, resamples: int | None, level: float | None, seed: int | None) -> None:
    """Recompute every result record of RUN_DIR (metrics, confidence intervals and the trivial
    baselines' ones, the protocol and metric versions) from the test outputs each cell kept, without
    running a model; say which records changed and print the tables. Run export again to rewrite the
    CSV files.
    """
    from affbench.reporting.rescore import rescore as rescore_run

    report = rescore_run(run_dir, settings=_bootstrap_settings(resamples, level, seed))
    click.echo(report.markdown)
    click.echo("")
    _echo_lines(report.lines())


@app.command("compare")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("cell_a")
@click.argument("cell_b")
@click.option("--metric", default=None, help="Metric to compare, e.g. f1 or f1/au6 (default: the task's primary).")
@click.option("--csv", "csv_path", default=None, type=click.Path(path_type=Path),
              help="Also write the comparison as a one-row CSV file.")
@click.option("--force", is_flag=True, default=False,
              help="Replace --csv even when it is not an earlier affbench export.")
@_interval_options
def compare(run_dir: Path, cell_a: str, cell_b: str, metric: str | None, csv_path: Path | None, force: bool,
            resamples: int | None, level: float | None, seed: int | None) -> None:
    """Compare two cells of RUN_DIR scored on the same test rows: the difference A - B, its paired
    cluster-bootstrap interval and a p-value from a paired permutation test over clusters (subjects,
    videos). A cell is SUITE/DATASET/TASK/ENCODER (all its folds, averaged as the protocol does) or
    SUITE/DATASET/TASK/ENCODER/foldK.
    """
    from affbench.reporting.compare import compare_cells

    found = compare_cells(run_dir, cell_a, cell_b, metric=metric, csv_path=csv_path, force=force,
                          settings=_bootstrap_settings(resamples, level, seed))
    _echo_lines(found.lines())
    if csv_path is not None:
        click.echo(f"written: {csv_path}")


# ----------------------------------------------------------------------------------------- models


@app.command("export-model")
@click.argument("job_dir", required=False, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Model file to write (e.g. model.pt).")
@click.option("--published", default=None, metavar="TAG",
              help="Wrap a released checkpoint by its tag (see `affbench list models`); give the file with --pretrained.")
@click.option("--encoder", default=None, help="Wrap another checkpoint instead: the encoder it loads into.")
@click.option("--pretrained", default=None, type=click.Path(path_type=Path),
              help="With --published or --encoder: the checkpoint file (what pretrained=PATH reads).")
@click.option("--labels", default=None,
              help="With --encoder: comma-separated names of its outputs, in order (au1,au2,... or class names).")
@click.option("--option", "options", multiple=True, help="With --encoder: an encoder option KEY=VALUE (repeatable).")
@click.option("--crop-size", default=256, show_default=True, type=click.IntRange(16, 1024),
              help="With --encoder: side of the aligned face crop fed to the model's framing.")
@click.option("--eval-crop", default=1.0, show_default=True, type=click.FloatRange(0.1, 1.0),
              help="With --encoder: centre fraction of the crop kept before resizing to the input size.")
@click.option("--format", "format_", type=click.Choice(["pt", "onnx"]), default="pt", show_default=True,
              help="pt: a PyTorch model file; onnx: an ONNX model with the description in its metadata, for "
                   "onnxruntime (needs pip install \"affbench[onnx]\").")
@click.option("--force", is_flag=True, default=False,
              help="Replace --out even when it is not an earlier affbench model file.")
def export_model(job_dir: Path | None, out: Path, published: str | None, encoder: str | None, pretrained: Path | None,
                 labels: str | None, options: tuple[str, ...], crop_size: int, eval_crop: float, format_: str,
                 force: bool) -> None:
    """Write a finished job's model as one self-describing file (RUNDIR/jobs/<job> -> model.pt).

    \b
    The file holds the weights and what inference needs: encoder and options, tasks with label
    names, the alignment template and crop size, normalisation, initialisation and test metrics.
    It loads with torch.load(path, weights_only=True); use it with `affbench predict` or
    affbench.load_model(path). A released checkpoint is wrapped by its tag (affbench list models),
    which gives its encoder, labels and framing; any other checkpoint once you name its outputs:
      affbench export-model --published megraph-au/resnet50-disfa-fold1 \\
          --pretrained MEFARG_resnet50_DISFA_fold1.pth --out megraph-disfa.pt
      affbench export-model --encoder megraph-au --pretrained my_megraph.pth \\
          --labels au1,au2,au4,au6,au9,au12,au25,au26 --eval-crop 0.875 --out mine.pt
    """
    from affbench.inference.bundle import export_model as export

    path, description = export(out, job_dir, published=published, encoder=encoder, pretrained=pretrained,
                               labels=labels.split(",") if labels else None, options=_parse_options(options),
                               crop_size=crop_size, eval_crop=eval_crop, format=format_, force=force)
    _echo_lines(description.summary_lines())
    click.echo(f"model file: {path}")


def _parse_options(pairs: tuple[str, ...]) -> dict:
    """KEY=VALUE pairs; values read as TOML scalars (numbers, true/false, "strings"), else as text."""
    import tomllib

    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise AffbenchError(f"--option takes KEY=VALUE, got {pair!r}.")
        try:
            parsed[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            parsed[key.strip()] = value.strip()
    return parsed


@app.command("predict")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Table to write: FILE.csv or FILE.parquet (one row per frame or image).")
@click.option("--model", "-m", "more_models", multiple=True, type=click.Path(path_type=Path),
              help="Another model file whose columns are added side by side (repeatable).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when available), cpu or cuda[:N].")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096),
              help="Frames per batch through the face pipeline and the model.")
@click.option("--plot", is_flag=True, help="Also write a timeline PNG per video beside --out (needs matplotlib).")
@click.option("--no-fill-gaps", "no_fill_gaps", is_flag=True,
              help="Leave a video frame without a face unpredicted instead of cropping it from its neighbours in time.")
@click.option("--force", is_flag=True, default=False,
              help="Replace --out even when it is not an earlier affbench predictions table.")
def predict(model: Path, inputs: tuple[Path, ...], out: Path, more_models: tuple[Path, ...], device: str,
            batch_size: int, plot: bool, no_fill_gaps: bool, force: bool) -> None:
    """Run MODEL on videos, images or folders of them: one row per frame.

    MODEL is a model file from export-model (model.pt, or model.onnx run with onnxruntime), or a
    finished job folder RUNDIR/jobs/<job> (or its best.pt) as run-benchmark leaves it. An existing
    --out is replaced only when it is an earlier predictions table, unless --force is given.

    \b
    Every frame or image goes through the detection, tracking and alignment the model was trained
    on. Columns: source, frame, time (s), face_found, landmark_source, n_faces, det_score,
    box_x1..box_y2, then the predictions: AU12_c (presence probability), AU12_r (intensity),
    expression plus one probability column per class, valence, arousal. A video frame without a
    face keeps its row (face_found false) and is cropped from its neighbours in time, as prepare
    does (landmark_source interpolated or carried; --no-fill-gaps leaves it empty); an image
    without a face keeps its row with empty predictions. An interrupted run resumes: inputs already
    finished are not redone. Example:
      affbench predict model.pt interview.mp4 photos/ --out predictions.csv --plot
    """
    _quiet_openmp()
    from affbench.inference.predict import predict_to_file

    run = predict_to_file([model, *more_models], inputs, out, device=device, batch_size=batch_size, plot=plot,
                          fill_gaps=not no_fill_gaps, progress=sys.stderr.isatty(), force=force,
                          on_model=lambda loaded: click.echo(f"model      {loaded!r}"))
    _echo_lines(f"note       {note}" for note in run.result.notes)
    click.echo(run.summary)
    _echo_lines(f"plot       {path}" for path in run.plots)
    if run.result.failures:
        _echo_lines((f"failed     {f['source']}: {f['reason']}" for f in run.result.failures), err=True)
        click.echo(f"{len(run.result.failures)} input(s) failed (listed above); every frame read and every image "
                   f"keeps its row in {out}.", err=True)
    sys.exit(run.exit_code)


# ----------------------------------------------------------------------------------------- demo


@app.command("demo")
@click.option("--out", default=Path("affbench-demo"), show_default=True, type=click.Path(path_type=Path),
              help="Folder for the sample data, prepared shards, run and CSV.")
@click.option("--device", default="cpu", show_default=True, help="Where the demo trains: cpu, auto or cuda.")
def demo(out: Path, device: str) -> None:
    """Run everything on generated sample data: sample-data, prepare, benchmark, export.

    \b
    Every encoder variant is trained on tiny sample datasets (real faces, exact dataset layouts):
    most for two steps, so their numbers mean nothing beyond the whole path working; EmotiRAM-f
    trains long enough on CAER-S to beat chance clearly. Re-running resumes: finished steps are
    skipped.
    """
    import time

    _quiet_openmp()
    from affbench.benchmarks.harness import run_benchmark as run
    from affbench.pipelines import prepare_dataset
    from affbench.pipelines import sample_data as generator
    from affbench.reporting.compare import compare_cells
    from affbench.reporting.export import export as export_run
    from affbench.reporting.plots import plot_run_if_wanted
    from affbench.reporting.records import load_records

    if out.exists() and not out.is_dir():
        raise AffbenchError(f"--out {out} is a file; give a folder for the demo's data and results.")
    started = time.perf_counter()
    raw, prepared, run_dir = out / "raw", out / "prepared", out / "run"
    written = generator.write_sample_data(raw)
    for name, root in written.items():
        click.echo(f"sample data  {name:9s} {root}")
    import torch

    threads = torch.get_num_threads()
    for name in DATASETS:
        spec = DATASETS[name]
        options = {"device": "cpu" if device == "cpu" else "auto"} if spec.uses_device else {}
        summary = prepare_dataset(name, written[name], prepared / name, options, progress=True).summary
        click.echo(f"prepared     {name:9s} {prepared / name}  ({summary.rows} new rows, "
                   f"{summary.units_skipped} unit(s) already done)")
    torch.set_num_threads(threads)  # a pipeline may narrow it for its detector; training wants them all
    click.echo(f"prepared     {prepared}  ({time.perf_counter() - started:.0f} s so far)")
    report = run("demo", prepared, run_dir, device=device, log=click.echo)
    csv_path = out / "demo-results.csv"
    exported = export_run(run_dir, csv_path, wide=True, latex=True)
    click.echo("")
    click.echo(exported.markdown)
    click.echo("")
    click.echo(f"{report.cells_total} cells ({report.cells_skipped} already finished); tidy CSV {csv_path}, "
               f"tables in {csv_path.with_name(csv_path.stem + '-tables')}; run folder {run_dir}")
    _echo_lines(plot_run_if_wanted(run_dir, load_records(run_dir), None))
    comparison_csv = out / "demo-comparison.csv"
    click.echo("")
    _echo_lines(compare_cells(run_dir, *_DEMO_COMPARISON, csv_path=comparison_csv).lines())
    click.echo(f"comparison written to {comparison_csv}")
    _demo_predict(run_dir, written["disfa"], out, device)
    click.echo(f"demo finished in {time.perf_counter() - started:.0f} s")


#: The demo's paired comparison: the thesis' claim (EmotiRAM-FAU against EmotiRAM-f on CAER-S), here
#: on the sample data with tiny models, to show the command working.
_DEMO_COMPARISON = ("demo/caer-s/expression/emotiram-fau", "demo/caer-s/expression/emotiram-f")

#: The demo's model that runs on a sample video at the end (experiment id, model file name): small
#: enough to keep that step to seconds, and it predicts AUs, expression and valence/arousal at once.
_DEMO_MODEL = ("smm", "smm-affwild2.pt")


def _demo_predict(run_dir: Path, disfa_root: Path, out: Path, device: str) -> None:
    """Export the demo's kept multi-task model and run `affbench predict` with it on a sample video."""
    import pandas as pd

    from affbench.inference.bundle import export_job
    from affbench.inference.predict import load_model, predict_table, write_plots, write_table
    from affbench.runtime.run_folder import RunFolder

    experiment, name = _DEMO_MODEL
    job = RunFolder(run_dir).job_of_experiment(experiment)
    path = out / "models" / name
    if job is not None and (not path.is_file() or path.stat().st_mtime < job.weights.stat().st_mtime):
        export_job(job.path, path)
    model = load_model(path, device="cpu" if device == "cpu" else "auto")
    video = disfa_root / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi"
    table_path = out / "demo-predictions.csv"
    result = predict_table([model], [video], progress=sys.stderr.isatty())
    write_table(result.table, table_path)
    click.echo("")
    click.echo(f"$ affbench predict {path} {video} --out {table_path} --plot")
    shown = ["frame", "time", "face_found", "landmark_source", "AU06_c", "AU12_c", "expression", "happiness",
             "valence", "arousal"]
    with pd.option_context("display.width", 120, "display.max_columns", 20, "display.precision", 3):
        click.echo(result.table[[c for c in shown if c in result.table.columns]].head(6).to_string(index=False))
    click.echo(f"{len(result.table)} frames ({int(result.table['face_found'].sum())} with a face), "
               f"{len(result.table.columns)} columns in {table_path}")
    try:
        _echo_lines(f"timeline plot {png}" for png in write_plots(result, table_path))
    except AffbenchError:
        pass  # no matplotlib: the run's plots said so already


# ----------------------------------------------------------------------------------------- list


@app.command("list")
@click.argument("what", type=click.Choice(["datasets", "encoders", "models", "suites", "metrics"]))
def list_(what: str) -> None:
    """List what affbench knows: datasets, encoders, published models (by tag), suites or metrics."""
    if what == "datasets":
        _echo_lines(f"{spec.name:10s} {spec.description}" for spec in DATASETS.values())
    elif what == "metrics":
        from affbench.scoring.registry import list_metrics

        click.echo(f"{'name':16s} {'better':7s} {'task kinds':28s} description")
        for metric in list_metrics():
            better = "higher" if metric.higher_is_better else "lower"
            click.echo(f"{metric.name:16s} {better:7s} {', '.join(metric.task_kinds):28s} {metric.description}")
    elif what == "encoders":
        from affbench.encoders.registry import count_parameters, encoder_options, get_encoder_spec, list_encoders

        click.echo(f"{'name':22s} {'family':10s} {'input':>5s}  {'heads':36s} {'params':>12s}")
        for name in list_encoders():
            encoder = get_encoder_spec(name)
            heads = " ".join(f"{key}={size}" for key, size in encoder.heads.items())
            click.echo(f"{name:22s} {encoder.family:10s} {encoder.input_size:5d}  {heads:36s} "
                       f"{count_parameters(name):12,d}")
            options = ", ".join(f"{key}={value!r}" for key, value in encoder_options(name).items())
            click.echo(textwrap.fill(options, width=100, initial_indent="    options: ", subsequent_indent=" " * 13))
    elif what == "models":
        from affbench.encoders.published import describe_published, list_published

        for tag in list_published():
            _echo_lines(describe_published(tag))
    else:
        from affbench.benchmarks.suite import list_suites

        _echo_lines(f"{name:12s} {description}" for name, description, _ in list_suites())


def main(argv: list[str] | None = None) -> None:
    app.main(args=argv, prog_name="affbench")


if __name__ == "__main__":
    main()
