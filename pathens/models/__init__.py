"""The networks: pathens's CIFAR ResNets (cifar.py) and GPT (transformer.py), safe checkpoint
loading (checkpoints.py), training (train.py, train_text.py), users' own model files
(user_model.py) and the model zoo of timm, torchvision and Hugging Face (zoo/).

`pathens.models` itself is the CIFAR ResNet API (cifar_resnet, BasicBlock, ...), as it was
before the sub-packages.
"""
from .cifar import (NORMS, SHORTCUTS, BasicBlock, CifarResNet, FixupBlock, PreActBlock,
                    ResidualBlock, ZeroPadShortcut, cifar_resnet)

__all__ = ["NORMS", "SHORTCUTS", "BasicBlock", "CifarResNet", "FixupBlock", "PreActBlock",
           "ResidualBlock", "ZeroPadShortcut", "cifar_resnet"]
