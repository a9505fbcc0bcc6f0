"""The ``automtl`` command: a thin shell over the Python API (every command has a Python twin).

    automtl search CONFIG            -> automtl.run_search(automtl.load_config(CONFIG))
    automtl show [CONFIG]            -> automtl.report.format_study(automtl.load_study(...))
    automtl export [CONFIG] --out D  -> automtl.export_trial(study, storage, D, trial, retrain_seeds=N)
    automtl plot [CONFIG] --out D    -> automtl.plots.plot_study(study, D)  (history.png, pareto.png)
    automtl evaluate D               -> automtl.evaluate_bundle(D, split)
    automtl predict D IN --out OUT   -> automtl.inference.predict_file(D, IN, OUT)  (twin: automtl.predict(D, IN))
    automtl train CONFIG --arch hps  -> automtl.fixed.train_fixed(automtl.experiment.prepare(config), "hps")
    automtl list balancers           -> automtl.report.format_registry("balancers")
    automtl affinity CONFIG --out D  -> automtl.affinity.measure_affinity(config).save(D)
    automtl affinity show D          -> automtl.affinity.format_affinity(automtl.affinity.load_affinity(D).reading())
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

_TRUST_HELP = (
    "allow 'module:function' names in the config or bundle to be imported: this RUNS THEIR CODE; "
    "use it only for files you trust"
)


def _add_study_args(p: argparse.ArgumentParser, *, config_optional: bool) -> None:
    if config_optional:
        p.add_argument("config", nargs="?", help="search YAML; its name and storage locate the study")
    p.add_argument("--storage", help="Optuna storage URL (default: from CONFIG, else sqlite:///runs/automtl.db)")
    p.add_argument("--study-name", help="study name (default: from CONFIG, else the storage's newest study)")
    p.add_argument("--artifacts", metavar="DIR", help="folder of the weights (default: the one recorded in the study)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="automtl",
        description="Search branched multi-task networks: branching points, task groupings and loss balancing.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("search", help="run or resume a search")
    p.add_argument("config", help="search YAML (see search_spaces/)")
    p.add_argument("--n-trials", type=int, help="total finished trials to reach (resumes count earlier ones)")
    p.add_argument("--timeout", type=float, help="seconds after which no new trial starts")
    p.add_argument("--storage", help="Optuna storage URL (default: search.storage, else sqlite:///runs/automtl.db)")
    p.add_argument("--study-name", help="study name (default: search.study_name, else the config's name)")
    p.add_argument("--device", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    p.add_argument("--seed", type=int, help="seeds the sampler and every trial's training")
    p.add_argument("--no-progress", action="store_true", help="no progress bar; one line per trial")
    p.add_argument("--seed-from-affinity", metavar="DIR", help="enqueue trees derived from 'automtl affinity' output first")
    p.add_argument(
        "--restrict-to-affinity", action="store_true", help="with --seed-from-affinity: fix the task grouping to the affinity's best"
    )
    p.add_argument("--no-confirm", action="store_true", help="skip the confirmation stage (the answer is then a screening value)")
    p.add_argument(
        "--strategy", choices=["full", "supernet"], help="screening by full trainings, or by one weight-sharing supernet (search.strategy)"
    )
    p.add_argument("--artifacts", metavar="DIR", help="folder of the weights (default: beside a SQLite/journal file)")
    p.add_argument("--threads", type=int, help="torch threads per worker (default: train.threads, else cores / workers)")
    p.add_argument("--workers", type=int, help="run N local worker processes on the study (one progress bar)")
    p.add_argument("--devices", help="with --workers: one device per worker, cycled, e.g. cuda:0,cuda:1")
    p.add_argument(
        "--worker-index", type=int, default=0, help="this worker's index when joining a study from another machine (its sampler seed)"
    )
    p.add_argument("--trust-code", action="store_true", help=_TRUST_HELP)

    p = sub.add_parser("show", help="trials with per-task metrics, and the best architecture")
    _add_study_args(p, config_optional=True)
    p.add_argument("--top", type=int, default=0, help="only the N best complete trials (default: all)")

    p = sub.add_parser("export", help="write the best (or a given) trial as a bundle")
    _add_study_args(p, config_optional=True)
    p.add_argument("--out", required=True, help="bundle directory")
    p.add_argument(
        "--trial", type=int, help="trial number to export, its own screening run (default: the confirmed answer)"
    )
    p.add_argument(
        "--retrain-seeds", type=int, default=0, metavar="N", help="also retrain it on train with seeds 0..N-1; test mean ± std"
    )
    p.add_argument("--device", help="for --retrain-seeds: auto, cpu, cuda ...")
    p.add_argument(
        "--format",
        default="safetensors",
        help="comma-separated: safetensors (always), onnx, pt2; each checked against the eager model (max abs diff <= 1e-4)",
    )
    p.add_argument("--tasks", help="comma-separated: export only the subtree serving these tasks")
    p.add_argument("--trust-code", action="store_true", help=_TRUST_HELP)

    p = sub.add_parser("plot", help="PNG pictures of a study: optimization history, Pareto front")
    _add_study_args(p, config_optional=True)
    p.add_argument("--out", required=True, help="directory for history.png (and pareto.png when multi-objective)")

    p = sub.add_parser("evaluate", help="metrics of an exported bundle, as JSON")
    p.add_argument("bundle", help="directory written by 'automtl export'")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--trust-code", action="store_true", help=_TRUST_HELP)

    p = sub.add_parser("predict", help="predict on raw rows (.csv/.parquet) or arrays (.npy/.npz) with a bundle")
    p.add_argument("bundle", help="directory written by 'automtl export'")
    p.add_argument("input", help="raw rows (.csv or .parquet; label columns are ignored) or an array (.npy or .npz)")
    p.add_argument("--out", required=True, help="output table, .csv or .parquet: one column per task")
    p.add_argument("--proba", action="store_true", help="class probabilities instead of class labels")
    p.add_argument("--tasks", help="comma-separated: predict only these tasks")
    p.add_argument("--unseen", default="ignore", choices=["ignore", "error"],
                   help="a category not seen in training: no category (as in training; counted), or an error")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=2048, help="samples per forward pass")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--trust-code", action="store_true", help=_TRUST_HELP)

    p = sub.add_parser("train", help="train one fixed design over seeds; validation and test metrics")
    p.add_argument("config", help="search YAML (data, backbone and training settings are used)")
    p.add_argument("--arch", default="hps", help="hps (hard parameter sharing), single (single-task) or TREE.yaml")
    p.add_argument("--balancer", default="equal", help="a registered balancer (automtl list balancers)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1; metrics are mean ± std")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--lr", type=float, help="override the learning rate (default: fixed value or middle of range)")
    p.add_argument("--device", help="auto, cpu, cuda ...")
    p.add_argument(
        "--delta-m",
        action="store_true",
        help="also train (or reuse cached) single-task networks, tuned and on the same seeds; report Δm, paired",
    )
    p.add_argument("--trust-code", action="store_true", help=_TRUST_HELP)

    p = sub.add_parser("affinity", help="measure inter-task affinity (CONFIG --out DIR) or show it (show DIR)")
    p.add_argument("config", help="search YAML to measure, or the word 'show'")
    p.add_argument("dir", nargs="?", help="with 'show': a directory written by 'automtl affinity CONFIG --out DIR'")
    p.add_argument("--measure", default="lookahead", choices=["lookahead", "cosine", "rsa", "cka"])
    p.add_argument("--every", type=int, help="lookahead/cosine: training steps between measurements (default 15)")
    p.add_argument("--warmup-epochs", type=int, help="unmeasured epochs at the start (default 1 if >= 2 epochs)")
    p.add_argument("--tree", help="BranchTree YAML to train while measuring (default: hard parameter sharing)")
    p.add_argument("--device", help="auto, cpu, cuda ...")
    p.add_argument("--out", help="directory for affinity.json, .graphml and .dot (required to measure)")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the graph and the matrix (pip install 'automtl[plot]')")
    reading = p.add_mutually_exclusive_group()
    reading.add_argument(
        "--with-momentum", action="store_true", help="lookahead: the raw matrix, the optimizer's momentum term included"
    )
    reading.add_argument(
        "--without-momentum", action="store_true", help="lookahead: each task's own part (the default; kept for old scripts)"
    )
    p.add_argument("--groups", type=int, default=0, help="also print the best grouping into at most N groups")
    p.add_argument("--trust-code", action="store_true", help=_TRUST_HELP)

    p = sub.add_parser("list", help="registered balancers, backbones, data sets, metrics or losses")
    p.add_argument("what", choices=["balancers", "backbones", "datasets", "metrics", "losses"])
    return parser


def _locate(args: argparse.Namespace) -> tuple[str, str | None]:
    from automtl.config import DEFAULT_STORAGE, load_config

    storage, name = args.storage, args.study_name
    if getattr(args, "config", None):
        config = load_config(args.config)
        storage = storage or config.storage
        name = name or config.study_name
    return storage or DEFAULT_STORAGE, name


def _run(args: argparse.Namespace) -> int:
    import automtl
    from automtl import report
    from automtl.errors import ConfigError
    from automtl.study import artifact_dir

    if args.command == "search":
        import time

        config = automtl.load_config(args.config, trust_code=args.trust_code)
        if args.strategy is not None:  # into the config itself, so that the study records it
            raw = {"name": config.name, **config.raw}
            raw["search"] = {**dict(raw.get("search") or {}), "strategy": args.strategy}
            config = automtl.parse_config(raw, config.source, trust_code=args.trust_code)
        if args.n_trials is not None and args.n_trials < 1:
            raise ConfigError("--n-trials", f"must be an integer >= 1, got {args.n_trials}")
        started = time.monotonic()
        options = {
            "n_trials": args.n_trials,
            "timeout": args.timeout,
            "storage": args.storage,
            "study_name": args.study_name,
            "device": args.device,
            "seed": args.seed,
            "progress": not args.no_progress,
            "echo": print if args.no_progress else None,
            "seed_from_affinity": args.seed_from_affinity,
            "restrict_to_affinity": args.restrict_to_affinity,
            "confirm": False if args.no_confirm else None,
            "artifacts": args.artifacts,
            "threads": args.threads,
        }
        if args.workers is not None or args.devices:
            from automtl.workers import run_workers

            devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
            workers = args.workers if args.workers is not None else len(devices or [1])
            study = run_workers(config, workers, devices=devices, **options)
        else:
            study = automtl.run_search(config, worker=args.worker_index, **options)
        print(report.format_summary(study, time.monotonic() - started))
    elif args.command == "show":
        storage, name = _locate(args)
        print(report.format_study(automtl.load_study(storage, name), top=args.top))
    elif args.command == "export":
        storage, name = _locate(args)
        from automtl.deploy import format_deployment

        metrics = automtl.export_trial(
            automtl.load_study(storage, name),
            storage,
            args.out,
            args.trial,
            retrain_seeds=args.retrain_seeds,
            device=args.device,
            artifacts=args.artifacts,
            formats=args.format,
            tasks=args.tasks.split(",") if args.tasks else None,
            trust_code=args.trust_code,
        )
        print(report.format_export(metrics, args.out))
        deployment = format_deployment(metrics)
        if deployment:
            print(deployment)
    elif args.command == "plot":
        from automtl.plots import plot_study

        storage, name = _locate(args)
        for path in plot_study(automtl.load_study(storage, name), args.out):
            print(f"picture: {path}")
    elif args.command == "evaluate":
        from automtl.export import jsonable

        metrics = automtl.evaluate_bundle(args.bundle, args.split, args.device, trust_code=args.trust_code)
        print(json.dumps(jsonable(metrics), indent=2, allow_nan=False))
    elif args.command == "predict":
        _predict(args)
    elif args.command == "train":
        from automtl.data import describe_data
        from automtl.experiment import prepare
        from automtl.fixed import train_fixed, tuned_single_task
        from automtl.metrics import nanmean

        config = automtl.load_config(args.config, trust_code=args.trust_code)
        experiment = prepare(config)
        print(describe_data(experiment.data))
        result = train_fixed(
            experiment, args.arch, args.balancer, seeds=args.seeds, device=args.device, epochs=args.epochs, lr=args.lr
        )
        baseline = single = None
        if args.delta_m:
            cache = artifact_dir(config.storage, config.artifacts).parent / "baselines"
            single = tuned_single_task(experiment, cache, list(range(args.seeds)), args.device, epochs=args.epochs)
            baseline = {s: {t: nanmean([r[s][t] for r in single]) for t in experiment.data.task_names} for s in ("val", "test")}
        print(report.format_fixed(result, experiment.data.tasks, baseline, single))
    elif args.command == "affinity":
        _affinity(args)
    elif args.command == "list":
        print(report.format_registry(args.what))
    return 0


def _affinity(args: argparse.Namespace) -> None:
    from pathlib import Path

    import automtl
    from automtl import affinity
    from automtl.data import describe_data
    from automtl.errors import ConfigError
    from automtl.experiment import prepare

    if args.config == "show":
        if not args.dir:
            raise ConfigError("dir", "'automtl affinity show DIR' needs the directory written by 'automtl affinity CONFIG --out DIR'")
        result = affinity.load_affinity(args.dir)
    else:
        if not args.out:
            raise ConfigError("--out", "measuring affinity needs --out DIR")
        tree = automtl.BranchTree.from_yaml(Path(args.tree).read_text()) if args.tree else None
        config = automtl.load_config(args.config, trust_code=args.trust_code)
        experiment = prepare(config)
        print(describe_data(experiment.data), flush=True)
        result = affinity.measure_affinity(
            config,
            measure=args.measure,
            every=args.every or affinity.DEFAULT_EVERY,
            warmup_epochs=args.warmup_epochs,
            tree=tree,
            device=args.device,
            experiment=experiment,
        )
        result.save(args.out)
        print(f"saved to {args.out} (affinity.json, affinity.graphml, affinity.dot)")
    result = result.reading(with_momentum=args.with_momentum)  # --without-momentum: the default
    print(affinity.format_affinity(result))
    if args.groups:
        groups, score = affinity.best_grouping(result.matrix, result.tasks, args.groups)
        print(f"best grouping into at most {args.groups} groups (total affinity, higher is better, {score:+.4g}): {groups}")
    if args.plot:
        print(f"picture: {affinity.plot_affinity(result, args.plot)}")


def _predict(args: argparse.Namespace) -> None:
    from automtl.inference import predict_file

    result = predict_file(
        args.bundle,
        args.input,
        args.out,
        proba=args.proba,
        tasks=args.tasks,
        batch_size=args.batch_size,
        unseen=args.unseen,
        device=args.device,
        progress=False if args.no_progress else None,
        trust_code=args.trust_code,
    )
    kind = "class probabilities" if args.proba else "class labels"
    print(
        f"wrote {result.rows} row(s) to {result.out}: columns {', '.join(result.columns)} "
        f"({kind}; regression values in the target's unit)"
    )
    if result.unseen:
        counts = ", ".join(f"'{column}' {n}" for column, n in result.unseen.items())
        print(f"categories not seen in training (encoded as no category, as in training), rows per column: {counts}")


def _message(exc: BaseException) -> str:
    """One line; the library's ``trust_code=True`` is this command line's ``--trust-code``."""
    from automtl.errors import UntrustedCodeError

    return " ".join(str(exc).split()).replace(UntrustedCodeError.HINT, "--trust-code")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``automtl`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    previous = _sigterm_as_interrupt()  # before the first import of automtl (torch: seconds)
    try:
        return _main(args)
    except KeyboardInterrupt:
        print(f"automtl {args.command}: interrupted; finished trials are kept in the storage", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace) -> int:
    from automtl.errors import AutoMTLError

    try:
        return _run(args)
    except (AutoMTLError, LookupError, FileNotFoundError, ImportError, ValueError) as exc:
        print(f"automtl {args.command}: error: {_message(exc)}", file=sys.stderr)
        return 2


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _sigterm_as_interrupt() -> Any:
    """SIGTERM (batch schedulers, containers, ``kill``) raises KeyboardInterrupt from here on, as
    Ctrl-C does, for the whole command (the imports included): a search fails its running trial
    as interrupted and says so in one line. Returns the handler to restore (``None``: unchanged)."""
    if os.name != "posix" or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)


if __name__ == "__main__":
    sys.exit(main())
