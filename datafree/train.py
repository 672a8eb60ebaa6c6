"""Training a teacher on real data and adding it to the zoo: ``datafree train-teacher``.

Real data enters the one engine loop as a synthesizer (:class:`datafree.synthesis.real.RealData`); with the
``ce`` distiller a method entry trains a model from scratch. A teacher recipe is such a method entry:
``datafree`` (ours, ``scratch``) or ``scratch_<name>`` for ``--recipe <name>`` (``scratch_cmi``: the CMI
repository's ``train_scratch.py``); see docs/teachers.md.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Dict, List, Optional, Tuple

import torch

from .data import get_source
from .engine import Engine
from .errors import ConfigError, DatafreeError, UnknownNameError
from .identity import run_identity
from .methods import resolve
from .models import create_model, load_state, save_model
from .registry import METHODS, load_builtins
from .results import BEST_STUDENT, STUDENT, THREADS_FIELD, Identity, differences, fingerprint_of, machine, same_run
from .rundir import RunFolder
from .zoo import published_path, read_manifest, write_manifest_entry, zoo_key, zoo_path


#: the teacher recipe ``train-teacher`` uses unless told: ours, the ``scratch`` method entry
DEFAULT_RECIPE = "datafree"
#: method entries whose names make them teacher recipes: ``scratch_<recipe>`` (``scratch_cmi``: ``--recipe cmi``)
RECIPE_PREFIX = "scratch_"


def teacher_recipes() -> List[str]:
    """The known teacher recipes: ``datafree`` (the ``scratch`` entry) and every ``scratch_<name>`` method."""
    load_builtins()
    return [DEFAULT_RECIPE] + sorted(m[len(RECIPE_PREFIX) :] for m in METHODS.list() if m.startswith(RECIPE_PREFIX))


def recipe_method(recipe: Optional[str] = None) -> str:
    """The method entry of a teacher recipe: ``datafree`` -> ``scratch``, ``cmi`` -> ``scratch_cmi``.

    An unknown recipe is an :class:`~datafree.errors.UnknownNameError` naming the close matches.
    """
    name = DEFAULT_RECIPE if recipe is None else str(recipe)
    known = teacher_recipes()
    if name not in known:
        raise UnknownNameError("teacher recipe", name, known)
    return "scratch" if name == DEFAULT_RECIPE else RECIPE_PREFIX + name


def recipe_of(entry: Dict[str, Any]) -> str:
    """The recipe a zoo manifest entry (or a checkpoint) records; one from before recipe names is ours."""
    values = entry.get("recipe")
    return str(values.get("name") or DEFAULT_RECIPE) if isinstance(values, dict) else DEFAULT_RECIPE


def teacher_config(
    dataset: str, model: str, overrides: Optional[Dict[str, Any]] = None, recipe: Optional[str] = None
) -> Tuple[Any, str]:
    """``(resolved config, recipe name)`` of training ``model`` on ``dataset`` as a teacher.

    ``overrides`` may name the recipe too (``{"recipe": "cmi"}``, as a suite's ``teacher_training`` does);
    naming two different ones is an error.
    """
    over = dict(overrides or {})
    named = over.pop("recipe", None)
    if named is not None and recipe is not None and str(named) != str(recipe):
        raise ConfigError(f"two teacher recipes asked for: {recipe!r} and recipe={named!r} in the overrides")
    name = str(recipe if recipe is not None else named if named is not None else DEFAULT_RECIPE)
    user = {"method": recipe_method(name), "dataset": dataset, "student": model, "teacher": None}
    user.update(over)
    cfg = resolve(user)
    if not cfg.out:
        key = zoo_key(dataset, model)
        cfg.out = os.path.join("results", "teachers", key if name == DEFAULT_RECIPE else f"{key}-{name}")
    return cfg, name


def recipe_values(cfg, name: str, spec) -> Dict[str, Any]:
    """What the manifest and the checkpoint record of a recipe: its name, method entry and values."""
    o = cfg.optim
    values = {
        "name": name,
        "method": cfg.method,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "optimizer": o.name,
        "lr": o.lr,
        "momentum": o.momentum,
        "weight_decay": o.weight_decay,
        "schedule": o.schedule,
    }
    if o.schedule == "multistep":
        values.update(milestones=list(o.milestones), gamma=o.gamma)
    values.update(augment=cfg.synth.get("augment") or spec.augment, seed=cfg.seed, keep=cfg.keep or "last")
    return values


def without_threads(ident: Identity) -> Identity:
    """An identity without the CPU thread count: a teacher recipe is the same recipe on any number of threads
    (the teacher's weights, by sha256, are what runs are then tied to)."""
    fields = {k: v for k, v in ident.fields.items() if k != THREADS_FIELD}
    return Identity(fingerprint_of(fields), fields)


def zoo_entry_of_recipe(
    dataset: str, model: str, overrides: Optional[Dict[str, Any]] = None, zoo: Optional[str] = None, recipe=None
) -> Tuple[Optional[Dict[str, Any]], Optional[Identity], Identity]:
    """``(entry, recorded, recipe_id)``: the zoo's manifest entry for the teacher when its file exists (else
    None), the recipe fingerprint that entry records (None if it records none), and this recipe's: the entry is
    reused only when the two are the same run (:func:`train_teacher`)."""
    cfg, _ = teacher_config(dataset, model, overrides, recipe)
    # the recipe, as the zoo records it: the run's identity without the thread count it happened to use
    recipe_id = without_threads(run_identity(cfg, teacher_file=None))
    if not os.path.isfile(zoo_path(dataset, model, zoo)):
        return None, None, recipe_id
    entry = read_manifest(zoo).get(zoo_key(dataset, model), {})
    recorded = Identity(entry["fingerprint"], entry.get("recipe_fields") or {}) if entry.get("fingerprint") else None
    return entry, recorded, recipe_id


def needs_training(dataset: str, model: str, overrides=None, zoo: Optional[str] = None, recipe=None) -> bool:
    """Whether :func:`train_teacher` would train (or retrain) this teacher rather than reuse the zoo's."""
    entry, recorded, recipe_id = zoo_entry_of_recipe(dataset, model, overrides, zoo, recipe)
    return entry is None or not same_run(recorded, recipe_id)


def train_teacher(
    dataset: str,
    model: str,
    overrides: Optional[Dict[str, Any]] = None,
    zoo: Optional[str] = None,
    force: bool = False,
    resume: bool = True,
    log=print,
    other_recipe: str = "error",
    recipe: Optional[str] = None,
) -> Dict[str, Any]:
    """Train ``model`` on ``dataset`` from scratch and add it to the zoo. Returns its manifest entry.

    ``recipe`` names the method entry that trains it (:func:`recipe_method`): ``datafree`` (the default, the
    ``scratch`` entry: cosine SGD, the dataset's standard augmentation) or ``cmi`` (``scratch_cmi``: the CMI
    repository's ``train_scratch.py``, see docs/teachers.md); ``overrides`` change it. The recipe's name goes
    into the manifest entry and the checkpoint (``recipe.name``). An existing zoo entry is reused only when
    its recipe fingerprint (the resolved config, method and seed included) is this one; another recipe is
    an error unless ``force``. A teacher run of another recipe left in ``results/teachers/`` is set aside,
    never resumed under the new label. ``other_recipe="retrain"`` retrains instead of raising (the demo's
    own teacher). With ``keep=best`` (the cmi recipe) the zoo gets the weights of the best evaluation.
    """
    path = zoo_path(dataset, model, zoo)
    cfg, name = teacher_config(dataset, model, overrides, recipe)
    entry, recorded, recipe_id = zoo_entry_of_recipe(dataset, model, overrides, zoo, recipe)
    if entry is not None and not force:
        if same_run(recorded, recipe_id):
            log(
                f"teacher {path} exists (recipe {name}, accuracy {entry.get('accuracy', '?')}); "
                "reusing it (--force retrains)"
            )
            return entry
        if other_recipe == "retrain":
            log(f"teacher {path} was trained with another recipe: retraining it")
            return train_teacher(dataset, model, overrides, zoo=zoo, force=True, resume=resume, log=log, recipe=recipe)
        old = recorded
        old_name = recipe_of(entry) if entry else None
        which = f"recipe {old_name}, not {name}: " if old_name and old_name != name else ""
        raise ConfigError(
            f"teacher {path} exists but was trained with another recipe "
            f"({which}{differences(old, recipe_id) if old else 'the manifest does not record its recipe fingerprint'})"
            ". "
            f"Use --force to retrain and replace it, or --zoo DIR for a zoo of its own"
        )
    run_folder, run_id = RunFolder(cfg.out), run_identity(cfg, teacher_file=None)
    if run_folder.exists() and not force and not run_folder.matches(run_id) and os.listdir(cfg.out):
        old, problem = run_folder.identity_problem()
        old_dir = run_folder.set_aside()  # another recipe, seed or thread count: never resumed under this label
        log(f"teacher run {cfg.out} was another run ({differences(old, run_id, problem=problem)}); kept as {old_dir}")
    summary = Engine(cfg, resume=resume and not force, overwrite=force).run()
    if summary.status in ("diverged", "collapsed") or summary.score("last") is None:
        raise DatafreeError(
            f"training the {model} teacher on {dataset} {summary.get('status', 'failed')} "
            f"({summary.get('diverged', {}).get('reason', 'accuracy at chance')}); nothing was "
            f"added to the zoo. Try another recipe (e.g. a lower optim.lr); the run is in {cfg.out}"
        )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    kept = BEST_STUDENT if cfg.keep == "best" else STUDENT
    ckpt = torch.load(os.path.join(cfg.out, kept), map_location="cpu", weights_only=True)
    # the teacher's score in its task's metric (a classifier's accuracy, a segmenter's mIoU)
    accuracy = float(ckpt["accuracy"]) if cfg.keep == "best" else float(summary.score("last"))
    spec = get_source(dataset).spec
    net = create_model(model, spec.num_classes, spec.channels, spec.size)
    load_state(net, ckpt["state_dict"], "the trained teacher")
    values = recipe_values(cfg, name, spec)
    sha = save_model(path, net, model, dataset, spec.as_dict(), extra={"accuracy": accuracy, "recipe": values})
    entry = {
        "dataset": dataset,
        "arch": model,
        "file": os.path.basename(path),
        "accuracy": round(accuracy, 2),
        "best_accuracy": round(summary.score("best"), 2),
        "last_accuracy": round(summary.score("last"), 2),
        "kept": (f"best (epoch {ckpt.get('epoch')}, selected on the test split)" if cfg.keep == "best" else "last"),
        "sha256": sha,
        "recipe": values,
        "seconds": round(summary["total_seconds"], 1),
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "run_dir": os.path.relpath(cfg.out),
        "fingerprint": recipe_id.fingerprint,
        "recipe_fields": recipe_id.fields,
    }
    write_manifest_entry(dataset, model, entry, zoo)
    shadow = published_path(dataset, model, zoo)
    if shadow:  # the zoo's lookup takes a published file first: say which file a run of this name gets
        log(
            f"note: the zoo also holds the published {shadow}, which a run naming --teacher {model} uses before "
            f"this one; pass --teacher {path} to use this one"
        )
    log(
        f"teacher {model} on {dataset} (recipe {name}): {accuracy:.2f}%"
        + (" (best evaluation)" if cfg.keep == "best" else "")
        + f" -> {path}"
    )
    return entry
