"""`lrerr-tools methods`: what each registered method is, needs, takes and costs."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lrerr_tools.methods import all_methods, get_method
from lrerr_tools.methods.base import Method


def example_batch(n: int, size: int = 224) -> dict:
    """A shard batch of `n` random faces, half real, with every optional field."""
    return {"image": torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8),
            "key_mask": torch.zeros(n, (size // 16) ** 2, dtype=torch.bool),
            "landmarks": torch.full((n, 68, 2), size / 2), "label": torch.arange(n) % 2,
            "video_id": [f"example/{i:03d}" for i in range(n)],
            "frame_index": torch.zeros(n, dtype=torch.long), "method": ["example"] * n}


def count_cost(method: Method) -> tuple[int, float]:
    """Trainable parameters of the method's network, and multiply-adds (GMAC) of one 224 px
    face's inference, frozen parts included (torch's FLOP counter: convolutions and matrix
    products; a MAC is two FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device("cpu")
    net = method.network().eval()
    params = sum(p.numel() for p in net.parameters() if p.requires_grad)
    # Inference is what `score` runs: a method that scores alone has no context there.
    context = None if method.scores_alone else method.example_context(device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(method.inputs(net, context, example_batch(1), device, None))
    return params, counter.get_total_flops() / 2e9


def _value(value) -> str:
    return ",".join(value) if isinstance(value, list) else str(value)


def _chosen(names: Sequence[str] | None) -> list[type[Method]]:
    return [get_method(n) for n in names] if names else list(all_methods().values())


def method_rows(names: Sequence[str] | None = None) -> list[str]:
    """What the protocol scripts need to know of each method: name, parent stages, baseline."""
    return ["\t".join([cls.name, ",".join(p.stage for p in cls.parents), cls.baseline or ""])
            for cls in _chosen(names)]


def describe_methods(names: Sequence[str] | None = None, cost: bool = True) -> list[str]:
    lines = []
    for cls in _chosen(names):
        method = cls.resolve({})
        recipe = cls.recipe
        schedule = recipe.schedule + (f" (×{recipe.gamma} every {recipe.step_size} steps)"
                                      if recipe.schedule == "step" else "")
        lines += [f"{cls.name}: {cls.title} — {cls.summary}",
                  f"  parents:   {', '.join(f'{p.flag} ({p.stage})' for p in cls.parents) or 'none'}",
                  f"  fields:    image, label{''.join(', ' + f for f in cls.fields)}",
                  f"  losses:    {' + '.join(cls.loss_terms)}",
                  f"  recipe:    {recipe.optimizer}, lr {recipe.lr:g}, weight decay {recipe.weight_decay:g}, "
                  f"{schedule}"]
        lines += [f"  {o.flag} {_value(o.default)}: {o.help}" for o in cls.options]
        if cost:
            torch.manual_seed(0)
            params, gmac = count_cost(method)
            lines.append(f"  cost:      {params / 1e6:.1f} M trainable parameters, "
                         f"{gmac:.2f} GMAC per 224 px face")
        lines.append("")
    return lines[:-1]
