"""The DataLoader every training and evaluation set is read through: it says, in the main process, why each
skipped sample was skipped, once per reason for the loader's life.

A dataset that cannot read a sample gives a :class:`mmrope.data.collate.Skipped` in its place, and the collated batch
carries the reason. Saying it here rather than in the dataset is what makes "once" hold with DataLoader workers: they
are forked anew every epoch (``persistent_workers`` would keep them, but then they would not see ``set_epoch``), each
from a parent that never saw the warning, so a dataset that warned itself said it again every epoch in every worker.
"""

from __future__ import annotations

import logging

from torch.utils.data import DataLoader

from mmrope.data.collate import SkippedBatch

log = logging.getLogger(__name__)


class SkipWarningLoader(DataLoader):
    """A DataLoader whose batches' skip reasons are logged once each, in the process that iterates it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.warned: set[str] = set()

    def __iter__(self):
        for batch in super().__iter__():
            if isinstance(batch, SkippedBatch):
                reasons = batch.reasons
            else:
                reasons = batch.get("skipped", ()) if isinstance(batch, dict) else ()
            for reason in reasons:
                if reason not in self.warned:
                    self.warned.add(reason)
                    log.warning("skipping %s", reason)
            yield batch
