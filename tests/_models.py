"""A small shapes_tiny model (64x64 images, narrow heads) shared by the training and scale tests."""
import torch

from frcnn_edu import FasterRCNN, get_preset

CFG = get_preset("shapes_tiny").replace(
    min_size=64, max_size=64, rpn_mid_channels=32, representation_size=64,
    rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=50, roi_batch_size=32)


def make_model(num_classes: int = 5, seed: int = 0) -> FasterRCNN:
    torch.manual_seed(seed)
    return FasterRCNN(num_classes, config=CFG)
