"""Helpers the test files share (imported as `from helpers import ...`; tests/ is on sys.path).

Fixtures live in conftest.py; these are plain functions and constants: the repository root, the
tiny run config every trainer test starts from (and its command-line form), synthetic batches,
a state setup, a refused loopback URL, and whether this jaxlib has gloo CPU collectives.
"""
import contextlib
import http.server
import importlib.util
import os
import pathlib
import socket
import threading

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from vit_jax.training import train_state

REPO = pathlib.Path(__file__).resolve().parents[1]
needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")

# The tiny config of tiny_config() as `python -m vit_jax.main` flags (subprocess tests).
TINY_FLAGS = [
    "--config=configs/quickstart.py", "--config.model.hidden_size=16",
    "--config.model.patches.size=(4,4)", "--config.model.transformer.mlp_dim=32",
    "--config.model.transformer.num_heads=2", "--config.model.transformer.num_layers=1",
    "--config.model.transformer.dropout_rate=0.1", "--config.pp.crop=8", "--config.pp.resize=8",
    "--config.batch=32", "--config.batch_eval=64", "--config.warmup_steps=2",
    "--config.progress=False", "--config.eval_every=0", "--config.input.device_prefetch=2",
    "--config.input.num_workers=0",
]


def load_config_file(name: str, arg: str = ""):
  """configs/<name>.py:get_config(arg)."""
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def set_path(config: ml_collections.ConfigDict, key: str, value) -> None:
  """config[a][b][c] = value for key 'a.b.c'."""
  node = config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value


def _shrunk(c: ml_collections.ConfigDict, data_dir, overrides: dict,
            transformer: dict) -> ml_collections.ConfigDict:
  """A digits config `c` shrunk: a width-16 1-layer image tower (`transformer` fields) on 8x8
  digits, a few steps, no workers; then `overrides` ('a.b.c' keys)."""
  with c.unlocked():
    c.tfds_data_dir = str(data_dir)
    c.model.hidden_size = 16
    c.model.patches.size = (4, 4)
    c.model.transformer.update(dict(mlp_dim=32, num_heads=2, num_layers=1, **transformer))
    c.pp.crop, c.pp.resize = 8, 8
    c.batch, c.batch_eval = 32, 64
    c.total_steps, c.warmup_steps = 12, 2
    c.log_every, c.eval_every, c.checkpoint_every = 4, 0, 4
    c.progress = False
    c.input.device_prefetch = 2
    c.input.num_workers = 0
    for key, value in overrides.items():
      set_path(c, key, value)
  return c


def tiny_config(data_dir, **overrides) -> ml_collections.ConfigDict:
  """The quickstart config shrunk to a 1-layer width-16 ViT on 8x8 digits, a few steps."""
  return _shrunk(load_config_file("quickstart"), data_dir, overrides, {"dropout_rate": 0.1})


def synthetic_batches(n, batch, crop, num_classes=10, seed=0):
  """`n` batches of uniform [-1, 1] images with one-hot labels."""
  rng = np.random.RandomState(seed)
  for _ in range(n):
    labels = rng.randint(0, num_classes, batch)
    yield {"image": rng.uniform(-1, 1, (batch, crop, crop, 3)).astype(np.float32),
           "label": np.eye(num_classes, dtype=np.float32)[labels]}


def setup_for(config, mesh, num_classes=10):
  """The StateSetup of a run config on `mesh`."""
  return train_state.setup_from_config(config, mesh, num_classes, int(config.total_steps))


def refused_url() -> str:
  """An http:// URL on loopback where nothing listens (the connection is refused)."""
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  return f"http://127.0.0.1:{port}/copy_one.npz"


class LoopbackHandler(http.server.BaseHTTPRequestHandler):
  """Base of the tests' loopback HTTP servers: quiet, and one way to answer (`_send`)."""

  def log_message(self, *args):  # pylint: disable=arguments-differ  (keeps pytest output clean)
    pass

  def _send(self, status, body=b"", headers=None, head=False):
    self.send_response(status)
    for k, v in (headers or {}).items():
      self.send_header(k, v)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if not head:
      self.wfile.write(body)


@contextlib.contextmanager
def serving(handler, **attributes):
  """A threaded HTTP server of `handler` on 127.0.0.1 (its `url` set, `attributes` on it, for
  the handler to read as self.server.X), stopped on exit."""
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  httpd.daemon_threads = True
  for name, value in attributes.items():
    setattr(httpd, name, value)
  httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  try:
    yield httpd
  finally:
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def gloo_available() -> bool:
  """Whether this jaxlib has gloo CPU collectives (the multi-process tests need them)."""
  try:
    from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return hasattr(_jax, "make_gloo_tcp_collectives")


def id_image_folder(root, train_ids, test_ids) -> str:
  """An image folder whose every image says its id: 8x8 PNGs of constant grey `id` in
  `<root>/<split>/class<id % 3>/<id>.png` (tests read which examples a batch holds)."""
  from vit_jax.datasets import sources  # pylint: disable=g-import-not-at-top
  for split, ids in (("train", train_ids), ("test", test_ids)):
    for k in ids:
      folder = os.path.join(root, split, f"class{k % 3}")
      os.makedirs(folder, exist_ok=True)
      Image.fromarray(np.full((8, 8, 3), k, np.uint8)).save(os.path.join(folder, f"{k:03d}.png"))
  sources.clear_cache()
  return str(root)


def latest_step(workdir):
  """The newest committed checkpoint step of a run's workdir, or None."""
  from vit_jax.run import run_state  # pylint: disable=g-import-not-at-top
  ckpt = run_state.Checkpointer(str(workdir), read_only=True)
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()


def tiny_image_text_config(data_dir, **overrides) -> ml_collections.ConfigDict:
  """configs/siglip.py:digits shrunk: width-16 towers on 8x8 digits, a few steps."""
  c = load_config_file("siglip", "digits")
  with c.unlocked():
    c.model.text.update(dict(width=16, num_layers=1, mlp_dim=32, num_heads=2))
    c.model.out_dim = (16, 16)
  return _shrunk(c, data_dir, overrides, {})


def mixed_aspect_folder(root, n_train: int = 96, n_test: int = 48, seed: int = 0) -> str:
  """An image folder of 3 classes whose images have random sizes (8..40 px a side, any aspect
  ratio): class 0 a bright left half, class 1 a bright top half, class 2 a bright centre."""
  from vit_jax.datasets import sources  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  for split, n in (("train", n_train), ("test", n_test)):
    for i in range(n):
      c = i % 3
      h, w = int(rng.integers(8, 41)), int(rng.integers(8, 41))
      im = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
      if c == 0:
        im[:, : w // 2] += 150
      elif c == 1:
        im[: h // 2] += 150
      else:
        im[h // 4: 3 * h // 4, w // 4: 3 * w // 4] += 150
      folder = os.path.join(root, split, f"c{c}")
      os.makedirs(folder, exist_ok=True)
      Image.fromarray(im).save(os.path.join(folder, f"{i:03d}.png"))
  sources.clear_cache()
  return str(root)


def tiny_packed_config(data_dir, **overrides) -> ml_collections.ConfigDict:
  """tiny_config on a mixed_aspect_folder `data_dir`, packed: 3 images per 48-token sequence
  (4 px patches), batch 8 sequences."""
  c = tiny_config(data_dir)
  with c.unlocked():
    c.dataset, c.num_classes, c.tfds_data_dir = str(data_dir), 3, None
    c.pp.crop, c.pp.resize = 16, 16
    c.batch, c.batch_eval = 8, 16
    c.naflex.seq_len, c.naflex.images_per_pack, c.naflex.min_share = 48, 3, 0.5
    for key, value in overrides.items():
      set_path(c, key, value)
  return c
