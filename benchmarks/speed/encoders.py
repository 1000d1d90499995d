"""Forward time of every encoder variant, as a ratio to a named baseline measured in the same run.

Baseline: torchvision ResNet-50 (ImageNet classifier) at 224x224, same batch, same device. Other
processes load the machine; the ratio is what to compare across runs, and the absolute seconds say
how loaded it was.

    python -m affbench.benchmarks.speed.encoders --batch 8 --repeats 2 --device cpu
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torchvision

from affbench.encoders import count_parameters, create_encoder, list_encoders


def _time_forward(model: torch.nn.Module, images: torch.Tensor, repeats: int) -> float:
    """Best of ``repeats`` timed forwards after one warm-up, in seconds."""
    model.eval()
    best = float("inf")
    with torch.inference_mode():
        model(images)
        for _ in range(repeats):
            if images.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(images)
            if images.is_cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--encoders", default=",".join(list_encoders()))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)

    baseline = torchvision.models.resnet50(weights=None).to(device)
    base_s = _time_forward(baseline, torch.randn(args.batch, 3, 224, 224, device=device), args.repeats)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device={device} batch={args.batch} threads={torch.get_num_threads()} load_avg_1min={load:.2f}")
    print(f"baseline resnet50@224: {base_s:.3f} s per forward")
    print(f"{'encoder':22s} {'input':>5s} {'params':>12s} {'seconds':>8s} {'x resnet50':>10s}")
    for name in args.encoders.split(","):
        model = create_encoder(name).to(device)
        side = model.spec.input_size
        seconds = _time_forward(model, torch.randn(args.batch, 3, side, side, device=device), args.repeats)
        print(f"{name:22s} {side:5d} {count_parameters(name):12,d} {seconds:8.3f} {seconds / base_s:10.2f}")
        del model


if __name__ == "__main__":
    main()
