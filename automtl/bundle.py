"""The bundle format: one exported model as a folder. This module alone writes and reads it.

Format version 1 (:data:`FORMAT_VERSION`). A bundle folder holds:

=======================  ===================================================================
``bundle.json``          format name and version, the automtl that wrote it, the tasks, the
                         files present (read first: its version says how to read the rest)
``tree.yaml``            the :class:`~automtl.tree.BranchTree`, its drawing as a comment
``model.yaml``           backbone name and options, input shape, each task's
                         :class:`~automtl.tasks.TaskSpec` (type, loss, metric, target scaling)
``preprocess.json``      raw input to input tensor, and each task's labels, as plain data
                         (:class:`automtl.data.Preprocess`: columns in order, scaling, category
                         vocabularies, missing-value flags; or the array an image model takes)
``weights.safetensors``  the network's state dict
``config.yaml``          the search configuration; ``data.options.path`` relative to the
                         bundle folder, ``search.storage`` left out
``candidate.yaml``       balancer, its hyperparameters, training hyperparameters
``metrics.json``         validation and test metrics, the trial, which split selected what
``model.onnx``           optional (``--format onnx``): ONNX, input ``x``, one output per task
``model.pt2``            optional (``--format pt2``): a ``torch.export`` program, same outputs
=======================  ===================================================================

No file holds an absolute path: :func:`load` and :func:`automtl.predict` need the folder alone;
:func:`automtl.evaluate_bundle` also reads the data set named in ``config.yaml``.

**Reading runs no code.** YAML is read with the safe loader, weights from safetensors, and the
backbone named in ``model.yaml`` (and, for evaluation, each task's metric) resolves to a
registered name only: an import path such as ``subprocess:run`` is refused unless the caller
passes ``trust_code=True`` (:mod:`automtl.registry`). ``model.pt2`` is read only with
``trust_code=True`` too, since ``torch.export.load`` unpickles (:func:`load_program`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from automtl.backbones import BACKBONES, Backbone, create_backbone
from automtl.build import BranchedNet, resolve_device
from automtl.config import SearchConfig, parse_config
from automtl.data import ArrayInput, Preprocess
from automtl.errors import BundleError, ConfigError, DataError, RegistryError
from automtl.experiment import Experiment, prepare
from automtl.metrics import METRICS
from automtl.tasks import TaskSpec
from automtl.tree import BranchTree

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Bundle",
    "default_mode",
    "jsonable",
    "load",
    "load_program",
    "prepare_data",
    "read_bundle",
    "read_config",
    "staged",
    "write_bundle",
    "write_formats",
    "write_manifest",
    "write_metrics",
]

FORMAT = "automtl-bundle"
#: The version this automtl writes and the only one it reads.
FORMAT_VERSION = 1
MANIFEST = "bundle.json"
TREE, MODEL, PREPROCESS, WEIGHTS = "tree.yaml", "model.yaml", "preprocess.json", "weights.safetensors"
CONFIG, CANDIDATE, METRICS_FILE = "config.yaml", "candidate.yaml", "metrics.json"
#: Optional deployment files, by format name.
DEPLOY_FILES: dict[str, str] = {"onnx": "model.onnx", "pt2": "model.pt2"}
_NEEDED = (TREE, MODEL, PREPROCESS, WEIGHTS)
_KNOWN = {MANIFEST, *_NEEDED, CONFIG, CANDIDATE, METRICS_FILE, *DEPLOY_FILES.values()}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def jsonable(x: Any) -> Any:
    """``x`` with every non-finite float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


# ----------------------------------------------------------------------------- writing
@contextlib.contextmanager
def staged(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh folder to write a bundle into; it becomes ``out_dir`` only if the block succeeds.

    ``out_dir`` may be new, empty, or an earlier bundle (replaced whole, so no file of the old
    one survives beside the new). On any error nothing is left behind: neither the staging
    folder nor parent folders this call created.

    Raises:
        BundleError: ``out_dir`` is a file, or a folder holding files no bundle has.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BundleError(f"output {out} is an existing file; give a directory for the bundle")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _KNOWN)
        if foreign:
            raise BundleError(
                f"output {out} holds files that are not part of a bundle ({', '.join(foreign[:5])}); "
                "give a new or empty directory"
            )
    created: list[Path] = []
    for parent in reversed(out.absolute().parents):
        if not parent.exists():
            parent.mkdir()
            created.append(parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.absolute().parent))
    try:
        yield staging
        for path in (staging, *staging.iterdir()):  # temporary files are private; a bundle is not
            path.chmod(default_mode(directory=path.is_dir()))
        if out.is_dir():
            old = out.absolute().parent / f"{staging.name}.old"
            out.rename(old)
            try:
                staging.rename(out)
            except OSError:
                old.rename(out)  # the earlier bundle stays as it was
                raise
            shutil.rmtree(old)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in reversed(created):
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise


def default_mode(*, directory: bool = False) -> int:
    """The permissions a new file (or folder) gets under the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _bundle_config(raw: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """The search configuration as a bundle keeps it: no absolute path, no storage."""
    config = copy.deepcopy(dict(raw))
    data = config.get("data")
    options = data.get("options") if isinstance(data, dict) else None
    if isinstance(options, dict) and isinstance(options.get("path"), str) and os.path.isabs(options["path"]):
        options["path"] = os.path.relpath(options["path"], out.absolute())
    if isinstance(config.get("search"), dict):
        config["search"].pop("storage", None)  # where the study lived; the bundle does not need it
    return config


def write_bundle(
    staging: Path,
    out_dir: str | os.PathLike[str],
    net: BranchedNet,
    *,
    backbone: str,
    backbone_options: Mapping[str, Any],
    block_names: Sequence[str],
    preprocess: Preprocess,
    config: Mapping[str, Any],
    candidate: Mapping[str, Any],
) -> None:
    """Write the network's files of a bundle (all but ``metrics.json``, deployment files and
    ``bundle.json``) into ``staging``, the folder :func:`staged` gave for ``out_dir``.

    Args:
        staging: Where to write.
        out_dir: Where the bundle will live (a relative data path is taken relative to it).
        net: The network (its tree, tasks and weights are written).
        backbone, backbone_options: How to rebuild its backbone.
        block_names: Names of the backbone's blocks, for the tree's drawing.
        preprocess: The data set's preprocessing (restricted to the net's tasks here).
        config: The search configuration mapping (``{"name": ..., **config.raw}``).
        candidate: The candidate's record; its ``tree`` is left out (``tree.yaml`` has it).
    """
    tree = net.tree
    (staging / TREE).write_text("".join(f"# {line}\n" for line in tree.render(block_names).splitlines()) + tree.to_yaml())
    model = {
        "backbone": backbone,
        "backbone_options": dict(backbone_options),
        "input_shape": list(net_input_shape(preprocess)),
        "tasks": [t.to_dict() for t in net.tasks],
    }
    (staging / MODEL).write_text(yaml.safe_dump(model, sort_keys=False))
    restricted = preprocess.complete(net.tasks).restrict([t.name for t in net.tasks])
    (staging / PREPROCESS).write_text(json.dumps(jsonable(restricted.to_dict()), indent=1, allow_nan=False))
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(staging / WEIGHTS))
    (staging / CONFIG).write_text(yaml.safe_dump(_bundle_config(config, Path(out_dir)), sort_keys=False))
    (staging / CANDIDATE).write_text(yaml.safe_dump({k: v for k, v in candidate.items() if k != "tree"}, sort_keys=False))


def net_input_shape(preprocess: Preprocess) -> tuple[int, ...]:
    """The input shape a network of this preprocessing takes (one sample)."""
    source = preprocess.input
    return source.shape if isinstance(source, ArrayInput) else (source.n_features,)


def write_formats(staging: Path, net: BranchedNet, formats: Sequence[str], held_out: torch.Tensor) -> dict[str, Any]:
    """Write the deployment files of ``formats`` (``onnx``, ``pt2``; others skipped), each checked
    against ``net`` on ``held_out`` (:func:`automtl.deploy.write_deployment`)."""
    from automtl.deploy import write_deployment

    return write_deployment(staging, net, [f for f in formats if f in DEPLOY_FILES], held_out, DEPLOY_FILES)


def write_metrics(staging: Path, metrics: Mapping[str, Any]) -> None:
    """``metrics.json`` (non-finite values as ``null``)."""
    (staging / METRICS_FILE).write_text(json.dumps(jsonable(dict(metrics)), indent=2, allow_nan=False))


def write_manifest(staging: Path, tasks: Sequence[str], *, deployed: Sequence[str] = (), subset_of: Sequence[str] | None = None) -> None:
    """``bundle.json``, written last: the format, the tasks, and which deployment files exist."""
    from automtl import __version__

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "written_by": f"automtl {__version__}",
        "tasks": list(tasks),
        "subset_of": list(subset_of) if subset_of is not None else None,
        "files": sorted(p.name for p in staging.iterdir() if p.name in _KNOWN and p.name != MANIFEST) + [MANIFEST],
        "deployment": {fmt: DEPLOY_FILES[fmt] for fmt in deployed},
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))


# ----------------------------------------------------------------------------- reading
@dataclass
class Bundle:
    """A bundle read and checked (:func:`read_bundle`); :attr:`net` is ready for inference.

    Attributes:
        path: The folder.
        manifest: ``bundle.json``.
        tree: The architecture.
        backbone_name, backbone_options: How its backbone was built.
        backbone: The backbone (it makes fresh blocks, e.g. for a task subset).
        tasks: Task descriptions, in output order.
        preprocess: Input preprocessing and labels.
        net: The network with its weights, in eval mode.
    """

    path: Path
    manifest: dict[str, Any]
    tree: BranchTree
    backbone_name: str
    backbone_options: dict[str, Any]
    backbone: Backbone
    tasks: list[TaskSpec]
    preprocess: Preprocess
    net: BranchedNet

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.backbone.input_shape)

    def resolve_metrics(self, *, trust_code: bool = False) -> None:
        """Check that every task's metric resolves (evaluation calls them).

        Raises:
            BundleError: A metric that is an import path without ``trust_code``, or unknown.
        """
        for task in self.tasks:
            try:
                METRICS.get(task.metric, trust_code=trust_code)
            except RegistryError as exc:
                raise BundleError(f"{self.path / MODEL}: task '{task.name}': {_one_line(exc)}") from exc

    def deployment_file(self, fmt: str) -> Path:
        """The file of deployment format ``fmt`` (``onnx``, ``pt2``).

        Raises:
            FileNotFoundError: The bundle was exported without it.
        """
        name = self.manifest.get("deployment", {}).get(fmt)
        if name is None or not (self.path / name).is_file():
            raise FileNotFoundError(
                f"{self.path} has no {fmt} model; export it with formats including '{fmt}'"
            )
        return self.path / name


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; is {path.parent} an automtl export?")
    return path.read_text()


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(_read_text(path))
    except yaml.YAMLError as exc:
        raise BundleError(f"{path}: invalid YAML: {_one_line(exc)}") from exc


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: invalid JSON: {_one_line(exc)}") from exc


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not path.is_dir():
        raise FileNotFoundError(f"bundle {path} is missing (no such directory)")
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} is missing; is {path} an automtl export? (bundles written before format 1 lack it: re-export)"
        )
    manifest = _read_json(file)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{file}: not an automtl bundle manifest (expected \"format\": \"{FORMAT}\")")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{file}: format_version {version!r} is not one this automtl reads (it reads {FORMAT_VERSION}); "
            f"the bundle was written by {manifest.get('written_by', 'an unknown writer')}: read it with that "
            "version, or re-export it"
        )
    return manifest


def _check_model(spec: Any, file: Path, trust_code: bool) -> tuple[str, dict[str, Any], tuple[int, ...], list[TaskSpec]]:
    if not isinstance(spec, dict):
        raise BundleError(f"{file}: expected a mapping with backbone, backbone_options, input_shape and tasks")
    for key in ("backbone", "input_shape", "tasks"):
        if key not in spec:
            raise BundleError(f"{file}: key '{key}' is missing")
    if not isinstance(spec["backbone"], str) or not spec["backbone"]:
        raise BundleError(f"{file}: backbone must be a name, got {spec['backbone']!r}")
    try:  # before anything else is read from the file: an untrusted import path stops here, unimported
        BACKBONES.get(spec["backbone"], trust_code=trust_code)
    except RegistryError as exc:
        raise BundleError(f"{file}: {_one_line(exc)}") from exc
    options = spec.get("backbone_options") or {}
    if not isinstance(options, dict):
        raise BundleError(f"{file}: backbone_options must be a mapping, got {options!r}")
    shape = spec["input_shape"]
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise BundleError(f"{file}: input_shape must be a list of positive integers, got {shape!r}")
    if not isinstance(spec["tasks"], list) or not spec["tasks"]:
        raise BundleError(f"{file}: tasks must be a non-empty list of task descriptions")
    tasks = []
    for i, entry in enumerate(spec["tasks"]):
        where = f"{file}: tasks[{i}]"
        if not isinstance(entry, dict):
            raise BundleError(f"{where}: expected a mapping, got {entry!r}")
        for key in ("name", "type", "loss", "metric"):
            if not isinstance(entry.get(key, ""), str):
                raise BundleError(f"{where}: {key} must be a string, got {entry[key]!r}")
        for key in ("target_mean", "target_std"):
            value = entry.get(key, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise BundleError(f"{where}: {key} must be a finite number, got {value!r}")
        try:
            tasks.append(TaskSpec.from_dict(entry))
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{where}: {_one_line(exc)}") from exc
    return spec["backbone"], options, tuple(shape), tasks


def read_bundle(
    bundle: str | os.PathLike[str], device: str | torch.device | None = "cpu", *, trust_code: bool = False
) -> Bundle:
    """Read and check every file a model needs, and build the network with its weights.

    Args:
        bundle: The folder.
        device: Where the network goes (``"auto"``: CUDA when available).
        trust_code: Allow a ``module:function`` backbone in ``model.yaml`` (importing runs code).

    Raises:
        FileNotFoundError: The folder or a file is missing.
        BundleError: An unknown format version, a malformed file, files that do not fit together
            (a tensor whose shape differs from what ``model.yaml`` and ``tree.yaml`` build), or
            an import path without ``trust_code``; the file (and key or tensor) is named.
    """
    path = Path(bundle)
    manifest = _read_manifest(path)
    for name in _NEEDED:
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} is missing; is {path} an automtl export?")
    model_file = path / MODEL
    name, options, shape, tasks = _check_model(_read_yaml(model_file), model_file, trust_code)
    try:
        tree = BranchTree.from_dict(_read_yaml(path / TREE))
    except ValueError as exc:
        if isinstance(exc, BundleError):
            raise
        raise BundleError(f"{path / TREE}: {_one_line(exc)}") from exc
    try:
        preprocess = Preprocess.from_dict(_read_json(path / PREPROCESS))
    except DataError as exc:
        raise BundleError(f"{path / PREPROCESS}: {_one_line(exc)}") from exc
    names = [t.name for t in tasks]
    if set(preprocess.targets) != set(names):
        raise BundleError(f"{path / PREPROCESS}: targets {sorted(preprocess.targets)} differ from {MODEL}'s tasks {names}")
    if net_input_shape(preprocess) != shape:
        raise BundleError(
            f"{path / PREPROCESS}: its input gives shape {list(net_input_shape(preprocess))} but {MODEL}'s "
            f"input_shape is {list(shape)}"
        )
    try:
        backbone = create_backbone(name, shape, trust_code=trust_code, **options)
    except RegistryError as exc:
        raise BundleError(f"{model_file}: {_one_line(exc)}") from exc
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{model_file}: backbone '{name}' with options {options}: {_one_line(exc)}") from exc
    try:
        net = BranchedNet(tree, backbone, tasks)
    except ValueError as exc:
        raise BundleError(f"{path / TREE} and {model_file} do not fit together: {_one_line(exc)}") from exc
    _load_weights(net, path / WEIGHTS)
    return Bundle(path, manifest, tree, name, options, backbone, tasks, preprocess, net.to(resolve_device(device)).eval())


def _load_weights(net: BranchedNet, file: Path) -> None:
    try:
        state = load_file(str(file))
    except Exception as exc:  # safetensors raises its own error type for a truncated or foreign file
        raise BundleError(f"{file}: cannot read it ({_one_line(exc)}); the file is truncated or not safetensors") from exc
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise BundleError(f"{file}: tensor(s) {missing[:3]} missing; tree.yaml and {MODEL} need them")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise BundleError(f"{file}: tensor(s) {unexpected[:3]} that tree.yaml and {MODEL} do not build")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise BundleError(
                f"{file}: tensor '{key}' has shape {list(state[key].shape)}, but {MODEL} and tree.yaml build "
                f"{list(value.shape)}; the files do not belong together (was one edited?)"
            )
    net.load_state_dict(state)


def load(bundle: str | os.PathLike[str], device: str | torch.device | None = "cpu", *, trust_code: bool = False) -> BranchedNet:
    """Load an exported bundle as a :class:`~automtl.build.BranchedNet` in eval mode.

    Its ``forward(x)`` takes ``[N, *input_shape]`` and returns ``{task: output}`` (logits, or
    standardized regression values); :meth:`BranchedNet.predict` gives probabilities and
    regression values in their original unit; :func:`automtl.predict` takes raw rows.

    Args:
        bundle: The folder written by :func:`automtl.export_trial`.
        device: Where to put the network.
        trust_code: Allow a ``module:function`` backbone (importing it runs code; see
            :mod:`automtl.registry`). Leave it false for a bundle from anyone you do not trust.

    Raises:
        FileNotFoundError: A bundle file is missing.
        BundleError: See :func:`read_bundle`.
    """
    return read_bundle(bundle, device, trust_code=trust_code).net


def read_config(bundle: str | os.PathLike[str], *, trust_code: bool = False) -> SearchConfig:
    """The search configuration in ``config.yaml``; its data path is relative to the bundle folder.

    Raises:
        FileNotFoundError: ``config.yaml`` is missing.
        BundleError: Invalid YAML or configuration (the key is named).
    """
    file = Path(bundle) / CONFIG
    raw = _read_yaml(file)
    try:
        return parse_config(raw, str(file), trust_code=trust_code)
    except ValueError as exc:
        raise BundleError(f"{file}: {_one_line(exc)}") from exc


def prepare_data(bundle: str | os.PathLike[str], *, trust_code: bool = False) -> Experiment:
    """The data set (and backbone) of the bundle's ``config.yaml``, loaded.

    Raises:
        BundleError: The configuration or its data set cannot be loaded (``config.yaml`` and the
            key are named).
    """
    config = read_config(bundle, trust_code=trust_code)
    try:
        return prepare(config)
    except (ConfigError, DataError) as exc:
        raise BundleError(f"{Path(bundle) / CONFIG}: {_one_line(exc)}") from exc


def load_program(bundle: str | os.PathLike[str], *, trust_code: bool = False) -> Any:
    """The bundle's ``torch.export`` program (``model.pt2``), as a callable module.

    ``torch.export.load`` unpickles, which can run code, so this needs ``trust_code=True``.

    Raises:
        BundleError: Without ``trust_code``.
        FileNotFoundError: The bundle has no ``model.pt2``.
    """
    path = Path(bundle)
    manifest = _read_manifest(path)
    if not trust_code:
        raise BundleError(
            f"{path / DEPLOY_FILES['pt2']}: torch.export.load unpickles, which can run code; it is refused unless "
            "you trust the bundle and pass trust_code=True (the ONNX model needs no trust)"
        )
    name = manifest.get("deployment", {}).get("pt2")
    if name is None or not (path / name).is_file():
        raise FileNotFoundError(f"{path} has no pt2 model; export it with formats including 'pt2'")
    return torch.export.load(str(path / name)).module()
