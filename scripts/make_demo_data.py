"""Build the small demo subsets of BloodMNIST and OrganAMNIST shipped in data/demo/medmnist.

The subsets keep the official file format (same keys, dtypes and shapes), so the same
MedMNISTDataModule reads the demo files and the full official files.  Per split, a seeded random
subset is drawn without replacement and kept in the original order.

    python scripts/make_demo_data.py --source ../shared/data/medmnist --dest data/demo/medmnist
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SIZES = {
    "bloodmnist": {"train": 2000, "val": 300, "test": 600},
    "organamnist": {"train": 2000, "val": 300, "test": 600},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="../shared/data/medmnist", help="folder with the official .npz files")
    parser.add_argument("--dest", default="data/demo/medmnist")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    for flag, sizes in SIZES.items():
        src = Path(args.source) / f"{flag}.npz"
        rng = np.random.default_rng(args.seed)
        out = {}
        with np.load(src) as data:
            for split, n in sizes.items():
                images, labels = data[f"{split}_images"], data[f"{split}_labels"]
                index = np.sort(rng.choice(len(images), size=n, replace=False))
                out[f"{split}_images"], out[f"{split}_labels"] = images[index], labels[index]
        np.savez_compressed(dest / f"{flag}.npz", **out)
        print(f"{dest / f'{flag}.npz'}: " + ", ".join(f"{s} {len(out[f'{s}_images'])}" for s in sizes))


if __name__ == "__main__":
    main()
