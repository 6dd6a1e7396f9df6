"""The per-sample gradient method of a DP run as one small value, and its string form.

The string form is what params (``grad_sample_mode``), the measured table and run records hold:

- an Opacus ``grad_sample_mode``: ``hooks``, ``functorch``, ``ew`` or ``ghost`` (Opacus' ghost clipping);
- ``fast:<clipping>[+<conv>]``: the package's :class:`smoothnet.privacy.fast_clipping.ClippedGradientModule`
  with per-layer clipping ``auto`` (mixed ghost clipping), ``ghost`` or ``materialize`` and, optionally, how
  convolutions materialise per-example gradients (``auto``, ``loop``, ``grouped``, ``unfold``, ``tune``).
  ``fast`` alone means ``fast:auto``.

``PerSampleMethod.parse(text)`` reads it and ``str()`` writes it back: ``str(parse(s)) == s`` for every
form above except bare ``fast``, which is written ``fast:auto`` (as the trainer has always recorded it).
"""

from __future__ import annotations

from dataclasses import dataclass

OPACUS_MODES = ("hooks", "functorch", "ew", "ghost")
FAST = "fast"
CLIPPINGS = ("auto", "ghost", "materialize")  # ClippedGradientModule's per-layer clipping
CONV_PER_EXAMPLE = ("auto", "loop", "grouped", "unfold", "tune")


@dataclass(frozen=True)
class PerSampleMethod:
    """Who computes per-sample gradients and how.

    ``mode``: an Opacus ``grad_sample_mode`` or ``"fast"`` (the package's clipping module). For ``fast``,
    ``clipping`` is the per-layer clipping and ``conv`` the convolution rule as written (``None``: not
    given, i.e. ``auto``; kept apart from an explicit ``auto`` so the string form round-trips).
    """

    mode: str
    clipping: str = "auto"
    conv: str | None = None

    def __post_init__(self) -> None:
        if self.mode == FAST:
            if self.clipping not in CLIPPINGS or (
                self.conv is not None and self.conv not in CONV_PER_EXAMPLE
            ):
                raise ValueError(
                    f"per-sample method fast:{self.spec}: expected fast:<clipping>[+<conv>] with clipping in "
                    f"{list(CLIPPINGS)} and conv in {list(CONV_PER_EXAMPLE)}, e.g. 'fast:materialize+grouped'"
                )
        elif self.mode in OPACUS_MODES:
            if (self.clipping, self.conv) != ("auto", None):
                raise ValueError(f"Opacus mode {self.mode!r} takes no clipping or convolution rule")
        else:
            raise ValueError(
                f"unknown per-sample gradient method {self.mode!r}; valid: {[*OPACUS_MODES, FAST]} "
                "(fast as fast[:<clipping>[+<conv>]])"
            )

    @classmethod
    def parse(cls, text: str | PerSampleMethod) -> PerSampleMethod:
        """An Opacus mode, ``fast`` or ``fast:<clipping>[+<conv>]`` (a value is returned as is)."""
        if isinstance(text, PerSampleMethod):
            return text
        if text in OPACUS_MODES:
            return cls(text)
        if text == FAST or text.startswith(FAST + ":"):
            return cls.fast(text.partition(":")[2] or "auto")
        raise ValueError(
            f"unknown per-sample gradient method {text!r}; valid: {[*OPACUS_MODES, FAST]} "
            "(fast as fast[:<clipping>[+<conv>]])"
        )

    @classmethod
    def fast(cls, spec: str = "auto") -> PerSampleMethod:
        """The clipping module with ``spec`` = ``<clipping>[+<conv>]`` (the part after ``fast:``)."""
        clipping, plus, conv = spec.partition("+")
        return cls(FAST, clipping, conv if plus else None)

    @classmethod
    def from_table(cls, entry: str) -> PerSampleMethod:
        """A measured-table entry (``method_select.MEASURED``): an Opacus mode or a bare clipping spec."""
        return cls(entry) if entry in OPACUS_MODES else cls.fast(entry)

    @property
    def is_opacus(self) -> bool:
        """Opacus computes the per-sample gradients (its grad-sample module and ``DPOptimizer``)."""
        return self.mode in OPACUS_MODES

    @property
    def conv_per_example(self) -> str:
        """The convolution rule ``ClippedGradientModule`` takes (``auto`` when none was given)."""
        return self.conv or "auto"

    @property
    def spec(self) -> str:
        """The clipping module's part: ``<clipping>[+<conv>]`` (empty for an Opacus mode)."""
        if self.is_opacus:
            return ""
        return self.clipping + (f"+{self.conv}" if self.conv is not None else "")

    @property
    def holds_every_gradient(self) -> bool:
        """Whether every example's full gradient is held at once (Opacus' modes, ``fast:materialize``)."""
        return self.is_opacus or self.clipping == "materialize"

    @property
    def clipped_sum_in_grad(self) -> bool:
        """Whether the backward leaves the clipped sum in ``p.grad`` (ours, Opacus' ghost) rather than
        per-sample gradients in ``p.grad_sample`` (Opacus' other modes)."""
        return not self.is_opacus or self.mode == "ghost"

    def __str__(self) -> str:
        return self.mode if self.is_opacus else f"{FAST}:{self.spec}"


def parse_clipping_spec(spec: str) -> tuple[str, str]:
    """``"<clipping>"`` or ``"<clipping>+<conv>"`` (e.g. ``materialize+grouped``) -> the two parts, the
    convolution rule ``auto`` when not given; raises ``ValueError`` naming the valid choices."""
    method = PerSampleMethod.fast(spec)
    return method.clipping, method.conv_per_example
