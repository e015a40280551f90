# FashionDet, VOC2007 layout: datasets, dataloaders and evaluators (no model settings).
# Make the data first (about 25 s):   python tools/make_fashion_det.py   # -> data/fashion_det/
# Images are 256x256 with 1..6 Fashion-MNIST garments (10 classes, sides ~12..120 px).
# Train on train.txt, validate on val.txt, test on test.txt (trainval.txt also exists).
#
# dataset_type is XMLDataset, the parent of VOCDataset: it reads these files exactly as
# VOCDataset does (same XML parsing, same minus-one box convention), but VOCDataset tags any
# sub_data_root containing 'VOC2007' as Pascal VOC2007, after which VOCMetric prints the 20
# Pascal class names in its per-class table and warns that VOC2007 should use '11points'.
# Switch to 'VOCDataset' if you prefer; the numbers are the same.
dataset_type = 'XMLDataset'
data_root = 'data/fashion_det/'

# Same as rambo_mmdet.data.fashion_det.FASHION_CLASSES, written out because an import here would
# make mmengine treat the file as a lazy-import config; tests/test_fashion_det.py checks it.
classes = ('tshirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag',
           'ankle_boot')
palette = [(242, 36, 36), (242, 160, 36), (201, 242, 36), (78, 242, 36), (36, 242, 119),
           (36, 242, 242), (36, 119, 242), (78, 36, 242), (201, 36, 242), (242, 36, 160)]
metainfo = dict(classes=classes, palette=palette)

backend_args = None
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
    # after Resize: VOCMetric takes the ground truth from the data samples, in original
    # image coordinates
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]

train_dataloader = dict(
    batch_size=4,
    num_workers=2,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='VOC2007/ImageSets/Main/train.txt',
        data_prefix=dict(sub_data_root='VOC2007/'),
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
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='VOC2007/ImageSets/Main/val.txt',
        data_prefix=dict(sub_data_root='VOC2007/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = dict(
    batch_size=4,
    num_workers=2,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='VOC2007/ImageSets/Main/test.txt',
        data_prefix=dict(sub_data_root='VOC2007/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))

# 'area': AP as the exact area under the interpolated precision/recall curve (VOC2010+ style),
# rather than VOC2007's 11-point approximation; mAP at IoU 0.5.
val_evaluator = dict(type='VOCMetric', metric='mAP', eval_mode='area')
test_evaluator = val_evaluator
