"""Forward time of every encoder variant, as a ratio to a named baseline measured in the same run.

Baseline: torchvision ResNet-50 (ImageNet classifier) at 224x224, same batch, same device, timed
alternately with each encoder so that both see the same load. Other processes load the machine; the
ratio is what to compare across runs, and the absolute seconds say how loaded it was.

    python -m affbench.benchmarks.speed.encoders --batch 8 --repeats 3 --device cpu
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torchvision

from affbench.encoders.registry import count_parameters, create_encoder, list_encoders


def _time_once(model: torch.nn.Module, images: torch.Tensor) -> float:
    if images.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    model(images)
    if images.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--encoders", default=",".join(list_encoders()))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)

    baseline = torchvision.models.resnet50(weights=None).to(device).eval()
    base_images = torch.randn(args.batch, 3, 224, 224, device=device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device={device} batch={args.batch} threads={torch.get_num_threads()} load_avg_1min={load:.2f}")
    print("each encoder is timed alternately with the baseline (best of --repeats each, after a warm-up)")
    print(f"{'encoder':22s} {'input':>5s} {'params':>12s} {'seconds':>8s} {'resnet50 s':>10s} {'ratio':>6s}")
    with torch.inference_mode():
        baseline(base_images)
        for name in args.encoders.split(","):
            model = create_encoder(name).to(device).eval()
            side = model.spec.input_size
            images = torch.randn(args.batch, 3, side, side, device=device)
            model(images)
            own, base = float("inf"), float("inf")
            for _ in range(args.repeats):
                base = min(base, _time_once(baseline, base_images))
                own = min(own, _time_once(model, images))
            print(f"{name:22s} {side:5d} {count_parameters(name):12,d} {own:8.3f} {base:10.3f} {own / base:6.2f}")
            del model
    print(f"load_avg_1min at the end: {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "")


if __name__ == "__main__":
    main()
