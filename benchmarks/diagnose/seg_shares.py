"""What the teacher sees in each method's images on the segmentation test bed (docs/segmentation.md).

For every run folder of a suite on ``mnist_seg``, the images of its last sample grid (``samples_<epoch>.png``: each
tile an image and, beside it, the teacher's class map) are cut out of the grid, put through the teacher again,
and summarised: the images' mean pixel, the share of their pixels the teacher calls background (class 0), and the
largest share any one digit class takes. The same figures for the real test canvases come first. A student learns
the teacher's classes on the pixels it is shown: where the teacher calls almost no pixel background on a
method's images, the student is never taught the class that covers 79 % of a real canvas.

    python benchmarks/diagnose/seg_shares.py results/mnist_seg [--teacher model_zoo/mnist_seg_deeplab_tiny.pt]

Figures in docs/segmentation.md come from this script (CPU, seconds).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np
import torch
from PIL import Image

from datafree.data import get_source
from datafree.data.spec import Normalizer
from datafree.models import create_model, read_checkpoint

CAP = 12  # the caption strip under each tile (datafree/engine/hooks.py save_sample_grid)


def grid_images(path: str, size: int = 64, ncol: int = 8) -> torch.Tensor:
    """The images of a segmentation sample grid (tiles of image | map, scale 1), as [0, 1] (N, 1, size, size)."""
    a = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    tw, th = 2 * size + 2, size + CAP + 2
    out = []
    for r in range(a.shape[0] // th):
        for q in range(ncol):
            x0, y0 = q * tw + 1, r * th + 1
            tile = a[y0 : y0 + size, x0 : x0 + size]
            if tile.shape == (size, size) and a[y0 : y0 + size, x0 + size : x0 + 2 * size].size:
                out.append(tile)
    return torch.from_numpy(np.stack(out))[:, None]


@torch.no_grad()
def shares(teacher, images: torch.Tensor, norm: Normalizer, k: int) -> dict:
    pred = teacher(norm(images)).argmax(1)
    freq = torch.bincount(pred.flatten(), minlength=k).float() / pred.numel()
    return {
        "n": images.shape[0],
        "mean_pixel": float(images.mean()),
        "background": 100.0 * float(freq[0]),
        "top_digit": 100.0 * float(freq[1:].max()),
        "classes": int((freq > 0).sum()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suite_dir")
    p.add_argument("--teacher", default="model_zoo/mnist_seg_deeplab_tiny.pt")
    p.add_argument("--data-root", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    src = get_source("mnist_seg")
    spec = src.spec
    ckpt = read_checkpoint(args.teacher)
    teacher = create_model(ckpt.get("arch", "deeplab_tiny"), spec.num_classes, spec.channels, spec.size)
    teacher.load_state_dict(ckpt["state_dict"])
    teacher.eval()
    norm = Normalizer(spec)
    rows = []
    real = src.load("test", args.data_root).images[:256].float() / 255.0
    rows.append(("real test canvases (256)", shares(teacher, real, norm, spec.num_classes)))
    for run in sorted(glob.glob(os.path.join(args.suite_dir, "mnist_seg", "*", "*"))):
        grids = sorted(glob.glob(os.path.join(run, "samples_*.png")))
        if not grids or not os.path.isdir(run):
            continue
        method = os.path.basename(os.path.dirname(run))
        rows.append((f"{method} ({os.path.basename(grids[-1])})", shares(teacher, grid_images(grids[-1]), norm, 11)))
    print("| images | n | mean pixel | teacher: background % | teacher: largest digit class % | classes |")
    print("|:---|--:|--:|--:|--:|--:|")
    for name, s in rows:
        print(
            f"| {name} | {s['n']} | {s['mean_pixel']:.3f} | {s['background']:.1f} | {s['top_digit']:.1f} | "
            f"{s['classes']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
