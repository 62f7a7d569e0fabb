#!/usr/bin/env python3
"""REINFORCE on a cart-pole environment written in plain Python.

The environment's physics run on Python floats; each step samples an action
from the policy and hands action.item() to the environment, so episodes end
whenever the pole falls and have different lengths. Returns are discounted
in a Python loop and normalized.

Python features: .item() every environment step, data-dependent episode
length (a while loop ended by Python state), Python lists of log-probs,
Python arithmetic on rewards.
"""
import math
import random

import torch
import torch.nn as nn
import torch.nn.functional as F

import common


class CartPole:
    """The classic control task (Barto, Sutton & Anderson 1983) on Python floats."""

    def __init__(self, rng, max_steps):
        self.rng, self.max_steps = rng, max_steps

    def reset(self):
        self.state = [self.rng.uniform(-0.05, 0.05) for _ in range(4)]
        self.steps = 0
        return list(self.state)

    def step(self, action):
        x, x_dot, theta, theta_dot = self.state
        force = 10.0 if action == 1 else -10.0
        cos, sin = math.cos(theta), math.sin(theta)
        temp = (force + 0.05 * theta_dot ** 2 * sin) / 1.1
        theta_acc = (9.8 * sin - cos * temp) / (0.5 * (4.0 / 3.0 - 0.1 * cos ** 2 / 1.1))
        x_acc = temp - 0.05 * theta_acc * cos / 1.1
        x, x_dot = x + 0.02 * x_dot, x_dot + 0.02 * x_acc
        theta, theta_dot = theta + 0.02 * theta_dot, theta_dot + 0.02 * theta_acc
        self.state = [x, x_dot, theta, theta_dot]
        self.steps += 1
        done = abs(x) > 2.4 or abs(theta) > 12 * math.pi / 180 or self.steps >= self.max_steps
        return list(self.state), 1.0, done


class Policy(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.fc1 = nn.Linear(4, hidden)
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(hidden, 2)

    def forward(self, obs):
        return F.softmax(self.fc2(self.drop(F.relu(self.fc1(obs)))), dim=-1)


def main():
    run = common.start(__doc__)
    tiny = run.args.size == "tiny"
    hidden, max_steps, episodes = (16, 10, 1) if tiny else (128, 200, 2)
    dev = run.device
    env = CartPole(random.Random(run.args.seed), max_steps)
    model = run.prepare(Policy(hidden).to(dev), [torch.zeros(1, 4, device=dev)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gamma, running = 0.99, 10.0

    for it in run.steps():
        log_probs, returns, lengths = [], [], []
        for _ in range(episodes):
            obs, done, rewards = env.reset(), False, []
            while not done:
                probs = model(torch.tensor([obs], device=dev))
                dist = torch.distributions.Categorical(probs)
                action = dist.sample()
                log_probs.append(dist.log_prob(action))
                obs, reward, done = env.step(action.item())
                rewards.append(reward)
            g, discounted = 0.0, []
            for r in reversed(rewards):
                g = r + gamma * g
                discounted.insert(0, g)
            returns += discounted
            lengths.append(len(rewards))
        running = 0.95 * running + 0.05 * sum(lengths) / len(lengths)
        ret = torch.tensor(returns, device=dev)
        ret = (ret - ret.mean()) / (ret.std() + 1e-8) if len(returns) > 1 else ret
        loss = -(torch.cat(log_probs) * ret).sum() / episodes
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.log(loss, steps=sum(lengths), running=running)

    run.finish(model=model)


if __name__ == "__main__":
    main()
