"""The ``affbench`` command line: parses options and calls the library, nothing more.

Installed as ``affbench.cli`` (see setup.py). Imports of torch and friends happen inside the
commands so that ``affbench --help`` answers at once.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import click

from affbench import __version__
from affbench.errors import AffbenchError

# The shared prepare options, declared once.
_CODECS = click.Choice(["png", "jpeg", "webp"])


# What the file system says, in one sentence; the user can fix each of these (the rest are bugs
# and keep their tracebacks).
_OS_ERRORS = {
    errno.ENOSPC: "No space left on the device while writing {path}; free some space and run the same command "
                  "again (finished work is kept).",
    errno.EDQUOT: "The disk quota is exceeded while writing {path}; free some space and run the same command again "
                  "(finished work is kept).",
    errno.EROFS: "{path} is on a read-only file system; choose an output folder you can write to.",
    errno.EACCES: "Permission denied for {path}; change its permissions or choose a path you may use.",
    errno.EPERM: "Operation not permitted on {path}; change its permissions or choose a path you may use.",
    errno.ENOTDIR: "{path} is not a folder: a part of that path is a file.",
    errno.EISDIR: "{path} is a folder where a file was expected; give a file name.",
    errno.EEXIST: "{path} already exists and is not a folder; give another path.",
    errno.ENAMETOOLONG: "The file name {path} is too long for the file system.",
}


def os_error_sentence(exc: OSError) -> str | None:
    """The one sentence for a file-system error the user can fix, naming the path; None for others."""
    template = _OS_ERRORS.get(exc.errno)
    if template is None:
        return None
    path = exc.filename if exc.filename is not None else "a file"
    return template.format(path=os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else path)


class _AffbenchGroup(click.Group):
    """Turns the errors a user can cause into one sentence and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context):
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


@click.group(cls=_AffbenchGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="affbench")
def app() -> None:
    """affbench: prepare facial-affect datasets, train and score encoders, export result tables.

    \b
    Typical use:
      affbench prepare disfa /data/DISFA --out prepared/disfa
      affbench run-benchmark --suite disfa-au --data prepared --out runs/disfa-au
      affbench export runs/disfa-au --csv disfa-au.csv --wide
    Try it end to end on generated sample data with `affbench demo`.
    """


# ----------------------------------------------------------------------------------------- prepare


@app.group(cls=_AffbenchGroup)
def prepare() -> None:
    """Detect, align and crop faces from a raw dataset into Parquet shards with a manifest.

    Re-running the same command resumes: finished units (videos, image folders) are skipped unless
    their input files changed or they listed failures, and a run with different preprocessing
    options into the same --out folder, or while another run works in it, is refused.
    """


def _prepare_options(
    default_size: int,
    default_codec: str = "png",
    codec_help: str = "Image codec of the stored crops (PNG is lossless).",
):
    def decorate(fn):
        options = [
            click.argument("root", type=click.Path(path_type=Path)),
            click.option("--out", "out", required=True, type=click.Path(path_type=Path),
                         help="Output folder for manifest.json and shards/ (created if missing)."),
            click.option("--size", default=default_size, show_default=True, type=click.IntRange(16, 1024),
                         help="Side of the square face crop in pixels."),
            click.option("--codec", default=default_codec, show_default=True, type=_CODECS, help=codec_help),
            click.option("--quality", default=95, show_default=True, type=click.IntRange(1, 100),
                         help="JPEG/WebP quality; ignored for PNG."),
            click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
                         help="Parallel worker processes (joblib), one unit of work each."),
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
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


@prepare.command("disfa")
@_prepare_options(default_size=256)
@click.option("--camera", default="left", show_default=True, type=click.Choice(["left", "right", "both"]),
              help="Which camera's videos to prepare (right-camera sample ids carry '/right/').")
@click.option("--tracking", default="on", show_default=True, type=click.Choice(["on", "off"]),
              help="on: track the face with O-Net, every tracked frame verified by full detections; "
                   "off: the full MTCNN cascade on every frame (slower, the reference).")
def prepare_disfa(root: Path, out: Path, camera: str, size: int, codec: str, quality: int, workers: int,
                  scheduler: str | None, device: str, rows_per_shard: int, quiet: bool, tracking: str) -> None:
    """DISFA: every left-camera frame, MTCNN-aligned, 256x256 crops, 12 AU intensities joined.

    ROOT holds Videos_LeftCamera/, Video_RightCamera/ and ActionUnit_Labels/ as distributed. Every
    frame becomes one row, joined to the AU label files by line order; a frame where no face is
    found gets a fallback crop from its neighbours in time (face_found=false, landmark_source
    interpolated or carried). Videos that cannot be read or are truncated are listed in manifest.json's
    failures and make the command exit non-zero once the other videos are done. Each video runs
    in one process with one PyTorch thread: use --workers N to keep N cores busy.
    """
    from affbench.face_tracking import TrackerSettings
    from affbench.pipelines import disfa

    settings = disfa.PrepareSettings(size=size, codec=codec, quality=quality, device=device,
                                     rows_per_shard=rows_per_shard,
                                     tracker=TrackerSettings(tracking=tracking == "on"))
    with _cluster(scheduler) as client:
        summary = disfa.prepare(root, out, camera=camera, settings=settings, workers=workers, progress=not quiet,
                                scheduler=client)
    _finish_prepare(summary, out, "frames", notes=lambda manifest: [
        f"length mismatch: {line}" for line in disfa.length_mismatches(manifest)])


def _cluster(scheduler: str | None):
    """A Dask client for --scheduler (connected before any work, so a wrong address is said at
    once), or None for a local run."""
    from contextlib import nullcontext

    if scheduler is None:
        return nullcontext(None)
    from affbench import cluster

    return cluster.session(scheduler)


def _finish_prepare(summary, out: Path, item: str, notes=None) -> None:
    """Print the run summary (and the dataset's ``notes(manifest)`` lines); exit non-zero while the
    output folder lists any failure."""
    from affbench.shards import read_manifest

    for line in summary.lines(item):
        click.echo(line)
    manifest = read_manifest(out)
    for line in notes(manifest) if notes else []:
        click.echo(line)
    click.echo(f"manifest: {out / 'manifest.json'}")
    totals = manifest["totals"]
    if totals["failures"] or totals["units_failed"]:
        earlier = totals["failures"] - len(summary.failures)
        note = f" ({earlier} from earlier runs)" if earlier > 0 else ""
        click.echo(
            f"{out / 'manifest.json'} lists {totals['failures']} failure(s){note}: "
            "see its 'failures'; the units they belong to are redone when the same command is run again.",
            err=True,
        )
        sys.exit(1)


@prepare.command("bp4d")
@_prepare_options(default_size=256)
def prepare_bp4d(root: Path, out: Path, size: int, codec: str, quality: int, workers: int, scheduler: str | None,
                 device: str, rows_per_shard: int, quiet: bool) -> None:
    """BP4D-Spontaneous: every coded frame, MTCNN-aligned (tracked per task), 256x256 crops.

    ROOT holds <subject>/<task>/<frame>.jpg and AUCoding/AU_OCC/<subject>_<task>.csv (found within
    a few folder levels), and, where the copy has them, the FERA 2015 intensity codes in
    AUCoding/AU_INT/AU06/<subject>_<task>_AU06.csv (AU6, 10, 12, 14, 17). One row per coded frame
    with the 12 protocol AUs (9 = unknown stored as -1); frames without codes are counted, not
    stored. A missing or unreadable coded image keeps its row without a face and is listed in the
    manifest's failures. One (subject, task) per process: use --workers N to keep N cores busy.
    """
    from affbench.pipelines import bp4d

    settings = bp4d.PrepareSettings(size=size, codec=codec, quality=quality, device=device,
                                    rows_per_shard=rows_per_shard)
    with _cluster(scheduler) as client:
        summary = bp4d.prepare(root, out, settings=settings, workers=workers, progress=not quiet, scheduler=client)
    _finish_prepare(summary, out, "frames", notes=lambda manifest: [
        f"frames without codes (not stored): {bp4d.uncoded_frames(manifest)}"])


@prepare.command("caer-s")
@_prepare_options(default_size=96)
@click.option("--select", default="largest", show_default=True, type=click.Choice(["largest", "prob"]),
              help="Which face to keep where MTCNN finds several: the largest box or the most confident, "
                   "each only by a clear margin; near-ties go to the face nearest the image centre "
                   "(n_faces records how many there were).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 4096),
              help="Images of one size per MTCNN call (recorded in the manifest); larger batches pay off on a GPU.")
def prepare_caer_s(root: Path, out: Path, size: int, codec: str, quality: int, workers: int, scheduler: str | None,
                   device: str, rows_per_shard: int, quiet: bool, select: str, batch_size: int) -> None:
    """CAER-S: every image under train/ and test/, MTCNN-aligned, 96x96 face crops, 7 classes.

    ROOT holds train/<Class>/NNNN.png and test/<Class>/NNNN.png as distributed (the anger folder is
    Angry in train and Anger in test; both are class 0). Every image becomes one row; images
    without a face keep their row with face_found false, and unreadable images are listed in the
    manifest's failures (the command then exits with status 1). The face box and landmarks are
    kept in source pixels for context crops. The validation split is made at load time.
    """
    from affbench.faces import DetectorSettings
    from affbench.pipelines import caer_s

    with _cluster(scheduler) as client:
        summary = caer_s.prepare(root, out, size=size, codec=codec, quality=quality, select=select,
                                 detector=DetectorSettings(batch_size=batch_size), device=device,
                                 workers=workers, rows_per_shard=rows_per_shard, progress=not quiet,
                                 scheduler=client)
    _finish_prepare(summary, out, "images")


@prepare.command("affwild2")
@_prepare_options(default_size=112, default_codec="jpeg",
                  codec_help="Image codec; jpeg at --size 112 stores the challenge's JPEG bytes unchanged.")
@click.option("--annotations", type=click.Path(path_type=Path), default=None,
              help="Folder holding the *_Challenge annotation folders, where they are not under ROOT.")
def prepare_affwild2(root: Path, out: Path, size: int, codec: str, quality: int, workers: int,
                     scheduler: str | None, device: str, rows_per_shard: int, quiet: bool,
                     annotations: Path | None) -> None:
    """Aff-Wild2 (ABAW3 release): the challenge's aligned 112x112 faces with AU, EXPR and VA labels.

    ROOT holds cropped_aligned/<video>/NNNNN.jpg and the three *_Challenge annotation folders (found
    anywhere under ROOT, or under --annotations). One row per annotated frame (00001.jpg is frame
    0), with per-task split columns split_au, split_expr and split_va. The faces are aligned
    already: no detector runs (--device is not used), and a frame without an image keeps its row
    with face_found false.
    """
    from affbench.pipelines import affwild2

    with _cluster(scheduler) as client:
        summary = affwild2.prepare(root, out, annotations=annotations, size=size, codec=codec, quality=quality,
                                   workers=workers, rows_per_shard=rows_per_shard, progress=not quiet,
                                   scheduler=client)
    _finish_prepare(summary, out, "frames")


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

    _require_folder(directory, "DIRECTORY")
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
                  quiet: bool, list_jobs: bool, job: str | None, scheduler: str | None) -> None:
    """Train and score every encoder variant of a suite under the datasets' standard protocols.

    \b
    Each (dataset, task, encoder, fold) cell writes one record under OUT/results/; checkpoints
    live in OUT/jobs/. Run the same command again after an interruption: finished cells are
    skipped and an unfinished one continues from its last finished epoch. Any number of
    processes may run the same command into one OUT at once: each job trains in one of them.
    """
    _quiet_openmp()
    from affbench import results, tables
    from affbench.benchmarks.harness import run_benchmark as run
    from affbench.benchmarks.plan import list_jobs as plan_jobs

    if list_jobs:
        for key in plan_jobs(suite, data, encoders=_split_names(encoders), folds=_split_folds(folds), epochs=epochs,
                             max_steps=max_steps):
            click.echo(key)
        return
    log = (lambda _: None) if quiet else click.echo
    if scheduler is not None:
        if job is not None:
            raise AffbenchError("--job runs one job in this process and --scheduler runs every job on a Dask cluster; "
                                "give one of them.")
        from affbench.benchmarks.cluster_jobs import run_on_cluster

        report = run_on_cluster(scheduler, suite, data, out, encoders=_split_names(encoders), folds=_split_folds(folds),
                                epochs=epochs, max_steps=max_steps, device=device, num_workers=num_workers,
                                decoded_cache=decoded_cache, log=log)
    else:
        report = run(
            suite, data, out,
            encoders=_split_names(encoders), folds=_split_folds(folds), epochs=epochs, max_steps=max_steps,
            device=device, num_workers=num_workers, progress=not quiet, log=log, decoded_cache=decoded_cache, job=job,
        )
    if not report.is_main:
        return  # under torchrun, rank 0 reports
    click.echo(f"{report.cells_total} cell(s): {report.cells_skipped} already finished, "
               f"{report.cells_written} written, in {report.seconds:.1f} s.")
    for note in report.notes:
        click.echo(f"note: {note}")
    records = results.load_records(out, suite=report.suite)
    click.echo("")
    click.echo(tables.markdown(tables.wide_tables(records, results.published_for(out, [report.suite]))))
    _maybe_plot(out, records, plots)


def _require_folder(path: Path, option: str) -> None:
    """An output path that exists must be a folder."""
    if path.exists() and not path.is_dir():
        raise AffbenchError(f"{option} {path} is a file, not a folder; give a folder.")


def _split_names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def _split_folds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise AffbenchError(f"--folds takes comma-separated fold numbers such as 1,2; got {text!r}.") from None


def _maybe_plot(run_dir: Path, records, plots: bool | None) -> None:
    """Plots when asked (an error without matplotlib), or by default when matplotlib is there."""
    from affbench import plots as plotting
    from affbench import results

    if plots is False or not records:  # no results, nothing to draw
        return
    try:
        written = plotting.plot_run(run_dir, records)
    except plotting.PlotsUnavailableError:
        if plots:
            raise
        click.echo("plots skipped: matplotlib is not installed (pip install 'affbench[plots]').")
        return
    click.echo(f"{len(written)} plot(s) in {run_dir / results.PLOTS_DIR}")


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
    from affbench import results

    exported = results.export(run_dir, csv_path, wide=wide, latex=latex, force=force)
    click.echo(exported.markdown)
    click.echo("")
    click.echo(f"{len(exported.long)} row(s) written to {csv_path} (tidy long format, schema {results.SCHEMA_VERSION}).")
    for path in exported.written[1:]:
        click.echo(f"written: {path}")
    _maybe_plot(run_dir, results.load_records(run_dir), plots)


# ----------------------------------------------------------------------------------------- models


@app.command("export-model")
@click.argument("job_dir", required=False, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Model file to write (e.g. model.pt).")
@click.option("--encoder", default=None, help="Wrap a published checkpoint instead: the encoder it loads into.")
@click.option("--pretrained", default=None, type=click.Path(path_type=Path),
              help="With --encoder: the checkpoint file (what the encoder's pretrained=PATH option reads).")
@click.option("--labels", default=None,
              help="With --encoder: comma-separated names of its outputs, in order (au1,au2,... or class names).")
@click.option("--option", "options", multiple=True, help="With --encoder: an encoder option KEY=VALUE (repeatable).")
@click.option("--crop-size", default=256, show_default=True, type=click.IntRange(16, 1024),
              help="With --encoder: side of the aligned face crop fed to the model's framing.")
@click.option("--eval-crop", default=1.0, show_default=True, type=click.FloatRange(0.1, 1.0),
              help="With --encoder: centre fraction of the crop kept before resizing to the input size.")
def export_model(job_dir: Path | None, out: Path, encoder: str | None, pretrained: Path | None, labels: str | None,
                 options: tuple[str, ...], crop_size: int, eval_crop: float) -> None:
    """Write a finished job's model as one self-describing file (RUNDIR/jobs/<job> -> model.pt).

    \b
    The file holds the weights and what inference needs: encoder and options, tasks with label
    names, the alignment template and crop size, normalisation, initialisation and test metrics.
    It loads with torch.load(path, weights_only=True); use it with `affbench predict` or
    affbench.load_model(path). A published checkpoint is wrapped the same way when you name its
    outputs, e.g.:
      affbench export-model --encoder megraph-au --pretrained MEFARG_resnet50_DISFA_fold1.pth \\
          --labels au1,au2,au4,au6,au9,au12,au25,au26 --eval-crop 0.875 --out megraph-disfa.pt
    """
    from affbench.bundle import export_job, save_model_file, wrap_checkpoint

    if encoder is None:
        if job_dir is None or pretrained or labels or options:
            raise AffbenchError("Give a job folder (RUNDIR/jobs/<job>), or --encoder with --pretrained and --labels "
                                "to wrap a published checkpoint.")
        path, description = export_job(job_dir, out)
    else:
        if job_dir is not None or pretrained is None or not labels:
            raise AffbenchError("--encoder wraps a published checkpoint: give --pretrained PATH and --labels, "
                                "and no job folder.")
        description, state = wrap_checkpoint(encoder, pretrained, labels.split(","), options=_parse_options(options),
                                             crop_size=crop_size, eval_crop=eval_crop)
        path = save_model_file(out, description, state)
    for line in _describe_model(description):
        click.echo(line)
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


def _describe_model(description) -> list[str]:
    lines = [f"model      {description.name}: {description.encoder} "
             f"(input {description.encoder_spec.get('input_size')}, crop {description.crop_size})"]
    for task in description.tasks:
        lines.append(f"task       {task.name} ({task.kind}): {', '.join(task.label_names)}")
    for task, values in description.metrics.items():
        shown = ", ".join(f"{k} {v:.3f}" for k, v in values.items() if isinstance(v, float) and "/" not in k)
        lines.append(f"test       {task}: {shown}")
    lines += [f"note       {note}" for note in description.notes]
    return lines


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
def predict(model: Path, inputs: tuple[Path, ...], out: Path, more_models: tuple[Path, ...], device: str,
            batch_size: int, plot: bool, no_fill_gaps: bool) -> None:
    """Run MODEL (from export-model) on videos, images or folders of them: one row per frame.

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
    import shutil

    from affbench import predict as inference

    inference.check_output_path(out)
    inference.collect_inputs(inputs)  # a wrong input is said before the models load
    if plot:
        from affbench.plots import _pyplot

        _pyplot()  # a missing matplotlib is said before the work, not after it
    models = [inference.load_model(path, device=device, batch_size=batch_size) for path in (model, *more_models)]
    for loaded in models:
        click.echo(f"model      {loaded!r}")
    parts = inference.resume_folder(out)  # finished inputs are kept there until the table is written
    result = inference.predict_table(models, inputs, progress=sys.stderr.isatty(), batch_size=batch_size,
                                     resume=parts, fill_gaps=not no_fill_gaps)
    inference.write_table(result.table, out)
    shutil.rmtree(parts, ignore_errors=True)
    for note in result.notes:
        click.echo(f"note       {note}")
    table = result.table
    from affbench.shards import FALLBACK_SOURCES

    filled = int(table["landmark_source"].isin(FALLBACK_SOURCES).sum())
    click.echo(f"{len(table)} row(s), {int(table['face_found'].sum())} with a face"
               f"{f' ({filled} more cropped from their neighbours)' if filled else ''}, from "
               f"{table['source'].nunique()} source(s) written to {out}")
    if plot:
        for path in inference.write_plots(result, out):
            click.echo(f"plot       {path}")
    if result.failures:
        for failure in result.failures:
            click.echo(f"failed     {failure['source']}: {failure['reason']}", err=True)
        click.echo(f"{len(result.failures)} input(s) failed (listed above); every frame read and every image "
                   f"keeps its row in {out}.", err=True)
        sys.exit(1)


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
    from affbench import results
    from affbench.benchmarks.harness import run_benchmark as run
    from affbench.pipelines import sample_data as generator

    started = time.perf_counter()
    raw, prepared, run_dir = out / "raw", out / "prepared", out / "run"
    written = generator.write_sample_data(raw)
    for name, root in written.items():
        click.echo(f"sample data  {name:9s} {root}")
    import torch

    threads = torch.get_num_threads()
    for name in ("disfa", "bp4d", "caer-s", "affwild2"):
        _demo_prepare(name, written[name], prepared / name, device)
    torch.set_num_threads(threads)  # a pipeline may narrow it for its detector; training wants them all
    click.echo(f"prepared     {prepared}  ({time.perf_counter() - started:.0f} s so far)")
    report = run("demo", prepared, run_dir, device=device, log=click.echo)
    csv_path = out / "demo-results.csv"
    exported = results.export(run_dir, csv_path, wide=True, latex=True)
    click.echo("")
    click.echo(exported.markdown)
    click.echo("")
    click.echo(f"{report.cells_total} cells ({report.cells_skipped} already finished); tidy CSV {csv_path}, "
               f"tables in {csv_path.with_name(csv_path.stem + '-tables')}; run folder {run_dir}")
    _maybe_plot(run_dir, results.load_records(run_dir), None)
    _demo_predict(run_dir, written["disfa"], out, device)
    click.echo(f"demo finished in {time.perf_counter() - started:.0f} s")


#: The demo's model that runs on a sample video at the end (experiment id, model file name): small
#: enough to keep that step to seconds, and it predicts AUs, expression and valence/arousal at once.
_DEMO_MODEL = ("smm", "smm-affwild2.pt")


def _demo_predict(run_dir: Path, disfa_root: Path, out: Path, device: str) -> None:
    """Export the demo's kept multi-task model and run `affbench predict` with it on a sample video."""
    import json

    import pandas as pd

    from affbench import predict as inference
    from affbench.bundle import WEIGHTS_FILE, export_job

    experiment, name = _DEMO_MODEL
    job = next((d for d in sorted((run_dir / "jobs").iterdir()) if (d / "job.json").is_file()
                and json.loads((d / "job.json").read_text()).get("experiment") == experiment), None)
    path = out / "models" / name
    if job is not None and (not path.is_file() or path.stat().st_mtime < (job / WEIGHTS_FILE).stat().st_mtime):
        export_job(job, path)
    model = inference.load_model(path, device="cpu" if device == "cpu" else "auto")
    video = disfa_root / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi"
    table_path = out / "demo-predictions.csv"
    result = inference.predict_table([model], [video], progress=sys.stderr.isatty())
    inference.write_table(result.table, table_path)
    click.echo("")
    click.echo(f"$ affbench predict {path} {video} --out {table_path} --plot")
    shown = ["frame", "time", "face_found", "landmark_source", "AU06_c", "AU12_c", "expression", "happiness",
             "valence", "arousal"]
    with pd.option_context("display.width", 120, "display.max_columns", 20, "display.precision", 3):
        click.echo(result.table[[c for c in shown if c in result.table.columns]].head(6).to_string(index=False))
    click.echo(f"{len(result.table)} frames ({int(result.table['face_found'].sum())} with a face), "
               f"{len(result.table.columns)} columns in {table_path}")
    try:
        for png in inference.write_plots(result, table_path):
            click.echo(f"timeline plot {png}")
    except AffbenchError:
        pass  # no matplotlib: the run's plots said so already


def _demo_prepare(name: str, root: Path, out: Path, device: str) -> None:
    """Prepare one sample dataset (finished units are skipped on a re-run)."""
    from affbench.pipelines import affwild2, bp4d, caer_s, disfa

    where = "cpu" if device == "cpu" else "auto"
    progress = True  # a bar on a terminal, plain lines in a log
    if name == "disfa":
        summary = disfa.prepare(root, out, settings=disfa.PrepareSettings(device=where), progress=progress)
    elif name == "bp4d":
        summary = bp4d.prepare(root, out, settings=bp4d.PrepareSettings(device=where), progress=progress)
    elif name == "caer-s":
        summary = caer_s.prepare(root, out, device=where, progress=progress)
    else:
        summary = affwild2.prepare(root, out, progress=progress)
    click.echo(f"prepared     {name:9s} {out}  ({summary.rows} new rows, {summary.units_skipped} unit(s) already done)")


# ----------------------------------------------------------------------------------------- list


@app.command("list")
@click.argument("what", type=click.Choice(["datasets", "encoders", "suites", "metrics"]))
def list_(what: str) -> None:
    """List what affbench knows: datasets, encoders, suites or metrics."""
    if what == "datasets":
        from affbench.pipelines import DATASETS

        for spec in DATASETS.values():
            click.echo(f"{spec.name:10s} {spec.description}")
        return
    if what == "metrics":
        from affbench.scoring import list_metrics

        click.echo(f"{'name':16s} {'better':7s} {'task kinds':28s} description")
        for spec in list_metrics():
            better = "higher" if spec.higher_is_better else "lower"
            click.echo(f"{spec.name:16s} {better:7s} {', '.join(spec.task_kinds):28s} {spec.description}")
        return
    if what == "encoders":
        from affbench.encoders import count_parameters, get_encoder_spec, list_encoders

        click.echo(f"{'name':22s} {'family':10s} {'input':>5s}  {'heads':36s} {'params':>12s}")
        for name in list_encoders():
            spec = get_encoder_spec(name)
            heads = " ".join(f"{key}={size}" for key, size in spec.heads.items())
            click.echo(
                f"{name:22s} {spec.family:10s} {spec.input_size:5d}  {heads:36s} {count_parameters(name):12,d}"
            )
        return
    if what == "suites":
        from affbench.benchmarks.suite import list_suites

        for name, description, _ in list_suites():
            click.echo(f"{name:12s} {description}")
        return


def main(argv: list[str] | None = None) -> None:
    app.main(args=argv, prog_name="affbench")


if __name__ == "__main__":
    sys.exit(main())
