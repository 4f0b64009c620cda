"""topology: slice names of every generation, bad names, the datasheet table, abstract devices."""
import pytest

from vit_jax.planning import datasheets, topology

try:
  import libtpu  # noqa: F401  pylint: disable=unused-import
  HAS_LIBTPU = True
except ImportError:
  HAS_LIBTPU = False
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason="pip install -r requirements-tpu.txt")


@pytest.mark.parametrize("name,topology_name,chips,canonical", [
    ("v4-128", "v4:4x4x4", 64, "v4-128"),          # v4 names count TensorCores
    ("v4-8", "v4:2x2x1", 4, "v4-8"),
    ("v5e-16", "v5e:4x4", 16, "v5e-16"),           # v5e names count chips
    ("v5litepod-16", "v5e:4x4", 16, "v5e-16"),
    ("v5litepod-256", "v5e:16x16", 256, "v5e-256"),
    ("v5p-256", "v5p:4x4x8", 128, "v5p-256"),
    ("v5p-1024", "v5p:8x8x8", 512, "v5p-1024"),
    ("V5P-8", "v5p:2x2x1", 4, "v5p-8"),
    ("v6e-64", "v6e:8x8", 64, "v6e-64"),
    ("v5p:4x4x8", "v5p:4x4x8", 128, "v5p-256"),    # the raw form
    ("v5e:2x2", "v5e:2x2", 4, "v5e-4"),
])
def test_names_users_type(name, topology_name, chips, canonical):
  s = topology.parse(name)
  assert (s.topology_name, s.chips, s.name) == (topology_name, chips, canonical)


@pytest.mark.parametrize("name,why", [
    ("v5p-7", "count TensorCores"), ("v5p-6", "no v5p slice of 3 chips"),
    ("v3-8", "unknown TPU generation 'v3'"), ("h100-8", "not a TPU slice name"),
    ("v5e:4x4x4", "2 dimensions"), ("tpu", "not a TPU slice name"), ("v5e-3", "sizes: v5e-1"),
])
def test_bad_names_get_one_message_listing_the_forms(name, why):
  with pytest.raises(ValueError, match=why) as err:
    topology.parse(name)
  assert "Valid forms: v4-128, v5e-16, v5litepod-16, v5p-256, v6e-64, v5p:4x4x8" in str(err.value)


def test_datasheet_table():
  for gen in topology.GENERATIONS.values():
    assert gen.peak_bf16_flops > 1e14 and gen.hbm_bytes >= 16 * topology.GIB
    assert gen.source.startswith("cloud.google.com/tpu/docs/")
  v5p = topology.GENERATIONS["v5p"]
  assert datasheets.for_kind("TPU v5").peak_bf16_flops == v5p.peak_bf16_flops
  assert datasheets.for_kind("TPU v5 lite").kind == "TPU v5 lite"  # longest prefix wins
  assert datasheets.for_kind("NVIDIA H100 80GB HBM3") is datasheets.GPU["H100"]
  assert datasheets.for_kind("cpu") is None
  for sheet in datasheets.BY_DEVICE_KIND.values():  # every row is complete and sourced
    assert sheet.peak_bf16_flops > 1e13 and sheet.hbm_bytes >= 16e9 and sheet.hbm_bytes_per_s > 1e11
    assert sheet.source


@needs_libtpu
@pytest.mark.parametrize("name,count,kind,gen", [
    ("v5e:2x2", 4, "TPU v5 lite", "v5e"), ("v4-8", 4, "TPU v4", "v4"),  # v4 as megacore chips
    ("v5p-8", 4, "TPU v5", "v5p"), ("v6e:2x2", 4, "TPU v6 lite", "v6e")])
def test_abstract_devices(name, count, kind, gen):
  devices = topology.abstract_devices(topology.parse(name))
  assert len(devices) == count and devices[0].device_kind == kind
  assert topology.generation_of(devices[0]).name == gen


@needs_libtpu
def test_multislice_devices_carry_their_slice():
  devices = topology.abstract_devices(topology.parse("v5e:2x2"), num_slices=2)
  assert len(devices) == 8 and sorted({d.slice_index for d in devices}) == [0, 1]


def test_without_libtpu_the_error_says_how_to_install(monkeypatch):
  import builtins  # pylint: disable=g-import-not-at-top
  real_import = builtins.__import__
  def no_libtpu(name, *args, **kwargs):
    if name == "libtpu":
      raise ImportError("no libtpu")
    return real_import(name, *args, **kwargs)
  monkeypatch.setattr(builtins, "__import__", no_libtpu)
  with pytest.raises(RuntimeError, match="pip install -r requirements-tpu.txt"):
    topology.abstract_devices(topology.parse("v5e-4"))
