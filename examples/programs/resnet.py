#!/usr/bin/env python3
"""A small ResNet (CIFAR-style basic blocks) trained with SGD and momentum.

Python features: accuracy from .item() every step, a plateau learning-rate
rule in Python that reads the loss value (data-dependent control flow),
a Python dict of running statistics.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

import common


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, width, blocks, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for stage, n in enumerate(blocks):
            cout = width * 2 ** stage
            for b in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (b == 0 and stage > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def main():
    run = common.start(__doc__)
    tiny = run.args.size == "tiny"
    batch, width, blocks, res = (4, 8, [1, 1], 16) if tiny else (32, 16, [2, 2, 2], 32)
    dev = run.device
    # Synthetic labelled data: class-dependent mean colour plus noise.
    centers = torch.randn(10, 3, 1, 1)
    model = run.prepare(ResNet(width, blocks).to(dev), [torch.randn(batch, 3, res, res, device=dev)])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    stats = {"best": float("inf"), "bad_steps": 0, "correct": 0, "seen": 0}

    for it in run.steps():
        y = torch.randint(0, 10, (batch,))
        x = (centers[y] + 0.8 * torch.randn(batch, 3, res, res)).to(dev)
        y = y.to(dev)
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()

        value = loss.item()
        stats["correct"] += (logits.argmax(1) == y).sum().item()
        stats["seen"] += batch
        if value < stats["best"] - 1e-3:
            stats["best"], stats["bad_steps"] = value, 0
        else:
            stats["bad_steps"] += 1
            if stats["bad_steps"] >= 5:  # plateau: decay the learning rate
                for group in opt.param_groups:
                    group["lr"] *= 0.5
                stats["bad_steps"] = 0
        run.log(value, acc=stats["correct"] / stats["seen"])

    run.finish(model=model)


if __name__ == "__main__":
    main()
