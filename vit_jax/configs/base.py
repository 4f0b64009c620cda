"""Defaults shared by every experiment config (every key the trainer and input pipeline read).

Each experiment config file in configs/ starts from `defaults()` and changes what its recipe
needs; the result is locked, so `--config.some_typo=1` fails (main.py lists the valid
keys). Units are in the comments: [steps] count optimizer updates, [epochs] passes over
the train split, batch sizes are GLOBAL (all hosts and devices together).
"""
import ml_collections
from ml_collections import config_dict

# Number of classes of the datasets the presets know, so --dry_run works without the data.
NUM_CLASSES = {
    "cifar10": 10, "cifar100": 100, "imagenet2012": 1000, "imagenet2012_real": 1000,
    "oxford_iiit_pet": 37, "oxford_flowers102": 102, "digits": 10, "imagenet21k": 21843,
}

# The default device mesh: pure data parallel over every device (the one literal of it).
DEFAULT_MESH = (("data", -1),)


def defaults() -> ml_collections.ConfigDict:
  """Every key with its default (a fine-tune of ViT-B/16 on cifar10 at 224px)."""
  c = ml_collections.ConfigDict()
  c.seed = 0                       # Params init, dropout and data order derive from it.
  c.model_name = "ViT-B_16"        # Key of vit_jax.models.registry.MODEL_CONFIGS.
  c.model = model_overrides()      # Per-run changes to the named architecture (unset = keep).
  c.num_classes = config_dict.placeholder(int)  # None = from the dataset.
  c.class_names = ()               # Written by the trainer into config.json (exports use it).
  # Where initial weights come from (workdir checkpoint > these > scratch):
  c.pretrained_path = config_dict.placeholder(str)    # Local / gs:// / https:// / hf:// file.
  c.model_or_filename = config_dict.placeholder(str)  # AugReg name, resolved via the index.
  c.replace_head = config_dict.placeholder(bool)  # None: new head when the class count differs.
  # Parameter-name regexes (full match, e.g. 'MAPHead_0/.*') kept at their initial value, as
  # big_vision's dont_load; and whether a checkpoint of another patch size is PI-resized.
  c.dont_load = ()
  c.resize_patch_embedding = False
  # Fine-tune presets set this: a run without pretrained_path / model_or_filename is refused
  # before anything is compiled, instead of silently training from scratch.
  c.require_pretrained = False

  c.dataset = "cifar10"            # TFDS name, 'digits' (embedded, offline) or an image folder.
  c.tfds_data_dir = config_dict.placeholder(str)
  c.tfds_manual_dir = config_dict.placeholder(str)
  c.train_split = "train"
  c.eval_split = "test"
  c.batch = 512                    # Global train batch [images per step].
  c.batch_eval = 512               # Global eval batch.
  c.pp = ml_collections.ConfigDict(dict(
      crop=224, resize=config_dict.placeholder(int), crop_pct=config_dict.placeholder(float),
      train="vit_finetune", eval="resize",
      flip=True, randaugment_layers=0, randaugment_magnitude=0, mixup_alpha=0.0,
      label_smoothing=0.0))
  # pp.train / pp.eval may also be big_vision pp strings ('decode|resize_small(256)|
  # central_crop(224)|value_range(-1, 1)'; the ops: datasets/pp_ops.py, registering your own:
  # datasets/pp_registry.py).
  # Modules (dotted names or .py files) imported first, e.g. ones that register pp ops (as
  # big_vision's pp_modules); data workers import them too.
  c.pp.modules = ()
  # Image-text runs: the tokenizer ('bert' WordPiece | 'sentencepiece'; None: the model's),
  # its vocabulary file (.txt / .model; required to train), tokens per text (None: the
  # model's max_len).
  c.pp.tokenizer = config_dict.placeholder(str)
  c.pp.vocab = config_dict.placeholder(str)
  c.pp.max_len = config_dict.placeholder(int)
  # Batch mixing (timm's Mixup in batch mode; rows 2m and 2m+1 mixed, see mixing.py):
  # CutMix Beta(a, a) (0 = off); probability that a batch is mixed at all; with mixup_alpha
  # and cutmix_alpha both > 0, probability that a batch uses CutMix instead of mixup.
  c.pp.cutmix_alpha = 0.0
  c.pp.mixup_prob = 1.0
  c.pp.mixup_switch_prob = 0.5
  # Random erasing (timm's RandomErasing, after normalisation): probability per image (0 =
  # off); fill 'pixel' (N(0,1) per value) | 'rand' (per channel) | 'const' (0); (min, max)
  # box area [fraction of the image]; (min, max) aspect [h / w, log-uniform]; the most boxes
  # per erased image (1..count, uniform).
  c.pp.random_erase_prob = 0.0
  c.pp.random_erase_mode = "pixel"
  c.pp.random_erase_area = (0.02, 1 / 3)
  c.pp.random_erase_aspect = (0.3, 3.3)
  c.pp.random_erase_count = 1
  # num_workers: data worker processes (0 = in this process); prefetch: batches buffered per
  # worker; num_threads: reader threads (0 = default); device_prefetch: batches put on device
  # ahead.
  c.input = ml_collections.ConfigDict(dict(num_workers=2, prefetch=2, num_threads=0,
                                           device_prefetch=2))
  # Repeated augmentation (DeiT's RASampler): copies of each image in the stream, each
  # augmented independently [copies]; 1 = off. An epoch stays N stream images (N/k distinct).
  c.input.repeated_aug = 1
  # Image-text runs on a classification dataset: each image's captions are these templates
  # with its class name ('a photo of the number {}.'); one is drawn per example. () = the
  # dataset must hold captions (datasets/captions.py).
  c.input.caption_templates = ()
  # The class names those captions (and the default zero-shot evaluator) use, in label order;
  # () = the dataset's own names.
  c.input.caption_classnames = ()
  # LiT with a locked image tower (every img/ parameter frozen): embed the train images once
  # (eval preprocessing, run/image_embeddings.py) and train the text tower against those rows.
  c.input.image_embeddings = False
  # A mixture of train sources instead of config.dataset's train_split (datasets/mixture.py):
  # ((dataset, split, weight[, label_offset]), ...), interleaved by weight; () = off. The run is
  # evaluated on config.dataset, whose classes the sources share (or map to with the offset).
  c.input.data = ()
  # An undecodable image: False = the run stops naming it and the fix; True = it is skipped
  # (a train image replaced by its source's next, an eval image left out), logged and counted
  # in the run's summary (datasets/bad_examples.py).
  c.input.skip_bad_examples = False
  # Hugging Face datasets (config.dataset=hf:PATH, datasets/hf_datasets.py): the image and
  # label columns (None = the first Image / ClassLabel feature, else 'image' / 'label').
  c.input.image_column = config_dict.placeholder(str)
  c.input.label_column = config_dict.placeholder(str)

  c.total_steps = 10_000           # [steps]; 0 = use total_epochs.
  c.total_epochs = 0.0             # [epochs]; used when total_steps is 0.
  c.warmup_steps = 500             # [steps] of linear warmup from 0 to base_lr.
  c.base_lr = 0.03
  c.end_lr = 0.0
  c.decay_type = "cosine"          # 'cosine' | 'linear' | 'rsqrt' | 'constant'.
  c.rsqrt_timescale = 0            # [steps] of the 'rsqrt' decay; 0 = warmup_steps.
  c.optimizer = "sgd"              # 'sgd' (momentum) | 'adamw' | 'adafactor' | 'lion'.
  c.momentum = 0.9                 # SGD; Adafactor's first-moment EMA (0 = none).
  c.b1 = 0.9                       # AdamW.
  c.b2 = 0.999                     # AdamW.
  c.lion_b1 = 0.9                  # Lion's update interpolation (Chen et al. 2023).
  c.lion_b2 = 0.99                 # Lion's momentum decay (Chen et al. 2023).
  # Adafactor (big_vision's scale_by_adafactor, ViT-g/G): second-moment decay
  # beta2_t = min(beta2_cap, 1 - t^-decay_rate) at update t; factored (row + column means)
  # for leaves with two dims >= min_dim_size_to_factor [elements]; clipping_threshold: block-RMS
  # update clip (0 = off); epsilon added to g^2.
  c.adafactor_decay_rate = 0.8
  c.adafactor_beta2_cap = 0.999
  c.adafactor_min_dim_size_to_factor = 32
  c.adafactor_clipping_threshold = 0.0
  c.adafactor_epsilon = 1e-30
  c.weight_decay = 0.0             # AdamW / Adafactor / Lion, decoupled, × lr schedule; kernels.
  c.optim_dtype = "float32"        # Momentum / first-moment dtype ('bfloat16' halves its memory).
  c.grad_norm_clip = 1.0           # 0 = off.
  c.accum_steps = 1                # Micro-batches per step (batch / accum_steps each).
  # Parameter groups (vit_jax/training/param_groups.py): (regex, 'freeze' |
  # {'lr_mult': x, 'wd_mult': y}) rules, full match on '/'-joined param paths, first match
  # wins, each must match something; e.g. (('head/.*', {'lr_mult': 10.0}),
  # ('embedding/.*', 'freeze')). () = off.
  c.param_groups = ()
  # Layer-wise lr decay (BEiT / MAE fine-tuning): lr x layer_decay ** (L + 1 - depth), depth 0 =
  # embeddings, i + 1 = block i, L + 1 = head; applied before the param_groups lr_mult. 0 = off.
  c.layer_decay = 0.0
  # EMA of the params (vit_jax/training/ema.py): decay per update (0 = off; DeiT 0.99996);
  # warmup: decay min(decay, (1 + t) / (10 + t)) after t updates; every [steps] between
  # updates. Evaluated beside the raw params as 'ema/<metric>'; `vit_jax.export --params=ema`
  # exports it.
  c.ema = ml_collections.ConfigDict(dict(decay=0.0, warmup=False, every=1))
  # Distillation from a fixed teacher (vit_jax/training/distill.py): path = teacher weights
  # (None = off; any location the checkpoint loader reads); model_name None = the student's
  # architecture (model_name + config.model); model = teacher field overrides on top; mode
  # 'soft' (KL x T^2) | 'hard' (CE to the teacher's argmax); weight alpha: loss = (1 - alpha)
  # task + alpha distill [0..1]; temperature T > 0 (soft). With a distillation token
  # (model.distilled) the task loss trains the class head and the distillation loss the
  # distillation head; require_teacher: refuse a run without distill.path.
  c.distill = ml_collections.ConfigDict(dict(
      path=config_dict.placeholder(str), model_name=config_dict.placeholder(str),
      model=model_overrides(), mode="soft", weight=0.5, temperature=1.0,
      require_teacher=config_dict.placeholder(bool)))  # None = False (old workdirs resume).
  # Train loss (vit_jax/training/losses.py): 'softmax_xent' | 'sigmoid_xent' (big_vision's: sum over
  # classes of binary cross-entropies, mean over the batch; ~C× timm's --bce-loss scale).
  # Image-text models (training/contrastive.py): 'sigmoid_contrastive' (SigLIP; texts passed
  # around the batch axes, no all-gather) | 'softmax_contrastive' (CLIP / LiT).
  c.loss = "softmax_xent"

  c.mesh = DEFAULT_MESH            # (axis, size) pairs over 'data', 'fsdp', 'model'; -1 = rest.
  c.sharding_rules = ()            # (logical_name, mesh_axis) overrides of sharding.default_rules.

  c.log_every = 50                 # [steps]
  c.eval_every = 1000              # [steps]; 0 = only at the end.
  # Named evaluators (vit_jax/evaluators/runner.py): {name: {type, every, dataset, split, ...}};
  # empty = one classification evaluator over eval_split every eval_every steps. On the command
  # line (the config is locked): --evals=NAME:TYPE[:KEY=VALUE,...] (evaluators/command_line.py).
  c.evals = ml_collections.ConfigDict()
  c.checkpoint_every = 1000        # [steps]; 0 = only at the end / on SIGTERM.
  c.max_to_keep = 3                # Checkpoints kept (the newest).
  c.keep_period = 0                # [steps]; also keep every checkpoint at a multiple (0 = off).
  c.progress = True                # tqdm progress bar with ETA on process 0.
  # Long-running jobs (docs/running.md).
  c.workdir_lock_timeout = 600.0   # [s] a lock not refreshed this long (other host) is stale.
  # JAX's persistent compilation cache, so a restart loads the compiled step instead of
  # recompiling: None = <workdir>/compilation_cache, a path (local or gs://), '' / 'none' = off.
  # A cache the user set for JAX (JAX_COMPILATION_CACHE_DIR) wins.
  c.compilation_cache_dir = config_dict.placeholder(str)
  # Hang watchdog: exit 76 when no step finishes in max(min_seconds, factor x median step
  # time); first_step_seconds bounds the first step (compile). An evaluation / a checkpoint
  # save may run max(eval_seconds / save_seconds, factor x its median duration). factor 0 = off.
  c.watchdog = ml_collections.ConfigDict(dict(factor=20.0, min_seconds=600.0,
                                              first_step_seconds=7200.0, eval_seconds=3600.0,
                                              save_seconds=1800.0))
  # Resuming with a config that differs from the workdir's (other than RESUMABLE_CHANGES in
  # run_state.py) is refused unless this is set; the differences are logged.
  c.allow_config_change = False
  # Progressive resolution (timm's): ((start_step, resolution, batch), ...), first at step 0
  # (() = off; vit_jax/batching.py). The position embedding keeps pp.crop's grid and is
  # interpolated to each stage's; evaluation runs at pp.crop. scale_lr: the learning rate
  # times stage batch / config.batch.
  c.resolution_schedule = ()
  c.resolution_schedule_scale_lr = False
  # FlexiViT (training/flexi.py): patch sizes drawn per step (() = off; each must divide
  # pp.crop), their weights (() = uniform), the learned position embedding's fixed grid
  # (None = pp.crop // the base patch, config.model.patches.size).
  c.flexi = ml_collections.ConfigDict(dict(patch_sizes=(), probs=(),
                                           posemb_grid=config_dict.placeholder(tuple)))
  # Packed sequences, NaViT / NaFlex (datasets/naflex.py, models/packed.py): seq_len tokens
  # per sequence (0 = off) holding images_per_pack (K) images of consecutive stream elements,
  # each at its own aspect ratio; config.batch counts sequences (K x batch images a step).
  # Each image's share of its sequence is drawn in [min_share, 1] (1 = equal shares);
  # max_tokens caps one image (0 = no cap); token_drop drops that fraction of each train
  # image's patches (NaViT / FLIP). Evaluation: one image per sequence of eval_seq_len tokens
  # (0 = seq_len). patch_size: the model's (None = filled in from it). The learned position
  # embedding keeps config.flexi.posemb_grid (None = pp.crop // patch), interpolated per token.
  c.naflex = ml_collections.ConfigDict(dict(
      seq_len=0, images_per_pack=1, min_share=1.0, max_tokens=0, token_drop=0.0,
      eval_seq_len=0, patch_size=config_dict.placeholder(int)))
  return c


def model_overrides() -> ml_collections.ConfigDict:
  """Architecture fields a run may change; unset (None) fields keep the MODEL_CONFIGS value."""
  m = ml_collections.ConfigDict()
  m.dtype = config_dict.placeholder(str)          # Compute dtype, e.g. 'bfloat16'.
  m.remat = config_dict.placeholder(bool)
  # What remat keeps (needs remat=True): 'full' (default) | 'dots_saveable' |
  # 'dots_with_no_batch_dims_saveable' | 'offload_dots_with_no_batch_dims' (TPU/GPU only).
  m.remat_policy = config_dict.placeholder(str)
  m.scan_layers = config_dict.placeholder(bool)
  m.attention_impl = config_dict.placeholder(str)
  m.stochastic_depth = config_dict.placeholder(float)
  m.classifier = config_dict.placeholder(str)
  m.representation_size = config_dict.placeholder(int)
  # ViT-22B block options (ViT only): parallel attention + MLP, LayerNorm on q/k, no QKV/LN bias.
  m.parallel_block = config_dict.placeholder(bool)
  m.qk_norm = config_dict.placeholder(bool)
  m.use_bias = config_dict.placeholder(bool)
  m.posemb = config_dict.placeholder(str)         # 'learn' | 'sincos2d' (fixed, ViT only).
  # DeiT's distillation token + head (ViT, classifier 'token'; training/distill.py).
  m.distilled = config_dict.placeholder(bool)
  # Patch size (ViT only), e.g. (8, 8); with resize_patch_embedding a checkpoint of another
  # patch size loads (FlexiViT resize).
  m.patches = ml_collections.ConfigDict(dict(size=config_dict.placeholder(tuple)))
  m.transformer = ml_collections.ConfigDict(dict(
      dropout_rate=config_dict.placeholder(float),
      attention_dropout_rate=config_dict.placeholder(float)))
  # Image-text (two-tower) models only (model_name 'LiT-...' / 'SigLIP-...', models/factory.py;
  # the fields above then change the image tower): the image tower by registered name (any
  # size, e.g. 'ViT-S_16'), the text tower ('text_transformer' | 'bert') and its fields, the
  # (image, text) projection widths (None: no projection), SigLIP's temperature and bias at
  # init (t starts at log(temperature_init)).
  m.image_model = config_dict.placeholder(str)
  m.text_model = config_dict.placeholder(str)
  m.text = ml_collections.ConfigDict(dict(
      width=config_dict.placeholder(int), num_layers=config_dict.placeholder(int),
      mlp_dim=config_dict.placeholder(int), num_heads=config_dict.placeholder(int),
      vocab_size=config_dict.placeholder(int), pool_type=config_dict.placeholder(str),
      dropout_rate=config_dict.placeholder(float)))
  m.out_dim = config_dict.placeholder(tuple)
  m.temperature_init = config_dict.placeholder(float)
  m.bias_init = config_dict.placeholder(float)
  return m


def set_dataset(c: ml_collections.ConfigDict, dataset: str) -> None:
  """Points `c` at a dataset (and its class count when known)."""
  c.dataset = dataset
  if dataset in NUM_CLASSES:
    c.num_classes = NUM_CLASSES[dataset]


def load_config_file(path: str):
  """Imports an experiment config file (e.g. configs/vit.py) by path; configs/ is not a package."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  name = "vit_jax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module

