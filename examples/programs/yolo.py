#!/usr/bin/env python3
"""A one-stage detector in the spirit of YOLOv3: two output scales, three anchors each.

Python features: target assignment in numpy on tensor values (anchor
matching by IoU, an ignore mask from the decoded predictions pulled to the
host with .cpu().numpy()), a variable number of boxes per image held in
Python lists, data-dependent loops over those boxes.
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

NUM_CLASSES = 4
ANCHORS = np.array([[6, 6], [10, 14], [16, 10],      # scale 0 (stride 8)
                    [20, 20], [28, 36], [40, 28]],    # scale 1 (stride 16)
                   dtype=np.float32)
STRIDES = (8, 16)


def conv(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1))


class Detector(nn.Module):
    def __init__(self, width):
        super().__init__()
        w = width
        self.stage8 = nn.Sequential(conv(3, w), conv(w, 2 * w, 2), conv(2 * w, 2 * w),
                                    conv(2 * w, 4 * w, 2), conv(4 * w, 4 * w, 2), conv(4 * w, 4 * w))
        self.stage16 = nn.Sequential(conv(4 * w, 8 * w, 2), conv(8 * w, 8 * w))
        self.head16 = nn.Conv2d(8 * w, 3 * (5 + NUM_CLASSES), 1)
        self.lateral = conv(8 * w, 4 * w)
        self.head8 = nn.Sequential(conv(8 * w, 4 * w), nn.Conv2d(4 * w, 3 * (5 + NUM_CLASSES), 1))

    def forward(self, x):
        f8 = self.stage8(x)
        f16 = self.stage16(f8)
        up = F.interpolate(self.lateral(f16), scale_factor=2.0, mode="nearest")
        out8 = self.head8(torch.cat([f8, up], 1))
        out16 = self.head16(f16)
        return out8, out16


def make_batch(batch, res, rng):
    """Images with 1-4 coloured rectangles each; boxes as Python lists of (cx, cy, w, h, cls)."""
    images = rng.normal(0.0, 0.3, size=(batch, 3, res, res)).astype(np.float32)
    boxes = []
    for b in range(batch):
        items = []
        for _ in range(rng.integers(1, 5)):
            w, h = rng.uniform(6, res / 1.5, size=2)
            cx, cy = rng.uniform(w / 2, res - w / 2), rng.uniform(h / 2, res - h / 2)
            cls = int(rng.integers(0, NUM_CLASSES))
            x0, y0, x1, y1 = int(cx - w / 2), int(cy - h / 2), int(cx + w / 2), int(cy + h / 2)
            images[b, cls % 3, y0:y1, x0:x1] += 1.0 + 0.5 * (cls // 3)
            items.append((cx, cy, w, h, cls))
        boxes.append(items)
    return images, boxes


def wh_iou(wh, anchors):
    inter = np.minimum(wh[0], anchors[:, 0]) * np.minimum(wh[1], anchors[:, 1])
    return inter / (wh[0] * wh[1] + anchors[:, 0] * anchors[:, 1] - inter)


def box_iou(a, b):
    """IoU between boxes a (N, 4) and b (M, 4) in (cx, cy, w, h)."""
    a0, a1 = a[:, None, :2] - a[:, None, 2:] / 2, a[:, None, :2] + a[:, None, 2:] / 2
    b0, b1 = b[None, :, :2] - b[None, :, 2:] / 2, b[None, :, :2] + b[None, :, 2:] / 2
    inter = np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None).prod(-1)
    return inter / (a[:, None, 2:].prod(-1) + b[None, :, 2:].prod(-1) - inter + 1e-9)


def build_targets(outputs, boxes, res):
    """Assigns each ground-truth box to its best anchor, in numpy, per scale."""
    targets = []
    for s, (out, stride) in enumerate(zip(outputs, STRIDES)):
        B, _, H, W = out.shape
        p = out.detach().cpu().numpy().reshape(B, 3, 5 + NUM_CLASSES, H, W)
        anchors = ANCHORS[3 * s:3 * s + 3]
        gy, gx = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
        pred_xy = (1 / (1 + np.exp(-p[:, :, 0:2])) + np.stack([gx, gy])[None, None]) * stride
        pred_wh = np.exp(np.clip(p[:, :, 2:4], -6, 6)) * anchors[None, :, :, None, None]
        obj = np.zeros((B, 3, H, W), np.float32)
        noobj = np.ones((B, 3, H, W), np.float32)
        txy = np.zeros((B, 3, 2, H, W), np.float32)
        twh = np.zeros((B, 3, 2, H, W), np.float32)
        tcls = np.zeros((B, 3, NUM_CLASSES, H, W), np.float32)
        for b, items in enumerate(boxes):
            gt = np.array([it[:4] for it in items], np.float32)
            pred = np.concatenate([pred_xy[b], pred_wh[b]], 1).transpose(0, 2, 3, 1).reshape(-1, 4)
            ignore = box_iou(pred, gt).max(1).reshape(3, H, W) > 0.5
            noobj[b][ignore] = 0.0
            for cx, cy, w, h, cls in items:
                best = int(np.argmax(wh_iou(np.array([w, h]), ANCHORS)))
                if best // 3 != s:
                    continue
                a = best % 3
                i, j = min(int(cy // stride), H - 1), min(int(cx // stride), W - 1)
                obj[b, a, i, j], noobj[b, a, i, j] = 1.0, 0.0
                txy[b, a, :, i, j] = (cx / stride - j, cy / stride - i)
                twh[b, a, :, i, j] = np.log([w / anchors[a, 0], h / anchors[a, 1]])
                tcls[b, a, cls, i, j] = 1.0
        targets.append(tuple(torch.from_numpy(t).to(out.device) for t in (obj, noobj, txy, twh, tcls)))
    return targets


def yolo_loss(outputs, targets):
    total = 0.0
    for out, (obj, noobj, txy, twh, tcls) in zip(outputs, targets):
        B, _, H, W = out.shape
        p = out.view(B, 3, 5 + NUM_CLASSES, H, W)
        m = obj.unsqueeze(2)
        total = total + (F.binary_cross_entropy_with_logits(p[:, :, 0:2], txy, reduction="none") * m).sum()
        total = total + (((p[:, :, 2:4] - twh) ** 2) * m).sum()
        conf = F.binary_cross_entropy_with_logits(p[:, :, 4], obj, reduction="none")
        total = total + (conf * obj).sum() + 0.5 * (conf * noobj).sum()
        total = total + (F.binary_cross_entropy_with_logits(p[:, :, 5:], tcls, reduction="none") * m).sum()
    return total / outputs[0].size(0)


def main():
    run = common.start(__doc__)
    tiny = run.args.size == "tiny"
    batch, width, res = (2, 4, 64) if tiny else (8, 12, 64)
    dev = run.device
    rng = np.random.default_rng(run.args.seed)
    model = run.prepare(Detector(width).to(dev), [torch.randn(batch, 3, res, res, device=dev)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    for it in run.steps():
        images, boxes = make_batch(batch, res, rng)
        x = torch.from_numpy(images).to(dev)
        opt.zero_grad()
        outputs = model(x)
        targets = build_targets(outputs, boxes, res)
        loss = yolo_loss(outputs, targets)
        loss.backward()
        opt.step()
        run.log(loss, boxes=sum(len(b) for b in boxes))

    run.finish(model=model)


if __name__ == "__main__":
    main()
