#!/usr/bin/env python3
"""SDPoint: stochastic downsampling in a ResNet.

Each training forward draws, with Python's random module, the block before
which the feature map is downsampled and the downsampling ratio (or no
downsampling at all), so each iteration takes one of many control-flow
paths with different tensor shapes.

Python features: random.choice inside forward, data-dependent control flow,
shapes that change from iteration to iteration, .item().
"""
import random

import torch
import torch.nn as nn
import torch.nn.functional as F

import common


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = None
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.skip is None else self.skip(x)))


class SDPointResNet(nn.Module):
    def __init__(self, width, blocks, ratios=(0.5, 0.75), num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for stage, n in enumerate(blocks):
            cout = width * 2 ** stage
            for b in range(n):
                layers.append(Block(cin, cout, 2 if (b == 0 and stage > 0) else 1))
                cin = cout
        self.blocks = nn.ModuleList(layers)
        self.ratios = list(ratios)
        self.fc = nn.Linear(cin, num_classes)
        self.last_point = None

    def forward(self, x):
        point, ratio = len(self.blocks), 1.0  # no downsampling
        if self.training:
            point = random.randint(0, len(self.blocks))
            if point < len(self.blocks):
                ratio = random.choice(self.ratios)
        self.last_point = (point, ratio)
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            if i == point:
                x = F.interpolate(x, scale_factor=ratio, mode="bilinear", align_corners=False)
            x = block(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def main():
    run = common.start(__doc__)
    tiny = run.args.size == "tiny"
    batch, width, blocks, res = (4, 8, [1, 1], 16) if tiny else (32, 16, [2, 2, 2], 32)
    dev = run.device
    centers = torch.randn(10, 3, 1, 1)
    net = SDPointResNet(width, blocks).to(dev)
    model = run.prepare(net, [torch.randn(batch, 3, res, res, device=dev)])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    paths = {}

    for it in run.steps():
        y = torch.randint(0, 10, (batch,))
        x = (centers[y] + 0.8 * torch.randn(batch, 3, res, res)).to(dev)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y.to(dev))
        loss.backward()
        opt.step()
        paths[net.last_point] = paths.get(net.last_point, 0) + 1
        run.log(loss, paths=len(paths))

    run.finish(model=model)


if __name__ == "__main__":
    main()
