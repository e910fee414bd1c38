# Cascade Mask R-CNN 3x (4conv1fc, GIoU, multi-scale + crop, fp16) with a DiNAT-Base backbone
# (NAT-Base with every other block dilated; DiNAT paper's COCO dilations), AdamW lr 7.5e-5 (the
# release's rate for DiNAT-Base). Everything else (recipe, schedule, optimiser) as the NAT-Base config.
_base_ = '../nat/cascade-mask-rcnn_nat-base_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'

# Official ImageNet-1K DiNAT-Base checkpoint, loaded as is (see README.md). A local file:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/dinat_base_in1k_224.pth
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_base_in1k_224.pth'

model = dict(
    backbone=dict(
        type='DiNAT',
        dilations='coco',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))

optim_wrapper = dict(optimizer=dict(lr=0.000075))
