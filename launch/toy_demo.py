"""Sample a 2-D Gaussian mixture with the exact score under each SDE and write a PNG.

A dependency-light smoke demo of the core: ``python launch/toy_demo.py --out toy_samples.png``.
"""

import argparse

import jax
import numpy as np
from PIL import Image, ImageDraw

import jaxdiff as jd
from jaxdiff.eval import sliced_wasserstein


def scatter(ax_img, pts, color, box=8.0, size=256):
    draw = ImageDraw.Draw(ax_img)
    p = (np.asarray(pts) + box) / (2 * box) * size
    for x, y in p:
        draw.point((float(x), float(size - y)), fill=color)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="toy_samples.png")
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    mix = jd.GaussianMixture.create(
        [0.2, 0.3, 0.5], np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]]), stds=np.array([0.5, 0.8, 0.6]))
    ref = mix.sample(jax.random.key(1), args.n)
    panels = []
    for sde in (jd.VPSDE(), jd.SubVPSDE(), jd.VESDE()):
        sample = jd.pc_sampler(sde, mix.score_fn(sde), (args.n, 2), predictor="reverse_diffusion",
                               corrector="langevin")
        x, nfe = sample(None, jax.random.key(0))
        sw = sliced_wasserstein(jax.random.key(2), x, ref)
        print(f"{type(sde).__name__:9s} nfe={int(nfe):5d} sliced-W2 to exact samples={float(sw):.3f}")
        img = Image.new("RGB", (256, 256), "white")
        scatter(img, ref, (180, 180, 180))
        scatter(img, x, (200, 30, 30))
        panels.append(img)
    out = Image.new("RGB", (256 * len(panels), 256), "white")
    for i, p in enumerate(panels):
        out.paste(p, (256 * i, 0))
    out.save(args.out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
