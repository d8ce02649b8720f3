"""Imported only by the process the LocalCluster's workers fork from (`cluster.PRELOADED`), never
by the stage itself: what it sets here, every worker inherits.

- Ctrl-C is the stage's alone. A terminal sends SIGINT to the whole process group, workers
  included; a worker that takes it dies mid-task with a KeyboardInterrupt traceback while the
  stage is still closing the cluster. Ignoring it here leaves the stage to say "interrupted"
  in one line and close its workers itself.
- A worker closed while it runs tasks logs one warning per running task, "Async instruction for
  <Task ...> ended with CancelledError", which distributed says happens only in Worker.close;
  those lines are dropped, every other message of that logger is kept.
"""

import logging
import signal


class _WorkerCloseCancellations(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().endswith("ended with CancelledError")


signal.signal(signal.SIGINT, signal.SIG_IGN)  # the forkserver restores this in every worker it forks
logging.getLogger("distributed.worker.state_machine").addFilter(_WorkerCloseCancellations())
