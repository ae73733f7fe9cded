"""PyTorch's CPU training throughput for the models `scripts/bench-train` measures in qvision.

    python scripts/train_throughput_torch.py THREADS STEPS

Prints one JSON line per model: {"model", "batch", "size", "images_per_s"} (SGD step with
momentum, cross-entropy, random inputs, train mode, after two warm-up steps).
"""
import json
import sys
import time

import torch
import torch.nn as nn
import torchvision


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


def small_resnet(width=16):
    """The same network as qvision_train::models::small_resnet."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        Block(width, width, 1), Block(width, 2 * width, 2), Block(2 * width, 4 * width, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 10))


def measure(model, batch, shape, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    model.train()
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t0)


def main():
    threads, steps = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(threads)
    r18 = torchvision.models.resnet18(num_classes=10)
    for name, model, batch, shape in [
        ("resnet18", r18, 16, (3, 224, 224)),
        ("small_resnet", small_resnet(), 64, (1, 28, 28)),
    ]:
        ips = measure(model, batch, shape, steps if name == "resnet18" else steps * 10)
        print(json.dumps({"model": name, "batch": batch, "size": shape[-1], "images_per_s": ips}))


if __name__ == "__main__":
    main()
