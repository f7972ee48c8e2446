"""What every command line of monet-tune shares: one line per error, exit code 2, helpful --help.

* :class:`ArgumentParser`: argparse with the house error (``error: ...`` on one line, exit code
  2, no usage dump), "did you mean --xyz" for an unknown flag, and ``--help`` that shows each
  flag's meaning, default and choices.
* :func:`add_config_flags` / :func:`config_from_args`: one flag per :class:`TrainConfig` field,
  its help text, type and choices taken from the field's ``metadata`` in ``monet/config.py`` (the
  one place they are written), and the config built from ``--config FILE`` + flags.
* :func:`check_output_dir`: an output folder that can be created (or reused) before any work;
  :func:`check_writable_dir` (a folder that may hold other things, e.g. ``--storage-path``) and
  :func:`check_output_file` (e.g. ``--export``) likewise.
* :func:`load_yaml_mapping`: a YAML file that must hold a mapping, any malformed file one line.
* :func:`run_main`: run a ``main`` and turn a :class:`MonetError` into the one line + exit 2.

Nothing here imports torch, ray or optuna (``--help`` and flag errors stay instant).

Example:
    >>> p = ArgumentParser(prog="demo")
    >>> _ = p.add_argument("--epochs", type=float, default=3, help="training length")
    >>> p.parse_args(["--epochs", "2"]).epochs
    2.0
    >>> p.suggest("--epoch")
    '--epochs'
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Optional

from monet.errors import ConfigError, MonetError

EXIT_BAD_INPUT = 2


from monet.io import load_yaml_mapping, one_line  # noqa: E402,F401  (re-exported)


def fail(msg) -> "NoReturn":  # noqa: F821
    """Print ``error: msg`` (one line) to stderr and exit with code 2."""
    print(f"error: {one_line(msg)}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


# ---------------------------------------------------------------------------------- parser
class HelpFormatter(argparse.HelpFormatter):
    """Help lines with the default and the choices of every flag that has them."""

    def __init__(self, prog, **kw):
        kw.setdefault("max_help_position", 32)
        super().__init__(prog, **kw)

    def _get_help_string(self, action):
        text = action.help or ""
        if action.help is argparse.SUPPRESS:
            return text
        extra = []
        if action.choices is not None and "choices:" not in text:
            extra.append("choices: " + ", ".join(map(str, action.choices)))
        if ("%(default)" not in text and "default:" not in text and action.option_strings
                and not any(action.default is v for v in (None, argparse.SUPPRESS, False))
                and action.nargs != 0):
            extra.append("default: %(default)s")
        return (text + (" (" + "; ".join(extra) + ")" if extra else "")).strip()

    def _metavar_formatter(self, action, default_metavar):
        if action.metavar is None and action.choices is not None:   # choices go into the help
            name = (default_metavar or action.dest or "value").upper()
            return lambda n: (name,) * n if isinstance(n, int) else (name,)
        return super()._metavar_formatter(action, default_metavar)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with the house error: ``error: ...`` on one line, exit 2.

    An unknown flag gets "did you mean --xyz" when one is close; a stray value is named. Every
    CLI of monet-tune uses it (``monet.train``, ``search/tune_monet.py``, ``monet.data.*``).
    """

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", HelpFormatter)
        kw.setdefault("allow_abbrev", False)   # --epoch is a typo to point out, not --epochs
        super().__init__(*args, **kw)

    def error(self, message):
        fail(message)

    def flags(self) -> list:
        """Every long option string this parser knows."""
        return sorted(s for s in self._option_string_actions if s.startswith("--"))

    def suggest(self, flag: str) -> Optional[str]:
        """The known flag closest to ``flag`` (difflib), or None."""
        name = flag.split("=", 1)[0]
        flags = self.flags()
        close = difflib.get_close_matches(name, flags, n=1, cutoff=0.6)
        if not close:  # a prefix of a flag or a flag with single dash: --lrdecay, -epochs
            fixed = "--" + name.lstrip("-").replace("_", "-")
            close = difflib.get_close_matches(fixed, flags, n=1, cutoff=0.6)
        return close[0] if close else None

    def unknown_message(self, extras: list) -> str:
        flags = [e for e in extras if e.startswith("-") and len(e) > 1]
        if flags:
            f = flags[0]
            guess = self.suggest(f)
            more = f" (and {len(flags) - 1} more)" if len(flags) > 1 else ""
            hint = f"; did you mean {guess}?" if guess else f"; see {self.prog} --help"
            return f"unknown flag {f.split('=', 1)[0]}{more}{hint}"
        return (f"unexpected argument {extras[0]!r} (every value follows its flag, e.g. "
                f"--epochs 3); see {self.prog} --help")

    def _unknown_flags_first(self, args) -> list:
        """Flags (``--x``) that no option knows, skipping values of options that take one, so
        an unknown flag is reported before, e.g., a missing required one it was meant to be."""
        unknown, prev, prev_token = [], None, ""
        for t in args:
            if t.startswith("--") and t != "--":
                name = t.split("=", 1)[0]
                takes_value = prev is not None and prev.nargs is None and \
                    prev.option_strings and "=" not in prev_token
                if name not in self._option_string_actions and not takes_value:
                    unknown.append(t)
                prev = self._option_string_actions.get(name)
                prev_token = t
            else:
                prev = None
        return unknown

    def parse_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        unknown = self._unknown_flags_first(args)
        if unknown:
            self.error(self.unknown_message(unknown))
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self.unknown_message(extras))
        return ns


# ---------------------------------------------------------------------------------- flag types
def parse_bool(s: str) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0`` (argparse type)."""
    t = str(s).strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def parse_int(s: str) -> int:
    try:
        return int(str(s).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None


def parse_float(s: str) -> float:
    try:
        return float(str(s).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None


def _comma_list(s: str, kind, expected: str) -> list:
    try:
        return [kind(t) for t in str(s).split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {expected}, got {s!r}") from None


def parse_order(s: str) -> list:
    """``2,0,1`` -> ``[2, 0, 1]`` (a task order, 0-based)."""
    return _comma_list(s, int, "0-based task indices (e.g. 2,0,1)")


def parse_epochs(s: str) -> list:
    """``2,10`` -> ``[2.0, 10.0]`` (epochs)."""
    return _comma_list(s, float, "epochs (e.g. 2,10)")


def parse_temperatures(s: str) -> dict:
    """``au=1,expr=5`` -> ``{"au": 1.0, "expr": 5.0}``."""
    out = {}
    for kv in str(s).split(","):
        k, eq, v = kv.partition("=")
        try:
            out[k.strip()] = float(v)
        except ValueError:
            eq = ""
        if not eq or not k.strip():
            raise argparse.ArgumentTypeError(
                f"expected group=T pairs, comma-separated (e.g. au=1,expr=5), got {s!r}")
    return out


_SPECIAL_TYPES = {"order": (parse_order, "I,J,..."), "eval_at": (parse_epochs, "E,E,..."),
                  "temperatures": (parse_temperatures, "G=T,..."),
                  "group_weights": (parse_temperatures, "G=W,...")}


def add_config_flags(parser: argparse.ArgumentParser, cls=None, skip: Iterable[str] = (),
                     group: Optional[str] = "training config (TrainConfig fields)",
                     only: Optional[Iterable[str]] = None) -> list:
    """Add one ``--field-name`` flag per field of ``cls`` (default :class:`TrainConfig`), or per
    field named in ``only`` (e.g. the data flags of ``search/tune_monet.py``), minus ``skip``.

    Help text, choices and bounds come from each field's ``metadata`` in ``monet/config.py``;
    the help shows the field's default. Every flag's argparse default is None, so a flag given on
    the command line overrides ``--config FILE`` and one not given leaves it alone (see
    :func:`config_from_args`). Returns the dests added.
    """
    if cls is None:
        from monet.config import TrainConfig as cls
    from monet.config import _base_type, describe_range

    target = parser.add_argument_group(group) if group else parser
    added = []
    info = cls.field_info()
    if only is not None:
        unknown = [n for n in only if n not in info]
        if unknown:
            raise ValueError(f"add_config_flags: no TrainConfig field(s) {unknown}")
    for name, (tp, default, md) in info.items():
        if name in skip or (only is not None and name not in only):
            continue
        base, optional = _base_type(tp)
        kw = {"dest": name, "default": None}
        if name in _SPECIAL_TYPES:
            kw["type"], kw["metavar"] = _SPECIAL_TYPES[name]
        elif base is bool:
            kw["type"], kw["metavar"] = parse_bool, "BOOL"
        elif base is int:
            kw["type"], kw["metavar"] = parse_int, "INT"
        elif base is float:
            kw["type"], kw["metavar"] = parse_float, "X"
        if md.get("choices"):
            kw["choices"] = list(md["choices"])
        text = md.get("help", "")
        rng = describe_range(md)
        if rng and base in (int, float):
            text += f"; {rng}" if rng.startswith(("<", ">")) else f"; in {rng}"
        shown = default if not isinstance(default, dict) or default else "{}"
        extra = [f"choices: {', '.join(map(str, md['choices']))}"] if md.get("choices") else []
        extra.append(f"default: {shown}")
        kw["help"] = f"{text} ({'; '.join(extra)})".replace("%", "%%")
        target.add_argument("--" + name.replace("_", "-"), **kw)
        added.append(name)
    return added


def config_from_args(args, config_file: Optional[str] = None, cls=None, flag: str = "--config"):
    """The config of ``--config FILE`` (optional) with every flag given on the command line
    (non-None attribute of ``args`` named after a field) on top; one ``ConfigError`` line names
    the file or ``flags`` when something is wrong."""
    if cls is None:
        from monet.config import TrainConfig as cls
    base = {}
    if config_file:
        base = load_yaml_mapping(config_file, flag, what="a mapping of TrainConfig field: value")
        cls.from_dict(base, source=str(config_file))
    for name in cls.fields():
        v = getattr(args, name, None)
        if v is not None:
            base[name] = v
    return cls.from_dict(base, source="flags")


# ---------------------------------------------------------------------------------- files
def check_output_dir(path, overwrite: bool = False, flag: str = "--out",
                     marker: Optional[str] = "config.yaml",
                     overwrite_flag: Optional[str] = "--overwrite") -> Path:
    """Check that ``path`` can be used as a new output folder, before any work; creates nothing.

    Refused, each with one ``ConfigError`` line naming ``flag``: ``path`` is a file (or under
    one); its folder or nearest existing parent is not writable (read-only); it exists and is not
    empty without ``overwrite``; it is not empty and not a run folder (no ``marker`` file) even
    with ``overwrite`` (``--overwrite`` replaces run folders, never anything else). The caller
    does the replacing (and should empty the folder first: ``metrics.jsonl`` is appended to).
    ``overwrite_flag=None``: the CLI has no such flag (the message does not suggest one).

    Returns the absolute path.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> check_output_dir(os.path.join(d, "run")).name
        'run'
    """
    if path is None or str(path).strip() == "":
        raise ConfigError(f"{flag}: empty path; expected a folder")
    p = Path(path).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag}: {path} is a file; expected a folder (new or empty)")
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag}: {path} is not writable (read-only folder)")
        entries = sorted(e.name for e in p.iterdir())
        if entries:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            if not overwrite:
                kind = ", a run folder" if marker and (p / marker).is_file() else ""
                fix = (f"add {overwrite_flag} to replace it, or pick another folder"
                       if overwrite_flag else "pick a new or empty folder")
                raise ConfigError(f"{flag}: {path} exists and is not an empty folder "
                                  f"({shown}{kind}); {fix}")
            if marker and not (p / marker).is_file():
                raise ConfigError(f"{flag}: {path} is not empty ({shown}) and is not a run folder "
                                  f"(no {marker}); {overwrite_flag or '--overwrite'} replaces run "
                                  f"folders only")
        return p
    _check_creatable(p.parent, path, flag)
    return p


def _check_creatable(start: Path, path, flag: str, verb: str = "create",
                     itself: Optional[Path] = None) -> None:
    """The nearest existing folder at or above ``start`` must be a writable folder, so that
    ``path`` can be made there (``itself``: ``path`` when it may exist already)."""
    a = start
    while not a.exists():
        if a.parent == a:
            break
        a = a.parent
    if not a.is_dir():
        raise ConfigError(f"{flag}: cannot create {path}: {a} is a file, not a folder")
    if not os.access(a, os.W_OK | os.X_OK):
        what = (f"{path} is not writable" if a == itself
                else f"cannot {verb} {path}: {a} is not writable")
        raise ConfigError(f"{flag}: {what} (read-only folder)")


def check_writable_dir(path, flag: str) -> Path:
    """A folder that exists or can be created, and is writable; it may hold other things (a
    search's ``--storage-path`` holds many experiments). Creates nothing; one ``ConfigError``
    line for a file, a path under a file, or a read-only folder. Returns the absolute path."""
    if path is None or str(path).strip() == "":
        raise ConfigError(f"{flag}: empty path; expected a folder")
    p = Path(path).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag}: {path} is a file; expected a folder")
    _check_creatable(p, path, flag, itself=p)
    return p


def check_output_file(path, flag: str = "--out") -> Path:
    """Check that the file ``path`` can be written (atomically, beside itself); creates nothing.

    Refused with one line: a folder, a path under a file, a read-only folder."""
    if path is None or str(path).strip() == "":
        raise ConfigError(f"{flag}: empty path; expected a file")
    p = Path(path).expanduser().absolute()
    if p.is_dir() or str(path).endswith(os.sep):
        raise ConfigError(f"{flag}: {path} is a folder; expected a file path (e.g. "
                          f"{Path(path) / 'data.csv'})")
    if p.exists() and not p.is_file():
        raise ConfigError(f"{flag}: {path} is not a regular file")
    _check_creatable(p.parent, path, flag, verb="write")
    return p


# ---------------------------------------------------------------------------------- main
def run_main(main: Callable, argv=None) -> int:
    """``main(argv)`` with the house ending: a :class:`MonetError` becomes ``error: ...`` on one
    line and exit code 2 (argparse errors already are); a non-finite loss is one line and exit
    code 1 (the input was fine, the run failed); Ctrl-C is one line and 130."""
    from monet.errors import NonFiniteLossError

    try:
        return main(argv)
    except NonFiniteLossError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    except MonetError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
