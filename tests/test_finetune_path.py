"""The offline fine-tune path end to end: a quickstart-style run exported, then fine-tuned at
twice the resolution with a new head through configs/finetune_quickstart.py (`vit_jax.main`),
with the load report on the console. Tiny sizes: 8 px (2x2 grid) -> 16 px (4x4 grid)."""
import os
import subprocess
import sys

from helpers import REPO, load_config_file, tiny_config  # pylint: disable=g-bad-import-order

from vit_jax.export_formats import writers
from vit_jax.run import loop

TINY_MODEL = ["--config.model.hidden_size=16", "--config.model.transformer.mlp_dim=32",
              "--config.model.transformer.num_heads=2", "--config.model.transformer.num_layers=1"]


def test_preset_is_the_quickstart_model_at_32_px_with_a_new_head():
  c = load_config_file("finetune_quickstart")
  q = load_config_file("quickstart")
  assert c.model.to_dict() == q.model.to_dict() and c.model_name == q.model_name
  assert c.pp.crop == 32 == 2 * q.pp.crop and c.replace_head is True
  assert c.pretrained_path == "workdirs/quickstart/model.npz"
  assert load_config_file("finetune_quickstart", "/x/m.npz").pretrained_path == "/x/m.npz"


def test_export_fine_tuned_at_twice_the_resolution(tmp_path):
  data_dir = tmp_path.parent / "tfds_shared"
  source = tmp_path / "source"
  loop.train_and_evaluate(tiny_config(data_dir, total_steps=10, checkpoint_every=10),
                           str(source))
  exported = writers.export(str(source), str(tmp_path / "model.npz"))
  flags = ["--config=configs/finetune_quickstart.py:" + exported, *TINY_MODEL,
           f"--workdir={tmp_path / 'ft'}", f"--config.tfds_data_dir={data_dir}",
           "--config.pp.crop=16", "--config.batch=32", "--config.batch_eval=64",
           "--config.total_steps=6", "--config.warmup_steps=2", "--config.eval_every=0",
           "--config.progress=False", "--config.input.num_workers=0",
           "--config.dont_load=('Transformer/encoder_norm/.*',)"]
  proc = subprocess.run([sys.executable, "-m", "vit_jax.main", *flags], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert f"Loaded {exported}:" in out
  assert "head: replaced (10 -> 10 classes)" in out
  assert "position embeddings: resized from the 2x2 to the 4x4 patch grid" in out
  assert "Fine-tuning from pretrained weights" in out and "Done: step 6; eval accuracy" in out
  assert out.count("head: replaced") == 1  # Printed once.
  assert ("not loaded (dont_load): 2 arrays at the model's initial value: "
          "Transformer/encoder_norm/bias, Transformer/encoder_norm/scale.") in out
