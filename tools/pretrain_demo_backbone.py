"""Pretrain the shipped demo backbone on the synthetic source task, on the CPU, and write checkpoint + card.

The demo backbone (``tinytl_core.backbones.DEMO_BACKBONE``, a width-0.5 timm MobileNetV2 with ReLU6 at
64 px) gives offline users a real pretrained starting point. This script reproduces it:

    python tools/pretrain_demo_backbone.py --steps 3000 --seed 0

Every training image is generated on the fly by :func:`tinytl_core.data.source_task.source_batch` (batch
``k`` = images ``k*B .. k*B+B-1`` of the training stream, so the data does not depend on the number of
workers) and never repeats; held-out accuracy is measured on a disjoint image stream. The checkpoint is
written as safetensors (floats stored as fp16 unless ``--fp32``) with a JSON card next to it; the card's
source accuracy is measured on the checkpoint as stored, after reloading it.

Speed: one intra-op thread per process (``--threads 1``) is usually fastest on a small shared CPU; a
DataLoader worker (``--workers 1``) draws the images on another core meanwhile.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn
from tqdm.auto import tqdm

from tinytl_core.backbones import LOCAL_BACKBONES, WEIGHTS_DIR, create_backbone, data_config
from tinytl_core.data.source_task import (
    SOURCE_BACKGROUNDS,
    SOURCE_CLASS_NAMES,
    SOURCE_CLASSES,
    SOURCE_COLOURS,
    SOURCE_FILLS,
    SOURCE_SHAPES,
    SOURCE_TASK_DESCRIPTION,
    source_batch,
)
from tinytl_core.quantities import format_mb

FACTORS: tuple[str, ...] = ("shape", "colour", "fill", "background")


class SourceBatches(torch.utils.data.Dataset):
    """Item ``k`` = training batch ``k`` of the source stream as (uint8 NCHW tensor, labels)."""

    def __init__(self, seed: int, batch_size: int, size: int):
        self.seed, self.batch_size, self.size = seed, batch_size, size

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = source_batch(self.seed, k * self.batch_size, self.batch_size, self.size)
        return torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels)


class Normalize(nn.Module):
    """uint8 NCHW -> normalised float, channels-last (the faster layout for this CNN on CPU)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--backbone",
        default=next(iter(LOCAL_BACKBONES)),
        choices=list(LOCAL_BACKBONES),
        help="shipped backbone to pretrain (its entry fixes architecture and input size)",
    )
    p.add_argument("--steps", type=int, default=3000, help="optimisation steps")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=0.02)
    p.add_argument("--warmup", type=int, default=150, help="linear warm-up steps before the cosine decay")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="seeds the model init and the image streams")
    p.add_argument("--eval-every", type=int, default=500, help="held-out evaluation period in steps")
    p.add_argument("--eval-images", type=int, default=3072, help="held-out images (fixed, generated once)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--workers", type=int, default=1, help="DataLoader processes that draw the images")
    p.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR, help="where checkpoint and card go")
    p.add_argument("--fp32", action="store_true", help="store float32 instead of float16 (twice the size)")
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "eval_every", "eval_images", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1")
    if args.workers < 0 or args.warmup < 0 or not args.lr > 0:
        raise SystemExit("error: --workers and --warmup must be >= 0 and --lr > 0")
    return args


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


@torch.no_grad()
def evaluate(
    model: nn.Module, prep: Normalize, images: torch.Tensor, labels: torch.Tensor, batch: int = 256
) -> dict[str, float]:
    """Top-1 / top-5 accuracy on the held-out set, plus accuracy of each factor of the predicted class."""
    model.eval()
    preds, top5 = [], 0
    for i in range(0, len(labels), batch):
        logits = model(prep(images[i : i + batch]))
        preds.append(logits.argmax(1))
        top5 += int((logits.topk(5, 1).indices == labels[i : i + batch, None]).any(1).sum())
    pred = torch.cat(preds).numpy()
    true = labels.numpy()
    out = {"top1": float((pred == true).mean()), "top5": top5 / len(true)}
    for factor in FACTORS:
        out[factor] = float(
            np.mean(
                [
                    getattr(SOURCE_CLASSES[p], factor) == getattr(SOURCE_CLASSES[t], factor)
                    for p, t in zip(pred, true)
                ]
            )
        )
    return out


def export_state(model: nn.Module, fp32: bool) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors (safetensors needs them); floats in fp16 unless ``fp32``."""
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        state[k] = v.half() if v.is_floating_point() and not fp32 else v
    return state


def write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the files are meant to be shipped and read by anyone
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python " + " ".join(
        shlex.quote(a) for a in [str(Path(sys.argv[0]).as_posix()), *(sys.argv[1:] if argv is None else argv)]
    )
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    spec = LOCAL_BACKBONES[args.backbone]
    model, _ = create_backbone(spec.name, num_classes=len(SOURCE_CLASSES), pretrained=False)
    cfg = data_config(model)
    size = cfg.resolution
    model = model.to(memory_format=torch.channels_last)
    prep = Normalize(cfg.mean, cfg.std)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{spec.name} ({spec.architecture}, {n_params / 1e6:.2f} M params) on {len(SOURCE_CLASSES)} source "
        f"classes at {size} px; {args.steps} steps x {args.batch_size} images",
        flush=True,
    )

    heldout_x, heldout_y = source_batch(args.seed, 0, args.eval_images, size, split="heldout")
    heldout_x = torch.from_numpy(heldout_x).permute(0, 3, 1, 2)
    heldout_y = torch.from_numpy(heldout_y)

    loader = torch.utils.data.DataLoader(
        SourceBatches(args.seed, args.batch_size, size),
        batch_size=None,
        sampler=range(args.steps),
        num_workers=args.workers,
        prefetch_factor=4 if args.workers else None,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, args.warmup, args.steps))
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    history: list[dict[str, float]] = []
    t_train = time.perf_counter()
    bar = tqdm(loader, total=args.steps, desc="pretraining", unit="step", dynamic_ncols=True)
    loss_avg = acc_avg = None
    for step, (x, y) in enumerate(bar, start=1):
        model.train()
        logits = model(prep(x))
        loss = criterion(logits, y)
        if not torch.isfinite(loss):
            raise SystemExit(f"error: loss became {float(loss)} at step {step}; lower --lr (now {args.lr:g})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        acc = float((logits.argmax(1) == y).float().mean())
        loss_avg = float(loss) if loss_avg is None else 0.98 * loss_avg + 0.02 * float(loss)
        acc_avg = acc if acc_avg is None else 0.98 * acc_avg + 0.02 * acc
        speed = step * args.batch_size / (time.perf_counter() - t_train)
        bar.set_postfix(loss=f"{loss_avg:.3f}", acc=f"{acc_avg:.3f}", img_s=f"{speed:.0f}")
        if step % args.eval_every == 0 or step == args.steps:
            metrics = evaluate(model, prep, heldout_x, heldout_y)
            history.append(
                {
                    "step": step,
                    "train_loss": round(loss_avg, 4),
                    "train_acc": round(acc_avg, 4),
                    **{k: round(v, 4) for k, v in metrics.items()},
                    "elapsed_s": round(time.perf_counter() - t_start, 1),
                }
            )
            bar.write(
                f"step {step}: held-out top-1 {metrics['top1']:.3f}, top-5 {metrics['top5']:.3f} "
                f"(shape {metrics['shape']:.3f}, colour {metrics['colour']:.3f}, "
                f"fill {metrics['fill']:.3f}, background {metrics['background']:.3f})"
            )
    bar.close()
    train_time = time.perf_counter() - t_train

    from safetensors.torch import load_file, save_file

    weights_path = args.out_dir / spec.weights_file
    state = export_state(model, args.fp32)
    write_atomic(
        weights_path,
        lambda tmp: save_file(
            state,
            tmp,
            metadata={
                "backbone": spec.name,
                "architecture": spec.architecture,
                "num_classes": str(len(SOURCE_CLASSES)),
            },
        ),
    )
    # The card reports the checkpoint as shipped: reload it into a fresh model and measure again.
    check, _ = create_backbone(spec.name, num_classes=len(SOURCE_CLASSES), pretrained=False)
    check.load_state_dict(load_file(str(weights_path)))
    final = evaluate(check.to(memory_format=torch.channels_last), prep, heldout_x, heldout_y)
    total_time = time.perf_counter() - t_start
    card = {
        "name": spec.name,
        "description": spec.description,
        "architecture": spec.architecture,
        "architecture_note": "timm MobileNetV2, width multiplier 0.5, ReLU6 activations, BatchNorm",
        "parameters": n_params,
        "parameters_without_classifier": n_params
        - sum(p.numel() for p in model.get_classifier().parameters()),
        "weights_file": spec.weights_file,
        "weights_dtype": "float32" if args.fp32 else "float16",
        "weights_bytes": weights_path.stat().st_size,
        "input_size": list(cfg.input_size),
        "resolution": size,
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "source_task": {
            "module": "tinytl_core.data.source_task",
            "description": SOURCE_TASK_DESCRIPTION,
            "num_classes": len(SOURCE_CLASSES),
            "factors": {
                "shape": list(SOURCE_SHAPES),
                "colour": list(SOURCE_COLOURS),
                "fill": list(SOURCE_FILLS),
                "background": list(SOURCE_BACKGROUNDS),
            },
            "class_names_example": list(SOURCE_CLASS_NAMES[:3]),
            "train_images_seen": args.steps * args.batch_size,
            "heldout_images": args.eval_images,
        },
        "source_accuracy": {k: round(v, 4) for k, v in final.items()},
        "chance_accuracy": round(1 / len(SOURCE_CLASSES), 4),
        "training": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "optimizer": "AdamW",
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "warmup_steps": args.warmup,
            "schedule": "linear warm-up + cosine",
            "label_smoothing": args.label_smoothing,
            "seed": args.seed,
            "threads": args.threads,
            "workers": args.workers,
            "device": "cpu",
        },
        "history": history,
        "time": {
            "train_s": round(train_time, 1),
            "total_s": round(total_time, 1),
            "images_per_s": round(args.steps * args.batch_size / train_time, 1),
        },
        "command": command,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), {platform.python_version()}",
        "versions": {"torch": torch.__version__, "timm": timm.__version__, "numpy": np.__version__},
    }
    card_path = args.out_dir / spec.card_file
    text = json.dumps(card, indent=2) + "\n"
    write_atomic(card_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    print(f"wrote {weights_path} ({format_mb(card['weights_bytes'])} MB) and {card_path}")
    print(
        f"source held-out top-1 {final['top1']:.3f} (chance {1 / len(SOURCE_CLASSES):.4f}), "
        f"top-5 {final['top5']:.3f}; {total_time / 60:.1f} min"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
