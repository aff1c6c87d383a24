"""Options of the emulator: command-line flags, `EMULATOR_<NAME>` environment variables, defaults.

Everything is validated into one frozen `Config`; a bad value raises `ConfigError` with one line that
names the option. The control API swaps a whole new validated `Config` (`replace_options`), it never
mutates the running one.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NoReturn

from .limiter import RateModel, RateRule, Rounding
from .models import DEFAULT_MODEL, rules_for
from .script import KINDS

_DEPLOYMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ConfigError(ValueError):
    """An option is malformed; the message is one line naming it."""


@dataclass(frozen=True, slots=True)
class Deployment:
    """One emulated deployment with its own quota and fault rate."""

    name: str
    rpm: int
    fault_rate: float
    admit_fraction: float = 1.0  # of its nominal rate limit allowance it really admits
    model: str = DEFAULT_MODEL  # whose size and parameter rules the deployment applies


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8090
    api_key: str = field(default="local-dev-key", repr=False)
    deployments: tuple[Deployment, ...] = (Deployment("gpt-image-2-1", 10, 0.25),)
    blocked_phrase: str = "forbidden-content"
    time_scale: float = 1.0
    rpm: int = 10
    gateway_timeout_s: float = 60.0
    fault_rate: float = 0.25
    seed: int | None = None
    payload_scale: float = 1.0
    # Azure's way, and so what the product's tests and demo get; `sliding` is the older model.
    rate_model: RateModel = RateModel.PERIODS
    rate_period_s: float = 10.0
    rate_rounding: Rounding = Rounding.CEIL
    rate_admit_fraction: float = 1.0
    model: str = DEFAULT_MODEL
    # Verifies Entra ID bearer tokens (HS256: signature, audience, expiry); None: any passes.
    entra_key: str | None = field(default=None, repr=False)

    def deployment(self, name: str) -> Deployment | None:
        return next((d for d in self.deployments if d.name == name), None)

    def rate_rule(self, deployment: Deployment | None) -> RateRule:
        """The limit of `deployment` (None: an unknown name, only its headers are shown)."""
        rpm, fraction = (
            (deployment.rpm, deployment.admit_fraction)
            if deployment
            else (self.rpm, self.rate_admit_fraction)
        )
        return RateRule(rpm, self.rate_model, self.rate_period_s, self.rate_rounding, fraction)

    def public(self) -> dict[str, Any]:
        """What the control API shows: everything but the key."""
        return {
            "host": self.host,
            "port": self.port,
            "deployments": [asdict(d) for d in self.deployments],
            "blocked_phrase": self.blocked_phrase,
            "time_scale": self.time_scale,
            "rpm": self.rpm,
            "gateway_timeout_s": self.gateway_timeout_s,
            "fault_rate": self.fault_rate,
            "seed": self.seed,
            "payload_scale": self.payload_scale,
            "rate_model": self.rate_model.value,
            "rate_period_s": self.rate_period_s,
            "rate_rounding": self.rate_rounding.value,
            "rate_admit_fraction": self.rate_admit_fraction,
            "model": self.model,
            "entra_tokens_checked": self.entra_key is not None,
        }


def _positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise ValueError(f"must be > 0, got {text!r}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"must be finite, got {text!r}")
    return value


def _rate(text: str) -> float:
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be between 0 and 1, got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _float(text)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"must be > 0 and <= 1, got {text!r}")
    return value


def _period(text: str) -> float:
    value = _float(text)
    if not 0.0 < value <= 60.0:
        raise ValueError(f"must be > 0 and <= 60 seconds, got {text!r}")
    return value


def _choice(kind: type[RateModel] | type[Rounding]) -> Callable[[str], Any]:
    def convert(text: str) -> RateModel | Rounding:
        try:
            return kind(text.strip().lower())
        except ValueError:
            names = "|".join(k.value for k in kind)
            raise ValueError(f"must be {names}, got {text!r}") from None

    return convert


def _int(text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"must be an integer, got {text!r}") from None
    if not low <= value <= high:
        raise ValueError(f"must be between {low} and {high}, got {text!r}")
    return value


def _rpm(text: str) -> int:
    return _int(text, 1, 1_000_000)


def _port(text: str) -> int:
    return _int(text, 0, 65535)


def _seed(text: str) -> int:
    return _int(text, -(2**63), 2**63 - 1)


def _non_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


_DEPLOYMENT_KEYS = ("rpm", "fault_rate", "admit_fraction", "model")


def _model(text: str) -> str:
    return rules_for(text.strip()).name


def parse_deployment(
    spec: str,
    rpm: int,
    fault_rate: float,
    admit_fraction: float = 1.0,
    model: str = DEFAULT_MODEL,
) -> Deployment:
    """`NAME` or `NAME:rpm=N,fault_rate=F,admit_fraction=A,model=M`; missing values come from the
    global options."""
    name, _, extras = spec.strip().partition(":")
    if not _DEPLOYMENT_NAME.match(name):
        raise ValueError(f"bad deployment name {name!r} (letters, digits, '.', '_', '-')")
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in extras.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in _DEPLOYMENT_KEYS:
            raise ValueError(
                f"bad deployment option {item!r} in {spec!r} "
                "(rpm=N, fault_rate=F, admit_fraction=A, model=M)"
            )
        values[key] = value
    return Deployment(
        name,
        _rpm(values["rpm"]) if "rpm" in values else rpm,
        _rate(values["fault_rate"]) if "fault_rate" in values else fault_rate,
        _fraction(values["admit_fraction"]) if "admit_fraction" in values else admit_fraction,
        _model(values["model"]) if "model" in values else model,
    )


# name -> (converter, help); the env var is EMULATOR_<NAME upper>.
_SCALARS: dict[str, tuple[Callable[[str], Any], str]] = {
    "host": (_non_empty, "interface to listen on"),
    "port": (_port, "port to listen on (0 picks a free one)"),
    "api_key": (_non_empty, "the key the api-key header must carry"),
    "blocked_phrase": (_non_empty, "prompts containing it get 400 moderation_blocked"),
    "entra_key": (
        _non_empty,
        "HS256 key that verifies Entra ID bearer tokens (signature, audience "
        "https://cognitiveservices.azure.com, expiry); without it any non-empty token passes",
    ),
    "time_scale": (_positive_float, "1.0 = real durations; 0.01 makes 245 s take 2.45 s"),
    "rpm": (_rpm, "requests per minute per deployment, unless the deployment says otherwise"),
    "gateway_timeout_s": (_positive_float, "408 when no byte was sent for this long"),
    "fault_rate": (_rate, "probability of a mid-stream server_error at a long side >= 2048"),
    "seed": (_seed, "seed of the random faults"),
    "payload_scale": (_positive_float, "image byte sizes relative to the real service's"),
    "rate_model": (
        _choice(RateModel),
        "periods (Azure's way: RPM x P / 60 per period of P seconds) or sliding (a sliding 60 s "
        f"window); default {Config().rate_model.value}",
    ),
    "rate_period_s": (_period, "periods model: P in emulated seconds (10, or 1 for the 1 s mode)"),
    "rate_rounding": (
        _choice(Rounding),
        "periods model: floor|ceil|round of RPM x P / 60 (default ceil: even pacing at RPM fits)",
    ),
    "rate_admit_fraction": (
        _fraction,
        "share of its nominal allowance a deployment really admits (e.g. 0.6)",
    ),
    "model": (
        _model,
        "model of every deployment that names none: gpt-image-2 (default), "
        "gpt-image-1, gpt-image-1-mini or gpt-image-1.5; it decides the sizes and "
        "parameters the deployment refuses",
    ),
}
# Fixed at start: the listening socket and the clock's origin cannot change under running streams.
_FIXED = ("host", "port", "time_scale", "seed")


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="python -m emulators.image_deployment",
        description="Emulate an Azure OpenAI gpt-image deployment behind its 60 s gateway. "
        "The images are synthetic placeholders (gradients and shapes derived from the prompt, "
        "of the requested size and format), not generated pictures.",
        epilog="Every option can also be set as EMULATOR_<NAME>, e.g. EMULATOR_TIME_SCALE=0.01. "
        f"Scripted outcomes (POST /_emulator/script): {', '.join(KINDS)}; their fields are "
        "described in emulators/image_deployment/script.py.",
    )
    defaults = Config()
    for name, (_, text) in _SCALARS.items():
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, help=_with_default(text, defaults, name)
        )
    parser.add_argument(
        "--deployment",
        dest="deployment",
        action="append",
        help="NAME or NAME:rpm=N,fault_rate=F,admit_fraction=A,model=M; repeatable "
        "(default gpt-image-2-1)",
    )
    return parser


def _with_default(text: str, defaults: Config, name: str) -> str:
    """The help with the value used when neither the flag nor EMULATOR_<NAME> is set.

    Not argparse's own `%(default)s`: the parser's defaults stay None so that the environment
    can still win over them.
    """
    if "default" in text:  # the help already says it, in its own words
        return text
    value = getattr(defaults, name)
    shown = "random" if value is None else value.value if hasattr(value, "value") else value
    return f"{text} (default: {shown})"


def load(argv: Sequence[str], env: Mapping[str, str]) -> Config:
    """Flags win over EMULATOR_* variables, which win over defaults."""
    args = vars(parser().parse_args(list(argv)))
    raw: dict[str, Any] = {}
    for name in (*_SCALARS, "deployment"):
        env_value = env.get("EMULATOR_" + name.upper())
        if args.get(name) is not None:
            raw[name] = args[name]
        elif env_value is not None:
            # Several deployments in one variable: separated by spaces or ';'.
            raw[name] = (
                re.split(r"[;\s]+", env_value.strip()) if name == "deployment" else env_value
            )
    return _build(Config(), raw)


def replace_options(current: Config, changes: Mapping[str, Any]) -> Config:
    """A new Config with `changes` (option names, JSON values) applied; the control API's swap."""
    raw: dict[str, Any] = {}
    for name, value in changes.items():
        if name in _FIXED:
            raise ConfigError(f"{name}: fixed at start-up, restart the emulator to change it")
        if name == "deployment" or name == "deployments":
            specs = [value] if isinstance(value, str) else value
            if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
                raise ConfigError(f"{name}: expected a list of 'NAME:rpm=N,...' strings")
            raw["deployment"] = specs
        elif (
            name in _SCALARS
            and isinstance(value, str | int | float)
            and not isinstance(value, bool)
        ):
            raw[name] = str(value)
        else:
            raise ConfigError(f"{name}: unknown option or wrong type")
    if "deployment" not in raw:
        # Keep named deployments' own values; only a global change moves the ones that follow it.
        raw["deployment"] = [_spec(d, current) for d in current.deployments]
    return _build(current, raw)


def _spec(d: Deployment, current: Config) -> str:
    own = []
    if d.rpm != current.rpm:
        own.append(f"rpm={d.rpm}")
    if d.fault_rate != current.fault_rate:
        own.append(f"fault_rate={d.fault_rate}")
    if d.admit_fraction != current.rate_admit_fraction:
        own.append(f"admit_fraction={d.admit_fraction}")
    if d.model != current.model:
        own.append(f"model={d.model}")
    return d.name + (":" + ",".join(own) if own else "")


def _build(base: Config, raw: Mapping[str, Any]) -> Config:
    values: dict[str, Any] = {}
    for name, (convert, _) in _SCALARS.items():
        if name in raw:
            try:
                values[name] = convert(str(raw[name]))
            except ValueError as error:
                raise ConfigError(f"--{name.replace('_', '-')}: {error}") from None
    config = replace(base, **values)
    specs = raw.get("deployment") or [d.name for d in base.deployments]
    try:
        deployments = tuple(
            parse_deployment(
                s, config.rpm, config.fault_rate, config.rate_admit_fraction, config.model
            )
            for s in specs
        )
    except ValueError as error:
        raise ConfigError(f"--deployment: {error}") from None
    names = [d.name for d in deployments]
    if len(set(names)) != len(names):
        raise ConfigError(f"--deployment: names repeat: {', '.join(names)}")
    return replace(config, deployments=deployments)


class ConfigHolder:
    """The current Config; readers take a reference, the control API swaps in a new one."""

    def __init__(self, config: Config) -> None:
        self._config = config

    def get(self) -> Config:
        return self._config

    def swap(self, config: Config) -> None:
        # One reference assignment is atomic in CPython; readers see the old or the new object.
        self._config = config
