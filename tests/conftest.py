"""Session-wide test setup: 8 fake CPU devices, quiet TensorFlow, no network, one persistent
compilation cache, and the fixtures many test files share.

XLA_FLAGS must be set before JAX initialises its backend, so it is set here at import time
(pytest imports conftest before any test module). Tests that need a specific device count or
several processes start subprocesses instead; they inherit the environment set here, the
compilation cache included, so a program compiled once (the tiny trainer step, say) is read
from the cache by every later process that compiles it.
"""
import atexit
import os
import pathlib
import shutil
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# Never reach the network from tests: Hugging Face Hub calls must use loopback
# servers or the local cache that a test prepares.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# JAX's persistent compilation cache for this process and every subprocess it starts. The key
# covers the program, the compile options and the devices, so a hit is the same executable.
# A fresh cache per pytest run (removed at exit), so timings are those of a fresh machine.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="vit_jax_test_jax_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # `from helpers import ...`

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One TFDS data dir per session: the embedded 'digits' is prepared there once, on first use."""
  return tmp_path_factory.getbasetemp() / "tfds_shared"


@pytest.fixture
def run_config(data_dir):
  """Factory of the tiny run config (helpers.tiny_config) on the session's digits data dir."""
  from helpers import tiny_config  # pylint: disable=g-import-not-at-top  (after XLA_FLAGS)
  return lambda **overrides: tiny_config(data_dir, **overrides)


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, data_dir):
  """One finished tiny run (EMA on, 12 steps, checkpoints at 4/8/12), trained once per session
  and shared by the tests that only read a workdir. Tests must not write into it."""
  from helpers import tiny_config  # pylint: disable=g-import-not-at-top

  from vit_jax.run import loop  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("trained_workdir")
  config = tiny_config(data_dir, **{"ema.decay": 0.9})
  result = loop.train_and_evaluate(config, str(workdir))
  assert result["step"] == config.total_steps
  return workdir


# Tests outside the `slow` files (tests/run/test_resume.py, test_long_runs.py, test_multihost.py,
# tests/test_notebook.py) that are slow too (about 5 s or more each with 2 workers on 2 cores):
# end-to-end runs of the loop, TPU compiles through libtpu, several 8-device compiles, spawned
# worker processes, benchmarks in a subprocess, the largest model-vs-reference sweeps. They keep
# their place in the full suite (CI); `bash scripts/test.sh --fast` leaves them out. The fast
# tier keeps one end-to-end run (test_train_and_evaluate_learns_on_digits), the export round
# trip and the NumPy reference forward.
SLOW_TESTS = {
    "tests/data/test_hf_datasets.py::test_a_run_trains_on_a_saved_dataset",
    "tests/data/test_bad_examples.py::test_a_run_reports_what_it_skipped_also_across_a_resume",
    "tests/data/test_mixture.py::test_a_mixture_run_logs_its_sources_and_resumes_exactly",
    "tests/training/test_distill.py::test_a_flexivit_student_distils_from_a_fixed_patch_teacher",
    "tests/run/test_packed_train.py::test_a_packed_run_trains_evaluates_resumes_and_exports",
    "tests/run/test_packed_train.py::test_the_packed_step_is_the_same_on_one_and_eight_devices",
    "tests/training/test_progressive.py::test_a_run_resumed_inside_the_second_stage_equals_the_unbroken_run",
    "tests/training/test_flexi.py::test_a_tiny_flexivit_run_trains_at_every_patch_size_and_evaluates_at_two",
    "tests/run/test_image_text_train.py::test_precomputed_image_embeddings_train_the_text_tower_as_the_images_do",
    "tests/run/test_image_text_train.py::test_digits_example_trains_and_evaluates_zero_shot",
    "tests/run/test_image_text_train.py::test_lit_tunes_the_text_tower_against_a_locked_image_checkpoint",
    "tests/run/test_image_text_train.py::test_retrieval_on_a_caption_folder_equals_numpy_recall",
    "tests/run/test_image_text_train.py::test_the_contrastive_step_is_the_same_on_one_and_eight_devices",
    "tests/google_compat/test_inference_time.py::test_main_command_line_on_two_devices",
    "tests/planning/test_dry_run.py::test_main_topology_dry_run_and_its_errors",
    "tests/planning/test_hlo_program.py::test_every_loop_combination_against_the_formula",
    "tests/planning/test_plan.py::test_main_plan_with_a_typo_exits_2_with_one_line",
    "tests/planning/test_planner_goldens.py::test_compiled_figures_match_the_goldens",
    "tests/training/test_giant_optimizers.py::test_dry_run_state_bytes_adafactor_and_lion_below_adamw",
    "tests/training/test_giant_optimizers.py::test_resume_is_bit_identical",
    "tests/models/test_remat_policies.py::test_tpu_temp_bytes_follow_the_policy_and_offload_moves_them_to_the_host",
    "tests/models/test_remat_policies.py::test_tpu_dry_run_compiles_the_offload_policy_and_reports_it",
    "tests/run/test_compile_cache.py::test_a_fresh_process_loads_what_the_first_wrote_and_none_writes_nothing",
    "tests/planning/test_dry_run.py::test_a_repeated_topology_dry_run_reads_its_memo",
    "tests/planning/test_hlo_program.py::test_scan_and_accumulation_keep_the_executed_flops",
    "tests/run/test_compile_cache.py::test_a_run_logs_the_cache_and_keeps_the_suites",
    "tests/models/test_remat_policies.py::test_every_policy_gives_the_loss_and_gradients_of_no_remat",
    "tests/models/test_remat_policies.py::test_mixer_takes_the_policies",
    "tests/planning/test_dry_run.py::test_plan_on_a_tiny_grid",
    "tests/planning/test_dry_run.py::test_tpu_slice_report_matches_the_formula",
    "tests/planning/test_dry_run.py::test_main_dry_run_prints_and_exits",
    "tests/google_compat/test_google_api.py::test_google_readme_command_line",
    "tests/google_compat/test_google_api.py::test_train_and_evaluate_with_a_google_config_leaves_checkpoint_1",
    "tests/google_compat/test_google_api.py::test_colab_flow_on_mock_cifar10",
    "tests/test_finetune_path.py::test_export_fine_tuned_at_twice_the_resolution",
    "tests/training/test_distill.py::test_train_loop_distills_and_logs_the_teachers_flops_share",
    "tests/training/test_train_step.py::test_meshes_match_single_device",
    "tests/test_artifacts.py::test_restore_bench_runs_on_a_tiny_model",
    "tests/test_bench.py::test_scaling_table_row",
    "tests/test_bench.py::test_train_step_times_train_and_inference",
    "tests/test_bench.py::test_checkpoint_bench",
    "tests/test_visualize.py::test_attention_probabilities_and_features_equal_a_numpy_forward",
    "tests/training/test_ema.py::test_ema_evaluated_beside_raw_checkpointed_and_exported",
    "tests/checkpoint/test_big_vision_checkpoints.py::test_big_vision_layouts_give_its_logits_through_load_and_load_pretrained",
    "tests/google_compat/test_google_api.py::test_get_model_has_the_published_parameter_count",
    "tests/models/test_models.py::test_batch_chunks_match_numpy_and_unchunked_gradients",
    "tests/evaluators/test_evaluators.py::test_evaluators_leave_training_bit_identical",
    "tests/training/test_train_step.py::test_finetune_from_fixture_checkpoint",
    "tests/models/test_models.py::test_remat_gives_same_outputs_and_grads",
    "tests/evaluators/test_evaluator_registry.py::test_a_user_type_in_a_training_run_is_logged_and_kept_for_ema",
    "tests/training/test_ema.py::test_ema_equals_a_numpy_loop_over_the_param_trajectory",
    "tests/checkpoint/test_checkpoint.py::test_colab_snippet_runs_on_a_tiny_fixture",
    "tests/training/test_distill.py::test_distilled_step_keeps_teacher_and_mixes_the_losses",
    "tests/training/test_train_step.py::test_nan_loss_stops_and_keeps_last_good_checkpoint",
    "tests/export_formats/test_export.py::test_export_of_a_scanned_model_is_read_back_by_inference",
    "tests/evaluators/test_evaluators.py::test_named_evaluators_run_log_and_record",
    "tests/data/test_augment.py::test_train_step_uses_config_loss",
    "tests/planning/test_dry_run.py::test_dry_run_reports_memory_and_flops",
    "tests/training/test_train_step.py::test_workdir_with_other_model_fails_naming_both",
    "tests/data/test_pp_strings.py::test_user_ops_reach_spawned_workers",
    "tests/test_bench.py::test_profile_step_groups_thunks_by_model_part",
    "tests/models/test_models.py::test_regularisers_only_act_in_training",
    "tests/training/test_distill.py::test_teacher_errors_name_the_cause",
    "tests/export_formats/test_export_formats.py::test_timm_loads_the_export_with_our_logits",
    "tests/export_formats/test_serving_layout.py::test_saved_model_cli_shows_and_runs_version_1_with_our_logits",
    "tests/evaluators/test_evaluators.py::test_evaluate_cli_on_a_workdir_matches_the_run",
    "tests/evaluators/test_eval_settings.py::test_a_resize_small_run_is_rescored_with_its_own_preprocessing",
    "tests/evaluators/test_eval_settings.py::test_an_evaluator_given_only_on_the_command_line_reports_its_metric",
    "tests/test_inference.py::test_cli_other_resolution_goes_through_load_pretrained",
    "tests/test_visualize.py::test_cli_writes_every_file",
    "tests/test_main.py::test_unreachable_coordinator_times_out_with_clear_message",
    "tests/training/test_ema.py::test_state_without_ema_is_the_old_pytree_and_old_checkpoints_restore",
}


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  """Marks the tests of SLOW_TESTS `slow` (parametrised cases by their function)."""
  for item in items:
    if item.nodeid.split("[")[0] in SLOW_TESTS:
      item.add_marker(pytest.mark.slow)
