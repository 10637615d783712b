"""What every method's settings share: the base dataclass the ``method:`` section of a config is parsed into.

Each method declares its own settings in its own file, a frozen dataclass derived from :class:`MethodSettings`
with its defaults and a ``validate()`` that names the fix; :func:`crlf.config.apply_overrides` parses the
``method:`` section with the class the registry names (a key the method does not read is an error with a
"did you mean" over the method's own keys). This module imports no torch: the config layer reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

# A settings check (a usage error, exit 2, whose message names the key and the fix): the methods import it from here.
from crlf.errors import check

__all__ = ["check", "MethodSettings", "TemperatureSettings", "MomentumSettings", "MomentumTemperatureSettings",
           "check_temperature"]


@dataclass(frozen=True)
class MethodSettings:
    """``name``: the registry key; every subclass sets its own default and adds its keys after it."""

    name: str = ""

    # Keys a method without the feature still accepts at the value that means "off": byol.yaml, simsiam.yaml
    # and mocov3.yaml spell out ``queue_size: 0`` (they have no queue). Any other value is an unknown key.
    off_values: ClassVar[dict[str, object]] = {"queue_size": 0}

    def validate(self) -> None:
        """Reject impossible values with a :class:`UsageError` that names the fix; subclasses extend it."""

    @classmethod
    def keys(cls) -> list[str]:
        """The keys this method reads (``name`` aside), in declaration order."""
        return [f.name for f in fields(cls) if f.name != "name"]


@dataclass(frozen=True)
class TemperatureSettings(MethodSettings):
    """Methods whose loss is a softmax of similarities divided by ``temperature`` (``--temperature``)."""

    temperature: float = 0.07

    def validate(self) -> None:
        super().validate()
        check_temperature(self.temperature)


@dataclass(frozen=True)
class MomentumSettings(MethodSettings):
    """Methods with a momentum target (:class:`crlf.methods.base.MomentumMethod`): its EMA momentum goes from
    ``momentum`` to ``momentum_final`` on BYOL's cosine schedule over training."""

    momentum: float = 0.99
    momentum_final: float = 1.0

    def validate(self) -> None:
        super().validate()
        check(0 <= self.momentum <= self.momentum_final <= 1,
              f"method.momentum and momentum_final must satisfy 0 <= momentum <= momentum_final <= 1 "
              f"(got {self.momentum}, {self.momentum_final}); try 0.99 and 1.0.")


@dataclass(frozen=True)
class MomentumTemperatureSettings(MomentumSettings):
    """A momentum target and a softmax temperature (MoCo v2 and v3, DINO's student)."""

    temperature: float = 0.07

    def validate(self) -> None:
        super().validate()
        check_temperature(self.temperature)


def check_temperature(temperature: float) -> None:
    check(temperature > 0, f"method.temperature must be > 0 (got {temperature}); try 0.07-0.5.")
