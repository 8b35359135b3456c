"""The detect stage: the rules over the batch, rows and records alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sensor.detect.alerts import Alerts
from sensor.detect.rows import RowMaker
from sensor.output.events import Selection

if TYPE_CHECKING:
    from sensor.pipeline import Batch


class Detect:
    """Alerts from the batch's records and from its known containers' syscall rows (the
    rows of the rules' syscalls only); then the batch keeps only the event records
    that are emitted: the rest were made for the rules."""

    name = "detect"

    def __init__(self, alerts: Alerts, rule_nrs: np.ndarray, row_maker: RowMaker, selection: Selection):
        self.alerts = alerts
        self.rule_nrs = rule_nrs
        self.row_maker = row_maker
        self.selection = selection

    def run(self, batch: Batch) -> None:
        rows = self.row_maker.rows(batch.live, batch.fd_notes, self.rule_nrs) \
            if self.alerts.rules and batch.live else []
        alerts = self.alerts(batch.records, rows, batch.emitted)
        batch.records = [record for record in batch.records
                         if record["kind"] != "event" or self.selection.emits(record)] + alerts
