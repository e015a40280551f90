# FashionDet: what the COCO-layout and VOC-layout bases (fashion_det_coco.py, fashion_det_voc.py)
# share, stated once: data root, classes, pipelines, dataloader settings and the VOC metric. The
# two layout files add their dataset type, annotation files and evaluators; no model settings.
# Make the data first (about 25 s):   python tools/make_fashion_det.py   # -> data/fashion_det/
# Images are 256x256 with 1..6 Fashion-MNIST garments (10 classes, sides ~12..120 px).
data_root = 'data/fashion_det/'

# Same as rambo_mmdet.data.fashion_det.FASHION_CLASSES (COCO category ids 1..10), written out
# because an import here would make mmengine treat the file as a lazy-import config;
# tests/test_fashion_det.py checks that the two agree.
classes = ('tshirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag',
           'ankle_boot')
palette = [(242, 36, 36), (242, 160, 36), (201, 242, 36), (78, 242, 36), (36, 242, 119),
           (36, 242, 242), (36, 119, 242), (78, 36, 242), (201, 36, 242), (242, 36, 160)]
metainfo = dict(classes=classes, palette=palette)

backend_args = None
# the native size; configs/fashion/_fashion_runtime.py trains and tests at 160x160 (it rescales
# these pipelines' Resize step)
img_scale = (256, 256)

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    # after Resize: the ground truth stays in original image coordinates (CocoMetric reads the
    # annotation file, VOCMetric the data samples' ground truth)
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]

# the layout files add the dataset type, ann_file and data_prefix of each split
train_dataloader = dict(
    batch_size=4,
    num_workers=2,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        # no bbox_min_size (Pascal's base config uses 32): it would ignore the small garments
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=4,
    num_workers=2,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = dict(val_dataloader, dataset=dict(val_dataloader['dataset']))

# 'area': AP as the exact area under the interpolated precision/recall curve (VOC2010+ style),
# rather than VOC2007's 11-point approximation; mAP at IoU 0.5. It needs only the data samples'
# ground truth and the class names, so it also evaluates a CocoDataset's predictions.
voc_metric = dict(type='VOCMetric', metric='mAP', eval_mode='area')
