#!/usr/bin/env python3
"""DropBlock regularization in a small ResNet, masks drawn with numpy.

The block mask's seeds are sampled with numpy's global RandomState inside
the forward pass, then grown into blocks with max pooling; the drop
probability is ramped up from the training loop by mutating each DropBlock
module's attribute (the usual LinearScheduler).

Python features: numpy calls on tensor shapes inside forward, torch.from_numpy,
Python object mutation (drop_prob) every iteration, .item().
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common


class DropBlock2d(nn.Module):
    def __init__(self, block_size):
        super().__init__()
        self.block_size = block_size
        self.drop_prob = 0.0

    def forward(self, x):
        if not self.training or self.drop_prob == 0.0:
            return x
        n, c, h, w = x.shape
        bs = min(self.block_size, h, w)
        gamma = self.drop_prob / (bs ** 2) * (h * w) / ((h - bs + 1) * (w - bs + 1))
        seeds = np.random.binomial(1, gamma, size=(n, c, h - bs + 1, w - bs + 1)).astype(np.float32)
        pad = bs // 2
        seeds = np.pad(seeds, ((0, 0), (0, 0), (pad, bs - 1 - pad), (pad, bs - 1 - pad)))
        mask = torch.from_numpy(seeds).to(x.device)
        block = F.max_pool2d(mask, kernel_size=bs, stride=1, padding=bs // 2)
        if block.shape[-1] != w:  # even block sizes overshoot by one
            block = block[:, :, :h, :w]
        keep = 1.0 - block
        return x * keep * (keep.numel() / keep.sum().clamp(min=1.0))


class Block(nn.Module):
    def __init__(self, cin, cout, stride, block_size):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.drop = DropBlock2d(block_size)
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.drop(F.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.drop(self.skip(x)))


class Net(nn.Module):
    def __init__(self, width, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = Block(width, width, 1, 5)
        self.layer2 = Block(width, 2 * width, 2, 5)
        self.layer3 = Block(2 * width, 4 * width, 2, 3)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def main():
    run = common.start(__doc__)
    tiny = run.args.size == "tiny"
    batch, width, res = (4, 8, 16) if tiny else (32, 16, 32)
    dev = run.device
    centers = torch.randn(10, 3, 1, 1)
    model = run.prepare(Net(width).to(dev), [torch.randn(batch, 3, res, res, device=dev)])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    drop_blocks = [m for m in model.modules() if isinstance(m, DropBlock2d)]
    schedule = np.linspace(0.0, 0.2, 50)  # LinearScheduler: ramp the drop probability

    for it in run.steps():
        for m in drop_blocks:
            m.drop_prob = float(schedule[min(it + 1, len(schedule) - 1)])
        y = torch.randint(0, 10, (batch,))
        x = (centers[y] + 0.8 * torch.randn(batch, 3, res, res)).to(dev)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y.to(dev))
        loss.backward()
        opt.step()
        run.log(loss, drop_prob=drop_blocks[0].drop_prob if drop_blocks else 0.0)

    run.finish(model=model)


if __name__ == "__main__":
    main()
