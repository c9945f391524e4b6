"""--mode=edit: inpainting, SDEdit, relabelling and interpolation of given images.

`edit(config, workdir)` loads the run's EMA params (`runs.load_run`), reads
`edit.input` (an npz in the format `--mode=sample` writes: uint8 `images`
[N, H, W, C] and optional int `labels` [N]; or PNG files: one file, a
comma-separated list, or a folder of them), fits the images to the model's
size with the data sources' one rule (`data/images.py`), and applies the
edit named by `edit.kind`, a name in the registry `EDITS`:

  * inpaint: complete the pixels outside `edit.mask` (a PNG, white = known,
    or a name in `MASKS`) with `editing.make_inpaint_fn` (`edit.method`,
    `edit.jump_length`, `edit.jump_n_sample`);
  * sdedit: SDEdit at `edit.strength` (`editing.make_sdedit_fn`);
  * relabel: DDIM inversion under the source label and regeneration under
    each target label with classifier-free guidance (`editing.make_relabel_fn`;
    needs a class-conditional model);
  * interpolate: consecutive pairs of images, inverted and decoded along the
    slerp between their latents (`editing.make_interpolate_fn`).

Inpainting and SDEdit sample with the config's sampler settings (`sample.*`,
the task's grid and guidance, as `--mode=sample`); the inversion edits use
deterministic DDIM on the same grid. Sample i is drawn with global index i,
so results do not depend on `sample.batch_size`. It writes `edit.output`
(default WORKDIR/edit_<kind>.npz: uint8 `images` of the results, `inputs`,
and per kind `mask`, `labels`, `source_index`) and a before/after PNG grid
beside it (same name, .png). The library side is `diffusion_jax/editing.py`.
"""

from __future__ import annotations

import os
import time
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import PIL.ImageOps
from etils import epath

from diffusion_jax import editing, generate, runs, tasks, writers
from diffusion_jax._checks import config_errors
from diffusion_jax.conditioning import make_cond
from diffusion_jax.data import images as images_lib
from diffusion_jax.errors import ConfigError
from diffusion_jax.mesh import is_primary, to_host
from diffusion_jax.tasks.base import SAMPLER_SETTINGS, sampler_eta, sampler_options

__all__ = ["EDITS", "MASKS", "Inputs", "read_inputs", "read_mask", "Editor", "edit"]


def _half(axis: int, first: bool):
  def mask(size: int) -> np.ndarray:
    m = np.zeros((size, size), np.float32)
    index = [slice(None), slice(None)]
    index[axis] = slice(0, size // 2) if first else slice(size - size // 2, size)
    m[tuple(index)] = 1.0
    return 1.0 - m  # 1 = known: the named part is generated.
  return mask


def _center_square(size: int) -> np.ndarray:
  m = np.ones((size, size), np.float32)
  lo = size // 4
  m[lo:size - lo, lo:size - lo] = 0.0
  return m


def _border(size: int) -> np.ndarray:
  return 1.0 - _center_square(size)


# Named masks: size S -> float32 [S, S], 1 = known; the name says what is generated.
MASKS: dict[str, Callable[[int], np.ndarray]] = {
    "bottom_half": _half(0, first=False),
    "top_half": _half(0, first=True),
    "left_half": _half(1, first=True),
    "right_half": _half(1, first=False),
    "center_square": _center_square,   # the central S/2 x S/2 square
    "border": _border,                 # all but the central square
}


class Inputs(NamedTuple):
  images: np.ndarray            # float32 [N, S, S, C] in [-1, 1]
  labels: Optional[np.ndarray]  # int32 [N], or None


def _fail(setting: str, value, why: str) -> ConfigError:
  return ConfigError(f"{setting}={value!r}: {why}")


def _png_paths(value: str) -> list[str]:
  paths = []
  for part in (p.strip() for p in value.split(",")):
    if not part:
      continue
    if os.path.isdir(part):
      found = sorted(os.path.join(part, f) for f in os.listdir(part)
                     if f.lower().endswith(".png"))
      if not found:
        raise _fail("edit.input", value, f"the folder {part!r} holds no .png files.")
      paths += found
    elif not os.path.isfile(part):
      raise _fail("edit.input", value, f"no such file or folder {part!r}.")
    else:
      paths.append(part)
  return paths


def read_inputs(value: Optional[str], image_size: int, channels: int,
                num_images: Optional[int] = None) -> Inputs:
  """The images of `edit.input` fitted to [S, S, C], the first `num_images`."""
  if not value:
    raise ConfigError("edit.input is required: an npz with uint8 `images` [N, H, W, C] "
                      "(what --mode=sample writes), a .png file, a comma-separated list "
                      "of them, or a folder of .png files.")
  labels = None
  if str(value).endswith(".npz"):
    if not os.path.isfile(value):
      raise _fail("edit.input", value, "no such file.")
    try:
      with np.load(value) as f:
        if "images" not in f:
          raise _fail("edit.input", value, f"the npz has no `images` array (it has "
                                           f"{sorted(f.files)}).")
        raw, labels = f["images"], (f["labels"] if "labels" in f else None)
    except (OSError, ValueError) as e:
      if isinstance(e, ConfigError):
        raise
      raise _fail("edit.input", value, f"cannot read it as an npz ({e}).") from None
    if raw.dtype != np.uint8 or raw.ndim not in (3, 4) or (raw.ndim == 4 and
                                                          raw.shape[-1] not in (1, 2, 3, 4)):
      raise _fail("edit.input", value, f"`images` must be uint8 [N, H, W, C] with C in 1..4 "
                                       f"(or [N, H, W]), got {raw.dtype} {list(raw.shape)}.")
    if labels is not None and (labels.shape != raw.shape[:1]
                               or not np.issubdtype(labels.dtype, np.integer)):
      raise _fail("edit.input", value, f"`labels` must be integers [N] = [{raw.shape[0]}], got "
                                       f"{labels.dtype} {list(labels.shape)}.")
    arrays = list(raw)
  else:
    arrays = []
    for path in _png_paths(str(value)):
      try:
        with PIL.Image.open(path) as im:
          arrays.append(images_lib.fit_pil(PIL.ImageOps.exif_transpose(im), image_size, channels))
      except images_lib.DECODE_ERRORS as e:
        raise _fail("edit.input", value, f"cannot read {path!r} as an image ({e}).") from None
  if not arrays:
    raise _fail("edit.input", value, "holds no images.")
  n = len(arrays) if num_images is None else min(num_images, len(arrays))
  fitted = np.stack([images_lib.fit_array(a, image_size, channels) for a in arrays[:n]])
  labels = None if labels is None else np.asarray(labels[:n], np.int32)
  return Inputs(fitted.astype(np.float32) / np.float32(127.5) - 1.0, labels)


def read_mask(value: Optional[str], image_size: int) -> np.ndarray:
  """`edit.mask` as float32 [S, S, 1], 1 = known: a name in MASKS, or a PNG
  (white, >= 128, = known; resized to S x S with nearest-neighbour sampling)."""
  if value in MASKS:
    return MASKS[value](image_size)[..., None]
  if value and str(value).lower().endswith(".png") and os.path.isfile(value):
    try:
      with PIL.Image.open(value) as im:
        gray = im.convert("L").resize((image_size, image_size), PIL.Image.Resampling.NEAREST)
    except images_lib.DECODE_ERRORS as e:
      raise _fail("edit.mask", value, f"cannot read it as an image ({e}).") from None
    return (np.asarray(gray) >= 128).astype(np.float32)[..., None]
  raise _fail("edit.mask", value, f"give a .png file (white = known pixels) or a named mask: "
                                  f"{sorted(MASKS)}.")


def _int_list(setting: str, text, num_classes: int) -> np.ndarray:
  try:
    values = [int(v) for v in str(text).split(",") if v.strip()]
  except ValueError:
    values = []
  if not values or min(values) < 0 or max(values) >= num_classes:
    raise _fail(setting, text, f"must be comma-separated class labels in "
                               f"[0, {num_classes - 1}], e.g. '3' or '0,1,2'.")
  return np.asarray(values, np.int32)


class Editor:
  """The edits of one trained run with a config's sampling settings, in
  batches of `batch_size` (results independent of it)."""

  def __init__(self, config, run: runs.Run, batch_size: int, *,
               classifier: Optional[tuple] = None):
    self.config, self.run, self.batch_size = config, run, batch_size
    self.spec = run.spec
    self.shape = (batch_size, run.spec.image_size, run.spec.image_size, run.spec.channels)
    self.task_sampling = tasks.get_task(config.task).sampling
    self.classifier_fn, self.params = None, run.params
    if classifier is not None:
      self.classifier_fn, classifier_params = classifier
      self.params = {"model": run.params, "classifier": classifier_params}
    self.conditional = run.spec.conditioning != "none"

  # -- cond and batching ------------------------------------------------------

  def cond(self, labels, guidance_scale=None):
    """The cond of a batch of labels [B] (None: unconditional, no classifier)."""
    s = self.config.sample
    cond = make_cond(self.spec, labels) if (self.conditional and labels is not None) else None
    if cond is not None:
      w = s.guidance_scale if guidance_scale is None else guidance_scale
      cond = cond | {"guidance_scale": jnp.float32(w)}
    if self.classifier_fn is not None:
      cond = (cond or {}) | {"label": jnp.asarray(labels, jnp.int32),
                             "classifier_scale": jnp.float32(s.classifier_scale)}
    return cond

  def _batches(self, call, arrays, labels):
    """Runs call(first, *arrays chunks [bs, ...], label chunk) over the rows
    (the last chunk padded by repetition); float32 [N, ...] on every process."""
    n, bs, out = len(arrays[0]), self.batch_size, []
    for first in writers.progress(range(0, n, bs), desc="edit", unit="batch"):
      chunk = [np.resize(a[first:first + bs], (bs,) + a.shape[1:]) for a in arrays]
      lab = None if labels is None else np.resize(labels[first:first + bs], bs)
      out.append(to_host(call(first, *chunk, lab)))
    return np.concatenate(out)[:n]

  def _model_fn(self, cfg=None):
    return generate.sampling_model_fn(self.config, self.spec, self.run.model_fn,
                                      self.run.schedule, classifier_fn=self.classifier_fn,
                                      cfg=cfg)

  def _sampler_kw(self):
    s, d = self.config.sample, self.config.diffusion
    return dict(sampler=s.sampler, eta=sampler_eta(self.config),
                prediction=self.task_sampling.prediction(self.config), variance=d.variance,
                clip_x0=s.clip_x0, sampler_options=sampler_options(self.config),
                **self.task_sampling.grid(self.config))

  def _settings(self, **extra):
    return config_errors(self.config, **(SAMPLER_SETTINGS | extra))

  # -- the edits --------------------------------------------------------------

  def inpaint(self, images, mask, labels=None, *, method=None, seed=None):
    """float32 [N, ...]: `images` completed outside `mask` ([S, S, 1], 1 = known)."""
    e = self.config.edit
    with self._settings(method="edit.method", jump_length="edit.jump_length",
                        jump_n_sample="edit.jump_n_sample"):
      fn = editing.make_inpaint_fn(self._model_fn(), self.run.schedule, shape=self.shape,
                                   method=e.method if method is None else method,
                                   jump_length=e.jump_length, jump_n_sample=e.jump_n_sample,
                                   **self._sampler_kw())
    key = jax.random.key(self.config.seed if seed is None else seed)
    return self._batches(lambda first, x, lab: fn(self.params, key, x, mask, cond=self.cond(lab),
                                                  first_index=first), [images], labels)

  def sdedit(self, images, labels=None, *, strength=None, seed=None):
    e = self.config.edit
    with self._settings(strength="edit.strength"):
      fn = editing.make_sdedit_fn(self._model_fn(), self.run.schedule, shape=self.shape,
                                  strength=e.strength if strength is None else strength,
                                  **self._sampler_kw())
    key = jax.random.key(self.config.seed if seed is None else seed)
    return self._batches(lambda first, x, lab: fn(self.params, key, x, cond=self.cond(lab),
                                                  first_index=first), [images], labels)

  def _ddim_grid(self):
    """The task's grid (num_steps/spacing or timesteps) for DDIM inversion."""
    return self.task_sampling.grid(self.config)

  def relabel(self, images, source_labels, target_labels):
    """float32 [N, ...]: image i inverted under source_labels[i] (w = 1) and
    regenerated under target_labels[i] (w = sample.guidance_scale)."""
    with self._settings():
      fn = editing.make_relabel_fn(
          self._model_fn(cfg=True), self.run.schedule, shape=self.shape,
          prediction=self.task_sampling.prediction(self.config),
          variance=self.config.diffusion.variance, **self._ddim_grid())
    n, bs, out = len(images), self.batch_size, []
    for first in writers.progress(range(0, n, bs), desc="edit", unit="batch"):
      take = lambda a: np.resize(a[first:first + bs], (bs,) + a.shape[1:])
      out.append(to_host(fn(self.params, take(images),
                            source_cond=self.cond(take(source_labels), 1.0),
                            target_cond=self.cond(take(target_labels)))))
    return np.concatenate(out)[:n]

  def interpolate(self, images, num_points: int, labels=None):
    """float32 [P, num_points, ...] along the slerp between images 2p and 2p+1."""
    null = None
    if self.conditional:
      if not self.config.train.label_dropout:
        raise ConfigError(f"edit.kind='interpolate' with a class-conditional model decodes "
                          f"unconditionally (guidance_scale 0), which needs a model trained "
                          f"with label dropout; train.label_dropout="
                          f"{self.config.train.label_dropout!r}.")
      null = lambda n: self.cond(np.zeros((n,), np.int32), 0.0)
    with self._settings(num_points="edit.num_points"):
      fn = editing.make_interpolate_fn(
          self._model_fn(cfg=True if self.conditional else None), self.run.schedule,
          num_points=num_points, event_shape=self.shape[1:],
          prediction=self.task_sampling.prediction(self.config),
          variance=self.config.diffusion.variance, **self._ddim_grid())
    out = []
    for p in writers.progress(range(len(images) // 2), desc="edit", unit="pair"):
      pair = images[2 * p:2 * p + 2]
      out.append(to_host(fn(self.params, pair, pair_cond=None if null is None else null(2),
                            cond=None if null is None else null(num_points))))
    return np.stack(out)


# ----------------------------------------------------------------------------
# The mode.
# ----------------------------------------------------------------------------

_GRID_COLUMNS = 16  # The grid shows the first 16 images (inpaint, sdedit) or rows (others).


def _rows(blocks):
  """Before/after grid rows: for each group of 16 images, one row per block."""
  n = len(blocks[0])
  rows = []
  for first in range(0, min(n, 4 * _GRID_COLUMNS), _GRID_COLUMNS):
    for block in blocks:
      chunk = block[first:first + _GRID_COLUMNS]
      pad = min(n, _GRID_COLUMNS) - len(chunk)
      rows.append(np.concatenate([chunk, np.ones((pad,) + chunk.shape[1:], chunk.dtype)]))
  return np.concatenate(rows)


def _labels_for(config, inputs: Inputs, num_classes: int, setting: str, text):
  """The input's labels, else `text` (cycled over the images), else None."""
  if inputs.labels is not None:
    return inputs.labels
  if text is None or str(text).strip() == "":
    return None
  return np.resize(_int_list(setting, text, num_classes), len(inputs.images))


def _inpaint(ed: Editor, inputs: Inputs, num_classes):
  config = ed.config
  mask = read_mask(config.edit.mask, ed.spec.image_size)
  labels = _labels_for(config, inputs, num_classes, "edit.labels", config.edit.labels)
  if (ed.conditional or ed.classifier_fn is not None) and labels is None:
    raise ConfigError("edit.labels is required: the model is class-conditional (or "
                      "classifier-guided) and edit.input has no labels; e.g. '3' or '0,1,2'.")
  out = ed.inpaint(inputs.images, mask, labels)
  shown = np.where(mask > 0, inputs.images, 0.0)   # The unknown region gray.
  arrays = {"mask": writers.to_uint8(mask * 2.0 - 1.0)}
  if labels is not None:
    arrays["labels"] = labels
  return out, arrays, _rows([inputs.images, shown, out]), min(len(out), _GRID_COLUMNS)


def _sdedit(ed: Editor, inputs: Inputs, num_classes):
  config = ed.config
  labels = _labels_for(config, inputs, num_classes, "edit.labels", config.edit.labels)
  if (ed.conditional or ed.classifier_fn is not None) and labels is None:
    raise ConfigError("edit.labels is required: the model is class-conditional (or "
                      "classifier-guided) and edit.input has no labels; e.g. '3' or '0,1,2'.")
  out = ed.sdedit(inputs.images, labels)
  arrays = {} if labels is None else {"labels": labels}
  return out, arrays, _rows([inputs.images, out]), min(len(out), _GRID_COLUMNS)


def _relabel(ed: Editor, inputs: Inputs, num_classes):
  config = ed.config
  if not ed.conditional:
    raise ConfigError(f"edit.kind='relabel' needs a class-conditional model; this run has "
                      f"model.conditioning={config.model.conditioning!r}.")
  source = _labels_for(config, inputs, num_classes, "edit.source_labels",
                       config.edit.source_labels)
  if source is None:
    raise ConfigError("edit.source_labels is required: edit.input has no labels; give the "
                      "class of each input image, e.g. '3' or '0,1,2' (cycled).")
  n = len(inputs.images)
  if config.edit.labels:
    targets = np.resize(_int_list("edit.labels", config.edit.labels, num_classes), (n, 1))
  else:
    targets = np.tile(np.arange(num_classes, dtype=np.int32), (n, 1))
  m = targets.shape[1]
  index = np.repeat(np.arange(n), m + 1)                 # each image: reconstruction, targets
  target = np.concatenate([source[:, None], targets], axis=1).reshape(-1)
  out = ed.relabel(inputs.images[index], source[index], target).reshape(
      (n, m + 1) + inputs.images.shape[1:])
  grid = np.concatenate([inputs.images[:, None], out], axis=1)[:_GRID_COLUMNS].reshape(
      (-1,) + inputs.images.shape[1:])
  edited = out[:, 1:].reshape((-1,) + inputs.images.shape[1:])
  arrays = {"labels": targets.reshape(-1), "source_labels": source,
            "source_index": np.repeat(np.arange(n), m).astype(np.int32),
            "reconstructions": writers.to_uint8(out[:, 0])}
  return edited, arrays, grid, m + 2


def _interpolate(ed: Editor, inputs: Inputs, num_classes):
  n_points = ed.config.edit.num_points
  if len(inputs.images) < 2:
    raise _fail("edit.input", ed.config.edit.input, "interpolation needs at least two images "
                                                    "(consecutive pairs are interpolated).")
  out = ed.interpolate(inputs.images, n_points)             # [P, N, ...]
  pairs = inputs.images[: 2 * len(out)].reshape((len(out), 2) + inputs.images.shape[1:])
  grid = np.concatenate([pairs[:, :1], out, pairs[:, 1:]], axis=1)[:_GRID_COLUMNS]
  arrays = {"source_index": np.arange(2 * len(out), dtype=np.int32).reshape(-1, 2)}
  return (out.reshape((-1,) + inputs.images.shape[1:]), arrays,
          grid.reshape((-1,) + inputs.images.shape[1:]), n_points + 2)


# The edits of `edit.kind`: (editor, inputs, num_classes) -> (results [M, ...],
# extra npz arrays, grid images in rows, grid columns).
EDITS = {"inpaint": _inpaint, "sdedit": _sdedit, "relabel": _relabel,
         "interpolate": _interpolate}


def _output_path(workdir: str, value, kind: str) -> epath.Path:
  if value:
    path = epath.Path(value)
    path = path if path.is_absolute() or "://" in str(value) else epath.Path(workdir) / path
  else:
    path = epath.Path(workdir) / f"edit_{kind}.npz"
  if path.suffix != ".npz":
    raise _fail("edit.output", value, "must name a .npz file.")
  return path


def edit(config, workdir: str) -> str:
  """--mode=edit (module docstring). Returns the path of the npz it wrote."""
  e = config.edit
  if e.kind not in EDITS:
    raise _fail("edit.kind", e.kind, f"allowed values: {sorted(EDITS)}.")
  task = tasks.get_task(config.task)
  if task.sampling is None:
    generative = sorted(n for n, t in tasks.TASKS.items() if t.sampling is not None)
    raise ConfigError(f"--mode=edit needs a generative task {generative}, got "
                      f"task={config.task!r}.")
  out = _output_path(workdir, e.output, e.kind)
  if e.num_images is not None and (isinstance(e.num_images, bool)
                                   or not isinstance(e.num_images, int) or e.num_images < 1):
    raise _fail("edit.num_images", e.num_images, "must be a positive integer or None (all).")
  run = runs.load_run(workdir, config, step=config.sample.checkpoint_step,
                      step_setting="sample.checkpoint_step")
  spec = run.spec
  inputs = read_inputs(e.input, spec.image_size, spec.channels, e.num_images)
  num_classes = spec.num_classes
  if num_classes is None and config.sample.classifier_workdir:
    from diffusion_jax.data import sources
    num_classes = sources.dataset_info(config.data).num_classes
  classifier = None
  if config.sample.classifier_workdir and e.kind in ("inpaint", "sdedit"):
    classifier = generate.restore_classifier(config.sample.classifier_workdir)
  if inputs.labels is not None and num_classes is not None and (
      inputs.labels.min() < 0 or inputs.labels.max() >= num_classes):
    raise _fail("edit.input", e.input, f"its labels must lie in [0, {num_classes - 1}].")
  editor = Editor(config, run, config.sample.batch_size, classifier=classifier)
  start = time.perf_counter()
  results, arrays, grid, ncols = EDITS[e.kind](editor, inputs, num_classes)
  seconds = time.perf_counter() - start
  png = out.parent / (out.stem + ".png")
  if is_primary():
    writers.save_npz(out, images=writers.to_uint8(results),
                     inputs=writers.to_uint8(inputs.images), **arrays)
    writers.save_image_grid(png, grid, ncols=ncols)
  print(f"{e.kind}: {len(results)} images from {len(inputs.images)} inputs in {seconds:.1f} s "
        f"with the step-{run.step} EMA params; wrote {out} and {png}")
  print(out)
  return str(out)
