"""compiled_stats: OOM messages parsed, CPU memory/cost read, loop-aware FLOPs."""
import jax
import jax.numpy as jnp
import pytest

from vit_jax.planning import compiled_stats


def test_out_of_memory_message():
  text = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
          "temporaries (22.99G) exceeds available HBM (15.75G).")
  oom = compiled_stats.parse_out_of_memory(text)
  assert oom["what"] == "HLO temporaries"
  assert oom["need_bytes"] == 22.99 * 2**30 and oom["available_bytes"] == 15.75 * 2**30
  assert compiled_stats.parse_out_of_memory("INVALID_ARGUMENT: bad shape") is None


def test_memory_and_cost_of_a_cpu_program():
  n = 64
  compiled = jax.jit(lambda a, b: a @ b).lower(jnp.zeros((n, n)), jnp.zeros((n, n))).compile()
  mem = compiled_stats.memory(compiled)
  assert mem["argument_bytes"] == 2 * n * n * 4 and mem["output_bytes"] == n * n * 4
  assert mem["peak_bytes"] >= mem["argument_bytes"] + mem["output_bytes"]
  assert compiled_stats.cost(compiled)["flops"] == 2 * n ** 3  # one matmul, by formula
  assert compiled_stats.compiled_flops(compiled) == 2 * n ** 3  # the executed count agrees


def test_compiled_flops_count_loop_bodies_as_often_as_they_run():
  w = jnp.ones((32, 32))
  body = lambda c, _: (c @ w, None)  # noqa: E731
  compiled = jax.jit(lambda x: jax.lax.scan(body, x, None, length=6)[0]).lower(
      jnp.ones((8, 32))).compile()
  # (plus the loop counter's adds and compares)
  assert compiled_stats.compiled_flops(compiled) == pytest.approx(6 * 2 * 8 * 32 * 32, rel=1e-3)
