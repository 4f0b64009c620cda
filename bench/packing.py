r"""Packed vs padded sequences of mixed-aspect images (NaViT / NaFlex): padding and throughput.

Images of random sizes (sides uniform in [--min_side, --max_side] px, so any aspect ratio) and
random resolutions (each image's token budget a uniform share in [--min_share, 1] of
--tokens): NaViT's setting.
  * padding: the fraction of padding tokens in packs of K = --images_per_pack images
    (datasets/packing.pack_layout) over --packs packs, for several K; and in the padded
    layout, each image in a sequence of its own of --tokens tokens.
  * throughput: one train step of a ViT (--width, --depth, patch 16) on the CPU, the same
    --images images a step either padded (one image per --tokens sequence) or packed (K per
    sequence of K x mean share x --tokens tokens); images/s and useful (non-padding) tokens/s.

  python bench/packing.py [--tokens 256] [--images 16] [--images_per_pack 4] [--depth 4]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def draw_images(n: int, rng: np.random.Generator, min_side: int, max_side: int,
                min_share: float) -> tuple[list[tuple[int, int]], np.ndarray]:
  """(sizes (h, w), shares) of n random images."""
  sizes = [(int(rng.integers(min_side, max_side + 1)), int(rng.integers(min_side, max_side + 1)))
           for _ in range(n)]
  return sizes, rng.uniform(min_share, 1.0, n)


def padding_figures(args, rng) -> dict:
  """Padding fractions: padded layout, and packs of each K."""
  from vit_jax.datasets import packing  # pylint: disable=g-import-not-at-top
  out = {}
  sizes, shares = draw_images(args.packs * 8, rng, args.min_side, args.max_side, args.min_share)
  used = [packing.fit_grid(h, w, int(s * args.tokens), 16) for (h, w), s in zip(sizes, shares)]
  out["padded"] = 1 - float(np.mean([r * c for r, c in used])) / args.tokens
  for k in (1, 2, 4, 8):
    length = max(int(round(k * args.tokens * (1 + args.min_share) / 2)), k)
    fill = []
    for j in range(args.packs):  # pack j: images [jk, (j+1)k) of the 8 x packs drawn
      grids = packing.pack_layout(sizes[j * k:(j + 1) * k], length, 16,
                                  weights=shares[j * k:(j + 1) * k])
      fill.append(sum(r * c for r, c in grids) / length)
    out[f"packed_k{k}"] = 1 - float(np.mean(fill))
  return out


def _batch(layouts, length, rng):
  """Model inputs of packs (each a list of grids) with random pixels."""
  from vit_jax.datasets import packing  # pylint: disable=g-import-not-at-top
  packs = []
  for grids in layouts:
    patches = [rng.uniform(-1, 1, (r * c, 16 * 16 * 3)).astype(np.float32) for r, c in grids]
    coords = [packing.grid_coords(r, c) for r, c in grids]
    packs.append(packing.pack(patches, coords, grids, length, len(grids)))
  return {k: np.stack([p[k] for p in packs]) for k in packs[0]}


def step_seconds(model_overrides: dict, inputs: dict, repeats: int) -> float:
  """Median seconds of one compiled train step (softmax loss, Adam) on `inputs`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from vit_jax.models import registry  # pylint: disable=g-import-not-at-top
  model = registry.create_model("ViT-Ti_16", 10, **model_overrides)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False)["params"]
  opt = optax.adam(1e-3)
  labels = jax.nn.one_hot(jnp.zeros(inputs["image_grid"].shape[:2], jnp.int32), 10)

  @jax.jit
  def step(params, opt_state, batch):
    def loss(p):
      logits = model.apply({"params": p}, batch, train=True)
      return optax.softmax_cross_entropy(logits, labels).mean()
    grads = jax.grad(loss)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = opt.init(params)
  batch = jax.device_put(inputs)
  params, opt_state = step(params, opt_state, batch)
  jax.block_until_ready(params)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    params, opt_state = step(params, opt_state, batch)
    jax.block_until_ready(params)
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def throughput_figures(args, rng) -> dict:
  from vit_jax.datasets import packing  # pylint: disable=g-import-not-at-top
  k = args.images_per_pack
  n = args.images - args.images % k
  sizes, shares = draw_images(n, rng, args.min_side, args.max_side, args.min_share)
  padded = [[packing.fit_grid(h, w, int(s * args.tokens), 16)] for (h, w), s in
            zip(sizes, shares)]
  length = max(int(round(k * args.tokens * float(np.mean(shares)))), k)
  packed = [packing.pack_layout(sizes[j:j + k], length, 16, weights=shares[j:j + k])
            for j in range(0, n, k)]
  overrides = dict(posemb_grid=(14, 14), hidden_size=args.width, classifier="map",
                   transformer=dict(num_layers=args.depth, mlp_dim=4 * args.width,
                                    num_heads=max(args.width // 64, 1), dropout_rate=0.0,
                                    attention_dropout_rate=0.0))
  out = {}
  for name, layouts, seq in (("padded", padded, args.tokens), ("packed", packed, length)):
    inputs = _batch(layouts, seq, rng)
    seconds = step_seconds(overrides, inputs, args.repeats)
    useful = int(np.sum(inputs["segment_ids"] > 0))
    out[name] = {"sequences": len(layouts), "seq_len": seq, "images": n,
                 "padding": packing.padding_fraction(inputs["segment_ids"]),
                 "step_s": seconds, "img_per_s": n / seconds,
                 "useful_tokens_per_s": useful / seconds}
  out["packed_over_padded_img_per_s"] = out["packed"]["img_per_s"] / out["padded"]["img_per_s"]
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tokens", type=int, default=256, help="the largest image's token budget")
  p.add_argument("--images", type=int, default=16, help="images per train step")
  p.add_argument("--images_per_pack", type=int, default=4)
  p.add_argument("--min_share", type=float, default=0.25)
  p.add_argument("--min_side", type=int, default=64)
  p.add_argument("--max_side", type=int, default=640)
  p.add_argument("--packs", type=int, default=500, help="packs for the padding figures")
  p.add_argument("--width", type=int, default=192)
  p.add_argument("--depth", type=int, default=4)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--json", default=None, help="also write the figures to this file")
  args = p.parse_args(argv)
  rng = np.random.default_rng(0)
  figures = {"padding": padding_figures(args, rng), "throughput": throughput_figures(args, rng)}
  print("padding fraction:", "  ".join(f"{k} {v:.2%}" for k, v in figures["padding"].items()))
  for name in ("padded", "packed"):
    t = figures["throughput"][name]
    print(f"{name:7s} {t['sequences']:3d} x {t['seq_len']:4d} tokens, padding {t['padding']:.1%}: "
          f"{t['step_s'] * 1e3:.0f} ms/step, {t['img_per_s']:.1f} img/s, "
          f"{t['useful_tokens_per_s']:.0f} useful tokens/s")
  print(f"packed / padded images per second: "
        f"{figures['throughput']['packed_over_padded_img_per_s']:.2f}x")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(figures, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
