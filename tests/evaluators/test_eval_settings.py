"""`python -m vit_jax.evaluate --workdir` re-scores a run with the run's own eval settings (flags
override and are marked), and `--evals` adds config.evals entries from the command line of
vit_jax.main and vit_jax.evaluate (vit_jax/evaluators/command_line.py)."""
import json
import os
import subprocess
import sys

import ml_collections
import pytest

from vit_jax.evaluators import command_line, offline


def _tiny(tmp_path, evals=None, **overrides):
  from helpers import tiny_config  # pylint: disable=g-import-not-at-top  (imports jax: libtpu)
  config = tiny_config(tmp_path.parent / "tfds_shared", **overrides)
  with config.unlocked():
    config.evals = ml_collections.ConfigDict(evals or {})
  return config


def _args(*flags):
  from vit_jax import evaluate  # pylint: disable=g-import-not-at-top
  return evaluate.parse_args(["--workdir", "w", *flags])


# --- eval settings: the run's unless a flag is given ------------------------------------------

_RUN_EVALS = {"val": dict(type="classification", topk=3, every=2, pp=dict(resize=10)),
              "fs": dict(type="fewshot", shots=(1,), datasets={"d": ("digits", "train", "test")})}


def test_no_flag_keeps_every_setting_of_the_run(tmp_path):
  run = _tiny(tmp_path, _RUN_EVALS, **{"pp.eval": "resize_small", "pp.resize": None,
                                      "pp.crop_pct": 0.875, "batch_eval": 32})
  config, overridden = offline.eval_settings(_args(), 8, "digits", "test", run=run)
  assert overridden == {}
  assert (config.pp.eval, config.pp.resize, config.pp.crop_pct) == ("resize_small", None, 0.875)
  assert config.batch_eval == 32 and config.pp.crop == 8
  evals = config.evals.to_dict()
  assert set(evals) == {"val", "fs"} and evals["val"]["topk"] == 3
  assert evals["val"]["pp"] == {"resize": 10} and all(e["every"] == 0 for e in evals.values())
  # A run without config.evals: its default evaluator, under the name 'classification'.
  plain = _tiny(tmp_path, **{"pp.eval": "resize_small"})
  config, _ = offline.eval_settings(_args(), 8, "digits", "test", run=plain)
  assert config.evals.to_dict() == {"classification": {"type": "classification", "every": 0}}
  assert config.pp.eval == "resize_small"
  # No workdir: the defaults (square resize, batch 64, topk 5).
  config, overridden = offline.eval_settings(_args(), 8, "digits", "test")
  assert (config.pp.eval, config.batch_eval, overridden) == ("resize", 64, {})


def test_flags_override_the_run_and_say_so(tmp_path):
  run = _tiny(tmp_path, _RUN_EVALS, **{"pp.resize": 8, "batch_eval": 32})
  args = _args("--eval_pp", "resize_crop", "--crop_pct", "0.9", "--top_k", "2", "--shots", "1,4",
               "--fewshot_seeds", "3", "--fewshot_l2_reg", "8", "--batch_size", "16",
               "--split", "test[:40]")
  config, overridden = offline.eval_settings(args, 8, "digits", "test[:40]", run=run)
  # crop_pct replaces the run's resize (both set the eval resize), here and in val's pp.
  assert (config.pp.eval, config.pp.crop_pct, config.pp.resize) == ("resize_crop", 0.9, None)
  evals = config.evals.to_dict()
  assert evals["val"]["topk"] == 2 and "resize" not in evals["val"].get("pp", {})
  assert evals["fs"]["shots"] == (1, 4) and evals["fs"]["num_seeds"] == 3
  assert evals["fs"]["l2_reg"] == 8.0 and config.batch_eval == 16
  assert overridden == {
      "split": {"run": "test", "flag": "test[:40]"},
      "pp.eval": {"run": "resize", "flag": "resize_crop"},
      "pp.crop_pct": {"run": None, "flag": 0.9}, "pp.resize": {"run": 8, "flag": None},
      "val.pp.resize": {"run": 10, "flag": None}, "val.topk": {"run": 3, "flag": 2},
      "fs.shots": {"run": (1,), "flag": (1, 4)}, "fs.num_seeds": {"run": 1, "flag": 3},
      "fs.l2_reg": {"run": None, "flag": 8.0}, "batch_size": {"run": 32, "flag": 16}}
  from vit_jax import evaluate  # pylint: disable=g-import-not-at-top
  lines = evaluate.table({"dataset": "digits", "split": "test[:40]", "resolution": 8,
                          "batch_size": 16, "eval_pp": "resize_crop", "resize": None,
                          "crop_pct": 0.9, "evaluators": evals, "settings_from": "the run in w",
                          "overridden": overridden, "results": {"fs/d_1shot": 0.5,
                                                                "fs/d_1shot_std": 0.125},
                          "published": []})
  assert lines[0] == "settings from the run in w except those marked 'flag'"
  assert "  pp.eval          resize_crop   flag (the run's: resize)" in lines
  assert "  val.topk         2   flag (the run's: 3)" in lines
  assert "fs/d_1shot                         50.00% ± 12.50%" in lines
  # --evals replaces the run's evaluators; --fewshot adds one; --no_classification drops.
  config, overridden = offline.eval_settings(
      _args("--evals", "q:classification:split=test[:8]", "--fewshot", "pets"), 8, "digits",
      "test", run=run)
  assert set(config.evals) == {"q", "fewshot"} and overridden == {}
  config, _ = offline.eval_settings(_args("--no_classification"), 8, "digits", "test", run=run)
  assert set(config.evals) == {"fs"}
  with pytest.raises(ValueError, match="--no_classification leaves no evaluator"):
    offline.eval_settings(_args("--no_classification"), 8, "digits", "test",
                          run=_tiny(tmp_path))


def test_an_entrys_resize_replaces_the_runs_crop_pct(tmp_path):
  from vit_jax.evaluators import common  # pylint: disable=g-import-not-at-top
  run = _tiny(tmp_path, **{"pp.resize": None, "pp.crop_pct": 0.875})
  spec = common.Spec("half", "classification", 0, {"pp": {"resize": 10}})
  pp = common.data_config(run, spec).pp
  assert (pp.resize, pp.crop_pct) == (10, None)


def test_a_resize_small_run_is_rescored_with_its_own_preprocessing(tmp_path, capsys):
  """A run evaluated with pp.eval='resize_small', crop_pct 0.875: `evaluate --workdir` gives its
  final figures exactly; `--eval_pp resize` is marked as a flag and scores otherwise."""
  from vit_jax import evaluate  # pylint: disable=g-import-not-at-top
  from vit_jax.run import loop  # pylint: disable=g-import-not-at-top  (imports jax: libtpu)
  config = _tiny(tmp_path, total_steps=4, checkpoint_every=4,
                 **{"pp.eval": "resize_small", "pp.resize": None, "pp.crop_pct": 0.875})
  result = loop.train_and_evaluate(config, str(tmp_path / "run"))
  ev = result["eval"]
  out = tmp_path / "eval.json"
  assert evaluate.main(["--workdir", str(tmp_path / "run"), "--json", str(out)]) == 0
  printed = capsys.readouterr().out
  got = json.loads(out.read_text())
  assert (got["eval_pp"], got["crop_pct"], got["overridden"]) == ("resize_small", 0.875, {})
  assert "flag" not in printed and "pp.eval          resize_small" in printed
  res = got["results"]
  assert res["classification/top1"] == ev["accuracy"]
  assert res["classification/top5"] == ev["top5_accuracy"]
  assert res["classification/loss"] == ev["loss"]
  assert res["classification/examples"] == ev["examples"] == 297
  assert evaluate.main(["--workdir", str(tmp_path / "run"), "--eval_pp", "resize",
                        "--json", str(out)]) == 0
  printed = capsys.readouterr().out
  other = json.loads(out.read_text())
  assert other["overridden"]["pp.eval"] == {"run": "resize_small", "flag": "resize"}
  assert "flag (the run's: resize_small)" in printed
  assert other["results"]["classification/loss"] != ev["loss"]


# --- --evals: config.evals entries on the command line -----------------------------------------

def test_evals_specs_parse_into_config_entries():
  got = command_line.parse([
      "half:classification:split=test[:50%],topk=2,per_class=true,pp.eval=resize_small",
      "fs:fewshot:datasets.d=digits:train[:600]:test,shots=(1, 5),l2_reg=1024,num_seeds=3;"
      "plain:classification",
      "lit:fewshot:datasets={'p': ('oxford_iiit_pet', 'train', 'test')},every=None,seed=2"])
  assert got == {
      "half": {"type": "classification", "split": "test[:50%]", "topk": 2, "per_class": True,
               "pp": {"eval": "resize_small"}},
      "fs": {"type": "fewshot", "datasets": {"d": ("digits", "train[:600]", "test")},
             "shots": (1, 5), "l2_reg": 1024, "num_seeds": 3},
      "plain": {"type": "classification"},
      "lit": {"type": "fewshot", "datasets": {"p": ("oxford_iiit_pet", "train", "test")},
              "every": None, "seed": 2}}
  assert command_line.split_top("a:'b:c':d[:1]", ":") == ["a", "'b:c'", "d[:1]"]


@pytest.mark.parametrize("spec,what", [
    ("half", "names no TYPE"),
    ("half:classifcation", "type 'classifcation' is unknown"),
    ("half:classification:spilt=test", "'spilt' is not a key of type 'classification'"),
    ("half:classification:shots=(1,)", "'shots' is not a key of type 'classification'"),
    ("half:classification:pp.crop=8", "'pp.crop' is not a key"),
    ("half:classification:topk", "'topk' is not KEY=VALUE"),
    ("9lives:classification", "the name '9lives' must be an identifier"),
    ("f:fewshot:datasets.d=digits:train", "must be DATASET:TRAIN_SPLIT:TEST_SPLIT"),
])
def test_bad_evals_specs_are_one_error_naming_the_syntax_types_and_keys(spec, what):
  with pytest.raises(ValueError) as err:
    command_line.parse([spec])
  message = str(err.value)
  assert what in message and "\n" not in message
  assert message.startswith(f"--evals={spec!r}: ")
  assert "Use NAME:TYPE[:KEY=VALUE,KEY=VALUE,...]" in message
  assert "types: ['classification', 'fewshot'" in message
  assert "classification: per_class, topk" in message and "l2_reg" in message
  with pytest.raises(ValueError, match="'a' is given twice"):
    command_line.parse(["a:classification", "a:fewshot"])


def test_evals_apply_to_a_locked_config_replacing_same_names(tmp_path):
  config = _tiny(tmp_path, {"val": dict(type="classification", topk=3),
                            "keep": dict(type="classification")})
  config.lock()
  command_line.apply(config, ["val:fewshot:shots=(1,)", "new:classification:split=test[:8]"])
  assert config.evals.to_dict() == {"val": {"type": "fewshot", "shots": (1,)},
                                    "keep": {"type": "classification"},
                                    "new": {"type": "classification", "split": "test[:8]"}}
  with pytest.raises(AttributeError):  # still locked
    config.no_such_key = 1
  assert command_line.apply(config, []) is config


def _main(*flags):
  from helpers import REPO  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "vit_jax.main", *flags], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_an_evaluator_given_only_on_the_command_line_reports_its_metric(tmp_path, capsys,
                                                                          data_dir):
  """vit_jax.main --evals (no config file names it) logs and records the evaluator; evaluate
  --workdir re-scores the run with it exactly, and takes its own --evals; a bad spec is one
  line with exit status 2."""
  from helpers import TINY_FLAGS  # pylint: disable=g-import-not-at-top

  from vit_jax import evaluate, exits  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  flags = TINY_FLAGS + [f"--workdir={workdir}", f"--config.tfds_data_dir={data_dir}",
                        "--config.total_steps=2", "--config.checkpoint_every=2"]
  proc = _main(*flags, "--evals=half:classification:split=test[:50%],topk=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  done = next(line for line in proc.stdout.splitlines() if line.startswith("Done:"))
  assert "half/top2" in done and "half/top1" in done
  recorded = json.loads((workdir / "results.json").read_text())["evals"][-1]
  assert recorded["step"] == 2 and recorded["half/examples"] == 148
  # evaluate --workdir: the run's evaluator, its figure exactly.
  out = tmp_path / "eval.json"
  assert evaluate.main(["--workdir", str(workdir), "--json", str(out)]) == 0
  res = json.loads(out.read_text())["results"]
  assert res["half/top1"] == recorded["half/top1"] and res["half/top2"] == recorded["half/top2"]
  assert "half (classification)" in capsys.readouterr().out
  # evaluate --evals: an evaluator only the command line names.
  assert evaluate.main(["--workdir", str(workdir), "--evals", "q:classification:split=test[:40],"
                        "topk=3"]) == 0
  printed = capsys.readouterr().out
  assert "q/top3" in printed and "half/" not in printed
  assert "q/examples                         40" in printed
  assert evaluate.main(["--workdir", str(workdir), "--evals", "q:classifcation"]) == \
      exits.BAD_INPUT
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "types: ['classification', 'fewshot'" in err[0], err
  bad = _main(*flags, "--evals=q:classification:spilt=test")
  assert bad.returncode == exits.BAD_INPUT
  line = bad.stderr.strip().splitlines()[-1]
  assert "'spilt' is not a key of type 'classification'" in line and "topk" in line


def test_keep_aspect_evaluates_one_image_per_sequence_at_the_resolutions_budget(tmp_path):
  run = _tiny(tmp_path)
  config, overridden = offline.eval_settings(_args("--keep_aspect"), 32, "digits", "test",
                                             run=run, model_patch=4)
  assert (config.naflex.seq_len, config.naflex.eval_seq_len, config.naflex.patch_size) == (
      64, 64, 4)
  assert overridden["naflex.eval_seq_len"]["flag"] == 64
  plain, _ = offline.eval_settings(_args(), 32, "digits", "test", run=run, model_patch=4)
  assert not plain.naflex.seq_len          # without the flag a square model stays square
  packed_run = _tiny(tmp_path, **{"naflex.seq_len": 48, "naflex.patch_size": 4})
  same, overridden = offline.eval_settings(_args(), 8, "digits", "test", run=packed_run,
                                           model_patch=4)
  assert same.naflex.eval_seq_len == 0 and "naflex.eval_seq_len" not in overridden
  other, _ = offline.eval_settings(_args(), 16, "digits", "test", run=packed_run, model_patch=4)
  assert other.naflex.eval_seq_len == 16   # (16 px / 4)^2
