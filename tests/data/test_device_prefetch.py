"""Tests of vit_jax.datasets.device_prefetch on 8 fake CPU devices (in a subprocess, so XLA_FLAGS is
set before JAX starts whatever the test session did), plus an in-process smoke test."""
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np

from vit_jax.datasets import device_prefetch

_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from vit_jax.datasets import device_prefetch
    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    sharding = NamedSharding(mesh, P("data"))
    local = {"image": np.arange(16 * 3, dtype=np.float32).reshape(16, 3),
             "label": np.eye(4, dtype=np.float32)[np.arange(16) % 4]}
    out = device_prefetch.global_batch_from_local(local, sharding)
    assert out["image"].shape == (16, 3) and out["image"].sharding == sharding
    np.testing.assert_array_equal(np.asarray(out["image"]), local["image"])
    rows = sorted((s.index[0].start, s.data.shape[0]) for s in out["image"].addressable_shards)
    assert rows == [(0, 4)] * 2 + [(4, 4)] * 2 + [(8, 4)] * 2 + [(12, 4)] * 2, rows
    batches = [{"x": np.full((8, 2), i, np.float32)} for i in range(5)]
    got = [int(np.asarray(b["x"])[0, 0]) for b in
           device_prefetch.prefetch_to_device(iter(batches), 2, sharding)]
    assert got == [0, 1, 2, 3, 4], got
    print("OK")
""")


def test_global_batch_and_prefetch_on_8_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  result = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def test_prefetch_keeps_size_batches_in_flight():
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  pulled = []

  def source():
    for i in range(4):
      pulled.append(i)
      yield {"x": np.full((2,), i, np.float32)}

  it = device_prefetch.prefetch_to_device(source(), 3, sharding)
  first = next(it)
  assert float(first["x"][0]) == 0 and pulled == [0, 1, 2]  # 3 queued before the first yield.
  assert [float(b["x"][0]) for b in it] == [1, 2, 3]


_MULTI = textwrap.dedent("""
    import sys, numpy as np, jax, ml_collections
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    pid, port, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from vit_jax.datasets import device_prefetch, pipeline
    from vit_jax.configs import base
    c = base.defaults()
    c.update_from_flattened_dict({"seed": 0, "dataset": root, "train_split": "train",
                                  "eval_split": "train", "batch": 8, "batch_eval": 8,
                                  "input.num_workers": 0, "input.prefetch": 2, "pp.crop": 4,
                                  "pp.resize": 4, "pp.flip": False})
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
    it = pipeline.create_train_iterator(c)  # process index/count from jax.
    ids = []
    for batch in device_prefetch.prefetch_to_device((next(it) for _ in range(2)), 2, sharding):
      assert batch["image"].shape == (8, 4, 4, 3), batch["image"].shape
      full = multihost_utils.process_allgather(batch["image"], tiled=True)
      ids += np.round((full[:, 0, 0, 0] + 1) * 127.5).astype(int).tolist()
    assert sorted(ids) == list(range(16)), ids  # Both processes' shards, once each.
    print("OK", pid)
""")


def test_two_processes_on_localhost_build_global_batches(tmp_path):
  """2 jax processes × 2 CPU devices: each reads its own shard; the global batch is their union."""
  import socket

  from PIL import Image
  for k in range(16):
    folder = tmp_path / "train" / f"c{k % 2}"
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), k, np.uint8)).save(folder / f"{k:02d}.png")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
  procs = [subprocess.Popen([sys.executable, "-c", _MULTI, str(i), str(port), str(tmp_path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=120) for p in procs]
  for i, (p, (out, err)) in enumerate(zip(procs, outs)):
    assert p.returncode == 0 and f"OK {i}" in out, err[-3000:]
