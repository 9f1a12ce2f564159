"""``python -m tinytl_core datasets``: list datasets, build the built-in ones, inspect or download one."""

from __future__ import annotations

import argparse
import sys
import textwrap
import time

import pandas as pd

from tinytl_core import limits as L
from tinytl_core.cli.args import bounded
from tinytl_core.data import list_datasets, load_dataset
from tinytl_core.data.builtin import BUILTIN_SETS, builtin_cache_path, load_builtin
from tinytl_core.data.torchvision_sets import DEFAULT_TIMEOUT_S, is_downloaded, load_torchvision
from tinytl_core.reports import frame_text


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``datasets`` command and its sub-commands."""
    p = sub.add_parser("datasets", help="list, build, inspect or download datasets")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = actions.add_parser("list", help="every named dataset with a description")
    ls.add_argument("--kind", choices=("builtin", "torchvision"), default=None)
    ls.set_defaults(func=run_list)
    build = actions.add_parser("build", help="generate and cache the built-in sets (timed)")
    build.add_argument("names", nargs="*", default=[], help=f"default: all of {', '.join(BUILTIN_SETS)}")
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    build.set_defaults(func=run_build)
    info = actions.add_parser("info", help="load a dataset (name, folder or .zip) and print its splits")
    info.add_argument("name")
    info.add_argument(
        "--shots",
        type=bounded(L.IMAGES_PER_CLASS),
        default=None,
        help="at most this many training images per class",
    )
    info.add_argument("--val-fraction", type=bounded(L.VALIDATION_FRACTION), default=0.2)
    info.add_argument("--seed", type=bounded(L.SEED), default=0)
    info.add_argument("--no-download", dest="download", action="store_false")
    info.set_defaults(func=run_info)
    dl = actions.add_parser("download", help="download a torchvision dataset into the cache")
    dl.add_argument("name")
    dl.add_argument(
        "--timeout", type=bounded(L.TIMEOUT), default=DEFAULT_TIMEOUT_S, help="network time-out in seconds"
    )
    dl.set_defaults(func=run_download)


def run_list(args: argparse.Namespace) -> int:
    """Print the dataset table."""
    print(f"{'name':<11}{'kind':<12}{'classes':>7}  {'paper':<6}{'status':<19}description")
    for d in list_datasets(args.kind):
        if d.kind == "builtin":
            spec = BUILTIN_SETS[d.name]
            cached = builtin_cache_path(
                d.name, n_per_class=spec.n_per_class, image_size=spec.image_size, seed=0
            ).exists()
            state = "cached" if cached else "built on first use"
        elif is_downloaded(d.name):
            state = "downloaded"
        else:
            state = f"download {d.download_size}" if d.downloadable else "manual download"
        text = textwrap.shorten(d.description, 70, placeholder=" ...")
        print(f"{d.name:<11}{d.kind:<12}{d.num_classes:>7}  {'yes' if d.paper else '':<6}{state:<19}{text}")
    print("Also: any folder with one sub-folder per class, or a .zip of one (--dataset PATH).")
    return 0


def run_build(args: argparse.Namespace) -> int:
    """Build (or load) each built-in set and print how long it took."""
    names = args.names or list(BUILTIN_SETS)
    unknown = [n for n in names if n not in BUILTIN_SETS]  # every name before the first build
    if unknown:
        raise ValueError(f"unknown built-in dataset {unknown[0]!r}; choose from {', '.join(BUILTIN_SETS)}")
    for name in names:
        spec = BUILTIN_SETS[name]
        path = builtin_cache_path(name, n_per_class=spec.n_per_class, image_size=spec.image_size, seed=0)
        if args.force:
            path.unlink(missing_ok=True)
        cached = path.exists()
        start = time.perf_counter()
        source = load_builtin(name, progress=True)
        took = time.perf_counter() - start
        print(
            f"{name}: {len(source)} images, {len(source.classes)} classes, "
            f"{source.images.shape[1]} px, {'loaded from cache' if cached else 'built'} in {took:.2f} s "
            f"-> {path}"
        )
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Load a dataset and print split sizes, classes and skipped files."""
    data = load_dataset(
        args.name,
        val_fraction=args.val_fraction,
        seed=args.seed,
        shots=args.shots,
        download=args.download,
        progress=True,
    )
    print(data.summary())
    if data.description:
        print(data.description)
    train, val = data.train.class_counts(), data.val.class_counts()
    frame = pd.DataFrame({"class": data.classes, "train": train, "val": val})
    print(frame_text(frame, max_rows=30))
    if data.skipped:
        print(f"skipped {data.skipped} file(s), e.g. {', '.join(data.skipped_examples)}")
    if len(data.train) == 0 or len(data.val) == 0:  # as adapt will say: said here, not found out there
        print(
            "note: training needs at least one training and one validation image: add images (or raise "
            "--val-fraction) before `adapt` or `sparse-search` can use it",
            file=sys.stderr,
        )
        return 1
    return 0


def run_download(args: argparse.Namespace) -> int:
    """Download a torchvision dataset (both splits)."""
    train, val = load_torchvision(args.name, download=True, timeout=args.timeout, progress=True)
    print(
        f"{args.name}: {len(train)} training"
        + (f" / {len(val)} test or validation" if val else "")
        + " images ready"
    )
    return 0
