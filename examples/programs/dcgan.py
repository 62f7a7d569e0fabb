#!/usr/bin/env python3
"""DCGAN: a generator and a discriminator, two Adam optimizers, alternating steps.

Python features: .item() on D(x) and D(G(z)) every step, a Python list of
loss history mutated each iteration, printing.
"""
import torch
import torch.nn as nn

import common


class Generator(nn.Module):
    def __init__(self, nz, ngf):
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, z):
        return self.net(z)


class Discriminator(nn.Module):
    def __init__(self, ndf):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, 1, 4, 1, 0, bias=False))

    def forward(self, x):
        return self.net(x).view(-1)


def main():
    run = common.start(__doc__)
    tiny = run.args.size == "tiny"
    batch, nz, nf = (4, 16, 8) if tiny else (32, 64, 32)
    dev = run.device
    # Synthetic "real" images: smooth random blobs, fixed by the seed.
    real_pool = torch.tanh(torch.nn.functional.interpolate(torch.randn(256, 3, 8, 8), size=32, mode="bilinear"))

    netG = run.prepare(Generator(nz, nf).to(dev), [torch.randn(batch, nz, 1, 1, device=dev)], "G")
    netD = run.prepare(Discriminator(nf).to(dev), [torch.randn(batch, 3, 32, 32, device=dev)], "D")
    criterion = nn.BCEWithLogitsLoss()
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    history = []

    for it in run.steps():
        idx = torch.randint(0, real_pool.size(0), (batch,))
        real = real_pool[idx].to(dev)
        ones = torch.ones(batch, device=dev)
        zeros = torch.zeros(batch, device=dev)

        # (1) Discriminator: maximize log D(x) + log(1 - D(G(z))).
        optD.zero_grad()
        out_real = netD(real)
        errD_real = criterion(out_real, ones)
        noise = torch.randn(batch, nz, 1, 1, device=dev)
        fake = netG(noise)
        out_fake = netD(fake.detach())
        errD_fake = criterion(out_fake, zeros)
        errD = errD_real + errD_fake
        errD.backward()
        optD.step()

        # (2) Generator: maximize log D(G(z)).
        optG.zero_grad()
        errG = criterion(netD(fake), ones)
        errG.backward()
        optG.step()

        d_x = torch.sigmoid(out_real).mean().item()
        d_gz = torch.sigmoid(out_fake).mean().item()
        history.append((errD.item(), errG.item(), d_x, d_gz))
        run.log(errD + errG, D_x=d_x, D_G_z=d_gz)

    run.finish(G=netG, D=netD)


if __name__ == "__main__":
    main()
