# ImageNet weights of the shipped COCO/VOC configs' ResNet-50 backbone, stated once. A config uses
# them with
#   _base_ = [..., '<path to>/_base_/imagenet_weights.py']
#   model = dict(backbone=dict(init_cfg=dict(checkpoint={{_base_.resnet50_imagenet}})))
#
# mmdet's R50 configs load `torchvision://resnet50`; mmengine resolves that name only with the
# torchvision package installed (mmengine/runner/checkpoint.py get_torchvision_models), to the
# 'resnet50' entry of mmengine/hub/torchvision_0.12.json: the URL below. Loading the URL itself
# gives the same file without torchvision (mmengine's load_from_http -> torch.hub's
# load_state_dict_from_url). It is downloaded once, to
# <torch.hub.get_dir()>/checkpoints/resnet50-0676ba61.pth (default ~/.cache/torch/hub/...);
# offline, put the file there, or pass a local file with
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/resnet50-0676ba61.pth
resnet50_imagenet = 'https://download.pytorch.org/models/resnet50-0676ba61.pth'
