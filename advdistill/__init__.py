"""AdvDistill. A process whose parent declared tasks in its config (`ADVDISTILL_TASKS`: a Ray
worker, a Serve replica) registers them here, before any module reads the task registry
(`advdistill.task_declaration`)."""

import os as _os

if _os.environ.get("ADVDISTILL_TASKS"):
    from advdistill.config import declare_exported_tasks as _declare_exported_tasks

    _declare_exported_tasks()
