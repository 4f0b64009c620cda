"""hlo_program: executed FLOPs/bytes with loops multiplied out, and collectives by hand."""
# ruff: noqa: E501  (the HLO below is written as XLA prints it: one instruction a line)
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vit_jax.planning import hlo_program

# --- collectives on hand-written HLO: one of each form ---------------------------------------

# f32[8,128] = 4096 bytes; bf16[4,64] = 512 bytes.
FORMS = """
HloModule forms

ENTRY %main (p0: f32[8,128], p1: bf16[4,64]) -> f32[8,128] {
  %p0 = f32[8,128]{1,0} parameter(0)
  %p1 = bf16[4,64]{1,0} parameter(1)
  %ar = f32[8,128]{1,0} all-reduce(%p0), channel_id=1, replica_groups={{0,1,2,3},{4,5,6,7}}, use_global_device_ids=true, to_apply=%add
  %art = (f32[8,128]{1,0}, bf16[4,64]{1,0}) all-reduce(%p0, %p1), channel_id=2, replica_groups=[1,8]<=[8], to_apply=%add
  %ars = f32[8,128]{1,0} all-reduce-start(%p0), channel_id=3, replica_groups=[4,2]<=[2,4]T(1,0), to_apply=%add
  %ard = f32[8,128]{1,0} all-reduce-done(%ars)
  %ag = f32[64,128]{1,0} all-gather(%p0), channel_id=4, replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_0','axis_1'}, dimensions={0}, use_global_device_ids=true
  %ags = (bf16[4,64]{1,0}, bf16[16,64]{1,0}) all-gather-start(%p1), channel_id=5, replica_groups=mesh['axis_0'=4,'axis_1'=2], device_ids=([2,4]T(1,0)) {'axis_0'}, dimensions={0}
  %agd = bf16[16,64]{1,0} all-gather-done(%ags)
  %rs = f32[2,128]{1,0} reduce-scatter(%p0), channel_id=6, replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}, to_apply=%add
  %a2a = f32[8,128]{1,0} all-to-all(%p0), channel_id=7, replica_groups={{0,1},{2,3},{4,5},{6,7}}, dimensions={0}
  %cps = (f32[8,128]{1,0}, f32[8,128]{1,0}, u32[], u32[]) collective-permute-start(%p0), channel_id=8, source_target_pairs={{0,1},{1,2},{2,3},{3,0}}
  %cpd = f32[8,128]{1,0} collective-permute-done(%cps)
  ROOT %cp = bf16[4,64]{1,0} collective-permute(%p1), channel_id=9, source_target_pairs={{0,4},{4,0}}
}
"""
F32, BF16 = 8 * 128 * 4, 4 * 64 * 2


def test_replica_group_forms():
  groups = hlo_program.replica_groups
  assert groups("replica_groups={{0,1},{2,3}}", 4) == [[0, 1], [2, 3]]
  assert groups("replica_groups={}", 4) == [[0, 1, 2, 3]]
  assert groups("channel_id=1", 3) == [[0, 1, 2]]
  assert groups("replica_groups=[2,4]<=[8]", 8) == [[0, 1, 2, 3], [4, 5, 6, 7]]
  # iota over [2,4] transposed: 0 4 1 5 2 6 3 7, four groups of two
  assert groups("replica_groups=[4,2]<=[2,4]T(1,0)", 8) == [[0, 4], [1, 5], [2, 6], [3, 7]]
  # mesh axes form: devices laid row-major over (axis_0=2, axis_1=4); groups vary axis_1
  assert groups("replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}", 8) == [
      [0, 1, 2, 3], [4, 5, 6, 7]]
  assert groups("replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_0'}", 8) == [
      [0, 4], [1, 5], [2, 6], [3, 7]]
  # with a device order: ids [0 4 1 5 2 6 3 7] placed over (4, 2); groups along axis_0
  assert groups("replica_groups=mesh['axis_0'=4,'axis_1'=2], device_ids=([2,4]T(1,0)) "
                "{'axis_0'}", 8) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_every_collective_form_counted_with_its_ring_factor():
  run = hlo_program.executed(FORMS, num_devices=8)
  c = run.collectives
  # all-reduce: groups of 4, of 8 (tuple: both operands), of 2 (async start; -done not counted)
  assert c["all-reduce"]["count"] == 3
  assert c["all-reduce"]["bytes"] == F32 + (F32 + BF16) + F32
  assert c["all-reduce"]["ici_bytes"] == pytest.approx(
      2 * 3 / 4 * F32 + 2 * 7 / 8 * (F32 + BF16) + 2 * 1 / 2 * F32)
  # all-gather: the gathered buffer (operand x group size), (n-1)/n of it sent
  assert c["all-gather"]["count"] == 2
  assert c["all-gather"]["bytes"] == 8 * F32 + 4 * BF16
  assert c["all-gather"]["ici_bytes"] == pytest.approx(7 / 8 * 8 * F32 + 3 / 4 * 4 * BF16)
  assert c["reduce-scatter"]["bytes"] == F32
  assert c["reduce-scatter"]["ici_bytes"] == pytest.approx(3 / 4 * F32)
  assert c["all-to-all"]["ici_bytes"] == pytest.approx(1 / 2 * F32)
  # permutes: the async start's tuple (in, out, u32, u32) is one f32[8,128] buffer
  assert c["collective-permute"]["count"] == 2
  assert c["collective-permute"]["bytes"] == F32 + BF16
  assert run.collective_moved_bytes["dcn"] == 0


def test_groups_across_slices_go_over_dcn_hierarchically():
  slices = [0, 0, 0, 0, 1, 1, 1, 1]
  c = hlo_program.executed(FORMS, num_devices=8, slice_of=slices).collectives
  # {0..3},{4..7}: inside a slice. [1,8]: 4 chips x 2 slices -> ICI 2(4-1)/4 of the buffer,
  # DCN 2(2-1)/2 of a quarter of it. [0,4] pairs: 1 chip x 2 slices -> DCN only.
  tup = F32 + BF16
  assert c["all-reduce"]["ici_bytes"] == pytest.approx(2 * 3 / 4 * F32 + 2 * 3 / 4 * tup)
  assert c["all-reduce"]["dcn_bytes"] == pytest.approx(2 * 1 / 2 * tup / 4 + 2 * 1 / 2 * F32)
  assert c["collective-permute"]["dcn_bytes"] == BF16  # {0,4}: across
  assert c["collective-permute"]["ici_bytes"] == F32


# --- loops ---------------------------------------------------------------------------------

LOOP = """
HloModule loops

%body (p: (s32[], f32[16,16])) -> (s32[], f32[16,16]) {
  %p = (s32[], f32[16,16]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[16,16]{1,0} get-tuple-element(%p), index=1
  %d = f32[16,16]{1,0} dot(%x, %x), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %t = (s32[], f32[16,16]{1,0}) tuple(%next, %d)
}

%cond (p: (s32[], f32[16,16])) -> pred[] {
  %p = (s32[], f32[16,16]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(7)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (x: f32[16,16]) -> (s32[], f32[16,16]) {
  %x = f32[16,16]{1,0} parameter(0)
  %zero = s32[] constant(2)
  %init = (s32[], f32[16,16]{1,0}) tuple(%zero, %x)
  ROOT %w = (s32[], f32[16,16]{1,0}) while(%init), condition=%cond, body=%body
}
"""


def test_trip_count_from_the_condition_when_xla_records_none():
  run = hlo_program.executed(LOOP)
  assert run.loops == [{"name": "w", "trip_count": 5, "times": 1.0}]  # i = 2 .. 6
  dot = 2 * 16 * 16 * 16
  assert run.flops == pytest.approx(5 * (dot + 1) + 6 * 1)  # body x5 (dot, add), cond x6


def test_known_trip_count_wins():
  text = LOOP.replace("body=%body", 'body=%body, backend_config={"known_trip_count":{"n":"3"}}')
  assert hlo_program.executed(text).loops[0]["trip_count"] == 3


def test_scan_flops_are_multiplied_by_the_trip_count():
  w = jnp.ones((64, 64))

  def f(x):
    return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=10)[0]

  compiled = jax.jit(f).lower(jnp.ones((32, 64))).compile()
  run = hlo_program.executed(compiled.as_text())
  matmul = 2 * 32 * 64 * 64
  assert run.flops == pytest.approx(10 * matmul, rel=0.02)
  static = compiled.cost_analysis()
  static = static[0] if isinstance(static, (list, tuple)) else static
  assert static["flops"] < 2 * matmul  # XLA's own count: the body once


def test_loop_free_program_matches_xla_cost_analysis():
  def f(a, b):
    h = jnp.tanh(a @ b) * 3.0 + 1.0
    return jax.nn.softmax(h, axis=-1).sum(0)

  compiled = jax.jit(f).lower(jnp.ones((128, 256)), jnp.ones((256, 96))).compile()
  static = compiled.cost_analysis()
  static = static[0] if isinstance(static, (list, tuple)) else static
  run = hlo_program.executed(compiled.as_text())
  assert run.flops == pytest.approx(static["flops"], rel=0.02)
  assert run.bytes_accessed == pytest.approx(static["bytes accessed"], rel=0.05)


def test_tpu_tiles_pad_the_bytes():
  assert hlo_program.shape_bytes("f32[4,34]{1,0:T(4,128)S(1)}") == 4 * 128 * 4
  assert hlo_program.shape_bytes("f32[2,17,64]{2,1,0:T(8,128)}") == 2 * 24 * 128 * 4
  assert hlo_program.shape_bytes("(f32[2,3]{1,0}, bf16[4])") == 24 + 8


# --- compiled programs whose collective volume is known by hand --------------------------

def _mesh():
  return jax.sharding.Mesh(np.array(jax.devices()[:8]), ("d",))


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_fsdp_gathers_the_params_once():
  mesh = _mesh()
  w = jax.ShapeDtypeStruct((512, 256), jnp.float32, sharding=NamedSharding(mesh, P("d", None)))
  x = jax.ShapeDtypeStruct((64, 512), jnp.float32, sharding=NamedSharding(mesh, P()))
  out = NamedSharding(mesh, P())
  compiled = jax.jit(lambda w, x: x @ w, out_shardings=out).lower(w, x).compile()
  c = hlo_program.executed(compiled.as_text(), 8).collectives
  params = 512 * 256 * 4
  total = sum(v["bytes"] for v in c.values())
  # Either the weight is gathered (params bytes) or the partial products are reduced (the
  # output, 64 x 256 floats, all-reduced): both by hand.
  if c["all-gather"]["count"]:
    assert c["all-gather"]["bytes"] == params and total == params
    assert c["all-gather"]["ici_bytes"] == pytest.approx(7 / 8 * params)
  else:
    assert c["all-reduce"]["bytes"] == 64 * 256 * 4
    assert c["all-reduce"]["ici_bytes"] == pytest.approx(2 * 7 / 8 * 64 * 256 * 4)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_data_parallel_all_reduces_the_gradients():
  mesh = _mesh()
  w = jax.ShapeDtypeStruct((128, 64), jnp.float32, sharding=NamedSharding(mesh, P()))
  x = jax.ShapeDtypeStruct((64, 128), jnp.float32, sharding=NamedSharding(mesh, P("d", None)))
  grad = jax.jit(jax.grad(lambda w, x: jnp.sum((x @ w) ** 2)),
                 out_shardings=NamedSharding(mesh, P()))
  compiled = grad.lower(w, x).compile()
  c = hlo_program.executed(compiled.as_text(), 8).collectives
  g = 128 * 64 * 4
  assert c["all-reduce"]["bytes"] == g
  assert c["all-reduce"]["ici_bytes"] == pytest.approx(2 * 7 / 8 * g)
  assert math.isclose(sum(v["bytes"] for v in c.values()), g)


def test_multislice_transfers_count_as_dcn():
  text = """
  %p = f32[3,8,128]{2,1,0:T(8,128)} parameter(0)
  %t = token[] after-all()
  %s = (f32[3,8,128]{2,1,0:T(8,128)}, u32[], token[]) send(%p, %t), channel_id=2, is_host_transfer=true, frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",_xla_megascale_reduce_operation="SUM",_xla_megascale_transfer_type="ALL_REDUCE"}
  %r = (f32[3,8,128]{2,1,0:T(8,128)}, u32[], token[]) recv(%t), channel_id=3, is_host_transfer=true, frontend_attributes={_xla_megascale_transfer_type="ALL_REDUCE"}
  """
  run = hlo_program.executed(text, 8, slice_of=[0] * 4 + [1] * 4)
  buffer = 3 * 8 * 128 * 4
  assert run.collectives["all-reduce"]["count"] == 1  # the send; its recv is the same transfer
  assert run.collective_moved_bytes == {"ici": 0.0, "dcn": 2 * 1 / 2 * buffer}
  assert run.bytes_accessed == 0  # host transfers are network, not HBM, traffic


# --- the train step itself: executed FLOPs do not depend on how the loop is written -------

def _train_step_ratio(scan, accum, remat):
  """Executed / formula FLOPs of a 4-layer tiny ViT's train step on the 8 local devices."""
  import golden_cases  # pylint: disable=g-import-not-at-top

  from vit_jax.planning import dry_run  # pylint: disable=g-import-not-at-top
  config = golden_cases.config({"mesh": (("data", -1),), "model.scan_layers": scan,
                                "accum_steps": accum, "model.remat": remat, "batch": 64,
                                "model.transformer.num_layers": 4})
  r = dry_run.analyse(config, jax.devices())
  return r["flops_per_device"] / r["formula_flops_per_device"]


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_scan_and_accumulation_keep_the_executed_flops():
  base = _train_step_ratio(False, 1, False)
  assert 1.0 <= base <= 1.1  # matmuls by formula + elementwise and optimizer work
  assert _train_step_ratio(True, 2, False) == pytest.approx(base, abs=0.03)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
@pytest.mark.parametrize("scan,accum,remat", [(True, 1, False), (False, 4, False),
                                              (False, 1, True), (True, 4, True)])
def test_every_loop_combination_against_the_formula(scan, accum, remat):
  ratio = _train_step_ratio(scan, accum, remat)
  if not remat:
    assert 1.0 <= ratio <= 1.1
  else:  # the forward pass of each layer runs twice: at most 4/3 of the step, plus elementwise
    assert 1.2 <= ratio <= 4 / 3 + 0.05


def test_async_wrapped_collectives_are_counted_once():
  """XLA wraps reduce-scatter / all-to-all in async-start(calls=...) / async-done pairs."""
  text = """
HloModule wrapped

%rs_body (x: f32[8,128]) -> f32[2,128] {
  %x = f32[8,128]{1,0} parameter(0)
  ROOT %rs = f32[2,128]{1,0} reduce-scatter(%x), channel_id=1, replica_groups=[2,4]<=[8], dimensions={0}, to_apply=%add
}

ENTRY %main (p: f32[8,128]) -> f32[2,128] {
  %p = f32[8,128]{1,0} parameter(0)
  %start = ((f32[8,128]{1,0}), f32[2,128]{1,0}) async-start(%p), calls=%rs_body
  ROOT %done = f32[2,128]{1,0} async-done(%start)
}
"""
  c = hlo_program.executed(text, 8).collectives
  assert c["reduce-scatter"]["count"] == 1 and c["reduce-scatter"]["bytes"] == F32
  assert c["reduce-scatter"]["ici_bytes"] == pytest.approx(3 / 4 * F32)
