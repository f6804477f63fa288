"""Foolscap wire constraints shared by every RemoteInterface, named once with bounds."""

from __future__ import annotations

from foolscap.constraint import Any as AnyValue
from foolscap.constraint import ByteStringConstraint
from foolscap.schema import ChoiceOf, DictOf, ListOf
from foolscap.slicers.unicode import UnicodeConstraint

MAX_ENGINES = 65536
Text = UnicodeConstraint(None)  # Foolscap's `str` means bytes: say text explicitly
Name = UnicodeConstraint(1000)
Frame = ByteStringConstraint(None)  # values may be GiBs; see serialize.MAX_FRAME
Frames = ListOf(Frame, maxLength=1_000_000)
Namespace = DictOf(Name, Frames, maxKeys=100_000)
# Foolscap cannot check a ChoiceOf that includes text; parse_targets validates.
Targets = AnyValue()
Keys = ListOf(Name, maxLength=100_000)
FramesByEngine = DictOf(int, Frames, maxKeys=MAX_ENGINES)
NamespaceByEngine = DictOf(int, Namespace, maxKeys=MAX_ENGINES)
Info = AnyValue()
Token = ByteStringConstraint(64)
Sizes = ListOf(int, maxLength=1_000_000)
Reply = AnyValue()
MaybeInt = ChoiceOf(int, None)
MaybeText = AnyValue()  # text or None: ChoiceOf cannot hold text (see Targets)
TaskBatch = ListOf(AnyValue(), maxLength=100_000)
OpName = UnicodeConstraint(64)
OpArgs = ListOf(AnyValue(), maxLength=16)  # checked against the op's own schema
CommandTag = UnicodeConstraint(200)  # controller/recovered.py: client token / call / engines
