"""FashionDet generator (rambo_mmdet/data/fashion_det.py, tools/make_fashion_det.py) and the
FashionDet base configs (configs/_base_/fashion_det_{coco,voc}.py).

Builds the small preset (16/8/8 images) a few times into temporary folders; about 10 s with mmdet.
"""
import contextlib
import importlib.util
import io
import itertools
import json
import os
import os.path as osp
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from rambo_mmdet.data.fashion_det import (FASHION_CLASSES, GENERATOR_VERSION, SPLITS,
                                          FashionDetConfig, FashionDetValidationError,
                                          ItemPool, build_fashion_det, find_fashion_mnist_dir,
                                          image_rng, load_fashion_mnist, render_background,
                                          render_image, validate_fashion_det)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SMALL = FashionDetConfig.preset('small')


def _quiet(*_):
    pass


def _build(root, cfg=SMALL, **kwargs):
    kwargs.setdefault('workers', 1)
    return build_fashion_det(str(root), cfg, progress=False, log=_quiet, **kwargs)


def _files(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = osp.join(dirpath, name)
            with open(path, 'rb') as f:
                out[osp.relpath(path, root)] = f.read()
    return out


def _coco(root, split):
    with open(osp.join(root, 'annotations', f'instances_{split}.json'), encoding='utf-8') as f:
        return json.load(f)


def _boxes_by_image(coco):
    """{file_name: [(category_id, x0, y0, x1, y1)]} in json order."""
    names = {img['id']: img['file_name'] for img in coco['images']}
    out = {name: [] for name in names.values()}
    for ann in coco['annotations']:
        x, y, w, h = ann['bbox']
        out[names[ann['image_id']]].append((ann['category_id'], x, y, x + w, y + h))
    return out


def _iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


@pytest.fixture(scope='module')
def small_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('fashion_det') / 'out'
    report = _build(root)
    assert report.rebuilt
    return str(root)


# --------------------------------------------------------------------------- generator
def test_fashion_mnist_is_found():
    directory = find_fashion_mnist_dir()
    assert osp.isdir(directory)
    with pytest.raises(FileNotFoundError):
        find_fashion_mnist_dir('/nonexistent/fashion-mnist')


def test_same_arguments_give_identical_files(small_root, tmp_path):
    # a second build, with two worker processes instead of one, must match byte for byte
    _build(tmp_path / 'again', workers=2)
    first, second = _files(small_root), _files(tmp_path / 'again')
    assert sorted(first) == sorted(second)
    for split in SPLITS:
        name = osp.join('annotations', f'instances_{split}.json')
        assert first[name] == second[name], name
    different = [name for name in first if first[name] != second[name]]
    assert not different, f'files differ between identical builds: {different[:5]}'


def test_seed_changes_the_data(small_root, tmp_path):
    _build(tmp_path / 'seed1', cfg=FashionDetConfig.preset('small', seed=1))
    for split in SPLITS:
        assert _coco(small_root, split)['annotations'] != _coco(tmp_path / 'seed1',
                                                                split)['annotations']


def test_pycocotools_loads_the_annotations(small_root):
    from pycocotools.coco import COCO
    for split in SPLITS:
        with contextlib.redirect_stdout(io.StringIO()):
            api = COCO(osp.join(small_root, 'annotations', f'instances_{split}.json'))
        assert len(api.getImgIds()) == SMALL.num_images(split)
        assert len(api.getAnnIds()) >= SMALL.num_images(split)  # every image has an object
        cats = api.loadCats(api.getCatIds())
        assert [(c['id'], c['name']) for c in cats] == list(enumerate(FASHION_CLASSES, 1))
        for img in api.loadImgs(api.getImgIds()):
            assert (img['width'], img['height']) == (SMALL.img_width, SMALL.img_height)
            assert osp.isfile(osp.join(small_root, 'images', split, img['file_name']))


def test_boxes_are_inside_images_and_not_empty(small_root):
    from PIL import Image
    for split in SPLITS:
        coco = _coco(small_root, split)
        sizes = {img['id']: (img['width'], img['height']) for img in coco['images']}
        for img in coco['images']:
            with Image.open(osp.join(small_root, 'images', split, img['file_name'])) as im:
                assert im.size == (img['width'], img['height']) and im.mode == 'RGB'
        for ann in coco['annotations']:
            x, y, w, h = ann['bbox']
            width, height = sizes[ann['image_id']]
            assert w >= 1 and h >= 1, ann
            assert x >= 0 and y >= 0 and x + w <= width and y + h <= height, ann
            assert ann['area'] == w * h and ann['iscrowd'] == 0
            assert 1 <= ann['category_id'] <= len(FASHION_CLASSES)


def test_objects_are_visible_in_the_pixels(small_root):
    """Inside every box the written image differs clearly from the bare background."""
    from PIL import Image
    coco = _coco(small_root, 'train')
    fractions = []
    for index, (name, objects) in enumerate(_boxes_by_image(coco).items()):
        assert name == f'train_{index:06d}.jpg'
        background = render_background(image_rng(SMALL, 'train', index), SMALL.img_height,
                                       SMALL.img_width)
        # through the same JPEG coder: 16x16 blocks without items then decode identically
        buf = io.BytesIO()
        Image.fromarray(np.clip(background + 0.5, 0, 255).astype(np.uint8)).save(
            buf, format='JPEG', quality=SMALL.jpeg_quality)
        buf.seek(0)
        with Image.open(buf) as bg, \
                Image.open(osp.join(small_root, 'images', 'train', name)) as im:
            diff = np.abs(np.asarray(im, dtype=np.float32) - np.asarray(bg, dtype=np.float32))
        diff = diff.max(axis=2)
        assert np.median(diff) <= 1  # the items cover a minority of the image
        for _, x0, y0, x1, y1 in objects:
            fractions.append(float((diff[y0:y1, x0:x1] > 40).mean()))
    fractions = np.asarray(fractions)
    assert fractions.min() > 0.1, np.sort(fractions)[:10]  # no camouflaged item


def test_voc_xml_agrees_with_coco(small_root):
    main = osp.join(small_root, 'VOC2007', 'ImageSets', 'Main')
    ids = {}
    for split in SPLITS:
        with open(osp.join(main, f'{split}.txt'), encoding='utf-8') as f:
            ids[split] = f.read().split()
        coco = _coco(small_root, split)
        assert ids[split] == [osp.splitext(img['file_name'])[0] for img in coco['images']]
        for name, objects in _boxes_by_image(coco).items():
            stem = osp.splitext(name)[0]
            root = ET.parse(osp.join(small_root, 'VOC2007', 'Annotations', stem + '.xml')).getroot()
            assert root.findtext('filename') == name
            assert int(root.find('size').findtext('width')) == SMALL.img_width
            assert int(root.find('size').findtext('height')) == SMALL.img_height
            voc = []
            for obj in root.findall('object'):
                assert obj.findtext('difficult') == '0'
                bnd = obj.find('bndbox')
                xmin, ymin, xmax, ymax = (int(bnd.findtext(k))
                                          for k in ('xmin', 'ymin', 'xmax', 'ymax'))
                # VOC: 1-based inclusive pixels -> COCO corners [x0, x1) = [xmin - 1, xmax)
                voc.append((FASHION_CLASSES.index(obj.findtext('name')) + 1, xmin - 1, ymin - 1,
                            xmax, ymax))
            assert voc == objects, stem
            # the VOC layout shows the very same image file
            with open(osp.join(small_root, 'images', split, name), 'rb') as a, \
                    open(osp.join(small_root, 'VOC2007', 'JPEGImages', name), 'rb') as b:
                assert a.read() == b.read()
    with open(osp.join(main, 'trainval.txt'), encoding='utf-8') as f:
        assert f.read().split() == ids['train'] + ids['val']


def test_small_objects_and_overlaps_exist(small_root):
    small, overlapping = 0, 0
    for split in SPLITS:
        for objects in _boxes_by_image(_coco(small_root, split)).values():
            small += sum(max(x1 - x0, y1 - y0) < 32 for _, x0, y0, x1, y1 in objects)
            for a, b in itertools.combinations(objects, 2):
                iou = _iou(a[1:], b[1:])
                assert iou <= SMALL.max_iou + 1e-9
                overlapping += iou > 0
    assert small > 0, 'no small object (longest side < 32 px)'
    assert overlapping > 0, 'no overlapping pair of boxes'


def test_max_iou_is_enforced():
    # with min_visible = 0 only max_iou keeps items apart
    cfg = FashionDetConfig.preset('small', max_iou=0.1, min_visible=0.0, max_objects=10,
                                  min_objects=10, min_size=40)
    pool = ItemPool.for_split(find_fashion_mnist_dir(), 'val')
    ious = []
    for index in range(12):
        _, objects = render_image(cfg, 'val', index, pool)
        ious += [_iou(a['box'], b['box']) for a, b in itertools.combinations(objects, 2)]
    assert max(ious) <= 0.1 + 1e-9
    assert max(ious) > 0  # overlaps below the limit stay allowed


def test_every_class_appears_in_train(small_root):
    cats = {ann['category_id'] for ann in _coco(small_root, 'train')['annotations']}
    assert cats == set(range(1, len(FASHION_CLASSES) + 1))


def test_splits_use_disjoint_fashion_mnist_items(small_root):
    directory = find_fashion_mnist_dir()
    # (Fashion-MNIST file, allowed index range) of each split
    expected = {
        'train': ('train', 0, 60000),
        'val': ('t10k', 0, 5000),
        'test': ('t10k', 5000, 10000),
    }
    for split, (prefix, start, end) in expected.items():
        _, labels = load_fashion_mnist(directory, prefix)
        anns = _coco(small_root, split)['annotations']
        for ann in anns:
            assert start <= ann['fmnist_index'] < end, (split, ann)
        # the recorded source item has the annotated class in that file: a split drawing from
        # the wrong file would disagree for most items
        agree = [labels[ann['fmnist_index']] == ann['category_id'] - 1 for ann in anns]
        assert all(agree), f'{split}: {agree.count(False)} items not from {prefix}'


def test_meta_records_version_seed_and_counts(small_root):
    with open(osp.join(small_root, 'meta.json'), encoding='utf-8') as f:
        meta = json.load(f)
    assert meta['version'] == GENERATOR_VERSION
    assert meta['config'] == SMALL.to_dict()
    for split in SPLITS:
        coco = _coco(small_root, split)
        assert meta['counts'][split]['images'] == len(coco['images'])
        assert meta['counts'][split]['objects'] == len(coco['annotations'])
    assert osp.isfile(osp.join(small_root, 'README.txt'))


def test_validation_catches_a_voc_mismatch(small_root, tmp_path):
    copy = tmp_path / 'copy'
    shutil.copytree(small_root, copy)
    validate_fashion_det(str(copy))  # intact copy passes
    xml = copy / 'VOC2007' / 'Annotations' / 'val_000003.xml'
    text = xml.read_text()
    xmax = ET.fromstring(text).find('object/bndbox/xmax').text
    xml.write_text(text.replace(f'<xmax>{xmax}</xmax>', f'<xmax>{int(xmax) - 1}</xmax>', 1))
    with pytest.raises(FashionDetValidationError, match='val_000003'):
        validate_fashion_det(str(copy))


def test_validation_catches_a_box_outside_the_image(small_root, tmp_path):
    copy = tmp_path / 'copy'
    shutil.copytree(small_root, copy)
    path = copy / 'annotations' / 'instances_test.json'
    coco = json.loads(path.read_text())
    coco['annotations'][0]['bbox'][0] = SMALL.img_width - 1  # x + w now past the right edge
    path.write_text(json.dumps(coco))
    with pytest.raises(FashionDetValidationError, match='bad box'):
        validate_fashion_det(str(copy))


def _load_cli():
    spec = importlib.util.spec_from_file_location('make_fashion_det',
                                                  osp.join(ROOT, 'tools', 'make_fashion_det.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_is_idempotent_and_force_rebuilds(tmp_path, capsys):
    cli = _load_cli()
    out = str(tmp_path / 'cli')
    args = ['--small', '--out', out, '--quiet', '--workers', '1']
    assert cli.main(args) == 0
    assert 'wrote 32 images' in capsys.readouterr().out
    meta_mtime = os.stat(osp.join(out, 'meta.json')).st_mtime_ns
    assert cli.main(args) == 0
    assert 'up to date' in capsys.readouterr().out
    assert os.stat(osp.join(out, 'meta.json')).st_mtime_ns == meta_mtime  # nothing rewritten
    assert cli.main(args + ['--seed', '3']) == 0  # other arguments: rebuilt
    assert 'wrote 32 images' in capsys.readouterr().out
    assert cli.main(args + ['--seed', '3', '--force']) == 0
    assert 'wrote 32 images' in capsys.readouterr().out
    assert cli.main(['--check', '--out', out]) == 0
    assert 'is valid' in capsys.readouterr().out
    assert cli.main(['--small', '--out', out, '--max-iou', '1.5']) == 2  # bad argument


# --------------------------------------------------------------------------- mmdet
@pytest.fixture(scope='module')
def mmdet_scope():
    pytest.importorskip('mmdet')
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)


PIPELINE = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True)]


def test_mmdet_reads_both_layouts_alike(small_root, mmdet_scope):
    from mmdet.datasets import CocoDataset, VOCDataset
    coco = CocoDataset(data_root=small_root, ann_file='annotations/instances_val.json',
                       data_prefix=dict(img='images/val/'), metainfo=dict(classes=FASHION_CLASSES),
                       pipeline=PIPELINE, test_mode=True)
    voc = VOCDataset(data_root=small_root, ann_file='VOC2007/ImageSets/Main/val.txt',
                     data_prefix=dict(sub_data_root='VOC2007/'),
                     metainfo=dict(classes=FASHION_CLASSES), pipeline=PIPELINE, test_mode=True)
    assert len(coco) == len(voc) == SMALL.num_val
    for index in (0, SMALL.num_val - 1):
        a, b = coco[index], voc[index]
        assert osp.basename(a['img_path']) == osp.basename(b['img_path'])
        assert np.array_equal(a['img'], b['img'])
        assert a['img'].shape == (SMALL.img_height, SMALL.img_width, 3)
        assert np.array_equal(a['gt_bboxes_labels'], b['gt_bboxes_labels'])
        boxes_coco = a['gt_bboxes'].numpy()
        boxes_voc = b['gt_bboxes'].numpy()
        assert len(boxes_coco) > 0
        # mmdet's VOCDataset subtracts 1 from every VOC coordinate: (x0, y0, x1 - 1, y1 - 1)
        np.testing.assert_array_equal(boxes_voc[:, :2], boxes_coco[:, :2])
        np.testing.assert_array_equal(boxes_voc[:, 2:] + 1, boxes_coco[:, 2:])


# --------------------------------------------------------------------------- base configs
CONFIGS = {
    'fashion_det_coco': dict(metric_key='coco/bbox_mAP', ann_prefix='annotations/instances_'),
    'fashion_det_voc': dict(metric_key='pascal_voc/mAP', ann_prefix=None),
}


def _evaluate(evaluator_cfg, dataset, shuffle_labels):
    """Feed the ground truth back as predictions (labels rotated when shuffle_labels)."""
    import torch
    from mmengine.evaluator import Evaluator
    from mmengine.structures import InstanceData
    evaluator = Evaluator(evaluator_cfg)
    evaluator.dataset_meta = dataset.metainfo
    for index in range(len(dataset)):
        sample = dataset[index]['data_samples']
        gt = sample.gt_instances
        boxes = gt.bboxes.tensor if hasattr(gt.bboxes, 'tensor') else torch.as_tensor(gt.bboxes)
        boxes = boxes / boxes.new_tensor(sample.scale_factor).repeat(2)  # original coordinates
        labels = gt.labels
        if shuffle_labels:
            labels = (labels + 1) % len(FASHION_CLASSES)
        sample.pred_instances = InstanceData(bboxes=boxes, labels=labels,
                                             scores=torch.ones(len(labels)))
        evaluator.process(data_samples=[sample], data_batch=None)
    return evaluator.evaluate(len(dataset))


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_base_config_builds_datasets_and_scores_ground_truth(name, small_root, mmdet_scope):
    from mmengine.config import Config
    from mmdet.registry import DATASETS
    cfg = Config.fromfile(osp.join(ROOT, 'configs', '_base_', f'{name}.py'))
    assert tuple(cfg.classes) == FASHION_CLASSES
    assert 'model' not in cfg
    assert cfg.data_root == 'data/fashion_det/'
    for split in SPLITS:
        loader = cfg[f'{split}_dataloader']
        assert (loader.batch_size, loader.num_workers, loader.persistent_workers) == (4, 2, False)
        ds_cfg = loader.dataset.copy()
        ds_cfg.data_root = small_root
        dataset = DATASETS.build(ds_cfg)
        assert tuple(dataset.metainfo['classes']) == FASHION_CLASSES
        assert len(dataset) == SMALL.num_images(split)
        packed = dataset[0]
        assert tuple(packed['inputs'].shape) == (3, SMALL.img_height, SMALL.img_width)
        assert len(packed['data_samples'].gt_instances) > 0
        if split == 'train':
            assert any(t['type'] == 'RandomFlip' and t['prob'] == 0.5
                       for t in loader.dataset.pipeline)
            continue
        evaluator_cfg = cfg[f'{split}_evaluator'].copy()
        prefix = CONFIGS[name]['ann_prefix']
        if prefix is not None:
            assert evaluator_cfg.ann_file == f'data/fashion_det/{prefix}{split}.json'
            evaluator_cfg.ann_file = osp.join(small_root, f'{prefix}{split}.json')
        else:
            assert evaluator_cfg.eval_mode == 'area'
        key = CONFIGS[name]['metric_key']
        perfect = _evaluate(evaluator_cfg, dataset, shuffle_labels=False)
        assert perfect[key] == pytest.approx(1.0, abs=1e-3), perfect
        wrong = _evaluate(evaluator_cfg, dataset, shuffle_labels=True)
        assert wrong[key] < 0.2, wrong
