"""FashionDet: a small, real-image detection dataset composed from Fashion-MNIST items.

Every image is an RGB canvas with a procedural background (gradient, stripes, checker or colour
blobs, with shading and pixel noise) onto which 1..K Fashion-MNIST garments are pasted: each item
is brightness-normalised, cropped to its tight foreground, resized (longest side log-uniform
between ``min_size`` and ``max_size`` pixels), tinted with a random colour that contrasts with the
background under it and alpha-composited with its own intensity as the mask. Items may overlap partially: the IoU of any
two boxes is at most ``max_iou`` and a later item may hide at most ``1 - min_visible`` of an
earlier item's mask. The box of an item is the tight box of its pasted mask (alpha above
``mask_threshold``).

The train split draws its items from the Fashion-MNIST training set; val and test draw from two
disjoint halves of the Fashion-MNIST test set (items 0..4999 and 5000..9999), so no garment image
is shared between splits.

Everything is seeded per image (``seed``, split, index): the same configuration gives the same
annotation files byte for byte, whatever the number of worker processes. An output counts as up
to date when its meta.json has the same configuration, GENERATOR_VERSION and sha256 of this file.

Output layout under ``root`` (both read natively by MMDetection 3.x)::

    annotations/instances_{train,val,test}.json   COCO, category ids 1..10, bbox xywh
    images/{train,val,test}/<name>.jpg             the images
    VOC2007/JPEGImages/<name>.jpg                  the same files (hard links, else copies)
    VOC2007/Annotations/<name>.xml                 VOC boxes, 1-based inclusive pixels
    VOC2007/ImageSets/Main/{train,val,test,trainval}.txt
    meta.json, README.txt                          generator version, configuration, counts

This module needs numpy and Pillow (pycocotools for the full validation); it never imports mmdet.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import math
import multiprocessing
import os
import os.path as osp
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

GENERATOR_VERSION = '1.0.0'

#: Config-friendly names of the ten Fashion-MNIST classes, in label order (COCO id = index + 1).
FASHION_CLASSES = ('tshirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker',
                   'bag', 'ankle_boot')
#: The official Fashion-MNIST class names, same order.
FASHION_CLASS_TITLES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                        'Sneaker', 'Bag', 'Ankle boot')

SPLITS = ('train', 'val', 'test')
#: Split sizes (train, val, test) of the named presets.
PRESETS = {'default': (2000, 300, 500), 'small': (16, 8, 8)}
#: Item pool of each split: (Fashion-MNIST file prefix, first index, end index).
SOURCE_POOLS = {
    'train': ('train', 0, 60000),
    'val': ('t10k', 0, 5000),
    'test': ('t10k', 5000, 10000),
}
_SPLIT_CODES = {'train': 1, 'val': 2, 'test': 3}

FASHION_MNIST_PACKAGE = 'dataset-fashion-mnist'
FASHION_MNIST_ENV = 'RAMBO_FASHION_MNIST_DIR'
DEFAULT_FASHION_MNIST_DIRS = ('/usr/share/datasets/fashion-mnist', )

DEFAULT_OUT = osp.join('data', 'fashion_det')
META_FILE = 'meta.json'
README_FILE = 'README.txt'
# Entries of the output root that a rebuild owns (and removes first); nothing else is touched.
_MANAGED = ('annotations', 'images', 'VOC2007', META_FILE, README_FILE)

_ALPHA_GAIN = 2.0  # alpha = clip(intensity / 255 * gain): solid garment bodies, soft edges
_SHADE_MIN = 0.45  # an item's colour is tint * (SHADE_MIN + (1 - SHADE_MIN) * intensity)
_PLACE_TRIES = 30  # random positions tried per drawn item
_ITEM_TRIES = 3  # items drawn per slot before the slot stays empty
_TINT_TRIES = 12
_MIN_CONTRAST = 90.0  # wanted mean RGB distance between an item and the background under it


class FashionDetValidationError(RuntimeError):
    """The written dataset is inconsistent (raised by :func:`validate_fashion_det`)."""


@dataclasses.dataclass(frozen=True)
class FashionDetConfig:
    """Everything that determines the generated dataset (stored in meta.json)."""
    num_train: int = PRESETS['default'][0]
    num_val: int = PRESETS['default'][1]
    num_test: int = PRESETS['default'][2]
    img_width: int = 256
    img_height: int = 256
    min_objects: int = 1
    max_objects: int = 6
    min_size: int = 12  # longest side of an item, pixels
    max_size: int = 120
    max_iou: float = 0.5
    min_visible: float = 0.6
    mask_threshold: float = 0.3
    jpeg_quality: int = 90
    seed: int = 0

    @classmethod
    def preset(cls, name: str = 'default', **overrides) -> 'FashionDetConfig':
        if name not in PRESETS:
            raise ValueError(f'unknown preset {name!r}; choose from {sorted(PRESETS)}')
        sizes = dict(zip(('num_train', 'num_val', 'num_test'), PRESETS[name]))
        sizes.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**sizes).checked()

    def num_images(self, split: str) -> int:
        return {'train': self.num_train, 'val': self.num_val, 'test': self.num_test}[split]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def checked(self) -> 'FashionDetConfig':
        """Return self, or raise ValueError naming the first bad setting."""
        problems = []
        for split in SPLITS:
            if self.num_images(split) < 0:
                problems.append(f'num_{split} must be >= 0')
        if self.img_width < 32 or self.img_height < 32:
            problems.append('images must be at least 32x32')
        if not 1 <= self.min_objects <= self.max_objects:
            problems.append('need 1 <= min_objects <= max_objects')
        if not 4 <= self.min_size <= self.max_size:
            problems.append('need 4 <= min_size <= max_size')
        if self.max_size > min(self.img_width, self.img_height):
            problems.append('max_size must fit in the image')
        if not 0.0 <= self.max_iou < 1.0:
            problems.append('max_iou must be in [0, 1)')
        if not 0.0 <= self.min_visible <= 1.0:
            problems.append('min_visible must be in [0, 1]')
        if not 0.0 < self.mask_threshold < 1.0:
            problems.append('mask_threshold must be in (0, 1)')
        if not 1 <= self.jpeg_quality <= 100:
            problems.append('jpeg_quality must be in [1, 100]')
        if self.seed < 0:
            problems.append('seed must be >= 0')
        if problems:
            raise ValueError('invalid FashionDetConfig: ' + '; '.join(problems))
        return self


def image_name(split: str, index: int) -> str:
    """File stem of image ``index`` of ``split`` (also its VOC image id)."""
    return f'{split}_{index:06d}'


# --------------------------------------------------------------------------- Fashion-MNIST source
def _idx_file(directory: str, stem: str) -> Optional[str]:
    for name in (stem + '.gz', stem):
        path = osp.join(directory, name)
        if osp.isfile(path):
            return path
    return None


def _has_fashion_mnist(directory: str) -> bool:
    return all(
        _idx_file(directory, f'{prefix}-{kind}') is not None for prefix in ('train', 't10k')
        for kind in ('images-idx3-ubyte', 'labels-idx1-ubyte'))


def find_fashion_mnist_dir(override: Optional[str] = None) -> str:
    """Directory with the four Fashion-MNIST IDX files (gzipped or not).

    Order: ``override``, then $RAMBO_FASHION_MNIST_DIR, then the files of the Debian package
    ``dataset-fashion-mnist`` as listed by ``dpkg -L``, then the package's usual directory.
    """
    explicit = override or os.environ.get(FASHION_MNIST_ENV)
    if explicit:
        if not _has_fashion_mnist(explicit):
            raise FileNotFoundError(
                f'{explicit!r} lacks the Fashion-MNIST IDX files '
                '(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-...)')
        return explicit
    candidates = []
    try:
        listing = subprocess.run(['dpkg', '-L', FASHION_MNIST_PACKAGE], capture_output=True,
                                 text=True, timeout=60, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        listing = ''
    for line in listing.splitlines():
        if osp.basename(line.strip()).startswith('train-images-idx3-ubyte'):
            candidates.append(osp.dirname(line.strip()))
    candidates.extend(DEFAULT_FASHION_MNIST_DIRS)
    for directory in candidates:
        if _has_fashion_mnist(directory):
            return directory
    raise FileNotFoundError(
        'Fashion-MNIST not found: install the Debian package '
        f'{FASHION_MNIST_PACKAGE} (bash tools/setup_env.sh does), or pass --fashion-mnist-dir / '
        f'set ${FASHION_MNIST_ENV} to a directory with its IDX files')


def _read_idx(path: str, magic: int) -> np.ndarray:
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        data = f.read()
    head = np.frombuffer(data, dtype='>u4', count=1)[0]
    if head != magic:
        raise ValueError(f'{path}: IDX magic {head:#010x}, expected {magic:#010x}')
    ndim = magic & 0xFF
    shape = tuple(int(v) for v in np.frombuffer(data, dtype='>u4', count=ndim, offset=4))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f'{path}: {array.size} values for shape {shape}')
    return array.reshape(shape)


_SOURCE_CACHE: Dict[Tuple[str, str], Tuple[np.ndarray, np.ndarray]] = {}


def load_fashion_mnist(directory: str, prefix: str) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels uint8 [N]) of ``prefix`` 'train' or 't10k'."""
    key = (osp.abspath(directory), prefix)
    if key not in _SOURCE_CACHE:
        images = _read_idx(_idx_file(directory, f'{prefix}-images-idx3-ubyte'), 0x00000803)
        labels = _read_idx(_idx_file(directory, f'{prefix}-labels-idx1-ubyte'), 0x00000801)
        if len(images) != len(labels) or images.shape[1:] != (28, 28):
            raise ValueError(f'{directory}: unexpected Fashion-MNIST {prefix} arrays')
        _SOURCE_CACHE[key] = (images, labels)
    return _SOURCE_CACHE[key]


class ItemPool:
    """The Fashion-MNIST items one split may use, indexed by class."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, start: int, end: int):
        if end > len(images):
            raise ValueError(f'item pool [{start}, {end}) exceeds the {len(images)} source images')
        self.images = images
        self.start = start
        self.by_class = [start + np.flatnonzero(labels[start:end] == c)
                         for c in range(len(FASHION_CLASSES))]
        if any(len(ids) == 0 for ids in self.by_class):
            raise ValueError('every class needs at least one source item')

    @classmethod
    def for_split(cls, directory: str, split: str) -> 'ItemPool':
        prefix, start, end = SOURCE_POOLS[split]
        return cls(*load_fashion_mnist(directory, prefix), start, end)

    def pick(self, rng: np.random.Generator, label: int) -> int:
        ids = self.by_class[label]
        return int(ids[rng.integers(len(ids))])


# --------------------------------------------------------------------------- rendering
def _unit_projection(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Coordinates projected on a random direction, scaled to [0, 1]."""
    theta = rng.uniform(0.0, 2.0 * math.pi)
    ys = np.arange(height, dtype=np.float32)[:, None] * math.sin(theta)
    xs = np.arange(width, dtype=np.float32)[None, :] * math.cos(theta)
    proj = ys + xs
    proj -= proj.min()
    return proj / max(float(proj.max()), 1e-6)


def render_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A procedural RGB texture, float32 [H, W, 3] in [0, 255]."""
    kind = int(rng.integers(4))
    c0, c1 = rng.uniform(0.0, 255.0, size=(2, 3)).astype(np.float32)
    if kind == 0:  # linear gradient
        t = _unit_projection(rng, height, width)
    elif kind == 1:  # stripes, soft or hard, at a random angle
        period = rng.uniform(6.0, 40.0)
        diag = math.hypot(height, width)
        phase = _unit_projection(rng, height, width) * (2.0 * math.pi * diag / period)
        t = 0.5 + 0.5 * np.sin(phase)
        if rng.random() < 0.5:
            t = (t > 0.5).astype(np.float32)
    elif kind == 2:  # checker board
        cell = int(rng.integers(6, 49))
        oy, ox = rng.integers(0, cell, size=2)
        rows = ((np.arange(height) + oy) // cell)[:, None]
        cols = ((np.arange(width) + ox) // cell)[None, :]
        t = ((rows + cols) % 2).astype(np.float32)
    else:  # smooth colour blobs: a coarse random grid upsampled
        grid = rng.uniform(0.0, 255.0, size=(int(rng.integers(2, 9)), int(rng.integers(2, 9)), 3))
        small = Image.fromarray(grid.astype(np.uint8), 'RGB')
        bg = np.asarray(small.resize((width, height), Image.BICUBIC), dtype=np.float32)
    if kind != 3:
        bg = c0 + (c1 - c0) * t[..., None]
    shading = 0.7 + 0.3 * _unit_projection(rng, height, width)  # soft lighting
    bg = bg * shading[..., None]
    sigma = rng.uniform(0.0, 14.0)
    bg += sigma * rng.standard_normal(size=(height, width, 3), dtype=np.float32)
    return np.clip(bg, 0.0, 255.0, out=bg)


def _tight_box(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    """(x0, y0, x1, y1), exclusive ends, of the True pixels of a 2-D mask; None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _box_iou(box: Sequence[int], others: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / (area + areas - inter)


def _prepare_item(glyph: np.ndarray, rng: np.random.Generator, cfg: FashionDetConfig):
    """Crop, rescale and threshold one 28x28 glyph.

    Returns (intensity float32 [h, w] in [0, 1], alpha, mask, tight box in patch coordinates), or
    None if nothing survives the threshold.
    """
    # dark garments become as opaque as bright ones: the 90th percentile of the foreground
    # maps to full intensity (the texture inside the garment is kept)
    foreground = glyph[glyph > 0]
    if foreground.size == 0:
        return None
    gain = 255.0 / max(float(np.percentile(foreground, 90)), 32.0)
    glyph = np.clip(glyph.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)
    crop = _tight_box(glyph.astype(np.float32) * (_ALPHA_GAIN / 255.0) > cfg.mask_threshold)
    if crop is None:
        return None
    x0, y0, x1, y1 = crop
    # one pixel of margin keeps the soft edge of the garment
    x0, y0, x1, y1 = max(x0 - 1, 0), max(y0 - 1, 0), min(x1 + 1, 28), min(y1 + 1, 28)
    glyph = glyph[y0:y1, x0:x1]
    gh, gw = glyph.shape
    longest = math.exp(rng.uniform(math.log(cfg.min_size), math.log(cfg.max_size)))
    aspect = math.exp(rng.uniform(-0.15, 0.15))  # mild anisotropic stretch
    scale = longest / max(gh, gw * aspect)
    new_w = min(max(int(round(gw * aspect * scale)), 2), cfg.img_width)
    new_h = min(max(int(round(gh * scale)), 2), cfg.img_height)
    resized = Image.fromarray(glyph, 'L').resize((new_w, new_h), Image.BILINEAR)
    intensity = np.asarray(resized, dtype=np.float32) * (1.0 / 255.0)
    alpha = np.minimum(intensity * _ALPHA_GAIN, 1.0)
    mask = alpha > cfg.mask_threshold
    box = _tight_box(mask)
    # thin, faint garments (sandal straps) can fade below the threshold when shrunk: drop items
    # whose mask ends up much smaller than asked for
    if box is None or max(box[2] - box[0], box[3] - box[1]) < 0.8 * cfg.min_size:
        return None
    return intensity, alpha, mask, box


def image_rng(cfg: FashionDetConfig, split: str, index: int) -> np.random.Generator:
    """The random stream of one image; it depends on nothing else (order, workers).

    :func:`render_image` first draws the background from it (so ``render_background(
    image_rng(...), h, w)`` is that image without its items), then the items.
    """
    return np.random.default_rng([cfg.seed, _SPLIT_CODES[split], index])


def _place_item(rng, cfg, pool, label, boxes, owner, visible, full, tries):
    """Draw an item of ``label`` and a position for it that respects max_iou and min_visible.

    Returns (source, intensity, alpha, mask, box, px, py, hidden pixels per earlier object) or
    None after ``tries`` draws.
    """
    height, width = owner.shape
    for _ in range(tries):
        source = pool.pick(rng, label)
        item = _prepare_item(pool.images[source], rng, cfg)
        if item is None:
            continue
        intensity, alpha, mask, (bx0, by0, bx1, by1) = item
        ph, pw = mask.shape
        for _ in range(_PLACE_TRIES):
            px = int(rng.integers(0, width - pw + 1))
            py = int(rng.integers(0, height - ph + 1))
            box = (px + bx0, py + by0, px + bx1, py + by1)
            if len(boxes) and float(_box_iou(box, boxes).max()) > cfg.max_iou:
                continue
            under = owner[py:py + ph, px:px + pw][mask]
            hidden = np.bincount(under[under >= 0], minlength=len(visible))
            if any(visible[j] - hidden[j] < cfg.min_visible * full[j] for j in range(len(visible))):
                continue
            return source, intensity, alpha, mask, box, px, py, hidden
    return None


def render_image(cfg: FashionDetConfig, split: str, index: int, pool: ItemPool):
    """Render image ``index`` of ``split``.

    Returns (uint8 RGB array [H, W, 3], list of objects), each object a dict with 'label'
    (0-based class index), 'box' (x0, y0, x1, y1 in pixels, exclusive ends) and 'source' (the
    Fashion-MNIST index of the pasted item), in paste order.
    """
    rng = image_rng(cfg, split, index)
    height, width = cfg.img_height, cfg.img_width
    canvas = render_background(rng, height, width)
    owner = np.full((height, width), -1, dtype=np.int32)  # topmost object of each pixel
    visible: List[int] = []
    full: List[int] = []
    boxes = np.zeros((0, 4), dtype=np.int64)
    objects = []
    num = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    num_classes = len(FASHION_CLASSES)
    for k in range(num):
        # the first item cycles through the classes so that every class appears in any run of
        # ten consecutive images; the others are uniform
        label = index % num_classes if k == 0 else int(rng.integers(num_classes))
        # an item that fades away when shrunk or finds no admissible position is redrawn (other
        # glyph, size and position); the first one always fits on the empty canvas eventually
        placed = _place_item(rng, cfg, pool, label, boxes, owner, visible, full,
                             tries=_ITEM_TRIES * (10 if k < cfg.min_objects else 1))
        if placed is None:
            continue
        source, intensity, alpha, mask, box, px, py, hidden = placed
        ph, pw = mask.shape
        area = int(mask.sum())
        region = canvas[py:py + ph, px:px + pw]
        shade = (_SHADE_MIN + (1.0 - _SHADE_MIN) * intensity)[..., None]
        a = alpha[..., None]
        # the tint: the first of a few random colours whose composite differs enough from the
        # background under the mask (mean RGB distance), else the most different one
        under, shade_m, alpha_m = region[mask], shade[mask], a[mask]
        best, best_contrast = None, -1.0
        for _ in range(_TINT_TRIES):
            tint = rng.uniform(0.0, 255.0, size=3).astype(np.float32)
            contrast = float(np.linalg.norm(alpha_m * (tint * shade_m - under), axis=1).mean())
            if contrast > best_contrast:
                best, best_contrast = tint, contrast
            if contrast >= _MIN_CONTRAST:
                break
        region *= 1.0 - a
        region += (best * shade) * a
        for j, count in enumerate(hidden):
            visible[j] -= int(count)
        owner[py:py + ph, px:px + pw][mask] = len(visible)
        visible.append(area)
        full.append(area)
        boxes = np.concatenate([boxes, np.asarray([box], dtype=np.int64)])
        objects.append(dict(label=label, box=tuple(int(v) for v in box), source=source))
    if not objects:
        raise RuntimeError(f'{split} image {index}: could not place any item')
    image = np.clip(canvas + 0.5, 0.0, 255.0).astype(np.uint8)
    return image, objects


# --------------------------------------------------------------------------- writing
def _link_or_copy(src: str, dst: str) -> None:
    if osp.lexists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


_WORKER: dict = {}


def _init_worker(state: dict) -> None:
    _WORKER.clear()
    _WORKER.update(state)


def _make_one(index: int):
    cfg, split, pool, root = (_WORKER[k] for k in ('cfg', 'split', 'pool', 'root'))
    image, objects = render_image(cfg, split, index, pool)
    name = image_name(split, index) + '.jpg'
    coco_path = osp.join(root, 'images', split, name)
    Image.fromarray(image, 'RGB').save(coco_path, format='JPEG', quality=cfg.jpeg_quality)
    _link_or_copy(coco_path, osp.join(root, 'VOC2007', 'JPEGImages', name))
    return index, objects


class _Progress:
    """tqdm when available, else a plain counter on stderr; silent when disabled."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = None
        self.enabled = enabled
        self.total, self.desc, self.count, self.last = total, desc, 0, 0.0
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, desc=desc, unit='img', file=sys.stderr,
                                dynamic_ncols=True)

    def update(self) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled:
            now = time.monotonic()
            if now - self.last > 0.5 or self.count == self.total:
                self.last = now
                width = 30
                done = int(width * self.count / max(self.total, 1))
                sys.stderr.write(f'\r{self.desc}: [{"#" * done}{"." * (width - done)}] '
                                 f'{self.count}/{self.total}')
                if self.count == self.total:
                    sys.stderr.write('\n')
                sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _render_split(root: str, cfg: FashionDetConfig, split: str, pool: ItemPool, workers: int,
                  progress: bool) -> List[List[dict]]:
    total = cfg.num_images(split)
    results: List[Optional[List[dict]]] = [None] * total
    state = dict(cfg=cfg, split=split, pool=pool, root=root)
    bar = _Progress(total, f'fashion_det {split}', progress)
    try:
        if workers > 1 and total > 1:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context('fork' if 'fork' in methods else None)
            with ctx.Pool(workers, initializer=_init_worker, initargs=(state, )) as procs:
                chunk = max(1, min(32, total // (4 * workers)))
                for index, objects in procs.imap_unordered(_make_one, range(total), chunk):
                    results[index] = objects
                    bar.update()
        else:
            _init_worker(state)
            for index in range(total):
                results[index] = _make_one(index)[1]
                bar.update()
    finally:
        bar.close()
        _WORKER.clear()
    return results  # type: ignore[return-value]


def _coco_dict(cfg: FashionDetConfig, split: str, per_image: List[List[dict]]) -> dict:
    images, annotations = [], []
    for index, objects in enumerate(per_image):
        image_id = index + 1
        images.append(dict(id=image_id, file_name=image_name(split, index) + '.jpg',
                           width=cfg.img_width, height=cfg.img_height))
        for obj in objects:
            x0, y0, x1, y1 = obj['box']
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id,
                                    category_id=obj['label'] + 1,
                                    bbox=[x0, y0, x1 - x0, y1 - y0], area=(x1 - x0) * (y1 - y0),
                                    iscrowd=0, fmnist_index=obj['source']))
    categories = [dict(id=i + 1, name=name, supercategory='fashion', title=title)
                  for i, (name, title) in enumerate(zip(FASHION_CLASSES, FASHION_CLASS_TITLES))]
    info = dict(description=f'FashionDet {split}: Fashion-MNIST items on procedural backgrounds',
                version=GENERATOR_VERSION, seed=cfg.seed, split=split)
    return dict(info=info, licenses=[], images=images, annotations=annotations,
                categories=categories)


def _voc_xml(cfg: FashionDetConfig, name: str, objects: List[dict]) -> str:
    """VOC annotation: boxes in 1-based inclusive pixels (xmin = x0 + 1, xmax = x1)."""
    lines = [
        '<annotation>', '\t<folder>VOC2007</folder>', f'\t<filename>{name}.jpg</filename>',
        '\t<source><database>FashionDet</database></source>', '\t<size>',
        f'\t\t<width>{cfg.img_width}</width>', f'\t\t<height>{cfg.img_height}</height>',
        '\t\t<depth>3</depth>', '\t</size>', '\t<segmented>0</segmented>'
    ]
    for obj in objects:
        x0, y0, x1, y1 = obj['box']
        lines += [
            '\t<object>', f'\t\t<name>{FASHION_CLASSES[obj["label"]]}</name>',
            '\t\t<pose>Unspecified</pose>', '\t\t<truncated>0</truncated>',
            '\t\t<difficult>0</difficult>', '\t\t<bndbox>', f'\t\t\t<xmin>{x0 + 1}</xmin>',
            f'\t\t\t<ymin>{y0 + 1}</ymin>', f'\t\t\t<xmax>{x1}</xmax>', f'\t\t\t<ymax>{y1}</ymax>',
            '\t\t</bndbox>', '\t</object>'
        ]
    lines.append('</annotation>')
    return '\n'.join(lines) + '\n'


def _write_text(path: str, text: str) -> None:
    with open(path, 'w', encoding='utf-8', newline='\n') as f:
        f.write(text)


def _split_counts(per_image: List[List[dict]]) -> dict:
    labels = [obj['label'] for objects in per_image for obj in objects]
    sides = [max(o['box'][2] - o['box'][0], o['box'][3] - o['box'][1])
             for objects in per_image for o in objects]
    areas = [(o['box'][2] - o['box'][0]) * (o['box'][3] - o['box'][1])
             for objects in per_image for o in objects]
    return dict(images=len(per_image), objects=len(labels),
                per_class={name: labels.count(i) for i, name in enumerate(FASHION_CLASSES)},
                coco_small=sum(a < 32**2 for a in areas),
                coco_medium=sum(32**2 <= a < 96**2 for a in areas),
                coco_large=sum(a >= 96**2 for a in areas),
                min_side=min(sides, default=0), max_side=max(sides, default=0))


def generator_digest() -> str:
    """sha256 of this module's source: any change of the generator code invalidates outputs."""
    with open(__file__, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def _meta(cfg: FashionDetConfig, counts: Optional[dict] = None) -> dict:
    meta = dict(generator='rambo_mmdet.data.fashion_det', version=GENERATOR_VERSION,
                generator_sha256=generator_digest(), config=cfg.to_dict(),
                classes=list(FASHION_CLASSES),
                class_titles=list(FASHION_CLASS_TITLES),
                source=dict(package=FASHION_MNIST_PACKAGE,
                            pools={s: f'{p}[{a}:{b}]' for s, (p, a, b) in SOURCE_POOLS.items()}))
    if counts is not None:
        meta['counts'] = counts
    return meta


def _readme(cfg: FashionDetConfig, meta: dict) -> str:
    counts = meta['counts']
    rows = '\n'.join(f'  {s:<5} {c["images"]:>6} images {c["objects"]:>7} objects '
                     f'(COCO small/medium/large {c["coco_small"]}/{c["coco_medium"]}/'
                     f'{c["coco_large"]})' for s, c in counts.items())
    args = '\n'.join(f'  {k} = {v}' for k, v in cfg.to_dict().items())
    classes = ', '.join(f'{i + 1}={n} ({t})'
                        for i, (n, t) in enumerate(zip(FASHION_CLASSES, FASHION_CLASS_TITLES)))
    return f"""FashionDet {GENERATOR_VERSION}: Fashion-MNIST garments on procedural backgrounds.
Generated by tools/make_fashion_det.py (rambo_mmdet.data.fashion_det); seed {cfg.seed}.
Re-running with the same arguments gives byte-identical annotation files.

Counts:
{rows}

Classes (COCO category id = index + 1): {classes}

Items: train from Fashion-MNIST train[0:60000], val from t10k[0:5000], test from t10k[5000:10000].

Layout:
  annotations/instances_{{train,val,test}}.json   COCO; bbox = [x, y, w, h] in pixels
  images/{{train,val,test}}/*.jpg                  the images
      CocoDataset: ann_file='annotations/instances_<split>.json',
                   data_prefix=dict(img='images/<split>/')
  VOC2007/JPEGImages/*.jpg                       the same image files
  VOC2007/Annotations/*.xml                      boxes 1-based inclusive: xmin = x + 1, xmax = x + w
  VOC2007/ImageSets/Main/{{train,val,test,trainval}}.txt
      VOCDataset:  ann_file='VOC2007/ImageSets/Main/<split>.txt',
                   data_prefix=dict(sub_data_root='VOC2007/')

Arguments:
{args}
"""


def _is_up_to_date(root: str, cfg: FashionDetConfig) -> bool:
    try:
        with open(osp.join(root, META_FILE), encoding='utf-8') as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    if (meta.get('version'), meta.get('generator_sha256'),
            meta.get('config')) != (GENERATOR_VERSION, generator_digest(), cfg.to_dict()):
        return False
    needed = [osp.join(root, 'annotations', f'instances_{s}.json') for s in SPLITS]
    needed += [osp.join(root, 'VOC2007', 'ImageSets', 'Main', f'{s}.txt')
               for s in SPLITS + ('trainval', )]
    needed += [osp.join(root, 'images', s, image_name(s, cfg.num_images(s) - 1) + '.jpg')
               for s in SPLITS if cfg.num_images(s)]
    return all(osp.isfile(p) for p in needed)


@dataclasses.dataclass
class BuildReport:
    root: str
    meta: dict
    rebuilt: bool
    seconds: float


def build_fashion_det(root: str = DEFAULT_OUT,
                      cfg: Optional[FashionDetConfig] = None,
                      fashion_mnist_dir: Optional[str] = None,
                      workers: Optional[int] = None,
                      force: bool = False,
                      progress: bool = True,
                      log: Callable[[str], None] = print) -> BuildReport:
    """Generate (or keep, when up to date) the dataset under ``root``, then validate it.

    Only the entries the generator owns (annotations/, images/, VOC2007/, meta.json,
    README.txt) are removed before a rebuild. meta.json is written last, after validation, so an
    interrupted or failed build is never taken for an up-to-date one.
    """
    cfg = (cfg or FashionDetConfig()).checked()
    start = time.monotonic()
    if not force and _is_up_to_date(root, cfg):
        with open(osp.join(root, META_FILE), encoding='utf-8') as f:
            meta = json.load(f)
        log(f'fashion_det: {root} is up to date (version {GENERATOR_VERSION}, seed {cfg.seed}); '
            'use --force to rebuild')
        return BuildReport(root, meta, False, time.monotonic() - start)

    source_dir = find_fashion_mnist_dir(fashion_mnist_dir)
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    os.makedirs(root, exist_ok=True)
    for entry in (META_FILE, ) + _MANAGED:  # meta first: a half-removed tree is never "current"
        path = osp.join(root, entry)
        if osp.isdir(path) and not osp.islink(path):
            shutil.rmtree(path)
        elif osp.lexists(path):
            os.remove(path)
    voc = osp.join(root, 'VOC2007')
    for sub in ('JPEGImages', 'Annotations', osp.join('ImageSets', 'Main')):
        os.makedirs(osp.join(voc, sub))
    os.makedirs(osp.join(root, 'annotations'))
    log(f'fashion_det: building {root} from {source_dir} '
        f'({cfg.num_train}/{cfg.num_val}/{cfg.num_test} images, seed {cfg.seed}, '
        f'{workers} worker(s))')

    counts = {}
    for split in SPLITS:
        os.makedirs(osp.join(root, 'images', split))
        pool = ItemPool.for_split(source_dir, split)
        per_image = _render_split(root, cfg, split, pool, workers, progress)
        coco = _coco_dict(cfg, split, per_image)
        _write_text(osp.join(root, 'annotations', f'instances_{split}.json'),
                    json.dumps(coco, separators=(',', ':')))
        names = [image_name(split, i) for i in range(len(per_image))]
        for name, objects in zip(names, per_image):
            _write_text(osp.join(voc, 'Annotations', name + '.xml'), _voc_xml(cfg, name, objects))
        _write_text(osp.join(voc, 'ImageSets', 'Main', f'{split}.txt'),
                    ''.join(n + '\n' for n in names))
        counts[split] = _split_counts(per_image)
    trainval = [image_name(s, i) for s in ('train', 'val') for i in range(cfg.num_images(s))]
    _write_text(osp.join(voc, 'ImageSets', 'Main', 'trainval.txt'),
                ''.join(n + '\n' for n in trainval))

    validate_fashion_det(root, cfg)
    meta = _meta(cfg, counts)
    _write_text(osp.join(root, README_FILE), _readme(cfg, meta))
    _write_text(osp.join(root, META_FILE), json.dumps(meta, indent=2) + '\n')
    seconds = time.monotonic() - start
    total_objects = sum(c['objects'] for c in counts.values())
    log(f'fashion_det: wrote {sum(c["images"] for c in counts.values())} images, '
        f'{total_objects} objects to {root} in {seconds:.1f}s (validated)')
    return BuildReport(root, meta, True, seconds)


# --------------------------------------------------------------------------- validation
def _load_coco(path: str) -> Tuple[dict, object]:
    """(raw json, pycocotools COCO or None when pycocotools is missing)."""
    with open(path, encoding='utf-8') as f:
        raw = json.load(f)
    try:
        from pycocotools.coco import COCO
    except ImportError:
        sys.stderr.write('fashion_det: pycocotools missing, checking the COCO json by hand\n')
        return raw, None
    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress lines
        api = COCO(path)
    return raw, api


def validate_fashion_det(root: str, cfg: Optional[FashionDetConfig] = None) -> dict:
    """Check the written dataset; raise :class:`FashionDetValidationError` listing problems.

    Checks, per split: pycocotools loads the json; categories are 1..10 with FASHION_CLASSES;
    image count and sizes (against ``cfg`` when given, else meta.json's when present); every
    image file exists in both layouts with the stated size; every box is non-empty, inside its
    image, with area = w * h; every image has objects; the VOC id lists and XML files agree
    with the COCO json object by object (VOC xmin = x + 1, xmax = x + w). Returns object counts
    per split.
    """
    errors: List[str] = []
    if cfg is None and osp.isfile(osp.join(root, META_FILE)):
        with open(osp.join(root, META_FILE), encoding='utf-8') as f:
            cfg = FashionDetConfig(**json.load(f)['config'])
    voc = osp.join(root, 'VOC2007')
    found = {}
    split_ids = {}
    for split in SPLITS:
        path = osp.join(root, 'annotations', f'instances_{split}.json')
        if not osp.isfile(path):
            errors.append(f'{split}: missing {path}')
            continue
        raw, api = _load_coco(path)
        cats = sorted(raw.get('categories', []), key=lambda c: c['id'])
        if [(c['id'], c['name']) for c in cats] != list(enumerate(FASHION_CLASSES, 1)):
            errors.append(f'{split}: categories differ from FASHION_CLASSES with ids 1..10')
        images = raw.get('images', [])
        anns = raw.get('annotations', [])
        if api is not None:
            if len(api.getImgIds()) != len(images) or len(api.getAnnIds()) != len(anns):
                errors.append(f'{split}: pycocotools index disagrees with the json')
        if cfg is not None and len(images) != cfg.num_images(split):
            errors.append(f'{split}: {len(images)} images, expected {cfg.num_images(split)}')
        by_image: Dict[int, List[dict]] = {img['id']: [] for img in images}
        for ann in anns:
            if ann.get('image_id') not in by_image:
                errors.append(f'{split}: annotation {ann.get("id")} of unknown image')
                continue
            by_image[ann['image_id']].append(ann)
        ids = []
        for img in images:
            file_name, width, height = img['file_name'], img['width'], img['height']
            stem = osp.splitext(file_name)[0]
            ids.append(stem)
            if cfg is not None and (width, height) != (cfg.img_width, cfg.img_height):
                errors.append(f'{split}/{file_name}: size {width}x{height} differs from config')
            for img_path in (osp.join(root, 'images', split, file_name),
                             osp.join(voc, 'JPEGImages', stem + '.jpg')):
                try:
                    with Image.open(img_path) as im:
                        if im.size != (width, height) or im.mode != 'RGB':
                            errors.append(f'{img_path}: {im.mode} {im.size}, json says '
                                          f'RGB {(width, height)}')
                except OSError as exc:
                    errors.append(f'{img_path}: unreadable ({exc})')
            img_anns = by_image[img['id']]
            if not img_anns:
                errors.append(f'{split}/{file_name}: no objects')
            for ann in img_anns:
                x, y, w, h = ann['bbox']
                if not (w >= 1 and h >= 1 and x >= 0 and y >= 0 and x + w <= width
                        and y + h <= height):
                    errors.append(f'{split}/{file_name}: bad box {ann["bbox"]} in '
                                  f'{width}x{height}')
                if ann.get('area') != w * h or ann.get('iscrowd') != 0:
                    errors.append(f'{split}/{file_name}: annotation {ann["id"]} area/iscrowd')
                if not 1 <= ann.get('category_id', 0) <= len(FASHION_CLASSES):
                    errors.append(f'{split}/{file_name}: bad category {ann.get("category_id")}')
            errors.extend(_check_voc_xml(osp.join(voc, 'Annotations', stem + '.xml'), img,
                                         img_anns))
        split_ids[split] = ids
        _check_id_list(osp.join(voc, 'ImageSets', 'Main', f'{split}.txt'), ids, errors)
        found[split] = dict(images=len(images), objects=len(anns))
    if all(s in split_ids for s in ('train', 'val')):
        _check_id_list(osp.join(voc, 'ImageSets', 'Main', 'trainval.txt'),
                       split_ids['train'] + split_ids['val'], errors)
    if errors:
        shown = '\n  '.join(errors[:25])
        more = f'\n  ... and {len(errors) - 25} more' if len(errors) > 25 else ''
        raise FashionDetValidationError(
            f'{root}: {len(errors)} problem(s) in the FashionDet output:\n  {shown}{more}')
    return found


def _check_id_list(path: str, expected: List[str], errors: List[str]) -> None:
    try:
        with open(path, encoding='utf-8') as f:
            got = [line.strip() for line in f if line.strip()]
    except OSError:
        errors.append(f'missing {path}')
        return
    if got != expected:
        errors.append(f'{path}: ids differ from the COCO json ({len(got)} vs {len(expected)})')


def parse_voc_xml(path: str) -> dict:
    """{'filename', 'width', 'height', 'objects': [(name, difficult, xmin, ymin, xmax, ymax)]}."""
    root = ET.parse(path).getroot()
    size = root.find('size')
    objects = []
    for obj in root.findall('object'):
        bnd = obj.find('bndbox')
        objects.append((obj.findtext('name'), int(obj.findtext('difficult', '0')),
                        *(int(bnd.findtext(k)) for k in ('xmin', 'ymin', 'xmax', 'ymax'))))
    return dict(filename=root.findtext('filename'), width=int(size.findtext('width')),
                height=int(size.findtext('height')), objects=objects)


def _check_voc_xml(path: str, img: dict, anns: List[dict]) -> List[str]:
    try:
        parsed = parse_voc_xml(path)
    except (OSError, ET.ParseError, AttributeError, TypeError, ValueError) as exc:
        return [f'{path}: unreadable VOC annotation ({exc})']
    problems = []
    if (parsed['filename'], parsed['width'], parsed['height']) != (img['file_name'], img['width'],
                                                                   img['height']):
        problems.append(f'{path}: filename/size differ from the COCO json')
    expected = []
    for ann in anns:
        x, y, w, h = ann['bbox']
        expected.append((FASHION_CLASSES[ann['category_id'] - 1], 0, x + 1, y + 1, x + w, y + h))
    if parsed['objects'] != expected:
        problems.append(f'{path}: objects differ from the COCO json: {parsed["objects"]} vs '
                        f'{expected}')
    return problems
