"""Deploy errors: one root, each carrying the step, the reason and what to do."""

from __future__ import annotations


class DeployError(Exception):
    """A deploy could not go on. `step` names where, `why` says what happened, `todo` the fix."""

    def __init__(self, step: str, why: str, todo: str = "") -> None:
        self.step = step
        self.why = why
        self.todo = todo
        text = f"{step}: {why}"
        if todo:
            text += f"\n  what to do: {todo}"
        super().__init__(text)


class DeployConfigError(DeployError):
    """The deploy config (or the env file it names) is invalid; `problems` lists each one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "check config",
            "\n".join(problems),
            "fix the deploy config or the env file, then run `switchctl deploy --check`",
        )


class LockHeld(DeployError):
    """Another deploy of the same app holds the lock."""

    def __init__(self, holder: str) -> None:
        super().__init__(
            "lock",
            f"another deploy holds the lock: {holder}",
            "wait for it to finish (the lock is released when that process exits)",
        )


class Interrupted(DeployError):
    """SIGTERM/SIGINT/SIGHUP arrived (CI cancelled, ssh cut): roll back like any failure."""

    def __init__(self, signame: str) -> None:
        super().__init__(
            "interrupted",
            f"switchctl received {signame}",
            "deploy again when ready; this one was rolled back if it had not switched yet",
        )
