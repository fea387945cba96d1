"""The `autolabel` command: a thin typer layer over the library.

Heavy libraries (torch, transformers, fiftyone) are imported inside the commands that use them,
so `--help`, `prompts`, `export` and a rerun with nothing left to do start fast.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from autolabel import __version__
from autolabel.backends import DEFAULT_API_KEY_ENV
from autolabel.errors import AutolabelError
from autolabel.review.app import DEFAULT_ORDER
from autolabel.review.layout import DEFAULT_REVIEWED_FIELD

app = typer.Typer(
    name="autolabel",
    help="Label image groups with pixel masks by multi-image reasoning (VLM + SAM), export COCO RLE.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
export_app = typer.Typer(help="Write predictions as COCO JSON, PNG masks, overlay pictures or YOLO labels.",
                         no_args_is_help=True)
prompts_app = typer.Typer(help="List, show and render prompt templates.", no_args_is_help=True)
app.add_typer(export_app, name="export")
app.add_typer(prompts_app, name="prompts")


def _console(stderr: bool = False):
    """Rich output; off a terminal (CI logs, pipes) as wide as the text, so tables are never cut."""
    from autolabel.terminal import console

    return console(stderr=stderr)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"autolabel {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                          help="Print the version and exit.")] = None) -> None:
    """Label image groups with pixel masks by multi-image reasoning.

    Exit codes: 0 all groups done, 1 some groups failed (listed), 2 usage or configuration error.
    """


# -- run ------------------------------------------------------------------------------------
class _ConfigDefaultsCommand(TyperCommand):
    """A command whose --help shows each option's default as its pydantic options model sets it: the
    one place those defaults live. Options default to None here so that a flag not given is told
    apart from one given; the model is read only when help is shown."""

    @staticmethod
    def defaults() -> dict:
        """Option name -> default."""
        raise NotImplementedError

    def format_help(self, ctx, formatter) -> None:
        defaults = self.defaults()
        for param in self.params:
            default = defaults.get(param.name or "")
            if "[default" in (param.help or ""):
                continue
            if not isinstance(default, bool) and default not in (None, {}, []):
                param.help = f"{param.help or ''}  \\[default: {_shown_default(default)}]"
        super().format_help(ctx, formatter)


class _RunCommand(_ConfigDefaultsCommand):
    """`run`: its defaults are RunConfig's (config.py); the --config file fills the flags not given."""

    @staticmethod
    def defaults() -> dict:
        from autolabel.config import RunConfig

        return {name: field.get_default(call_default_factory=True) for name, field in RunConfig.model_fields.items()}


def _shown_default(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(_shown_default, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


@app.command(cls=_RunCommand)
def run(
    input: Annotated[Optional[Path], typer.Argument(help="Folder of group folders, flat folder (with --group-by), "
                                                         "JSONL/CSV manifest, COCO JSON, or one image.",
                                                    show_default=False)] = None,
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", "-p", help="Template name or YAML file; "
                                                        "repeat for several.")] = None,
    backend: Annotated[Optional[str], typer.Option(help="Backend name (see `autolabel models`) or "
                                                        "module:Class.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Hub id or local dir of the reasoning model.  "
                                                      "\\[default: the backend's]")] = None,
    mask_model: Annotated[Optional[str], typer.Option(help="SAM-family mask model: hub id, dir or "
                                                           "segment-anything .pth.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory.")] = None,
    batch_size: Annotated[Optional[str], typer.Option(help="Requests (group x template) per model call, or "
                                                         "auto: the largest that fits in GPU memory.")] = None,
    shard: Annotated[Optional[str], typer.Option(help="Take slice I of N (0 <= I < N), e.g. 0/4.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Label at most N groups.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo groups already done.")] = False,
    manifest: Annotated[Optional[Path], typer.Option(help="JSONL/CSV manifest of groups.")] = None,
    group_by: Annotated[Optional[str], typer.Option(help="Regex with a named group `key` that groups "
                                                         "a flat folder's files.")] = None,
    var: Annotated[Optional[list[str]], typer.Option("--var", help="Template variable KEY=VALUE; repeatable.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cuda, cuda:1, cpu.  \\[default: cuda if available]")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="bf16, fp16, fp32.  \\[default: bf16 on CUDA, fp32 on CPU]")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Cap on generated tokens per turn; an answer cut by it keeps its completed targets and is marked truncated.  \\[default: auto: the longest answer the template's schema allows]")] = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code",
                                                    help="Allow model repos to run their own code.")] = False,
    backend_option: Annotated[Optional[list[str]], typer.Option(
        "--backend-option", help="Backend-specific KEY=VALUE (value read as YAML); repeatable.")] = None,
    allow_outside_root: Annotated[bool, typer.Option("--allow-outside-root",
                                                     help="Allow image paths outside the input root.")] = False,
    max_pixels: Annotated[Optional[int], typer.Option(help="Refuse images with more pixels (decompression "
                                                           "bombs).")] = None,
    decode_workers: Annotated[Optional[int], typer.Option(help="Threads decoding images ahead of the model.")] = None,
    engine: Annotated[Optional[str], typer.Option(help="local (this process) or ray (a Ray cluster's GPUs and "
                                                       "machines).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Ray: model replicas (actors), each loads the model once.  "
                                                        "\\[default: cluster GPUs / --gpus-per-worker, or 1]")] = None,
    gpus_per_worker: Annotated[Optional[float], typer.Option(help="Ray: GPUs per worker (fractions share a GPU).  "
                                                                  "\\[default: 1 if the cluster has GPUs, else 0]")] = None,
    ray_address: Annotated[Optional[str], typer.Option(help="Ray: join this cluster (e.g. ray://head:10001 or auto).  "
                                                            "\\[default: start a local one]")] = None,
    server: Annotated[Optional[str], typer.Option(help="Run the reasoning model on this OpenAI-compatible server "
                                                       "(vLLM, SGLang), e.g. http://gpu-box:8000/v1; --model names "
                                                       "the served model. The mask head runs here.")] = None,
    concurrency: Annotated[Optional[int], typer.Option(help="--server: requests in flight.")] = None,
    api_key_env: Annotated[Optional[str], typer.Option(help="--server: environment variable holding the API key "
                                                            "(never written anywhere).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, ours or the model "
                                                                 "libraries' (for CI logs).")] = False,
    min_score: Annotated[Optional[float], typer.Option(help="Leave masks scored below this out of the "
                                                            "prediction lines.")] = None,
    from_fiftyone: Annotated[Optional[str], typer.Option(help="Label this FiftyOne dataset instead of INPUT: its "
                                                              "groups (or samples) are the image groups; `push` "
                                                              "writes back onto the same samples.")] = None,
    view: Annotated[Optional[str], typer.Option(help="--from-fiftyone: label only this saved view.")] = None,
    fps: Annotated[Optional[float], typer.Option(help="Video: frames per second labelled (tracked).  "
                                                      "\\[default: every frame]")] = None,
    max_frames: Annotated[Optional[int], typer.Option(help="Video: label at most the first N sampled frames "
                                                           "of a clip.")] = None,
    keyframes: Annotated[Optional[int], typer.Option(help="Video: frames the VLM sees, spread over the clip; "
                                                          "each target found on one is tracked through the "
                                                          "clip.")] = None,
    frames: Annotated[bool, typer.Option("--frames", help="INPUT is a folder of ordered frame images: one "
                                                          "clip (or each subfolder one clip).")] = False,
    config: Annotated[Optional[Path], typer.Option(help="YAML run file with the same options; flags win.")] = None,
) -> None:
    """Label every group of INPUT with each --prompt template, writing RUN_DIR/predictions.jsonl.

    Reruns skip groups already done (group x template x model) with the same template and variables,
    redo those asked differently, and retry failed ones.
    """
    flags = dict(locals())  # every option under its own name, which is RunConfig's field name
    flags.pop("config")
    from autolabel.config import load_run_config

    cfg = load_run_config(config, flags)
    if cfg.quiet:
        from autolabel.progress import silence_library_progress

        silence_library_progress()
    if cfg.engine == "ray":
        from autolabel.ray_engine import RayEngine as Engine
    else:
        from autolabel.engine import Engine
    from autolabel.progress import RichProgress

    err = _console(stderr=True)
    summary = Engine(cfg, RichProgress(err, enabled=not cfg.quiet)).run()
    from autolabel.progress import print_summary

    print_summary(err, summary, cfg.out)
    raise typer.Exit(summary.exit_code)


# -- export ---------------------------------------------------------------------------------
@export_app.command("coco")
def export_coco(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories (shards merge).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="COCO JSON file to write.")],
    polygons: Annotated[bool, typer.Option("--polygons", help="Write masks as polygons (all parts) "
                                                               "instead of compressed RLE.")] = False,
    min_score: Annotated[float, typer.Option(help="Drop masks scored below this.")] = 0.0,
) -> None:
    """Write COCO JSON: compressed RLE, ids from 1, area and bbox from the mask, explanations."""
    from autolabel.exporters.coco import export_coco as _export
    from autolabel.store import check_output_file

    check_output_file(output, "--output")
    with _writing(output):
        stats = _export(list(run_dirs), output, polygons=polygons, min_score=min_score)
    _console(stderr=True).print(f"wrote {output}: {stats}")


@export_app.command("ytvis")
def export_ytvis(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories (shards merge).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="YouTube-VIS JSON file to write.")],
    min_score: Annotated[float, typer.Option(help="Drop masks scored below this.")] = 0.0,
) -> None:
    """Write YouTube-VIS JSON of the video clips: one annotation per track, a segmentation per frame."""
    from autolabel.exporters.ytvis import export_ytvis as _export
    from autolabel.store import check_output_file

    check_output_file(output, "--output")
    with _writing(output):
        stats = _export(list(run_dirs), output, min_score=min_score)
    _console(stderr=True).print(f"wrote {output}: {stats}")


@export_app.command("masks")
def export_masks(
    run_dir: Annotated[list[Path], typer.Argument(help="Run directory (several merge).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for PNGs and legend.json.")],
) -> None:
    """Write one instance-indexed PNG per image (and a colour twin, NAME.color.png) plus legend.json."""
    from autolabel.exporters.masks import export_masks as _export
    from autolabel.store import check_output_dir

    check_output_dir(output, "--output")
    with _writing(output):
        stats = _export(list(run_dir), output)
    _console(stderr=True).print(f"wrote {output}: {stats}")


@export_app.command("overlays")
def export_overlays(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories (shards merge).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the PNGs and overlays.json.")],
    image_root: Annotated[Optional[Path], typer.Option(help="Where the run's images are now, if not at the "
                                                            "input root run.json records.")] = None,
    min_score: Annotated[float, typer.Option(help="Do not draw masks scored below this.")] = 0.0,
    height: Annotated[int, typer.Option(help="Common height the group's images are scaled to (pixels).")] = 480,
    max_width: Annotated[int, typer.Option(help="Widest picture (pixels); wider rows shrink.")] = 2400,
) -> None:
    """Draw one PNG per group x template: masks over the images, question, explanation, rejections."""
    from autolabel.exporters.overlays import export_overlays as _export
    from autolabel.store import check_output_dir

    check_output_dir(output, "--output")
    with _writing(output):
        stats = _export(list(run_dirs), output, image_root=image_root, min_score=min_score, height=height,
                        max_width=max_width)
    _console(stderr=True).print(f"wrote {output}: {stats}")


@export_app.command("yolo")
def export_yolo(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories (shards merge).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Dataset folder: data.yaml, labels/, images/.")],
    images: Annotated[str, typer.Option(help="Put the images in OUTPUT/images as symlink, copy, or none.")]
    = "symlink",
    image_root: Annotated[Optional[Path], typer.Option(help="Where the run's images are now, if not at the "
                                                            "input root run.json records.")] = None,
    min_score: Annotated[float, typer.Option(help="Drop masks scored below this.")] = 0.0,
) -> None:
    """Write YOLO segmentation labels (Ultralytics): a polygon line per mask part, data.yaml with the classes."""
    from autolabel.exporters.yolo import export_yolo as _export
    from autolabel.store import check_output_dir

    check_output_dir(output, "--output")
    with _writing(output):
        stats = _export(list(run_dirs), output, min_score=min_score, images=images, image_root=image_root)
    _console(stderr=True).print(f"wrote {output}: {stats}")


@contextmanager
def _writing(output: Path) -> Iterator[None]:
    """An export's file-system failure (disk full, permissions) as one line, not a traceback."""
    try:
        yield
    except OSError as e:
        where = e.filename or output
        raise AutolabelError(f"writing {output}: {where}: {e.strerror or e}") from None


# -- prompts --------------------------------------------------------------------------------
@prompts_app.command("list")
def prompts_list() -> None:
    """List the built-in templates."""
    from rich.table import Table

    from autolabel.templates import builtin_templates

    from autolabel.terminal import print_table

    table = Table("name", "category", "turns", "description")
    for t in builtin_templates():
        table.add_row(t.name, t.category, str(len(t.turns)), t.description.strip().splitlines()[0] if t.description else "")
    print_table(_console(), table)


@prompts_app.command("show")
def prompts_show(template: Annotated[str, typer.Argument(help="Template name or YAML file.")]) -> None:
    """Print a template's YAML and its content hash."""
    import yaml

    from autolabel.templates import load_template

    t = load_template(template)
    typer.echo(f"# {t.name}  hash {t.content_hash}")
    typer.echo(yaml.safe_dump(t.model_dump(mode="json", exclude_defaults=True), sort_keys=False, allow_unicode=True))


@prompts_app.command("render")
def prompts_render(
    template: Annotated[str, typer.Argument(help="Template name or YAML file.")],
    group_dir: Annotated[Path, typer.Argument(help="A folder of images (one group), or a JSONL/CSV manifest or "
                                                   "COCO file (see --group).")],
    var: Annotated[Optional[list[str]], typer.Option("--var", help="KEY=VALUE; repeatable.")] = None,
    group: Annotated[Optional[str], typer.Option("--group", help="With a manifest or COCO file: the id of the group "
                                                                 "to show, with its exemplars.  \\[default: the first]")]
    = None,
    chat: Annotated[bool, typer.Option("--chat", help="Print the exact chat the vlm-sam model receives: labelled "
                                                     "images with their sizes, answer rules, turns, token budget.")] = False,
    model: Annotated[Optional[str], typer.Option(help="--chat: read image sizes with this model's processor (a local "
                                                     "directory or cached hub id).  \\[default: assume the default "
                                                     "model's resize]")] = None,
) -> None:
    """Print the template's text rendered for one group; --chat: the exact chat the model receives."""
    from autolabel.config import RunConfig
    from autolabel.prompt_view import chat_for_group, render_for_group

    variables = RunConfig._parse_vars(var or [])
    if model is not None and not chat:
        raise AutolabelError("--model: only with --chat (the image sizes in the chat come from its processor)")
    typer.echo(chat_for_group(template, group_dir, variables, model, group) if chat
               else render_for_group(template, group_dir, variables, group))


# -- evaluation -----------------------------------------------------------------------------
@app.command("eval")
def evaluate(
    pred: Annotated[Path, typer.Argument(help="A run directory or a COCO file (export or results).")],
    gt: Annotated[Path, typer.Option(help="Ground-truth COCO JSON.")],
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the metrics as JSON.")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Write a Markdown report with plots here.")] = None,
    fail_under: Annotated[Optional[list[str]], typer.Option(
        "--fail-under", help="METRIC=VALUE; exit 1 when the metric is below it. Repeatable.")] = None,
) -> None:
    """Score labels against ground truth: gIoU, cIoU, mIoU, recall@0.5, N-acc, T-acc, AP; on video
    ground truth (YouTube-VIS, or COCO frames with video_id) J, F and J&F per track and overall."""
    import json

    from autolabel.evaluation.video_metrics import is_video_ground_truth

    if is_video_ground_truth(gt):  # video: J / F / J&F (evaluation/video_cli.py)
        from autolabel.evaluation.video_cli import run_video_eval

        raise typer.Exit(run_video_eval(pred, gt, fail_under or [], json_out, _console(), _console(stderr=True)))
    from autolabel.evaluation import evaluate as _evaluate, failures, parse_fail_under, render_table, write_report

    thresholds = parse_fail_under(fail_under or [])
    result = _evaluate(pred, gt)
    from autolabel.terminal import print_table

    console = _console()
    print_table(console, render_table(result))
    for warning in result.warnings:
        _console(stderr=True).print(f"[yellow]warning:[/] {escape(warning)}")
    if json_out:
        json_out.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    if report:
        _console(stderr=True).print(f"report: {write_report(result, report, pred, gt)}")
    failed = failures(result, thresholds)
    for line in failed:
        _console(stderr=True).print(f"[bold red]below threshold:[/] {escape(line)}")
    raise typer.Exit(1 if failed else 0)


# -- training -------------------------------------------------------------------------------
train_app = typer.Typer(help="Train a PRIMA model on your own data.", no_args_is_help=True)
app.add_typer(train_app, name="train")


class _TrainPrimaCommand(_ConfigDefaultsCommand):
    """`train prima`: its defaults are TrainOptions' (prima/config.py)."""

    @staticmethod
    def defaults() -> dict:
        from autolabel.prima.config import train_flag_defaults

        return train_flag_defaults()


@train_app.command("prima", cls=_TrainPrimaCommand)
def train_prima(
    data: Annotated[Path, typer.Option(help="Training JSONL (see README: PRIMA training data).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint directory to write.")],
    val: Annotated[Optional[Path], typer.Option(help="Validation JSONL, scored each epoch.")] = None,
    vision: Annotated[Optional[str], typer.Option(help="Vision tower: CLIP, SigLIP or DINOv2 hub id or dir.")] = None,
    llm: Annotated[Optional[str], typer.Option(help="Causal LM hub id or dir.")] = None,
    sam: Annotated[Optional[str], typer.Option(help="segment-anything .pth (vit_b/l/h from its name, "
                                                    "or vit_b:FILE).")] = None,
    init: Annotated[Optional[str], typer.Option(help="Continue from a PRIMA checkpoint instead of parts.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Passes over the data.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Groups per forward pass.")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="Batches per optimizer step.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="AdamW learning rate.")] = None,
    save_every: Annotated[Optional[int], typer.Option(help="Optimizer steps between checkpoints.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT's latest checkpoint.")] = False,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Leave bad lines out (counted) instead of "
                                                               "stopping.")] = False,
    relational_queries: Annotated[Optional[int], typer.Option(help="SQuARE relational queries (0: the ablation "
                                                                   "without them).")] = None,
    image_queries: Annotated[Optional[int], typer.Option(help="Visual tokens per image.")] = None,
    lora_r: Annotated[Optional[int], typer.Option(help="LoRA rank.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cuda, cuda:1, cpu.  \\[default: cuda if available]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
) -> None:
    """Train PRIMA: SQuARE + LoRA LLM + SAM decoder; checkpoints, --resume, validation per epoch."""
    flags = dict(locals())  # every option under its own name, TrainOptions' field name (prima/config.py)
    from autolabel.prima.config import train_options
    from autolabel.prima.train import train
    from autolabel.prima_validation import validate
    from autolabel.progress import TrainProgress

    options = train_options(flags)
    err = _console(stderr=True)
    summary = train(options, TrainProgress(err), validate=validate)
    for line in summary.skipped:
        err.print(f"[yellow]skipped:[/] {escape(line)}", soft_wrap=True)
    for metrics in summary.metrics:
        err.print(f"epoch {metrics['epoch']}: " + ", ".join(f"{k} {v}" for k, v in metrics.items()
                                                             if k not in ("epoch", "step")), soft_wrap=True)
    err.print(f"saved {out} after {summary.steps} steps ({summary.examples} examples, {len(summary.skipped)} "
              f"lines skipped); last losses {summary.last_loss}", soft_wrap=True)


@train_app.command("convert-coco")
def train_convert_coco(
    coco: Annotated[Path, typer.Argument(help="COCO JSON with masks (RLE or polygons).")],
    questions: Annotated[Path, typer.Option(help="JSONL: id, images (file_names), question, targets.")],
    images: Annotated[Path, typer.Option(help="Folder the COCO file_names are relative to.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Training JSONL to write.")],
) -> None:
    """Make PRIMA training lines from COCO masks and a questions file."""
    from autolabel.prima.data import convert_coco

    n = convert_coco(coco, questions, images, output)
    _console(stderr=True).print(f"wrote {output}: {n} training lines")


# -- FiftyOne review -------------------------------------------------------------------------
@app.command()
def push(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories (shards merge).")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="FiftyOne dataset name (created if new).")],
    field: Annotated[Optional[str], typer.Option(help="Label field for this run.  \\[default: predictions, "
                                                      "or predictions_<model> when that holds another model]")] = None,
    image_root: Annotated[Optional[Path], typer.Option(help="Where the run's images are now, if not at the "
                                                            "input root run.json records.")] = None,
) -> None:
    """Push predictions into a persistent grouped FiftyOne dataset: a group per image group x template.
    A video run becomes a FiftyOne video dataset: a sample per clip, frame-level masks per track."""
    from autolabel.review.push_video import is_video_run

    if is_video_run(list(run_dirs)):  # video clips (review/push_video.py)
        from autolabel.review.push_video import push_video

        stats = push_video(list(run_dirs), dataset, label_field=field, image_root=image_root)
        _console(stderr=True).print(f"pushed to {escape(dataset)} (video): {stats}", soft_wrap=True)
        return
    from autolabel.review.push import push as _push

    stats = _push(list(run_dirs), dataset, label_field=field, image_root=image_root)
    _console(stderr=True).print(f"pushed to {escape(dataset)}.{escape(stats.field)}: {stats}", soft_wrap=True)


class _DatasetFirstGroup(TyperGroup):
    """`autolabel review NAME ...` means `autolabel review open NAME ...`: a first word that names no
    subcommand is the dataset of the default one (`open`), so `review status NAME` sits beside it."""

    default = "open"

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default, *args]
        return super().parse_args(ctx, args)


review_app = typer.Typer(cls=_DatasetFirstGroup, no_args_is_help=True, help=(
    "Review pushed masks in the FiftyOne App, most doubtful first. `autolabel review NAME` is "
    "`autolabel review open NAME`; `autolabel review status NAME` reports progress."))
app.add_typer(review_app, name="review")


@review_app.command("open")
def review(
    dataset: Annotated[str, typer.Argument(help="A dataset made by `autolabel push`.")],
    port: Annotated[int, typer.Option(help="Port of the App.")] = 5151,
    address: Annotated[str, typer.Option(help="Address to serve on (0.0.0.0 for other machines).")] = "127.0.0.1",
    field: Annotated[Optional[str], typer.Option(help="Pushed field to review.  \\[default: predictions]")] = None,
    reviewed_field: Annotated[str, typer.Option(help="Editable copy reviewers work in.")] = DEFAULT_REVIEWED_FIELD,
    order: Annotated[str, typer.Option(help="Queue order: doubt (most doubtful first), score (least sure first), "
                                            "random, file.")] = DEFAULT_ORDER,
    min_doubt: Annotated[Optional[float], typer.Option(help="Queue only groups at least this doubtful (0..1).")]
    = None,
    no_app: Annotated[bool, typer.Option("--no-app", help="Prepare the reviewed field, label schema and saved "
                                                          "views, then exit (a hosted App, or pull from scripts).")]
    = False,
) -> None:
    """Make an editable `reviewed` field, save the review queue (view `by-doubt`) and serve the FiftyOne App on it."""
    from autolabel.review.app import app_url, launch, prepare_review
    from autolabel.review.database import connect, load_dataset

    ds = load_dataset(dataset)
    setup = prepare_review(ds, field, reviewed_field, order=order, min_doubt=min_doubt)
    err = _console(stderr=True)
    err.print(f"reviewing {escape(setup.source)} in field {escape(setup.reviewed)} "
              f"({setup.samples_added} samples added to it; classes: {escape(', '.join(setup.classes))})",
              soft_wrap=True)
    err.print(f"queue: saved view {escape(setup.view)}, {setup.queued} groups" +
              (f" (doubt computed for {setup.doubt_computed} samples pushed before doubt existed)"
               if setup.doubt_computed else ""), soft_wrap=True)
    if no_app:
        typer.echo(f"App: {app_url(address, port, dataset, setup.view)}   (not started: --no-app)")
        err.print(f"open the saved view {escape(setup.view)} in any FiftyOne App on this database; then: "
                  f"autolabel pull {escape(dataset)} -o corrected.json", soft_wrap=True)
        return
    session = launch(connect(), ds, address=address, port=port, view=setup.view)
    typer.echo(f"App: {app_url(address, port, dataset, setup.view)}", nl=True)
    sys.stdout.flush()
    err.print("edit masks in the Annotate tab; they save as you go. "
              f"Then: autolabel pull {escape(dataset)} -o corrected.json   (Ctrl-C stops the App)")
    try:
        session.wait(-1)
    except KeyboardInterrupt:
        pass


@review_app.command("status")
def review_status(
    dataset: Annotated[str, typer.Argument(help="A dataset under review.")],
    reviewed_field: Annotated[str, typer.Option(help="The reviewed field to report on.")] = DEFAULT_REVIEWED_FIELD,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a table.")] = False,
) -> None:
    """Per category: samples and labels pushed, reviewed, untouched, edited, added, deleted; mean score and doubt."""
    import json

    from rich.table import Table

    from autolabel.review.status import CHANGES, review_status as _status

    status = _status(dataset, reviewed_field)
    if json_out:
        typer.echo(json.dumps(status.to_json(), indent=2))
        return

    def row(name: str, c, bold: bool = False) -> list[str]:
        j = c.to_json()
        cells = [name, str(j["samples"]["pushed"]), str(j["samples"]["reviewed"]), str(j["labels"]["pushed"]),
                 *(str(j["labels"][k]) for k in CHANGES),
                 *("-" if j[k] is None else f"{j[k]:.3f}" for k in ("mean_score", "mean_doubt"))]
        return [f"[bold]{x}[/]" for x in cells] if bold else cells

    table = Table("category", "samples", "reviewed", "labels", *CHANGES, "mean score", "mean doubt",
                  title=f"{escape(dataset)}: {escape(status.reviewed)} vs {escape(status.source)}")
    for name, category in sorted(status.categories.items()):
        table.add_row(*row(escape(name), category))
    table.add_row(*row("all", status.total, bold=True))
    _console().print(table)


@app.command()
def pull(
    dataset: Annotated[str, typer.Argument(help="A dataset made by `autolabel push` and reviewed.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="COCO JSON file to write.")],
    since: Annotated[Optional[str], typer.Option(help="Only groups changed since: ISO time, 90m/2h/1d, or last.")] = None,
    reviewed_field: Annotated[str, typer.Option(help="The reviewed field to read.")] = DEFAULT_REVIEWED_FIELD,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the change report as JSON.")] = None,
) -> None:
    """Write the reviewed masks as COCO at image resolution and report what reviewers changed.
    A video dataset (push of a video run) comes back as per-frame COCO with track ids."""
    import json

    from autolabel.review.push_video import is_video_dataset

    if is_video_dataset(dataset):  # review/push_video.py
        from autolabel.review.push_video import pull_video

        stats = pull_video(dataset, output)
        _console(stderr=True).print(f"wrote {output}: {stats}", soft_wrap=True)
        return
    from rich.table import Table

    from autolabel.review.pull import CHANGES, pull as _pull

    report = _pull(dataset, output, since=since, reviewed=reviewed_field)
    table = Table("category", *CHANGES, title=f"{report.reviewed} vs {report.source}")
    for name, counts in sorted(report.changes.items()):
        table.add_row(escape(name), *(str(counts[c]) for c in CHANGES))
    totals = report.totals()
    table.add_row("[bold]all[/]", *(f"[bold]{totals[c]}[/]" for c in CHANGES))
    from autolabel.terminal import print_table

    print_table(_console(), table)
    if json_out:
        json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    _console(stderr=True).print(f"wrote {output}: {report.groups} groups; {report.export}", soft_wrap=True)


# -- environment ----------------------------------------------------------------------------
@app.command()
def doctor(
    server: Annotated[Optional[str], typer.Option(help="Also check this OpenAI-compatible server (vLLM, SGLang): "
                                                       "its models, structured output, logprobs, image sizes.")] = None,
    model: Annotated[Optional[str], typer.Option(help="--server: check only this served model.")] = None,
    api_key_env: Annotated[str, typer.Option(help="--server: environment variable holding the API key.")]
    = DEFAULT_API_KEY_ENV,
) -> None:
    """Report Python, torch/CUDA, library versions, cached checkpoints, MongoDB and, with --server, a serving engine."""
    from autolabel import doctor as _doctor

    checks = _doctor.collect()
    if server:
        checks += _doctor.server_checks(server, model, api_key_env)
    from autolabel.terminal import print_table

    print_table(_console(), _doctor.render(checks))


@app.command()
def models() -> None:
    """List backends, their default checkpoints, and which are present locally."""
    from rich.table import Table

    from autolabel.backends import available_backends
    from autolabel.doctor import cached_models

    cached = cached_models()
    table = Table("backend", "default model", "default mask model", "description")
    for spec in available_backends().values():
        def mark(model_id: str | None) -> str:
            if not model_id:
                return "-"
            return f"{model_id} [green](cached)[/]" if model_id in cached else f"{model_id} [yellow](not cached)[/]"
        table.add_row(spec.name, mark(spec.default_model), mark(spec.default_mask_model), spec.description)
    from autolabel.terminal import print_table

    print_table(_console(), table)


def main() -> None:
    """Entry point: usage errors exit 2 (click), configuration errors exit 2 with one line."""
    try:
        app()
    except AutolabelError as e:
        _console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
