"""The schema of a customer table: each column's kind and how the report names it.

Below everything else (data, the parameters, the methods read it); `Strict` is the pydantic base
that every parameter model shares: unknown keys are refused, assignments validated.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict

KINDS = ("numeric", "categorical", "binary", "identifier", "date", "text")


class Strict(BaseModel):
    """Parameters: unknown keys are refused, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ColumnSpec(Strict):
    """One column of the schema: its kind, and how the report names it."""

    name: str  # the column's name in the table
    # identifier, date and text columns are read, never fitted
    kind: Literal["numeric", "categorical", "binary", "identifier", "date", "text"]
    label: Optional[str] = None  # how the report names it (default: the name, capitalised)
    unit: Optional[str] = None  # of a number, e.g. EUR or years
    # of a category: one-hot by default, ordinal where an `order` is given
    encoding: Optional[Literal["ordinal", "onehot", "none"]] = None
    order: Optional[list[str]] = None  # level order for ordinal encoding
    use: bool = True  # false: kept out of every fit

    @property
    def display(self) -> str:
        return self.label or self.name.replace("_", " ").capitalize()


DEFAULT_SCHEMA = [
    ColumnSpec(name="age", kind="numeric", label="Age", unit="years"),
    ColumnSpec(name="job", kind="categorical", label="Job"),
    ColumnSpec(name="marital", kind="categorical", label="Marital status"),
    # no order: "unknown" is not a level of education, and either end of a scale would invent a distance
    ColumnSpec(name="education", kind="categorical", label="Education"),
    ColumnSpec(name="default", kind="binary", label="Credit in default"),
    ColumnSpec(name="balance", kind="numeric", label="Balance", unit="EUR"),
    ColumnSpec(name="housing", kind="binary", label="Housing loan"),
    ColumnSpec(name="loan", kind="binary", label="Personal loan"),
]

# the bank preset's outcome, named in words wherever the report speaks of it (a schema column's `label`
# does the same for any other table)
PRESET_OUTCOME_LABELS = {"y": "Subscribed a term deposit"}

# the bank-marketing table's other columns, which the preset leaves out, and why: the report's Data section
# lists them (data.left_out_columns), so an analyst knows they were left out on purpose
PRESET_LEFT_OUT = {
    "contact": "how the bank last reached the customer (a campaign detail, not who the customer is)",
    "day": "the day of the month of the last contact (a campaign detail)",
    "month": "the month of the last contact (a campaign detail)",
    "duration": "the length of the last call, known only once the call is over: it gives the outcome away",
    "campaign": "the number of contacts in this campaign (the bank's effort, not the customer)",
    "pdays": "days since the customer was last contacted by an earlier campaign (the bank's history)",
    "previous": "the number of contacts before this campaign (the bank's history)",
    "poutcome": "the result of the previous campaign: a strong predictor of the outcome, kept out so that the "
                "segments describe the customers, not how earlier campaigns went",
}
