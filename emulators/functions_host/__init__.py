"""Local stand-in for the Azure Functions host's queue trigger (issue 3, docs/design.md §6).

Azure Functions Core Tools cannot be installed here, so this package loads the real
`function_app.py`, reads its queue triggers through `FunctionApp.get_functions()` and runs them
against Storage (Azurite locally) with the Storage Queues extension 5.x semantics: leases renewed
while running, delete on success, redelivery after `visibilityTimeout`, `<queue>-poison` after
`maxDequeueCount`, the in-flight limits, host.json and local.settings.json as Core Tools reads them.

Run it as `python -m emulators.functions_host --app-dir .`; `Host` is the in-process entry point.
"""

from emulators.functions_host.errors import HostStartupError, MissingSettingError
from emulators.functions_host.host import Host

__all__ = ["Host", "HostStartupError", "MissingSettingError"]
