"""vit_jax.artifacts: the weight flags of every command line, the params-only restore of a
workdir (run_state), inference / evaluate / visualize reading weights through
`artifacts.resolve` and export through its workdir part, run_state.read_params (no CLI module
importing another)."""
import importlib.util
import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax.linen import meta
from helpers import REPO, tiny_config  # pylint: disable=g-bad-import-order
from PIL import Image

from vit_jax import artifacts, checkpoint, evaluate, exits, inference, sharding, visualize
from vit_jax.evaluators import offline
from vit_jax.export_formats import npz, writers
from vit_jax.models import registry
from vit_jax.run import run_state
from vit_jax.training import train_state

_SPEC = importlib.util.spec_from_file_location("import_graph", REPO / "scripts" / "import_graph.py")
import_graph_lib = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(import_graph_lib)
CLIS = ("vit_jax.main", "vit_jax.export", "vit_jax.inference", "vit_jax.evaluate",
        "vit_jax.visualize")


def _config(tmp_path, ema=True):
  config = tiny_config(tmp_path / "data", **{"model.transformer.num_layers": 2})
  with config.unlocked():
    config.num_classes = 10
    config.class_names = tuple(f"c{i}" for i in range(10))
    config.ema.decay = 0.9 if ema else 0.0
  return config


def _workdir(tmp_path, ema=True, steps=(3,)):
  """A workdir with config.json and AdamW checkpoints whose params, EMA and moments differ."""
  config = _config(tmp_path, ema)
  workdir = str(tmp_path / "run")
  run_state.check_or_write_config(workdir, config, has_checkpoint=False)
  setup = train_state.setup_from_config(config, sharding.make_mesh(config.mesh), 10, 10)
  state = train_state.create_train_state(setup, 0)
  rng = np.random.default_rng(0)
  noise = lambda tree: jax.tree.map(
      lambda x: x + rng.normal(0, 0.1, x.shape).astype(x.dtype)
      if np.issubdtype(x.dtype, np.floating) and x.ndim else x, jax.device_get(tree))
  state = state.replace(params=noise(state.params), opt_state=noise(state.opt_state),
                        ema_params=noise(state.ema_params) if ema else None)
  ckpt = run_state.Checkpointer(workdir, async_save=False)
  for step in steps:
    ckpt.save(step, state, {"position": step})
  ckpt.close()
  return workdir, setup, jax.device_get(state)


def _unsharded(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


@pytest.fixture
def read_leaves(monkeypatch):
  """Counts the arrays Orbax deserializes (jax.Array and numpy handlers)."""
  counted = []
  for handler in (ocp.type_handlers.ArrayHandler, ocp.type_handlers.NumpyHandler):
    original = handler.deserialize

    async def spy(self, infos, args=None, _original=original):
      counted.extend(info.name for info in infos)
      return await _original(self, infos, args)
    monkeypatch.setattr(handler, "deserialize", spy)
  return counted


# --- the params-only restore ------------------------------------------------------------------

def test_restore_params_reads_only_the_params_and_equals_the_full_restore(tmp_path, read_leaves):
  workdir, setup, saved = _workdir(tmp_path)
  ckpt = run_state.Checkpointer(workdir)
  try:
    full, data = ckpt.restore(3, setup.abstract_state)
    full_reads = len(read_leaves)
    read_leaves.clear()
    raw = ckpt.restore_params(3, _unsharded(setup.abstract_state.params))
    raw_reads = list(read_leaves)
    read_leaves.clear()
    averaged = ckpt.restore_params(3, _unsharded(setup.abstract_state.params), "ema")
    ema_reads = list(read_leaves)
    placed = ckpt.restore_params(3, setup.abstract_state.params)  # With shardings: jax.Arrays.
  finally:
    ckpt.close()
  n_params = len(jax.tree.leaves(full.params))
  assert data == {"position": 3}
  assert full_reads == len(jax.tree.leaves(full)) > 3 * n_params  # params, EMA, 2 moments, ...
  # Exactly the params' arrays are read: no optimizer state, step, RNG or EMA.
  assert len(raw_reads) == n_params and not any("opt_state" in n or "ema" in n for n in raw_reads)
  assert len(ema_reads) == n_params and all(n.startswith("ema_params.") for n in ema_reads)
  assert isinstance(raw, dict) and "opt_state" not in raw
  assert jax.tree.structure(raw) == jax.tree.structure(jax.device_get(full.params))
  for got, want, stored in zip(jax.tree.leaves(raw), jax.tree.leaves(jax.device_get(full.params)),
                               jax.tree.leaves(saved.params)):
    assert isinstance(got, np.ndarray) and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, stored)
  jax.tree.map(np.testing.assert_array_equal, averaged, jax.device_get(full.ema_params))
  assert not np.array_equal(averaged["head"]["kernel"], raw["head"]["kernel"])
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(placed))
  assert jax.tree.map(lambda x: x.sharding, placed) == jax.tree.map(
      lambda x: x.sharding, setup.abstract_state.params)


def test_restore_params_refuses_what_the_checkpoint_lacks(tmp_path):
  workdir, setup, _ = _workdir(tmp_path, ema=False)
  abstract = _unsharded(setup.abstract_state.params)
  ckpt = run_state.Checkpointer(workdir)
  try:
    with pytest.raises(exits.UserError, match="holds no ema_params"):
      ckpt.restore_params(3, abstract, "ema")
    extra = dict(abstract, extra={"k": jax.ShapeDtypeStruct((2,), np.float32)})
    with pytest.raises(exits.UserError, match=r"not all params: 1 missing, e.g. \['extra'\]"):
      ckpt.restore_params(3, extra)
    with pytest.raises(exits.UserError, match="params='best' is unknown"):
      ckpt.restore_params(3, abstract, "best")
  finally:
    ckpt.close()


def test_resolve_a_workdir(tmp_path):
  workdir, _, saved = _workdir(tmp_path, steps=(2, 3))
  weights = artifacts.resolve(workdir=workdir)
  assert (weights.source, weights.location, weights.step, weights.which) == (
      "workdir", workdir, 3, "raw")
  assert weights.resolution == 8 and weights.num_classes == 10
  assert weights.class_names == [f"c{i}" for i in range(10)]
  assert weights.config.model.transformer.num_layers == 2
  jax.tree.map(np.testing.assert_array_equal, weights.params, saved.params)
  ema = artifacts.resolve(workdir=workdir, step=2, which="ema")
  assert ema.step == 2 and ema.which == "ema"
  jax.tree.map(np.testing.assert_array_equal, ema.params, saved.ema_params)
  logits = jax.eval_shape(  # Traced, not run op by op: the params fit the model, logits (1, 10).
      lambda p: weights.model.apply({"params": p}, np.zeros((1, 8, 8, 3), np.float32),
                                    train=False), weights.params)
  assert logits.shape == (1, 10)
  with pytest.raises(exits.UserError, match=r"no checkpoint at step 5 .* \[2, 3\]"):
    artifacts.resolve(workdir=workdir, step=5)
  with pytest.raises(ValueError, match="trained at 8 px"):
    artifacts.resolve(workdir=workdir, resolution=16)
  with pytest.raises(ValueError, match="--num_classes 3 but the model has 10"):
    artifacts.resolve(workdir=workdir, num_classes=3)


def test_resolve_refuses_ema_of_a_run_without_it(tmp_path):
  workdir, _, _ = _workdir(tmp_path, ema=False)
  with pytest.raises(exits.UserError, match="kept no EMA"):
    artifacts.resolve(workdir=workdir, which="ema")


# --- the flags -------------------------------------------------------------------------------

_REST = {inference: ["x.png"], visualize: ["--out", "o", "x.png"], evaluate: []}


@pytest.mark.parametrize("cli", [inference, visualize, evaluate], ids=lambda m: m.__name__)
@pytest.mark.parametrize("flags,message", [
    ([], artifacts.EXACTLY_ONE),
    (["--checkpoint", "m.npz", "--workdir", "w"], artifacts.EXACTLY_ONE),
    (["--model", "ViT-B_16", "--workdir", "w"], artifacts.MODEL_WITH_WORKDIR),
    (["--checkpoint", "m.npz", "--params", "ema"], artifacts.EMA_WITHOUT_WORKDIR),
])
def test_weight_flag_errors_are_the_same_in_every_cli(cli, flags, message, capsys):
  with pytest.raises(SystemExit) as err:
    cli.parse_args(flags + _REST[cli])
  assert err.value.code == exits.BAD_INPUT
  assert message in capsys.readouterr().err


def test_resolve_gives_the_flag_errors_too():
  with pytest.raises(exits.UserError, match="exactly one of --checkpoint"):
    artifacts.resolve()
  with pytest.raises(exits.UserError, match="--model is for published checkpoints"):
    artifacts.resolve(model="ViT-B_16", workdir="w")
  with pytest.raises(exits.UserError, match="pass --workdir"):
    artifacts.resolve(checkpoint_path="m.npz", which="ema")


def test_evaluate_takes_top_k_and_the_deprecated_topk():
  for spelling in ("--top_k", "--topk"):
    args = evaluate.parse_args(["--workdir", "w", spelling, "3"])
    assert args.top_k == 3 and not hasattr(args, "topk")
    config, _ = offline.eval_settings(args, 8, "digits", "test")
    assert config.evals.classification.topk == 3
  assert evaluate.parse_args(["--workdir", "w"]).top_k is None  # unset: the run's (else 5)
  config, _ = offline.eval_settings(evaluate.parse_args(["--workdir", "w"]), 8, "digits", "test")
  assert config.evals.classification.get("topk") is None


# --- every CLI reads its weights through artifacts.resolve ----------------------------------

def _jit_init(model, seed, x):
  """model.init's params compiled once (eager dispatch compiles every primitive on its own)."""
  return jax.jit(lambda x: model.init(jax.random.PRNGKey(seed), x, train=False))(x)["params"]


def _tiny_weights():
  model = registry.create_model("testing", 5, hidden_size=16, patches={"size": (4, 4)},
                                transformer=dict(num_layers=1, num_heads=2, mlp_dim=32,
                                                 dropout_rate=0.0, attention_dropout_rate=0.0))
  params = meta.unbox(_jit_init(model, 0, np.zeros((1, 16, 16, 3), np.float32)))
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda x: np.asarray(x) + rng.normal(0, 0.3, x.shape).astype(np.float32),
                        params)
  return artifacts.Weights(model, params, 16, list("abcde"), None, "export", "fake.npz")


@pytest.fixture
def fake_resolve(monkeypatch):
  """artifacts.resolve replaced: records its arguments and returns `.weights` (default: a tiny
  5-class ViT at 16 px), or raises when `.stop` is set."""
  def resolve(**kwargs):
    resolve.calls.append(kwargs)
    if resolve.stop:
      raise exits.UserError("stopped in the fake resolver")
    return resolve.weights or _tiny_weights()
  resolve.calls, resolve.weights, resolve.stop = [], None, False
  monkeypatch.setattr(artifacts, "resolve", resolve)
  return resolve


def _image(tmp_path):
  path = str(tmp_path / "img.png")
  Image.fromarray(np.random.default_rng(2).integers(0, 256, (20, 20, 3), np.uint8)).save(path)
  return path


def test_inference_resolves_through_artifacts(fake_resolve, tmp_path, capsys):
  image = _image(tmp_path)
  assert inference.main(["--checkpoint", "fake.npz", "--top_k", "2", image]) == 0
  assert fake_resolve.calls == [dict(model=None, checkpoint_path="fake.npz", workdir=None,
                                     step=None, which="raw", num_classes=None, resolution=None,
                                     require_head=True, vocab=None)]
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == image and len(lines) == 3 and lines[1].split()[1] in "abcde"


def test_visualize_resolves_through_artifacts(fake_resolve, tmp_path, capsys):
  out = tmp_path / "out"
  assert visualize.main(["--workdir", "w", "--step", "4", "--params", "ema", "--out", str(out),
                         _image(tmp_path)]) == 0
  (call,) = fake_resolve.calls
  assert (call["workdir"], call["step"], call["which"], call["require_head"]) == (
      "w", 4, "ema", False)
  assert "Wrote 8 files" in capsys.readouterr().out
  assert json.loads((out / "summary.json").read_text())["resolution"] == 16


def test_evaluate_resolves_through_artifacts(fake_resolve, tmp_path, capsys):
  name = ("Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--cifar100-steps_10k-"
          "lr_0.003-res_224")
  fake_resolve.stop = True  # Nothing past the weights: no dataset is read here.
  assert evaluate.main(["--workdir", "w", "--step", "2", "--topk", "2"]) == exits.BAD_INPUT
  assert "stopped in the fake resolver" in capsys.readouterr().err
  # An AugReg file names the architecture and resolution it is resolved with.
  assert evaluate.main(["--checkpoint", f"{tmp_path}/{name}.npz", "--no_classification",
                        "--fewshot", "cifar100"]) == exits.BAD_INPUT
  first, second = fake_resolve.calls
  assert (first["workdir"], first["step"], first["model"]) == ("w", 2, None)
  assert (second["model"], second["resolution"], second["require_head"]) == (
      "ViT-Ti_16", 224, False)


def test_export_and_resolve_read_a_workdir_through_read_params(tmp_path, monkeypatch):
  config = _config(tmp_path)
  model = npz.model_from_architecture(npz.architecture(config))
  # The model's names and shapes, random values (nothing to compile; every leaf nonzero, so the
  # round trip below is checked on every value).
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(3),
                                             np.zeros((1, 8, 8, 3), np.float32), train=False))
  rng = np.random.default_rng(3)
  params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype),
                        meta.unbox(shapes["params"]))
  calls = []

  def read_params(workdir, step=None, which="raw"):
    calls.append((workdir, step, which))
    return params, config, 7
  monkeypatch.setattr(run_state, "read_params", read_params)
  monkeypatch.setattr(run_state, "read_config", lambda workdir: config)  # export checks it first
  weights = artifacts.resolve(workdir="some/workdir", step=7, which="ema")
  assert weights.step == 7 and weights.params is params and weights.config is config
  out = tmp_path / "m.npz"
  written = writers.export_files("some/workdir", str(out), fmt="npz", params="ema")
  assert calls == [("some/workdir", 7, "ema"), ("some/workdir", None, "ema")]
  assert written.files == ("m.npz", "m.json")
  sidecar = json.loads((tmp_path / "m.json").read_text())
  assert sidecar["step"] == 7 and sidecar["format"] == npz.ARCHITECTURE_FORMAT
  assert sidecar["model"]["transformer"]["num_layers"] == 2
  jax.tree.map(np.testing.assert_array_equal, checkpoint.load(str(out)), params)


def test_no_cli_module_imports_another():
  graph = import_graph_lib.import_graph(REPO)
  for cli in CLIS:
    top, lazy = graph[cli]
    assert not (top | lazy) & set(CLIS), f"{cli} imports {(top | lazy) & set(CLIS)}"
  for cli in CLIS[1:]:  # The weight-reading CLIs read them in one place.
    reads = graph[cli][0] | graph[cli][1]
    assert "vit_jax.artifacts" in reads or "vit_jax.export_formats.writers" in reads, cli
  for reader in ("vit_jax.artifacts", "vit_jax.export_formats.writers"):
    assert "vit_jax.run.run_state" in graph[reader][0], reader
  assert not import_graph_lib.cycles(graph)


def test_restore_bench_runs_on_a_tiny_model(tmp_path):
  spec = importlib.util.spec_from_file_location("restore_bench",
                                                REPO / "bench" / "restore_params.py")
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  out = tmp_path / "r.json"
  assert bench.main(["--model", "testing", "--num_classes", "10", "--resolution", "32",
                     "--dir", str(tmp_path / "w"), "--json", str(out)]) == 0
  result = json.loads(out.read_text())
  runs = {r["mode"]: r for r in result["runs"]}
  assert runs["params"]["params_bytes"] == runs["state"]["params_bytes"] == result["params_bytes"]
  assert runs["params"]["held_bytes"] == result["params_bytes"] < runs["state"]["held_bytes"]
  assert result["state_bytes"] > 3 * result["params_bytes"]  # params + 2 AdamW moments + ...
