"""Errors a user can cause, shown as the project's own message: one `error: ...` paragraph.

Every command's `__main__` runs `sys.exit(run(main))` (through `milpf_jax.cli.run`): a missing
file or folder, a store made with other settings, a refused value, a model not available offline
end with their message on stderr and exit status 1, no traceback and no chained causes. Set
MILPF_DEBUG=1 to see the traceback.
"""

from __future__ import annotations

import os
import sys

DEBUG_ENV = "MILPF_DEBUG"
USER_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, FloatingPointError)


def error_message(err: BaseException) -> str:
    """The project's own message of an error: no chained causes, a file error's path named."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return str(err) or type(err).__name__


def run(main, argv=None, *, also: tuple[type[BaseException], ...] = ()) -> int:
    """main(argv) with USER_ERRORS (and `also`) as `error: ...` on stderr and exit 1; MILPF_DEBUG=1
    re-raises them with their traceback. Usage errors (SystemExit 2) pass through."""
    try:
        return int(main(argv) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS + tuple(also) as err:
        if os.environ.get(DEBUG_ENV):
            raise
        sys.stdout.flush()
        print(f"error: {error_message(err)}", file=sys.stderr)
        return 1
