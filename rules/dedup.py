"""The names rules.repeats and rules.templates hold, where importers not yet moved look."""

from .repeats import StatusSet as StatusSet
from .repeats import Storm as Storm
from .repeats import fingerprint as fingerprint
from .repeats import parse_dedup as parse_dedup
from .templates import origin as origin
