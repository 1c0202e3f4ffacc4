"""Experiment tracking at every scale through accelerate's trackers (TensorBoard, W&B, MLflow).

Records stay the run directory's JSON lines; a tracker mirrors them for researchers who follow runs in
TensorBoard, Weights & Biases or MLflow. Three pieces:

- :func:`add_tracking_flags`: ``--report-to none|tensorboard|wandb|mlflow`` (a comma-separated list
  for several), ``--run-name``, ``--tracking-dir``, ``--tracking-project``, ``--log-images``, on any
  parser group. ``--report-to`` is checked while parsing: an unknown tracker, or one whose package is
  not installed (the message names the package and the pip command), is a usage error (exit 2) before
  any work;
- :func:`build_trackers`: accelerate's tracker objects (:mod:`accelerate.tracking`), started;
- :class:`EpochTracker`: an ``on_epoch`` hook of :func:`dynamics.clo.run_clo` that logs every
  evaluation's records (overall, per category ``<group>/<metric>``, the judge's audit ``audit/*``,
  training ``train/*``; ``seed_<s>/`` in front when the run holds several replicas), at step = epoch,
  and a grid of the model's samples (:func:`sample_grid`); it then calls the hook it wraps (the
  co-degradation alarm), so tracking and the alarm run together. :func:`tracking_hook` builds it from
  the parsed flags, or returns the wrapped hook unchanged under ``--report-to none``.

Example (the metric names of one record)::

    >>> rec = {"epoch": 1, "seed": 0, "replica": 0, "gen_acc": 0.5, "sft_precision": 0.75,
    ...        "train_loss": 1.5, "groups": {"tag:colors": {"gen_acc": 0.25}}}
    >>> sorted(metric_values(rec).items())
    [('audit/sft_precision', 0.75), ('overall/gen_acc', 0.5), ('tag_colors/gen_acc', 0.25), ('train/train_loss', 1.5)]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "TRACKERS",
    "EpochTracker",
    "add_tracking_flags",
    "build_trackers",
    "check_report_to",
    "metric_values",
    "parse_report_to",
    "sample_grid",
    "tracking_hook",
]

#: Tracker name -> the package it needs (besides accelerate).
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}

# Record keys that are the judge's audit of the self-judged set, and those of training.
_AUDIT = ("sft_size", "sft_precision", "sft_recall", "discard_size", "replayed_prompts", "dpo_pairs", "replay",
          "replay_probe_rate")
_TRAIN = ("train_loss", "grad_norm", "steps")
_SKIP = ("epoch", "seed", "replica", "groups")


def parse_report_to(text: str) -> tuple[str, ...]:
    """``none`` -> ``()``; ``tensorboard,wandb`` -> ``("tensorboard", "wandb")``, each checked: an unknown
    name or a missing package raises ``argparse.ArgumentTypeError`` naming it (and the pip command).

    >>> parse_report_to("none"), parse_report_to("tensorboard, tensorboard")
    ((), ('tensorboard',))
    >>> parse_report_to("neptune")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: unknown tracker 'neptune'; expected none or a comma-separated list of tensorboard, wandb, mlflow
    """
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if names in ([], ["none"]):
        return ()
    for name in names:
        if name not in TRACKERS:
            raise argparse.ArgumentTypeError(
                f"unknown tracker {name!r}; expected none or a comma-separated list of {', '.join(TRACKERS)}")
        for package in ("accelerate", TRACKERS[name]):
            if importlib.util.find_spec(package) is None:
                raise argparse.ArgumentTypeError(
                    f"tracker {name!r} needs the {package!r} package, which is not installed: pip install {package}")
    return tuple(dict.fromkeys(names))


def check_report_to(text: str) -> str:
    """The ``--report-to`` argument type: the value, normalised (``tensorboard,wandb``), once
    :func:`parse_report_to` accepts it. The flag holds a string, like every flag a ``--config`` file sets.

    >>> check_report_to(" tensorboard ")
    'tensorboard'
    """
    return ",".join(parse_report_to(text)) or "none"


def add_tracking_flags(group) -> None:
    """The tracking flags (see the module docstring), on an argparse parser or group."""
    group.add_argument("--report-to", type=check_report_to, default="none",
                       help="experiment tracking through accelerate's trackers: none | tensorboard | wandb | mlflow, "
                            "or a comma-separated list; per-epoch metrics overall and per category, the judge's "
                            "audit and sample grids")
    group.add_argument("--run-name", default=None,
                       help="tracker run name (default: the run directory's name), '-seed<s>' appended")
    group.add_argument("--tracking-dir", type=Path, default=None,
                       help="TensorBoard log directory and MLflow tracking directory (default: <out>/tracking)")
    group.add_argument("--tracking-project", default="dynamics", help="W&B project and MLflow experiment name")
    group.add_argument("--log-images", type=int, default=8,
                       help="prompts in the sample grid logged at every evaluation (0 = no images)")


def build_trackers(names: Sequence[str], *, run_name: str, logging_dir: str | Path, project: str = "dynamics",
                   config: dict | None = None) -> list:
    """Started :mod:`accelerate.tracking` trackers for ``names``, with ``config`` stored as the run's
    hyperparameters (values that are not bool/int/float/str are stored as strings)."""
    from accelerate import tracking

    logging_dir = Path(logging_dir)
    out = []
    for name in names:
        if name == "tensorboard":
            tracker = tracking.TensorBoardTracker(run_name, logging_dir)
        elif name == "wandb":
            tracker = tracking.WandBTracker(project, name=run_name, dir=str(logging_dir))
        elif name == "mlflow":
            tracker = tracking.MLflowTracker(experiment_name=project, logging_dir=str(logging_dir), run_name=run_name)
        else:
            raise ValueError(f"unknown tracker {name!r}; expected one of {', '.join(TRACKERS)}")
        logging_dir.mkdir(parents=True, exist_ok=True)
        tracker.start()
        if config:
            tracker.store_init_configuration({k: v if isinstance(v, (bool, int, float, str)) else str(v)
                                              for k, v in config.items()})
        out.append(tracker)
    return out


def _key(name: str) -> str:
    return name.replace(":", "_")  # MLflow metric names allow no ':'


def metric_values(record: dict, prefix: str = "") -> dict[str, float]:
    """The numeric values of one record of :func:`dynamics.clo.run_clo` as tracker metrics:
    ``overall/<metric>``, ``<group>/<metric>`` (``tag:x`` written ``tag_x``), ``audit/<key>`` for the
    judge's audit of the self-judged set, ``train/<key>``; NaN and non-numbers are left out."""

    def ok(v):
        return isinstance(v, (bool, int, float)) and not (isinstance(v, float) and math.isnan(v))

    out = {}
    for k, v in record.items():
        if k in _SKIP or not ok(v):
            continue
        section = "audit" if k in _AUDIT else "train" if k in _TRAIN else "overall"
        out[f"{prefix}{section}/{k}"] = float(v)
    for group, values in (record.get("groups") or {}).items():
        for k, v in values.items():
            if ok(v):
                out[f"{prefix}{_key(group)}/{k}"] = float(v)
    return out


def _tile(u8: np.ndarray, pad: int = 2) -> np.ndarray:
    """``(rows, cols, H, W, 3)`` uint8 -> one ``(H', W', 3)`` image with white gaps."""
    rows, cols, h, w, c = u8.shape
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(rows):
        for j in range(cols):
            out[pad + i * (h + pad): pad + i * (h + pad) + h, pad + j * (w + pad): pad + j * (w + pad) + w] = u8[i, j]
    return out


def sample_grid(model, *, prompts: int = 8, per_prompt: int = 4, seed: int = 0) -> np.ndarray | None:
    """An ``(H, W, 3)`` uint8 picture of the model's current samples, one row per prompt (the same
    prompts and seed every call, so epochs compare): decoded pixels for full-scale models (their
    ``decode``), the scene grid with the exact judge's verdict frames for the toy
    (:func:`dynamics.toy.render`), and for the single-token simulator its generator table
    ``pi_gen(x | y)`` beside its understanding table ``P(yes | x, y)`` (prompts x tokens, gray scale).
    None for ``prompts <= 0``."""
    if prompts <= 0:
        return None
    n = min(prompts, len(model.prompts))
    if hasattr(model, "gen_table") and hasattr(model, "understanding_table"):  # the simulator
        tables = [model.gen_table()[0, :n], model.understanding_table()[0, :n]]
        tables[0] = tables[0] / tables[0].amax(-1, keepdim=True).clamp_min(1e-12)
        gray = torch.cat([t.float() for t in tables], dim=-1)
        u8 = (255 * (1 - gray)).round().clamp(0, 255).to(torch.uint8).numpy()
        return np.repeat(np.repeat(u8, 6, axis=0), 6, axis=1)[..., None].repeat(3, axis=2)
    world = getattr(model, "world", None)
    if world is not None and hasattr(world, "external_judge"):  # the toy scene world
        import io

        from PIL import Image

        from dynamics.runs.toy import _show_ids
        from dynamics.toy import render

        ids = _show_ids(model.prompts)[:n]
        images = model.sample(ids, per_prompt, seed=seed)
        buf = io.BytesIO()
        render(images, buf, world=world, titles=[model.prompts.texts[i] for i in ids.tolist()],
               marks=world.external_judge()(ids, images)[0])
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    if hasattr(model, "decode"):  # full scale: pixels through the model's image decoder
        ids = torch.arange(n)
        return _tile(model.decode(model.sample(ids, per_prompt, seed=seed))[0].numpy())
    return None


class EpochTracker:
    """The ``on_epoch`` hook that logs each evaluation to ``trackers`` (see the module docstring),
    then calls ``then(epoch, records)`` (e.g. :class:`dynamics.alarm.EpochAlarm`). The trackers start
    on the first call (``start``: a function returning them, so nothing starts before the run does)
    and are finished after the evaluation of epoch ``last_epoch``. ``grid``: a function returning the
    sample grid (or None) for an epoch."""

    def __init__(self, start: Callable[[], list], *, then: Callable | None = None, last_epoch: int | None = None,
                 grid: Callable[[], np.ndarray | None] | None = None) -> None:
        self._start, self.then, self.last_epoch, self.grid = start, then, last_epoch, grid
        self.trackers: list | None = None

    def __call__(self, epoch: int, records: list[dict]) -> None:
        if self.trackers is None:
            self.trackers = self._start()
        several = len(records) > 1
        values: dict[str, float] = {}
        for r in records:
            values.update(metric_values(r, prefix=f"seed_{r.get('seed', r.get('replica', 0))}/" if several else ""))
        image = self.grid() if self.grid is not None else None
        for t in self.trackers:
            t.log(values, step=epoch)
            if image is not None:
                self._log_image(t, image, epoch)
        if self.last_epoch is not None and epoch >= self.last_epoch:
            self.finish()
        if self.then is not None:
            self.then(epoch, records)

    @staticmethod
    def _log_image(tracker, image: np.ndarray, epoch: int) -> None:
        if tracker.name == "tensorboard":
            tracker.log_images({"samples": image[None]}, step=epoch, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({"samples": [image]}, step=epoch)
        elif tracker.name == "mlflow":
            import mlflow

            mlflow.log_image(image, artifact_file=f"samples/epoch_{epoch:04d}.png")

    def finish(self) -> None:
        """Finish every started tracker (flushes TensorBoard's event files)."""
        for t in self.trackers or []:
            t.finish()
        self.trackers = []


def tracking_hook(args: argparse.Namespace, then: Callable | None, out: str | Path, *, model=None, config=None):
    """The ``on_epoch`` hook for parsed tracking flags: ``then`` itself under ``--report-to none``,
    else an :class:`EpochTracker` logging the run in ``out`` (``config``: its :class:`dynamics.clo.CLOConfig`,
    stored as hyperparameters, its seed naming the run and its last epoch closing it) with sample
    grids of ``model`` (``--log-images``), then calling ``then``."""
    names = parse_report_to(getattr(args, "report_to", "none"))
    if not names:
        return then
    out = Path(out)
    seed = getattr(config, "seed", 0)
    run_name = f"{args.run_name or out.name}-seed{seed}"
    logging_dir = args.tracking_dir or out / "tracking"
    params = config.to_dict() if config is not None else {}

    def start():
        return build_trackers(names, run_name=run_name, logging_dir=logging_dir, project=args.tracking_project,
                              config=params)

    grid = None
    if model is not None and args.log_images > 0:
        def grid():
            return sample_grid(model, prompts=args.log_images, seed=seed)

    return EpochTracker(start, then=then, last_epoch=getattr(config, "epochs", None), grid=grid)
