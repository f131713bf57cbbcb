"""Make an ImageNet-like folder of JPEGs for benchmarks, with no download.

The pixels are crops of the real photographs that ship inside the installed
wheels: scikit-learn's ``load_sample_images()`` (china.jpg, flower.jpg) and
scikit-image's ``skimage.data`` (astronaut, coffee, chelsea, rocket, the
Hubble deep field, ...; ``pip install -e '.[bench]'`` installs scikit-image).
Each image is a random crop, sides 256-640 px, aspect ratio 3:4 to 4:3 (one in
ten wider, up to 2:1), of a randomly rescaled (1x-1.4x of what the crop needs),
randomly flipped source photo, saved as JPEG quality 90: sizes and bytes like
ImageNet's, and every file differs. Class ``c`` draws from source photo
``c mod sources``; classes beyond the number of sources also permute the
colour channels, so they stay tell-apart-able for a kNN check.

Deterministic: the same ``--seed``, ``--images`` and ``--classes`` give the
same bytes (each image has its own generator seeded by (seed, image number)).

    python bench/make_imagefolder.py --out /tmp/imagenet-like --images 5000 --classes 10 --seed 0
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import os
import sys
from pathlib import Path

import numpy as np

_PERMUTATIONS = list(itertools.permutations(range(3)))
_SOURCES: list[tuple[str, np.ndarray]] | None = None


def source_photos() -> list[tuple[str, np.ndarray]]:
    """(name, uint8 HxWx3) of every bundled colour photograph (grey ones made RGB), loaded once per process."""
    global _SOURCES
    if _SOURCES is None:
        from sklearn.datasets import load_sample_images

        sample = load_sample_images()
        photos = [(Path(name).stem, image) for name, image in zip(sample.filenames, sample.images)]
        try:
            import skimage.data as data
        except ImportError:
            print("note: scikit-image is not installed (pip install -e '.[bench]'); using 2 source photos",
                  file=sys.stderr)  # fmt: skip
        else:
            for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                         "immunohistochemistry", "retina", "camera", "coins", "colorwheel"):  # fmt: skip
                image = np.asarray(getattr(data, name)())
                if image.ndim == 2:
                    image = np.repeat(image[..., None], 3, axis=-1)
                photos.append((name, image[..., :3].astype(np.uint8)))
            left, right, _ = data.stereo_motorcycle()
            photos += [("motorcycle_left", left), ("motorcycle_right", right)]
        _SOURCES = photos
    return _SOURCES


def crop_size(rng: np.random.Generator) -> tuple[int, int]:
    """(height, width): sides in 256..640, aspect 3:4..4:3, one in ten wider (up to 2:1)."""
    while True:
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        if rng.random() < 0.1:
            ratio = rng.uniform(4 / 3, 2.0)
        area = rng.uniform(256**2, 640**2)
        width, height = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if 256 <= width <= 640 and 256 <= height <= 640:
            return height, width


def make_image(seed: int, number: int, label: int) -> bytes:
    """The JPEG bytes of image ``number`` of class ``label``."""
    import io

    from PIL import Image

    rng = np.random.default_rng([seed, number])
    photos = source_photos()
    _, photo = photos[label % len(photos)]
    photo = photo[..., list(_PERMUTATIONS[(label // len(photos)) % len(_PERMUTATIONS)])]
    height, width = crop_size(rng)
    scale = max(height / photo.shape[0], width / photo.shape[1]) * rng.uniform(1.0, 1.4)
    size = (max(width, int(np.ceil(photo.shape[1] * scale))), max(height, int(np.ceil(photo.shape[0] * scale))))
    image = Image.fromarray(np.ascontiguousarray(photo)).resize(size, Image.Resampling.BICUBIC)
    left = int(rng.integers(0, size[0] - width + 1))
    top = int(rng.integers(0, size[1] - height + 1))
    image = image.crop((left, top, left + width, top + height))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write(out: str, seed: int, number: int, label: int, folder: str) -> int:
    data = make_image(seed, number, label)
    with open(os.path.join(out, folder, f"{number:07d}.jpg"), "wb") as file:
        file.write(data)
    return len(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to create (must not exist or be empty)")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if args.images < 1 or args.classes < 1:
        parser.error("--images and --classes must be at least 1")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        parser.error(f"{out} exists and is not empty; pick another --out")
    names = [f"{c:03d}_{source_photos()[c % len(source_photos())][0]}" for c in range(args.classes)]
    for name in names:
        (out / name).mkdir(parents=True, exist_ok=True)
    labels = [number % args.classes for number in range(args.images)]
    jobs = [(str(out), args.seed, number, label, names[label]) for number, label in enumerate(labels)]
    if args.workers > 1:
        with concurrent.futures.ProcessPoolExecutor(args.workers) as pool:
            sizes = list(pool.map(_write, *zip(*jobs), chunksize=64))
    else:
        sizes = [_write(*job) for job in jobs]
    total = sum(sizes)
    print(f"{out}: {len(sizes)} JPEGs in {args.classes} classes, {total:,} bytes ({total / 2**20:.1f} MiB, "
          f"{total / len(sizes) / 1024:.0f} KiB per image)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
