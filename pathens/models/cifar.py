"""CIFAR ResNets (He et al. 2016a/b) with the options pathens compares: BatchNorm, SkipInit
(De & Smith 2020), Fixup (Zhang, Dauphin & Ma 2019) or no normalisation; option-A (zero-pad)
or option-B (projection) shortcuts; post- or pre-activation blocks; and the plain network with
no shortcuts at all (Veit et al.).

Every block follows one protocol, which the rest of pathens relies on:

    block(x) == block.post(s + block.alpha * block.branch(x))
    s = x if block.shortcut is None else block.shortcut(x)   (no s when block.skip is False)
    (no alpha multiply when block.alpha is None)

With norm="bn", shortcut="A", preact=False the state-dict keys are exactly those of the widely
used akamaster/pytorch_resnet_cifar10 checkpoints (after stripping "module."), plus the
num_batches_tracked buffers those checkpoints lack.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import checks

NORMS = ("bn", "skipinit", "none", "fixup")
SHORTCUTS = ("A", "B")


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut (He et al. 2016a): take every second pixel, zero-pad the new channels.
    (N, in_planes, H, W) -> (N, planes, H/2, W/2); no parameters. For planes = 2 * in_planes
    with planes divisible by 4 this pads planes // 4 channels on each side, as akamaster does."""

    def __init__(self, in_planes, planes):
        super().__init__()
        self.in_planes, self.planes = in_planes, planes
        self.pad_front = (planes - in_planes) // 2
        self.pad_back = planes - in_planes - self.pad_front

    def forward(self, x):
        # F.pad pads the last dims first: (W_left, W_right, H_top, H_bottom, C_front, C_back)
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad_front, self.pad_back))

    def extra_repr(self):
        return f"{self.in_planes} -> {self.planes}, stride=2, pad=({self.pad_front}, {self.pad_back})"


def _conv3x3(in_planes, planes, stride, bias):
    return nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=bias)


def _norm(norm, planes):
    # BatchNorm for "bn"; for "skipinit" / "none" an Identity, which holds no state-dict keys.
    return nn.BatchNorm2d(planes) if norm == "bn" else nn.Identity()


def _make_shortcut(shortcut, norm, in_planes, planes, stride):
    """None (identity) when the shape is kept; else option A or B."""
    if stride == 1 and in_planes == planes:
        return None
    if shortcut == "A":
        return ZeroPadShortcut(in_planes, planes)
    # option B: 1x1 projection, with BN after it in BN networks
    layers = [nn.Conv2d(in_planes, planes, 1, stride=stride, bias=norm != "bn")]
    if norm == "bn":
        layers.append(nn.BatchNorm2d(planes))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """The block protocol: subclasses define branch() and post(); forward is shared."""

    def _init_skip_and_alpha(self, *, norm, shortcut, skip, in_planes, planes, stride, alpha_init):
        self.skip = skip
        # plain (skip=False) blocks have no shortcut at all, not even a projection
        self.shortcut = _make_shortcut(shortcut, norm, in_planes, planes, stride) if skip else None
        # SkipInit: a learnable scalar at the end of the branch, shape ()
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init))) if norm == "skipinit" else None

    def branch(self, x):
        raise NotImplementedError

    def post(self, z):
        raise NotImplementedError

    def forward(self, x):
        out = self.branch(x)
        if self.alpha is not None:
            out = self.alpha * out
        if self.skip:
            s = x if self.shortcut is None else self.shortcut(x)
            out = s + out
        return self.post(out)


class BasicBlock(ResidualBlock):
    """Post-activation block (He et al. 2016a): relu(shortcut(x) + alpha * bn2(conv2(relu(bn1(conv1(x))))))."""

    def __init__(self, in_planes, planes, stride=1, *, norm="bn", shortcut="A", skip=True, alpha_init=0.0):
        super().__init__()
        bias = norm != "bn"  # a conv followed by BN needs no bias
        self.conv1 = _conv3x3(in_planes, planes, stride, bias)
        self.bn1 = _norm(norm, planes)
        self.conv2 = _conv3x3(planes, planes, 1, bias)
        self.bn2 = _norm(norm, planes)
        self._init_skip_and_alpha(norm=norm, shortcut=shortcut, skip=skip, in_planes=in_planes,
                                  planes=planes, stride=stride, alpha_init=alpha_init)

    def branch(self, x):
        # (N, in_planes, H, W) -> (N, planes, H/stride, W/stride)
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def post(self, z):
        return F.relu(z)  # not inplace: pathens re-runs blocks on saved tensors


class ScalarBias(nn.Module):
    """x + b with one learnable scalar b, initialised to 0: Fixup's bias before a layer."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x + self.bias


class FixupBlock(ResidualBlock):
    """Fixup's post-activation block (Zhang, Dauphin & Ma 2019, rule 3): no normalisation, a
    scalar bias before each convolution and activation, a scalar multiplier alpha per branch:

        relu(shortcut(x) + alpha * (conv2(relu(conv1(x + b1a) + b1b) + b2a) + b2b))

    alpha (init 1) is the branch's scale of pathens's protocol, so path gradients count it.
    The official code adds b2b after the multiplier (alpha * conv2(.) + b2b); here it sits
    inside it, the same functions (b2b' = alpha * b2b) and the same network at initialisation,
    so that every parameter of the block outside its shortcut belongs to the branch (the
    parameter split by path length assumes so). The shortcut is the one of the other norms
    (option A parameter-free, option B a 1x1 projection with a bias), a function of x alone.
    CifarResNet initialises conv1 and conv2 (rule 1 and 2)."""

    def __init__(self, in_planes, planes, stride=1, *, shortcut="A", **_):
        super().__init__()
        self.bias1a = nn.Parameter(torch.zeros(()))
        self.conv1 = _conv3x3(in_planes, planes, stride, bias=False)
        self.bias1b = nn.Parameter(torch.zeros(()))
        self.bias2a = nn.Parameter(torch.zeros(()))
        self.conv2 = _conv3x3(planes, planes, 1, bias=False)
        self.bias2b = nn.Parameter(torch.zeros(()))
        self.skip = True
        self.shortcut = _make_shortcut(shortcut, "fixup", in_planes, planes, stride)
        self.alpha = nn.Parameter(torch.tensor(1.0))  # Fixup's multiplier, shape ()

    def branch(self, x):
        # (N, in_planes, H, W) -> (N, planes, H/stride, W/stride)
        out = F.relu(self.conv1(x + self.bias1a) + self.bias1b)
        return self.conv2(out + self.bias2a) + self.bias2b

    def post(self, z):
        return F.relu(z)  # not inplace: pathens re-runs blocks on saved tensors


class PreActBlock(ResidualBlock):
    """Pre-activation block (He et al. 2016b): shortcut(x) + alpha * conv2(relu(bn2(conv1(relu(bn1(x)))))).
    The shortcut (option B projection included) takes x itself, so it is a function of x only."""

    def __init__(self, in_planes, planes, stride=1, *, norm="bn", shortcut="A", skip=True, alpha_init=0.0):
        super().__init__()
        bias = norm != "bn"  # the convs feed a BN (conv1) or the sum (conv2); keep "bias iff no BN"
        self.bn1 = _norm(norm, in_planes)
        self.conv1 = _conv3x3(in_planes, planes, stride, bias)
        self.bn2 = _norm(norm, planes)
        self.conv2 = _conv3x3(planes, planes, 1, bias)
        self._init_skip_and_alpha(norm=norm, shortcut=shortcut, skip=skip, in_planes=in_planes,
                                  planes=planes, stride=stride, alpha_init=alpha_init)

    def branch(self, x):
        # (N, in_planes, H, W) -> (N, planes, H/stride, W/stride)
        return self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))

    def post(self, z):
        return z  # identity: pre-activation blocks add and move on


class CifarResNet(nn.Module):
    """stem -> layer1 (n blocks, width) -> layer2 (n, 2*width, stride 2) -> layer3 (n, 4*width,
    stride 2) -> head. Build it with cifar_resnet(); the arguments are kept in self.config."""

    def __init__(self, config):
        super().__init__()
        self.config = dict(config)
        c = self.config
        n, w, norm = (c["depth"] - 2) // 6, c["width"], c["norm"]
        self.preact = c["preact"]
        block = PreActBlock if self.preact else FixupBlock if norm == "fixup" else BasicBlock
        opts = dict(norm=norm, shortcut=c["shortcut"], skip=c["skip"], alpha_init=c["alpha_init"])

        # stem: 3x3 conv (N, in_channels, 32, 32) -> (N, w, 32, 32); + BN and ReLU in post-act
        self.conv1 = _conv3x3(c["in_channels"], w, 1, bias=norm not in ("bn", "fixup"))
        if not self.preact:  # Fixup: relu(conv1(x) + b), a scalar bias before the activation
            self.bn1 = ScalarBias() if norm == "fixup" else _norm(norm, w)

        def stage(in_planes, planes, stride):
            blocks = [block(in_planes, planes, stride, **opts)]
            blocks += [block(planes, planes, 1, **opts) for _ in range(n - 1)]
            return nn.Sequential(*blocks)

        self.layer1 = stage(w, w, 1)          # (N, w, 32, 32)
        self.layer2 = stage(w, 2 * w, 2)      # (N, 2w, 16, 16)
        self.layer3 = stage(2 * w, 4 * w, 2)  # (N, 4w, 8, 8)

        # head: pre-act networks end with the norm + ReLU their last block did not apply
        if self.preact:
            self.bn_final = _norm(norm, 4 * w)
        if norm == "fixup":  # a scalar bias before the classifier
            self.bias2 = nn.Parameter(torch.zeros(()))
        self.linear = nn.Linear(4 * w, c["num_classes"])

        self._init_weights()
        if norm == "fixup":
            self._init_fixup()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He init, fan_in: keeps the forward variance of each conv + ReLU at 1, the
                # assumption behind the variance / path-length models of unnormalised networks.
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)  # weight keeps PyTorch's default (uniform, fan_in)

    @torch.no_grad()
    def _init_fixup(self):
        """Fixup's rules 1 and 2 (Zhang et al. 2019): the last layer of every branch and the
        classifier start at 0 (so every branch outputs 0 and the network is its shortcuts);
        the other branch layers keep He init scaled by L^(-1/(2m-2)), L branches of m layers
        (m = 2: L^(-1/2)). He init is fan_in here, as for the other norms (the official code
        uses fan_out, which differs only in the first conv of a downsampling block)."""
        L, m = len(self.blocks), 2
        for b in self.blocks:
            b.conv1.weight.mul_(L ** (-1 / (2 * m - 2)))
            nn.init.zeros_(b.conv2.weight)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    @property
    def blocks(self):
        """All residual blocks, in the order the forward pass calls them."""
        return [*self.layer1, *self.layer2, *self.layer3]

    def stem(self, x):
        if self.preact:
            return self.conv1(x)
        return F.relu(self.bn1(self.conv1(x)))

    def head(self, x):
        if self.preact:
            x = F.relu(self.bn_final(x))
        x = x.mean((2, 3))  # global average pool: (N, 4w, 8, 8) -> (N, 4w)
        if self.config["norm"] == "fixup":
            x = x + self.bias2
        return self.linear(x)  # (N, num_classes)

    def forward(self, x):
        # no control flow on tensor values: torch.fx traces this with blocks as leaves
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.head(x)


def cifar_resnet(depth, *, norm="bn", shortcut="A", preact=False, skip=True, width=16,
                 num_classes=10, in_channels=3, alpha_init=0.0):
    """A CIFAR ResNet of depth 6n+2: 3 stages of n two-conv blocks, widths width, 2*width,
    4*width (He et al. 2016a, section 4.2).

    norm:      "bn" (BatchNorm, convs without bias), "skipinit" (no normalisation, convs with
               bias, a learnable scalar alpha at the end of every branch, initialised to
               alpha_init; De & Smith 2020), "none" (no normalisation, no alpha), or "fixup"
               (Zhang et al. 2019: no normalisation, convs without bias, scalar biases before
               each conv, activation and the classifier, a scalar multiplier alpha = 1 per
               branch, each branch's last conv and the classifier initialised to 0, the first
               conv's He init scaled by L^(-1/2) for L blocks; FixupBlock; post-activation
               residual networks only).
    shortcut:  "A" parameter-free zero-pad, or "B" 1x1 projection (+ BN for norm="bn"), used
               where the shape changes; every other shortcut is the identity.
    preact:    pre-activation blocks (He et al. 2016b) instead of the original post-activation.
    skip:      False gives the plain (VGG-like) network: the same blocks with no shortcuts.
    """
    if not checks.is_integer(depth) or depth < 8 or (depth - 2) % 6:
        checks.refuse("depth", "6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, 1202, ...)", depth)
    depth = int(depth)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut must be 'A' (zero-pad) or 'B' (projection), got {shortcut!r}")
    preact, skip = checks.boolean("preact", preact), checks.boolean("skip", skip)
    width = checks.positive("width", width)
    num_classes = checks.positive("num_classes", num_classes)
    in_channels = checks.positive("in_channels", in_channels)
    checks.number("alpha_init", alpha_init)
    if norm == "fixup" and (preact or not skip):
        raise ValueError("norm='fixup' is defined for post-activation residual networks: drop "
                         "preact=True / skip=False")
    if norm != "skipinit" and alpha_init != 0:
        raise ValueError(f"alpha_init={alpha_init!r} only applies to norm='skipinit' (norm is {norm!r})")
    config = dict(depth=depth, norm=norm, shortcut=shortcut, preact=preact, skip=skip, width=width,
                  num_classes=num_classes, in_channels=in_channels, alpha_init=float(alpha_init))
    return CifarResNet(config)
