"""compiled_stats: collectives counted in HLO text, OOM messages parsed, CPU memory/cost read."""
import jax
import jax.numpy as jnp

from vit_jax.planning import compiled_stats

HLO = """
  %all-gather.26 = f32[1,5,10]{1,0,2:T(1,128)S(1)} all-gather(%copy.174), channel_id=74, dimensions={2}
  %copy.175 = f32[1,5,10]{2,1,0:T(8,128)S(1)} copy(%all-gather.26), metadata={op_name="all-gather"}
  %all-reduce.67 = (f32[10]{0:T(128)S(1)}, /*index=1*/bf16[4,8]{1,0}) all-reduce(%a, %b), channel_id=3
  %ags = (bf16[2,8]{1,0}, bf16[8,8]{1,0}) all-gather-start(%x), dimensions={0}
  %agd = bf16[8,8]{1,0} all-gather-done(%ags)
  ROOT %cp = s32[16]{0} collective-permute(%y), source_target_pairs={{0,1}}
  %rs = bf16[4,4]{1,0} reduce-scatter(%z), dimensions={0}
  %fusion = f32[3]{0} fusion(%all-reduce.67), kind=kLoop
"""


def test_collectives_counts_and_bytes():
  got = compiled_stats.collectives(HLO)
  # all-gather-start: its result only
  assert got["all-gather"] == {"count": 2, "bytes": 1 * 5 * 10 * 4 + 8 * 8 * 2}
  assert got["all-reduce"] == {"count": 1, "bytes": 10 * 4 + 4 * 8 * 2}        # tuple: summed
  assert got["collective-permute"] == {"count": 1, "bytes": 16 * 4}
  assert got["reduce-scatter"] == {"count": 1, "bytes": 4 * 4 * 2}
  assert got["all-to-all"] == {"count": 0, "bytes": 0.0}


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
  assert compiled_stats.collectives(compiled.as_text())["all-reduce"]["count"] == 0
