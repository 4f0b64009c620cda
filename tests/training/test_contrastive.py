"""Image-text losses: softmax contrastive and sigmoid against NumPy loops; the chunked sigmoid
loss (texts passed around the devices) equals the full-batch one, values and gradients."""
import math
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO, gloo_available
from jax.sharding import NamedSharding, PartitionSpec as P

from vit_jax.training import contrastive


def _pairs(n=16, d=8, seed=0):
  rng = np.random.default_rng(seed)
  zi = rng.normal(size=(n, d)).astype(np.float32)
  zt = (zi + rng.normal(size=(n, d))).astype(np.float32)  # Matching pairs are closer.
  zi /= np.linalg.norm(zi, axis=1, keepdims=True)
  zt /= np.linalg.norm(zt, axis=1, keepdims=True)
  return zi, zt


def _np_softmax_loss(zi, zt, t):
  n = len(zi)
  s = t * (zi.astype(np.float64) @ zt.astype(np.float64).T)
  rows = [-(s[i, i] - math.log(np.exp(s[i]).sum())) for i in range(n)]
  cols = [-(s[j, j] - math.log(np.exp(s[:, j]).sum())) for j in range(n)]
  return 0.5 * (np.mean(rows) + np.mean(cols))


def _np_sigmoid_loss(zi, zt, t, b):
  n = len(zi)
  total = 0.0
  for i in range(n):
    for j in range(n):
      z = 1.0 if i == j else -1.0
      logit = t * float(np.dot(zi[i].astype(np.float64), zt[j].astype(np.float64))) + b
      total += math.log1p(math.exp(-z * logit))  # -log sigmoid(z * logit)
  return total / n


def test_softmax_and_sigmoid_losses_equal_numpy_loops():
  zi, zt = _pairs()
  assert float(contrastive.softmax_contrastive_loss(zi, zt, 10.0)) == pytest.approx(
      _np_softmax_loss(zi, zt, 10.0), rel=1e-5)
  assert float(contrastive.sigmoid_loss(zi, zt, 10.0, -10.0)) == pytest.approx(
      _np_sigmoid_loss(zi, zt, 10.0, -10.0), rel=1e-5)
  # Aligned pairs score better than shuffled ones under both losses.
  assert contrastive.sigmoid_loss(zi, zt, 10.0, -5.0) < contrastive.sigmoid_loss(
      zi, zt[::-1], 10.0, -5.0)
  assert contrastive.softmax_contrastive_loss(zi, zt, 10.0) < \
      contrastive.softmax_contrastive_loss(zi, zt[::-1], 10.0)


@pytest.mark.parametrize("shape", [(8, 1), (4, 2), (2, 2, 2)])
def test_chunked_sigmoid_loss_equals_the_full_batch_loss_and_gradients(shape):
  names = ("data", "fsdp", "model")[:len(shape)]
  mesh = jax.make_mesh(shape, names)
  zi, zt = _pairs(n=32, seed=1)
  batch = NamedSharding(mesh, P(("data", "fsdp")))
  zi_s, zt_s = jax.device_put(zi, batch), jax.device_put(zt, batch)
  t, b = jnp.float32(7.0), jnp.float32(-3.0)

  full = jax.value_and_grad(contrastive.sigmoid_loss, argnums=(0, 1, 2, 3))
  chunked = jax.jit(jax.value_and_grad(
      lambda *a: contrastive.chunked_sigmoid_loss(*a, mesh=mesh), argnums=(0, 1, 2, 3)))
  value, grads = full(zi, zt, t, b)
  value_c, grads_c = chunked(zi_s, zt_s, t, b)
  np.testing.assert_allclose(value_c, value, rtol=1e-5)
  assert float(value) == pytest.approx(_np_sigmoid_loss(zi, zt, 7.0, -3.0), rel=1e-5)
  for g, gc in zip(grads, grads_c):
    np.testing.assert_allclose(gc, g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape", [(1,), (8,), (4, 2)])
def test_in_batch_accuracy_counts_images_whose_own_text_wins_on_every_mesh(shape):
  names = ("data", "fsdp")[:len(shape)]
  devices = np.array(jax.devices()[:int(np.prod(shape))]).reshape(shape)
  mesh = jax.sharding.Mesh(devices, names)  # As sharding.make_mesh builds the run's mesh.
  zi, zt = _pairs(n=32, d=4, seed=3)  # d=4 and noise: some pairs lose to another text.
  scores = zi.astype(np.float64) @ zt.astype(np.float64).T
  expected = np.mean([all(scores[i, i] > scores[i, j] for j in range(32) if j != i)
                      for i in range(32)])
  assert 0 < expected < 1
  batch = NamedSharding(mesh, P(names))
  got = jax.jit(lambda a, b: contrastive.in_batch_accuracy(a, b, mesh))(
      jax.device_put(zi, batch), jax.device_put(zt, batch))
  assert float(got) == pytest.approx(expected)


def test_losses_by_name_and_an_unknown_name():
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  zi, zt = _pairs(n=16)
  assert float(contrastive.get("sigmoid_contrastive", mesh)(zi, zt, 3.0, -1.0)) == \
      pytest.approx(_np_sigmoid_loss(zi, zt, 3.0, -1.0), rel=1e-5)
  assert float(contrastive.get("softmax_contrastive", mesh)(zi, zt, 3.0, -1.0)) == \
      pytest.approx(_np_softmax_loss(zi, zt, 3.0), rel=1e-5)
  with pytest.raises(ValueError, match="not an image-text loss"):
    contrastive.get("softmax_xent", mesh)


def test_a_batch_that_does_not_split_is_one_clear_error():
  mesh = jax.make_mesh((8,), ("data",))
  zi, zt = _pairs(n=12)
  with pytest.raises(ValueError, match="multiple of 8"):
    contrastive.chunked_sigmoid_loss(zi, zt, 1.0, 0.0, mesh=mesh)


_TWO_PROCESSES = textwrap.dedent("""
    import sys, numpy as np, jax, jax.numpy as jnp
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    pid, port = int(sys.argv[1]), sys.argv[2]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec as P
    from vit_jax.training import contrastive
    rng = np.random.default_rng(0)  # The same global batch in both processes.
    zi = rng.normal(size=(16, 8)).astype(np.float32)
    zt = (zi + rng.normal(size=(16, 8))).astype(np.float32)
    mesh = jax.make_mesh((4,), ("data",))
    batch = NamedSharding(mesh, P("data"))
    local = slice(8 * pid, 8 * pid + 8)  # This process's half of the pairs.
    put = lambda x: multihost_utils.host_local_array_to_global_array(x[local], mesh, P("data"))
    loss, grads = jax.jit(jax.value_and_grad(
        lambda a, b: contrastive.chunked_sigmoid_loss(a, b, 5.0, -2.0, mesh=mesh),
        argnums=(0, 1)))(put(zi), put(zt))
    full, full_grads = jax.value_and_grad(contrastive.sigmoid_loss, argnums=(0, 1))(
        zi, zt, 5.0, -2.0)
    np.testing.assert_allclose(float(loss), float(full), rtol=1e-5)
    for g, f in zip(grads, full_grads):
      np.testing.assert_allclose(multihost_utils.process_allgather(g, tiled=True), f,
                                 rtol=1e-4, atol=1e-6)
    print("OK", pid)
""")


@pytest.mark.skipif(not gloo_available(), reason="this jaxlib has no gloo CPU collectives")
def test_chunked_sigmoid_loss_on_two_processes_equals_the_full_batch_loss():
  """2 jax processes x 2 CPU devices: the texts cross the process boundary in the ring."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get(
                 "PYTHONPATH", ""))
  procs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESSES, str(i), str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=180) for p in procs]
  for i, (p, (out, err)) in enumerate(zip(procs, outs)):
    assert p.returncode == 0 and f"OK {i}" in out, err[-3000:]
