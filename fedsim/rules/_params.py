"""Rule parameters: one dataclass per rule, validated on construction, plus shared bases.

A rule's knobs are the fields of its ``Params`` dataclass (declared with
:func:`knob`, which records a one-line help shown by ``fedsim list`` and
``--help``).  Construction checks the types and values (messages name the key
as ``rule.KEY``); :meth:`RuleParams.check_dimension` checks what depends on the
model's dimension ``d`` (e.g. ``k <= d``) when the rule is built.
"""
import dataclasses
import typing

from .._fields import check, coerce_field
from ..errors import ConfigError

__all__ = ["RuleParams", "MomentumParams", "TopKParams", "ErrorFeedbackParams", "knob", "LR_PLACEMENTS"]

LR_PLACEMENTS = ("inside", "after")


def knob(default, help):
    """A rule-parameter field with a default and a one-line help.

    Parameters
    ----------
    default : object
        The value used when neither ``[rule]`` nor the method sets the key.
    help : str
        One line, shown by ``fedsim list`` and in the README table.

    Returns
    -------
    dataclasses.Field
    """
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class RuleParams:
    """Base of every rule's parameters: type checks on construction, then :meth:`validate`.

    Subclasses are dataclasses whose fields are the rule's knobs; the rule
    class names its parameters class as ``Params`` and
    :func:`fedsim.rules.register_rule` binds the two (``rule_name``).

    Raises
    ------
    ConfigError
        A field has the wrong type or an invalid value (the message names ``rule.KEY``).
    """

    rule_name: typing.ClassVar[typing.Optional[str]] = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce_field(type(self), f.name, getattr(self, f.name), "rule"))
        self.validate()

    @property
    def name(self):
        """The registered rule these parameters belong to (``rule.name``).

        Returns
        -------
        str

        Raises
        ------
        ConfigError
            The class is not registered with a rule.
        """
        if self.rule_name is None:
            raise ConfigError(f"{type(self).__name__} is not registered with a rule (see register_rule)")
        return self.rule_name

    def validate(self):
        """Value checks the types do not express (subclasses extend it with ``super().validate()``).

        Raises
        ------
        ConfigError
            A value is out of range.
        """

    def check_dimension(self, d):
        """Checks that need the model's dimension ``d`` (run when the rule is built).

        Parameters
        ----------
        d : int
            Number of trainable parameters.

        Raises
        ------
        ConfigError
            A knob does not fit a model of dimension ``d``.
        """

    def to_dict(self):
        """``{"name": rule name, knob: value, ...}`` (what the config hash covers).

        Returns
        -------
        dict
        """
        return {"name": self.name, **dataclasses.asdict(self)}

    @classmethod
    def knobs(cls):
        """The knob names of this parameters class, in field order.

        Returns
        -------
        list of str
        """
        return [f.name for f in dataclasses.fields(cls)]


@dataclasses.dataclass
class MomentumParams(RuleParams):
    """Parameters shared by the rules with server momentum."""

    momentum: float = knob(0.9, "server momentum rho, in [0, 1)")

    def validate(self):
        """Momentum in [0, 1)."""
        super().validate()
        check(0 <= self.momentum < 1, f"rule.momentum must be in [0, 1), got {self.momentum}")


@dataclasses.dataclass
class TopKParams(MomentumParams):
    """Parameters of the rules that update ``k`` coordinates per round (``k <= d``)."""

    k: int = knob(100, "coordinates updated per round (top-k)")

    def validate(self):
        """k positive."""
        super().validate()
        check(self.k > 0, f"rule.k must be positive, got {self.k}")

    def check_dimension(self, d):
        """``k <= d``.

        Parameters
        ----------
        d : int
            Number of trainable parameters.

        Raises
        ------
        ConfigError
            ``k`` exceeds ``d``.
        """
        super().check_dimension(d)
        check(self.k <= d, f"rule.k = {self.k} exceeds the model's d = {d}")


@dataclasses.dataclass
class ErrorFeedbackParams(TopKParams):
    """Top-k with a server error accumulator: where the learning rate enters."""

    lr_placement: str = knob("inside", "lr inside the error accumulation ('inside') or on the update ('after')")

    def validate(self):
        """lr_placement is one of LR_PLACEMENTS."""
        super().validate()
        check(self.lr_placement in LR_PLACEMENTS,
              f"rule.lr_placement must be one of {LR_PLACEMENTS}, got {self.lr_placement!r}")
