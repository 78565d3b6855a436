"""Print figures for the synthetic dataset: synthesis speed, and how often MediaPipe's face
detector (the ``face`` filter) fires on front, back and side views at several crop sizes.

    python tools/bench_synthetic.py [--images 3000] [--faces 120] [--skip-speed]
    python tools/bench_synthetic.py --skip-speed --default-only --sizes 64x32,96x48,128x64,256x128,256x256
    python tools/bench_synthetic.py --skip-speed --default-only --crop auto --faces 80   # the synthetic setting

Needs the face models (``keras-reid models fetch``) for the detection part.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


def speed(target_images: int) -> None:
    from keras_reid.data.synthetic import synthesize

    ids = max(2, round(target_images / 17.1))  # about 17 images per identity with the defaults
    with tempfile.TemporaryDirectory() as tmp:
        cpu, wall = time.process_time(), time.perf_counter()
        s = synthesize(f"{tmp}/synth", ids=ids)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    n = sum(s["images"].values())
    print(f"synthesis 128x64: {n} images ({ids} ids) in {wall:.1f} s wall, {cpu:.1f} s CPU "
          f"({1000 * cpu / n:.2f} ms CPU per image incl. JPEG, mask PNG and file writes)")


def faces(n: int, sizes=((128, 64), (256, 128)), default_only: bool = False, crop: str | None = None) -> None:
    """Rates of the face detector on synthetic views; ``default_only``: only the filter's
    defaults (with ``crop`` instead of the default crop when given)."""
    from keras_reid.data.synthetic_render import Renderer, make_cameras, make_identities
    from keras_reid_plugins.filters.face import FaceConfig, FaceFilter

    cams = make_cameras(6, np.random.default_rng(11))
    ids = make_identities(range(1, n + 1), np.random.default_rng(12))
    configs = {"full_range/full (default)": FaceConfig(threshold=0.05, crop="full"),
               "full_range/auto(top)": FaceConfig(threshold=0.05, crop="auto"),
               "short_range/auto(top)": FaceConfig(threshold=0.05, model="short_range", crop="auto")}
    if default_only:
        cfg = FaceConfig(threshold=0.05, **({"crop": crop} if crop else {}))
        configs = {f"full_range/{cfg.crop}": cfg}
    for size in sizes:
        r = Renderer(size, cams, seed=3)
        pics = {v: np.stack([r.render(ident, 1 + i % 6, np.random.default_rng([7, i]), view=v,
                                      occlude=False).image for i, ident in enumerate(ids)])
                for v in ("front", "back", "side")}
        for name, cfg in configs.items():
            with FaceFilter(cfg) as f:
                line = []
                for v, imgs in pics.items():
                    s = f(imgs)
                    line.append(f"{v} rate@0.5 {np.mean(s >= 0.5):.2f} rate@0.55 {np.mean(s >= 0.55):.2f} "
                                f"rate@0.6 {np.mean(s >= 0.6):.2f}"
                                f" (q10 {np.quantile(s, 0.1):.2f} q90 {np.quantile(s, 0.9):.2f})")
            print(f"faces {size[0]}x{size[1]} {name:<28} " + " | ".join(line), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3000, help="images to synthesise for the timing")
    ap.add_argument("--faces", type=int, default=120, help="identities per view for the face rates")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-faces", action="store_true")
    ap.add_argument("--sizes", default="128x64,256x128",
                    help="crop sizes for the face rates, e.g. 64x32,96x48,128x64,256x128,256x256")
    ap.add_argument("--default-only", action="store_true", help="only the face filter's defaults")
    ap.add_argument("--crop", choices=("auto", "full", "top"), default=None,
                    help="with --default-only: this crop instead of the default (full)")
    a = ap.parse_args()
    if not a.skip_speed:
        speed(a.images)
    if not a.skip_faces:
        sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")]
        faces(a.faces, sizes, a.default_only, a.crop)


if __name__ == "__main__":
    main()
