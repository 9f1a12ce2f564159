"""``python -m tinytl_core backbones``: search the timm catalog."""

from __future__ import annotations

import argparse

import pandas as pd

from tinytl_core import limits as L
from tinytl_core.backbones import KINDS, families, list_backbones
from tinytl_core.cli.args import bounded
from tinytl_core.reports import text_table


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``backbones`` command."""
    p = sub.add_parser("backbones", help="list timm backbones (curated mobile CNNs first)")
    p.add_argument("--search", help="substring of the architecture name (wildcards * allowed)")
    p.add_argument("--family", help="timm family (module), e.g. efficientnet, resnet")
    p.add_argument("--kind", choices=KINDS, help="cnn, transformer, hybrid or mlp")
    p.add_argument("--pretrained", action="store_true", help="only architectures with pretrained weights")
    p.add_argument("--curated", action="store_true", help="only the curated default list")
    p.add_argument("--families", action="store_true", help="list the families and exit")
    p.add_argument("--limit", type=bounded(L.ROWS), default=50, help="rows to print (0: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print matching backbones as a table."""
    if args.families:
        names = families()
        shown = names if args.limit == 0 else names[: args.limit]
        print("\n".join(shown))
        if len(shown) < len(names):
            print(f"... {len(names) - len(shown)} more (use --limit 0)")
        return 0
    rows = list_backbones(args.search, args.family, args.pretrained, args.kind)
    if args.curated:
        rows = [r for r in rows if r.curated]
    if not rows:
        print("no backbone matches")
        return 1
    table = pd.DataFrame([r.__dict__ for r in rows])
    shown = table if args.limit == 0 else table.head(args.limit)
    words = shown.assign(  # headers and values in words, text left-aligned (text_table)
        has_pretrained=shown["has_pretrained"].map({True: "yes", False: "no"}),
        curated=shown["curated"].map({True: "yes", False: ""}),
    ).rename(columns={"has_pretrained": "pretrained weights", "description": "note"})
    print(text_table(words))
    if len(shown) < len(table):
        print(f"... {len(table) - len(shown)} more (use --limit 0)")
    return 0
