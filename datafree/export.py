"""``datafree export RUN_DIR --out DIR``: a run's synthetic pool as an image folder.

The pool methods (CMI, DeepInversion, Fast-DFKD and their presets) keep every batch they synthesise in a
device-resident pool (:class:`~datafree.synthesis.pool.DataPool`, [0, 1] pixels); a finished run keeps it
in ``pool.pt`` and every checkpoint holds it too. :func:`export_run` writes it as

    DIR/train/<class>/<index>.png    one PNG per image (grey or RGB), index = its place in the pool
    DIR/manifest.json                the run's config, fingerprint, teacher sha256, spec, count per class

where ``<class>`` is the teacher's argmax on the image (the run's own teacher: the file its config names,
checked against the sha256 its fingerprint recorded), zero-padded so that the folders sort as numbers.
Only classes the teacher predicts at least once get a folder (ImageFolder refuses empty ones); the
manifest counts every class. The pool's pixels are written as they are stored (the pool holds pixels, not
normalised tensors, so there is nothing to undo beyond the uint8 quantisation a uint8 pool already has); the
teacher sees them normalised with the dataset's mean and std, as in the run. The folder is the layout
``imagefolder:DIR`` and torchvision's ImageFolder read, and the input of ``kd_folder`` (``synth.folder=DIR``)
and of the pool methods' ``synth.init_from=DIR``.

The folder is written under a temporary name beside DIR and renamed into place, so an interrupted export
leaves no half set. A non-empty DIR is refused unless ``overwrite``.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from . import __version__
from .config import load_yaml
from .data import Normalizer, get_spec
from .data.image_set import MANIFEST, SET_FORMAT, class_folder, pixel_digest
from .engine import resolve_device
from .errors import CheckpointError, ConfigError, DatafreeError, first_line
from .methods import method_entry
from .registry import METHODS, SYNTHESIZERS, load_builtins
from .results import CHECKPOINT, CONFIG, POOL, UMASK, file_sha256
from .rundir import RunFolder
from .synthesis.common import PoolSampling
from .teacher import load_teacher
from .zoo import resolve_teacher


def pool_methods() -> List[str]:
    """The registered methods whose synthesizer keeps a pool (what ``export`` can write)."""
    load_builtins()
    out = []
    for name in METHODS.list():
        try:
            synth = method_entry(name).get("synthesizer")
            if synth in SYNTHESIZERS and issubclass(SYNTHESIZERS.get(synth), PoolSampling):
                out.append(name)
        except Exception:  # a plugin's broken entry must not stop the export's error message
            continue
    return out


def pool_pixels(state: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, C, H, W), labels) of a :meth:`DataPool.state_dict`, whatever the pool's dtype."""
    images, labels = state.get("images"), state.get("labels")
    if images is None or int(state.get("size", 0)) == 0:
        return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
    n = int(state["size"])
    images = images[:n]
    if images.dtype != torch.uint8:
        images = images.float().clamp(0, 1).mul(255).round().to(torch.uint8)
    labels = labels[:n] if labels is not None else torch.full((n,), -1, dtype=torch.long)
    return images.contiguous(), labels.long()


def read_pool(run_dir: str, method: str, synthesizer: str) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
    """The run's pool from ``pool.pt`` (kept by a finished run) or else its ``checkpoint.pt``."""
    pool_file, ckpt_file = os.path.join(run_dir, POOL), os.path.join(run_dir, CHECKPOINT)
    keepers = ", ".join(pool_methods())
    if os.path.isfile(pool_file):
        try:
            saved = torch.load(pool_file, map_location="cpu", weights_only=True)
            state = saved["pool"]
        except Exception as e:
            raise CheckpointError(f"{pool_file} is unreadable ({type(e).__name__}: {first_line(e)})") from e
        source = {
            "file": POOL,
            "images_synthesized": saved.get("images_synthesized"),
            "init_images": saved.get("init_images"),
        }
    elif os.path.isfile(ckpt_file):
        try:
            ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            raise CheckpointError(f"{ckpt_file} is unreadable ({type(e).__name__}: {first_line(e)})") from e
        synth_state = ckpt.get("synthesizer") if isinstance(ckpt, dict) else None
        if not isinstance(synth_state, dict) or not isinstance(synth_state.get("pool"), dict):
            raise DatafreeError(
                f"{run_dir} keeps no synthetic pool: its method {method} (synthesizer {synthesizer}) does not keep "
                f"one. The methods that do: {keepers}"
            )
        state = synth_state["pool"]
        source = {
            "file": CHECKPOINT,
            "epoch": int(ckpt.get("epoch", -1)) + 1,
            "images_synthesized": synth_state.get("images_synthesized"),
        }
    else:
        keeps = synthesizer in SYNTHESIZERS and issubclass(SYNTHESIZERS.get(synthesizer), PoolSampling)
        why = (
            f"it has neither {POOL} (written when a run ends) nor {CHECKPOINT} (deleted?)"
            if keeps
            else f"its method {method} (synthesizer {synthesizer}) keeps no synthetic pool. "
            f"The methods that do: {keepers}"
        )
        raise DatafreeError(f"{run_dir} has no synthetic set to export: {why}")
    images, labels = pool_pixels(state)
    if images.shape[0] == 0:
        raise DatafreeError(
            f"the synthetic pool of {run_dir} is empty (the run stopped before its first synthesis "
            "round); nothing to export"
        )
    return images, labels, source


def _summary(run_dir: str) -> Dict[str, Any]:
    """The run's record, or {} (a run stopped before it wrote one, or one that cannot be read)."""
    record = RunFolder(run_dir).previous_record()
    return record.as_dict() if record is not None else {}


def _teacher_for(run_dir: str, cfg: Dict[str, Any], teacher: Optional[str], zoo: Optional[str]) -> str:
    """The run's teacher file: ``teacher`` if given, else the one its config names (in the zoo), checked against
    the sha256 the run recorded (a teacher retrained since would relabel the set)."""
    ident, _ = RunFolder(run_dir).identity_problem()
    recorded = ident.fields.get("teacher.sha256") if ident else None
    summary = _summary(run_dir)
    recorded = recorded or summary.get("teacher_sha256")
    candidates: List[str] = []
    if teacher:
        candidates.append(teacher if os.path.isfile(teacher) else resolve_teacher(teacher, cfg["dataset"], zoo))
    else:
        if not cfg.get("teacher"):
            raise ConfigError(f"{run_dir}: its config names no teacher to label the images with; pass --teacher")
        try:
            candidates.append(resolve_teacher(str(cfg["teacher"]), cfg["dataset"], zoo or cfg.get("model_zoo")))
        except DatafreeError:
            pass
        if isinstance(summary.get("teacher_path"), str) and os.path.isfile(summary["teacher_path"]):
            candidates.append(summary["teacher_path"])
    if not candidates:
        raise DatafreeError(
            f"{run_dir}: its teacher {cfg.get('teacher')!r} is not in the zoo here; pass --teacher PATH (or --zoo DIR)"
        )
    if recorded is None:
        return candidates[0]
    for path in candidates:
        if file_sha256(path) == recorded:
            return path
    raise DatafreeError(
        f"{run_dir} ran with the teacher of sha256 {recorded[:12]}..., but {candidates[0]} is another one "
        f"(sha256 {file_sha256(candidates[0])[:12]}...; retrained since?). Its labels would not be the run's "
        "teacher's: pass that teacher's file with --teacher PATH"
    )


@torch.no_grad()
def teacher_argmax(
    teacher: torch.nn.Module, images: torch.Tensor, spec, device: torch.device, batch_size: int = 512
) -> torch.Tensor:
    """The teacher's class for each uint8 image, normalised with the dataset's mean/std (float32)."""
    norm = Normalizer(spec, device)
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = norm(images[i : i + batch_size].to(device).float().div_(255.0))
        out.append(teacher(x).float().argmax(1).cpu())
    return torch.cat(out)


def _write_png(path: str, image: torch.Tensor) -> None:
    from PIL import Image

    a = image.numpy()
    if a.shape[0] == 1:
        Image.fromarray(a[0], mode="L").save(path)
    elif a.shape[0] == 3:
        Image.fromarray(a.transpose(1, 2, 0), mode="RGB").save(path)
    else:
        raise ConfigError(f"images of {a.shape[0]} channels cannot be written as PNG files (1 or 3 only)")


def _check_out(out: str, run_dir: str, overwrite: bool) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise DatafreeError(f"--out {out} is a file, not a folder")
    inside = lambda a, b: os.path.commonpath([a, b]) == b  # noqa: E731 (a is b or below it)
    if inside(run_dir, out):
        raise DatafreeError(f"--out {out} holds the run directory {run_dir} itself: choose a folder outside it")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise DatafreeError(
            f"--out {out} is not empty: pass --overwrite to replace what it holds, or choose another folder"
        )


def export_run(
    run_dir: str,
    out: str,
    overwrite: bool = False,
    device: str = "auto",
    teacher: Optional[str] = None,
    zoo: Optional[str] = None,
    log: Callable[[str], None] = lambda m: None,
) -> Dict[str, Any]:
    """Write the synthetic pool of ``run_dir`` into the folder ``out`` (see the module docstring); returns the
    manifest. Bad input (no run, no pool, a non-empty ``out``, another teacher) raises :class:`DatafreeError`."""
    run_dir, out = os.path.abspath(run_dir), os.path.abspath(out)
    if not os.path.isdir(run_dir):
        raise DatafreeError(f"run directory {run_dir} does not exist")
    cfg_path = os.path.join(run_dir, CONFIG)
    if not os.path.isfile(cfg_path):
        raise DatafreeError(f"{run_dir} holds no config.yaml: it is not a datafree run directory")
    cfg = load_yaml(cfg_path)
    method, synthesizer = str(cfg.get("method")), str(cfg.get("synthesizer"))
    dataset = cfg.get("dataset")
    if not dataset:
        raise DatafreeError(f"{cfg_path} names no dataset")
    _check_out(out, run_dir, overwrite)
    images, pool_labels, source = read_pool(run_dir, method, synthesizer)
    spec = get_spec(dataset)
    if tuple(images.shape[1:]) != tuple(spec.shape):
        raise DatafreeError(
            f"the pool of {run_dir} holds {tuple(images.shape[1:])} images, but {dataset} is "
            f"{spec.shape}: not this run's pool"
        )
    teacher_file = _teacher_for(run_dir, cfg, teacher, zoo)
    dev = resolve_device(device)
    model, record = load_teacher(teacher_file, dataset=dataset, arch=cfg.get("teacher_arch"), device=dev, spec=spec)
    labels = teacher_argmax(model, images, spec, dev)
    log(f"{run_dir}: {images.shape[0]} pool images ({source['file']}), labelled by teacher {teacher_file}")

    k = spec.num_classes
    counts = torch.bincount(labels, minlength=k)
    order = torch.sort(labels, stable=True).indices  # file order: by class, then by pool index
    width = max(6, len(str(images.shape[0] - 1)))
    summary = _summary(run_dir)
    ident, _ = RunFolder(run_dir).identity_problem()
    known = pool_labels >= 0
    manifest = {
        "format": SET_FORMAT,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "datafree": __version__,
        "run_dir": run_dir,
        "method": method,
        "synthesizer": synthesizer,
        "dataset": dataset,
        "status": summary.get("status", "unfinished"),
        "fingerprint": ident.fingerprint if ident else None,
        "teacher": {
            "name": cfg.get("teacher"),
            "path": os.path.abspath(teacher_file),
            "sha256": record.get("sha256"),
            "arch": record.get("arch"),
        },
        "spec": {kk: (list(v) if isinstance(v, tuple) else v) for kk, v in spec.as_dict().items()},
        "images": int(images.shape[0]),
        "per_class": {class_folder(c, k): int(counts[c]) for c in range(k)},
        "labels": "teacher argmax (float32) on the images normalised with the dataset's mean/std",
        "target_agreement": (
            float((pool_labels[known] == labels[known]).float().mean()) if bool(known.any()) else None
        ),
        "layout": "train/<class>/<pool index>.png; <class> zero-padded to sort as a number; "
        "empty classes have no folder",
        "digest": pixel_digest(images[order]),
        "source": source,
        "config": cfg,
    }

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".tmp", dir=parent)
    old = None
    try:
        for c in range(k):
            if counts[c] > 0:
                os.makedirs(os.path.join(tmp, "train", class_folder(c, k)))
        for i in order.tolist():
            _write_png(os.path.join(tmp, "train", class_folder(int(labels[i]), k), f"{i:0{width}d}.png"), images[i])
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1, default=str)
            f.write("\n")
        os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes 0700; the set is shared like any folder the user makes
        if os.path.isdir(out):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".old", dir=parent)
            os.rename(out, os.path.join(old, "set"))
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.exists(out) and os.path.isdir(os.path.join(old, "set")):
            os.rename(os.path.join(old, "set"), out)  # put the replaced folder back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return manifest
