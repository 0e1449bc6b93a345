"""What a detection method is to the trainer, `score`, `report` and `lrerr-tools methods`.

A method is one subclass of `Method` in its own module of this package, registered with
`@register`. It declares what it reads and needs (shard `fields`, `parents` runs, typed
`options`, optimizer defaults) and supplies the pieces of a training step:

    context = method.context(parents, seed, device)   # frozen helpers kept out of the state dict
    method.check_data(dataset, context)        # refuse shards it cannot read, before any work
    net = method.network()                     # architecture, random init (the trainer seeds first)
    method.check_start(pretrained, weights)    # refuse a meaningless start, before any work
    method.init(net, pretrained, weights)      # pretrained weights, fresh runs only
    method.init_from_parents(net, context)     # weights from a parent run, fresh runs only, after init
    method.lr_scale(param_name)                # per-parameter lr multiplier (optimizer param groups)
    identity = method.frozen_identity(net, context)   # None: no per-face frozen part to cache
    frozen = method.frozen(net, context, batch, device)   # a function of each face alone (cached)
    inputs = method.inputs(net, context, batch, device, dtype, frozen)  # no grad: shard batch → model inputs
    outputs = net(inputs)                      # {"logit": (B,), ...auxiliary outputs}
    terms = method.losses(outputs, inputs, labels, dist)        # {"total": ..., named terms}

and to `predict` and `export`:

    method.face_fields(context)                # the shard fields `predict` must compute per face
    method.graph_frozen(net, context, faces)   # `frozen` inside an exported graph, from faces alone

and to `score --cam` (`gradcam.py`):

    layer = method.cam_layer(net)              # the last spatial map, where Grad-CAM explains the logit

Every network's `forward` takes the inputs dict and returns a dict with one fake `logit` per
face, so DDP wraps any of them alike. A network exposes the normalisation its input images
use as `mean` and `std` attributes (plain tuples, not state), recorded in the run manifest.

With `train-det --label-fraction F`, a method that learns from unlabelled faces says so
(`uses_unlabelled`): it trains on every train face, each batch carrying a bool `labelled`
per face; every other method trains on the labelled videos' faces alone. A method whose
context only serves training (SCL-KD's teacher) says `scores_alone`: `score` then builds no
context and needs none of its parent runs.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from lrerr_tools.errors import LrerrError
from lrerr_tools.memory_format import channels_last

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Option:
    """A typed method option: `--name-with-dashes VALUE` on the CLI (`--name/--no-name` for a
    bool), `name` in the Python API and in the run config. `check` returns an error text for
    a bad value, or None."""

    name: str
    type: type  # bool, int, float, str, or list (of str; comma-separated on the CLI)
    default: Any
    help: str
    choices: tuple = ()
    check: Callable[[Any], str | None] | None = None
    # What a run recorded before the option existed was made with, where that is not the
    # default: such a run scores as it trained (None: the default).
    before: Any = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def convert(self, value: Any) -> Any:
        """`value` (a CLI string or a Python value) as this option's type, checked."""
        try:
            if self.type is bool:
                if isinstance(value, str):
                    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError
                    value = value.lower() in ("true", "1", "yes")
                elif not isinstance(value, bool):
                    raise ValueError
            elif self.type is list:
                parts = value.split(",") if isinstance(value, str) else list(value)
                value = [str(v).strip() for v in parts if str(v).strip()]
            elif self.type in (int, float):
                if isinstance(value, bool):
                    raise ValueError
                if self.type is int and isinstance(value, float) and not value.is_integer():
                    raise ValueError
                value = self.type(value)
            else:
                value = str(value)
        except (TypeError, ValueError):
            raise LrerrError(f"{self.flag}: {value!r} is not a {self.type.__name__}") from None
        if self.choices and value not in self.choices:
            allowed = ", ".join(map(str, self.choices))
            raise LrerrError(f"{self.flag} must be one of {allowed} (got {value!r})")
        problem = self.check(value) if self.check else None
        if problem:
            raise LrerrError(f"{self.flag}: {problem} (got {value!r})")
        return value


def check_fraction(value: float) -> str | None:
    """The check of an option that is a share of a whole, in (0, 1]: a network's channel
    multiplier (`width`), a share of the lr."""
    return None if 0 < value <= 1 else "must be in (0, 1]"


def check_weight(weight: float) -> str | None:
    """A loss weight's (or flooding level's) check."""
    return None if weight >= 0 else "must be 0 or more"


@dataclass(frozen=True)
class Parent:
    """An earlier run the method needs, given as `--name RUN_DIR`: a directory of `stage`."""

    name: str
    stage: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class OptimizerDefaults:
    """A method's training recipe; each field can be overridden by the train-det option of
    the same name. `step_size` counts optimizer steps (iterations), as torch's StepLR does
    when stepped every iteration."""

    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    schedule: str = "constant"
    step_size: int = 0
    gamma: float = 0.5


@dataclass
class Method:
    """One detection method. Class attributes declare it; an instance holds resolved options."""

    name: ClassVar[str]
    title: ClassVar[str]
    summary: ClassVar[str]
    fields: ClassVar[tuple[str, ...]] = ()  # optional shard keys it reads (ShardDataset fields)
    parents: ClassVar[tuple[Parent, ...]] = ()
    options: ClassVar[tuple[Option, ...]] = ()
    recipe: ClassVar[OptimizerDefaults] = OptimizerDefaults()
    loss_terms: ClassVar[tuple[str, ...]] = ("bce",)  # named terms of `losses`, one log.csv column each
    baseline: ClassVar[str | None] = None  # the method its ablation (Table V) compares against
    figure_title: ClassVar[str | None] = None  # what `figure` shows; None: no figure
    uses_unlabelled: ClassVar[bool] = False  # trains on unlabelled faces too (`batch["labelled"]`)
    scores_alone: ClassVar[bool] = False  # `score` passes context None and opens no parent run

    settings: dict = field(default_factory=dict)

    @classmethod
    def resolve(cls, given: dict | None) -> Method:
        """An instance with every option set: `given` values checked, the rest defaulted. An
        option of another method is refused by name."""
        given = dict(given or {})
        known = {o.name: o for o in cls.options}
        unknown = [name for name in given if name not in known]
        if unknown:
            raise LrerrError(cls.not_an_option("--" + unknown[0].replace("_", "-")))
        return cls({name: option.convert(given[name]) if name in given else option.default
                    for name, option in known.items()})

    @classmethod
    def resolve_recorded(cls, recorded: dict) -> Method:
        """`resolve` of the options a run recorded: one it lacks takes its `before` value."""
        older = {o.name: o.before for o in cls.options if o.name not in recorded and o.before is not None}
        return cls.resolve({**recorded, **older})

    @classmethod
    def not_an_option(cls, flag: str) -> str:
        """The one-line refusal of `flag`, naming the method that does take it, if any."""
        from lrerr_tools.methods import all_methods

        owners = [m.name for m in all_methods().values()
                  if flag in {o.flag for o in m.options} | {p.flag for p in m.parents}]
        takes = [o.flag for o in cls.options] + [p.flag for p in cls.parents]
        where = (f"it belongs to --method {', '.join(owners)}" if owners else
                 "unknown option" + _hint(flag, takes))
        return (f"{flag} is not an option of --method {cls.name} ({where}); {cls.name} takes "
                f"{', '.join(takes) or 'no method options'} — see `lrerr-tools methods {cls.name}`")

    # --- what a subclass provides -------------------------------------------------------------

    def build(self):
        """The network, randomly initialised (the trainer has seeded torch)."""
        raise NotImplementedError

    def network(self):
        """`build`'s network in the layout every stage runs it in (`memory_format.py`)."""
        return channels_last(self.build())

    def check_start(self, pretrained: bool, weights: str | None) -> None:
        """Refuse, in one line and before any work, a starting point that would make the run
        meaningless (e.g. random weights where the method needs trained ones)."""

    def caveats(self, pretrained: bool, weights: str | None) -> list[str]:
        """What a reader of this run's scores must know about how it started, in a few words
        each (the run manifest and `report` show them)."""
        return [] if pretrained or weights else ["from random weights"]

    def init(self, net, pretrained: bool, weights: str | None) -> None:
        """Load pretrained weights into a fresh `net`; a method with none ignores this."""

    def init_from_parents(self, net, context) -> None:
        """Load weights a parent run trained (in `context`) into a fresh `net`, after `init`;
        a method with none ignores this."""

    def lr_scale(self, param_name: str) -> float:
        """The multiplier of the run's lr for the parameter `param_name` of the network (e.g. a
        pretrained encoder fine-tuned slower than a new head)."""
        return 1.0

    def context(self, parents: dict, seed: int, device) -> Any:
        """Frozen helpers built from the parent runs (`{name: StageDir}`), kept out of the
        state dict; None when the method has none."""
        return None

    def face_fields(self, context) -> tuple[str, ...]:
        """The `fields` whose values change this method's output with this `context`: what
        `predict` computes for each face it meets outside the shards (it fills the others
        with zeros, which the method then ignores). Default: all of them."""
        return self.fields

    def check_data(self, dataset, context) -> None:
        """Refuse, in one line, shards this method cannot read (e.g. another face size)."""

    def frozen_identity(self, net, context) -> dict | None:
        """What `frozen` depends on besides the face (hashes of the frozen models, seeds), which
        names its cache (`detector/frozen_cache.py`); None: the method has no frozen part."""
        return None

    def frozen(self, net, context, batch: dict, device) -> list:
        """The part of the inputs that is a function of each face alone, given
        `frozen_identity`: (B, ...) tensors, computed at full precision (EVAL_PRECISION) in
        training, validation and `score` alike, so a face's cached values serve all three.
        Only called when `frozen_identity` is not None."""
        raise NotImplementedError

    def inputs(self, net, context, batch: dict, device, dtype, frozen: list | None = None) -> dict:
        """A shard batch (uint8 faces) as the network's inputs, without gradients. `frozen`:
        the batch's `frozen` values as float16 (read from the cache, or just computed and
        rounded); None: the method computes them itself."""
        raise NotImplementedError

    def graph_frozen(self, net, context, faces) -> list | None:
        """`frozen` as an exported graph computes it from uint8 `faces` alone, with tensor
        operations only (`lrerr-tools export`); None: the method has no frozen part."""
        return None

    def losses(self, outputs: dict, inputs: dict, labels, dist) -> dict:
        """{"total": scalar to minimise, **{term: scalar for term in loss_terms}}. Each term is
        this rank's share: its mean over ranks is the global batch's value (`Distributed`)."""
        raise NotImplementedError

    def cam_layer(self, net) -> nn.Module:
        """The module of `net` whose output is the method's last spatial map, (B, C, h, w): where
        Grad-CAM weighs the channels by the fake logit's gradient (`score --cam`). Every method
        names one."""
        raise NotImplementedError

    def figure(self, net, context, batch: dict, probs: Sequence[float], device):
        """An RGB uint8 image of what the method saw on the faces of a shard `batch` (a few
        reals and fakes, with their `probs`); only called when `figure_title` is set."""
        raise NotImplementedError

    def example_context(self, device):
        """A stand-in for `context` built from randomly initialised parent models, so that
        benchmarks and `lrerr-tools methods` can time and count a method without its parent
        runs; None when the method has no context."""
        return None


def parse_cli_args(method: type[Method], args: Sequence[str]) -> tuple[dict, dict]:
    """The method's options and parents from the train-det arguments typer did not know:
    `--name VALUE`, `--name=VALUE`, and `--name`/`--no-name` for a bool."""
    options = {o.flag: o for o in method.options}
    parents = {p.flag: p for p in method.parents}
    given, runs = {}, {}
    args = list(args)
    while args:
        token = args.pop(0)
        if not token.startswith("--"):
            raise LrerrError(f"unexpected argument {token!r}: give SHARD_DIR once, and the method's "
                             "options as --name VALUE")
        flag, _, value = token.partition("=")
        negated = flag.startswith("--no-") and flag.replace("--no-", "--", 1) in options
        if negated:
            flag = flag.replace("--no-", "--", 1)
        option, parent = options.get(flag), parents.get(flag)
        if option is None and parent is None:
            raise LrerrError(method.not_an_option(flag))
        if option is not None and option.type is bool and not value:
            value = "false" if negated else "true"
        elif not value:
            if not args or args[0].startswith("--"):
                raise LrerrError(f"{flag} needs a value")
            value = args.pop(0)
        if option is not None:
            given[option.name] = value
        else:
            runs[parent.name] = value
    return given, runs


def _hint(flag: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(flag, candidates, n=1)
    return f", did you mean {close[0]}?" if close else ""
