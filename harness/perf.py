"""Performance benchmarks (targets live here, never in unit tests).

    python harness/perf.py --quick          # ≤ 2 minutes on a 2-core CPU
    python harness/perf.py                  # the full curves (M up to 3 × 16384)

Prints, in one run on one machine:
  1. per-tower costs and the forward-count bound for UniCLIP's step (V image passes + 1 text pass against CLIP's 1 + 1);
  2. the optimiser-step time of ``--loss clip`` and ``--loss uniclip_mpnce`` on the same tiny towers and batch;
  3. MP-NCE forward+backward time and peak extra memory against M = (V+1)·B, chunked and unchunked.
Peak memory is measured in a fresh subprocess per point: a thread samples the resident set (/proc/self/statm) every
0.2 ms while glibc returns large frees to the OS at once (MALLOC_MMAP_THRESHOLD_), so the peak above the inputs is the
loss's working memory; the bytes autograd keeps for backward are counted exactly with saved-tensor hooks.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _median_time(fn: Callable[[], None], iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _batch(model_name: str, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    import open_clip
    size = open_clip.get_model_config(model_name)["vision_cfg"]["image_size"]
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    texts = open_clip.get_tokenizer(model_name)([f"an emoji of thing number {i}" for i in range(batch)])
    return images, texts


def tower_costs(model_name: str, batch: int, iters: int) -> dict[str, float]:
    """Forward+backward seconds of the image tower on B images and of the text tower on B texts."""
    import open_clip
    model = open_clip.create_model(model_name)
    model.train()
    images, texts = _batch(model_name, batch)

    def image_pass() -> None:
        model.visual(images).sum().backward()

    def text_pass() -> None:
        model.encode_text(texts).sum().backward()

    return {"image": _median_time(image_pass, iters), "text": _median_time(text_pass, iters)}


def step_time(loss_name: str, model_name: str, batch: int, iters: int, **loss_kw: object) -> float:
    """Median seconds of one training step (forward, loss, backward, AdamW step), as open_clip_train runs it."""
    import open_clip
    import uniclip_plugin  # noqa: F401
    from uniclip_plugin import registry
    torch.manual_seed(0)
    model = open_clip.create_model(model_name, output_dict=True)
    model.train()
    args = argparse.Namespace(distill=False, model=model_name, siglip=False, local_loss=False, gather_with_grad=False,
                              rank=0, world_size=1, horovod=False, loss_dist_impl=None, **loss_kw)
    loss = registry.get_loss(loss_name).build(args)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images, texts = _batch(model_name, batch)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(images, texts)
        losses = loss(**out, output_dict=True)
        sum(v for k, v in losses.items() if k.endswith("_loss")).backward()
        opt.step()

    return _median_time(step, iters)


def loss_point(batch: int, views: int, dim: int, chunk: int, iters: int) -> dict[str, float]:
    """MP-NCE fwd+bwd time, autograd-saved bytes and peak extra RSS for one (B, chunk) point (run in a subprocess)."""
    from uniclip_plugin.losses.mpnce import universal_contrastive_loss
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(batch, views, dim, generator=g), dim=-1).requires_grad_()
    txt = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g), dim=-1).requires_grad_()
    scales = torch.full((3,), 14.0, requires_grad=True)
    offsets = torch.zeros(3, requires_grad=True)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = universal_contrastive_loss(img, txt, scales, offsets, chunk_size=chunk)
    del out
    with _RssPeak() as peak:
        universal_contrastive_loss(img, txt, scales, offsets, chunk_size=chunk)["contrastive_loss"].backward()

    def run() -> None:
        universal_contrastive_loss(img, txt, scales, offsets, chunk_size=chunk)["contrastive_loss"].backward()

    seconds = _median_time(run, iters, warmup=0)
    return {"seconds": seconds, "saved_bytes": sum(saved.values()), "peak_extra_bytes": peak.extra}


class _RssPeak:
    """Context manager: peak resident-set growth over the block, sampled from /proc/self/statm."""

    def __init__(self, interval: float = 2e-4):
        self.interval, self.extra, self._stop = interval, 0, threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.extra = max(self.extra, self._rss() - self.base)
            time.sleep(self.interval)

    def __enter__(self) -> "_RssPeak":
        self.base = self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.extra = max(self.extra, self._rss() - self.base)


def _loss_point_subprocess(batch: int, views: int, dim: int, chunk: int, iters: int) -> dict[str, float]:
    code = (f"import json, harness.perf as p; print(json.dumps(p.loss_point({batch}, {views}, {dim}, {chunk}, "
            f"{iters})))")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # large frees go back to the OS: RSS tracks live memory
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parents[1]), env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, ≤ 2 minutes on 2 cores")
    parser.add_argument("--model", default="Tiny-64", help="tiny config suffix: CLIP-<x> vs UniCLIP-<x>")
    parser.add_argument("--batch", type=int, default=None, help="training batch (default 256; --quick 64)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    batch = args.batch or (64 if args.quick else 256)
    iters = 3 if args.quick else 5
    results: dict[str, object] = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                                  "torch": torch.__version__, "threads": torch.get_num_threads(), "batch": batch}
    print(f"# perf.py on {results['machine']}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    clip_name, uni_name = f"CLIP-{args.model}", f"UniCLIP-{args.model}"
    import uniclip_plugin  # noqa: F401
    costs = tower_costs(clip_name, batch, iters)
    views = 2
    bound = (views * costs["image"] + costs["text"]) / (costs["image"] + costs["text"])
    t_clip = step_time("clip", clip_name, batch, iters)
    t_uni = step_time("uniclip_mpnce", uni_name, batch, iters)
    results["step"] = {"image_tower_s": costs["image"], "text_tower_s": costs["text"], "bound": bound,
                       "clip_step_s": t_clip, "uniclip_step_s": t_uni}
    print(f"\n## Step time, batch {batch}, {args.model} towers (median of {iters})")
    print(f"| loss | step (s) | samples/s |\n|---|---|---|")
    print(f"| clip | {t_clip:.3f} | {batch / t_clip:.0f} |")
    print(f"| uniclip_mpnce (V={views}) | {t_uni:.3f} | {batch / t_uni:.0f} |")

    print("\n## MP-NCE forward+backward against M = (V+1)·B (V=2, D=128), fresh process per point")
    print("| B | M | chunk | time (s) | autograd-saved | peak extra RSS |\n|---|---|---|---|---|---|")
    sizes = [256, 1024] if args.quick else [256, 1024, 4096, 16384]
    loss_rows = []
    for b in sizes:
        for chunk in (0, 256):
            if chunk == 0 and b > 4096:
                continue  # unchunked M × M logits at M = 49152 need > 9 GiB per matrix
            r = _loss_point_subprocess(b, views, 128, chunk, 1 if b > 1024 else iters)
            loss_rows.append({"B": b, "M": 3 * b, "chunk": chunk, **r})
            print(f"| {b} | {3 * b} | {chunk or 'none'} | {r['seconds']:.3f} | {_fmt_bytes(r['saved_bytes'])} | "
                  f"{_fmt_bytes(r['peak_extra_bytes'])} |")
    results["loss"] = loss_rows
    loss_at_batch = _loss_point_subprocess(batch, views, 128, 0, iters)["seconds"]
    results["loss_share_of_step"] = loss_at_batch / t_uni
    print(f"\nMP-NCE fwd+bwd at the training batch B={batch}: {loss_at_batch:.4f} s = "
          f"{100 * loss_at_batch / t_uni:.1f}% of a UniCLIP step")
    if args.json:
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        os.replace(tmp, args.json)
    ratio = t_uni / t_clip
    print(f"\nstep-cost ratio uniclip/clip = {ratio:.3f}; bound = {bound:.3f}; ratio / bound = {ratio / bound:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
