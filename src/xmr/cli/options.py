"""The options every ``xmr`` command shares, spelt one way (``tests/test_cli_consistency.py``
walks the real parser and holds every command to these rules):

* ``--out`` is always an option, never a positional (``data convert``, ``data synth`` and
  ``model tiny`` still take a positional OUT for a release, with a deprecation warning);
* ``--k`` (short ``-k``) is the cut-off / number of results;
* ``--device`` defaults to ``auto``: cuda when available, else cpu, on every command;
* ``--json`` is on every command that prints a result;
* ``--format`` is the format of the data set (``--data`` or the input PATH); the format of the
  file another option names is ``--<that option>-format`` (``--out-format``,
  ``--predictions-format``);
* ``--workers`` is the number of image decoding processes (``serve`` has ``--processes``);
* every option has help, and the help ends with ``(default: X)`` when there is a default
  (:class:`HelpFormatter` appends it; a help text that explains a computed default writes
  ``(default: ...)`` itself).

An old spelling still works and prints ``xmr: warning: --old is deprecated; use --new`` once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

DEFAULT_WORKERS = max(1, min(8, (os.cpu_count() or 2) - 1))
PRECISIONS = ("fp32", "fp16", "bf16")
DEVICE_HELP = "where the model runs: auto (cuda when available, else cpu), cpu, cuda, cuda:1, ..."

_HOOKS = "_xmr_after_parse"
_WARNED = "_xmr_warned"


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help when it has a default worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "(default:" in text
            or "%(default)" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or isinstance(action, argparse._HelpAction | argparse._VersionAction)
            or (not action.option_strings and action.nargs not in ("?", "*"))
        ):
            return text
        return f"{text} (default: %(default)s)"


class RawDescriptionHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """:class:`HelpFormatter` that keeps the description and epilog as written."""


class ArgumentParser(argparse.ArgumentParser):
    """The parser of every ``xmr`` command: :class:`HelpFormatter` by default, and the checks
    registered with :func:`after_parse` run once the command's arguments are parsed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        formatter = kwargs.get("formatter_class", HelpFormatter)
        if formatter is argparse.RawDescriptionHelpFormatter:
            formatter = RawDescriptionHelpFormatter
        elif formatter is argparse.HelpFormatter:
            formatter = HelpFormatter
        kwargs["formatter_class"] = formatter
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        namespace, extras = super().parse_known_args(args, namespace)
        # A subcommand's parser runs its own hooks; removing them keeps the parent from running
        # them again when it copies the subcommand's namespace into its own.
        hooks = getattr(namespace, _HOOKS, None)
        if hooks is not None:
            delattr(namespace, _HOOKS)
            for hook in hooks:
                extras = hook(self, namespace, extras)
        if hasattr(namespace, _WARNED):
            delattr(namespace, _WARNED)
        return namespace, extras


def after_parse(
    parser: argparse.ArgumentParser, hook: Callable[[Any, Any, list[str]], list[str]]
) -> None:
    """Run ``hook(parser, namespace, extras) -> extras`` after ``parser`` has parsed its
    arguments (to resolve an old spelling, or to refuse a combination argparse cannot express);
    ``extras`` are the arguments it did not recognise, and what the hook returns of them is
    still an error."""
    hooks = list(parser.get_default(_HOOKS) or [])
    parser.set_defaults(**{_HOOKS: [*hooks, hook]})


def warn_deprecated(namespace: Any, old: str, new: str) -> None:
    """Print ``xmr: warning: OLD is deprecated; use NEW`` once per command line."""
    warned = getattr(namespace, _WARNED, None)
    if warned is None:
        warned = set()
        setattr(namespace, _WARNED, warned)
    if old not in warned:
        warned.add(old)
        print(f"xmr: warning: {old} is deprecated; use {new}", file=sys.stderr)


class _DeprecatedAlias(argparse.Action):
    """An old option name: stores into the new option's ``dest`` and warns."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs: Any):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        warn_deprecated(namespace, option_string or self.option_strings[0], self.new)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_deprecated_alias(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    old: str,
    new: str,
    *,
    dest: str,
    **kwargs: Any,
) -> None:
    """Accept ``old`` (hidden from help) as a spelling of the option ``new`` (stored in ``dest``);
    ``kwargs`` are the new option's ``type``/``choices``/``nargs``/``const``."""
    parser.add_argument(
        old, dest=dest, action=_DeprecatedAlias, new=new, default=argparse.SUPPRESS,
        help=argparse.SUPPRESS, **kwargs,
    )  # fmt: skip


# --- value types --------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the option in its error)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None


# --- the shared options ---------------------------------------------------------------------------


def add_out(
    parser: argparse.ArgumentParser,
    help: str,
    *,
    metavar: str = "DIR",
    required: bool = True,
    default: str | None = None,
    legacy_positional: bool = False,
) -> None:
    """``--out PATH``. ``legacy_positional`` also accepts the old positional ``OUT`` with a
    deprecation warning (``required`` is then checked after parsing)."""
    parser.add_argument(
        "--out",
        metavar=metavar,
        required=required and not legacy_positional,
        default=default,
        help=help,
    )
    if not legacy_positional:
        return

    def resolve(p: argparse.ArgumentParser, ns: Any, extras: list[str]) -> list[str]:
        # The old OUT is left over as an unrecognised argument (a hidden optional positional
        # would swallow nothing when OUT follows an option, argparse matches it too early).
        loose = [n for n, arg in enumerate(extras) if not arg.startswith("-")]
        if len(loose) == 1:
            legacy = extras[loose[0]]
            if ns.out is not None:
                p.error(f"OUT given twice: as a positional argument ({legacy}) and as --out")
            warn_deprecated(ns, "a positional OUT", "--out OUT")
            ns.out = legacy
            extras = extras[: loose[0]] + extras[loose[0] + 1 :]
        if required and ns.out is None and len(loose) < 2:  # several: argparse says which
            p.error("the following arguments are required: --out")
        return extras

    after_parse(parser, resolve)


def add_k(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, help: str, *, default: int = 10
) -> None:
    """``--k K`` / ``-k K``: a cut-off or a number of results, at least 1."""
    parser.add_argument("-k", "--k", type=positive_int, default=default, metavar="K", help=help)


def add_json(parser: argparse.ArgumentParser, help: str = "print the result as JSON") -> None:
    parser.add_argument("--json", action="store_true", help=help)


def add_device(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, help: str = DEVICE_HELP
) -> None:
    """``--device``, default ``auto`` (cuda when available, else cpu) on every command."""
    parser.add_argument("--device", default="auto", metavar="D", help=help)


def add_precision(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="autocast precision of the model (outputs are float32)",
    )


def add_batch_size(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    default: int | None = 64,
    help: str = "inputs per forward pass",
) -> None:
    parser.add_argument("--batch-size", type=positive_int, default=default, metavar="N", help=help)


def add_workers(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    default: int | None = DEFAULT_WORKERS,
    help: str = "image decoding processes (0: decode in this process)",
) -> None:
    """``--workers N``: image decoding processes, on every command that decodes images."""
    if default == DEFAULT_WORKERS and "(default:" not in help:
        help += f" (default: {DEFAULT_WORKERS}, the cores but one, at most 8)"
    parser.add_argument("--workers", type=non_negative_int, default=default, metavar="N", help=help)


DRAFT_HELP = (
    "decode JPEGs at reduced scale (1/2..1/8, when at least twice the model's input): faster on "
    "big photos, but not the reference processor's pixels, so scores differ a little; recorded "
    "in manifests, and never mixed with fully decoded embeddings (default: off)"
)


def add_draft(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--draft``: the opt-in to JPEG draft decoding, on every command that decodes images."""
    parser.add_argument("--draft", action="store_true", help=DRAFT_HELP)


IMAGE_BACKEND_HELP = (
    "whose pixels the image preprocessing reproduces bit for bit: pil (transformers' PIL "
    "backend; the same on every machine; the default) or torchvision (transformers' torchvision "
    "backend, which AutoImageProcessor picks wherever torchvision is installed: a torch uint8 "
    "resize, ~3x faster per core, up to 2 levels of 255 from pil; needs no torchvision); "
    "recorded in manifests, and searches follow the index's"
)


def add_image_backend(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--image-backend pil|torchvision``, on every command that preprocesses images for a
    model it loads."""
    from xmr.models.preprocess import BACKENDS

    parser.add_argument("--image-backend", default=None, choices=BACKENDS, help=IMAGE_BACKEND_HELP)


QUERY_DRAFT_HELP = (
    "decode query (and uploaded) images with JPEG draft decoding, or not: by default as the "
    "index's images were (its manifest's preprocessing.jpeg_draft); the setting that "
    "contradicts the index is an error, since draft and full decoding are never mixed "
    "(default: the index's)"
)


def add_query_draft(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--draft`` / ``--no-draft`` on commands that search an index: unset follows the index."""
    parser.add_argument(
        "--draft", action=argparse.BooleanOptionalAction, default=None, help=QUERY_DRAFT_HELP
    )


RUNTIME_HELP = (
    "how the text tower runs: eager (PyTorch) or onnx (ONNX Runtime on the CPU, fp32: 2.2x "
    "faster for one text query here, 3.0x at batch 32; the first use of a model exports it, "
    "seconds to minutes, cached by its weights' fingerprint under $XMR_CACHE_DIR/onnx or "
    "~/.cache/xmr/onnx; hf: models; needs xmr[onnx]). Images always run eager"
)


def add_runtime(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--runtime eager|onnx``: the text tower's runtime (:func:`xmr.models.create_encoder`)."""
    parser.add_argument("--runtime", default="eager", choices=("eager", "onnx"), help=RUNTIME_HELP)


def add_data_format(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    help: str = "data set format (default: detected from the files)",
) -> None:
    """``--format F``: the format of the data set that is read."""
    parser.add_argument("--format", default=None, metavar="F", help=help)


def add_split(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    help: str = "split to read (default: the only one)",
) -> None:
    parser.add_argument("--split", default=None, metavar="S", help=help)


def add_out_format(
    parser: argparse.ArgumentParser,
    help: str,
    *,
    choices: Sequence[str],
    required: bool = False,
    old: str | None = None,
) -> None:
    """``--out-format F``: the format of the file or directory ``--out`` names; ``old`` is its
    former name, still accepted with a warning (``required`` is then checked after parsing)."""
    parser.add_argument(
        "--out-format",
        dest="out_format",
        default=None,
        choices=list(choices),
        required=required and old is None,
        help=help,
    )
    if old is None:
        return
    add_deprecated_alias(parser, old, "--out-format", dest="out_format", choices=list(choices))
    if required:

        def check(p: argparse.ArgumentParser, ns: Any, extras: list[str]) -> list[str]:
            if getattr(ns, "out_format", None) is None:
                p.error("the following arguments are required: --out-format")
            return extras

        after_parse(parser, check)
