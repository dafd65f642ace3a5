"""What an exec into a pod's container reports on its status channel
(middleware/runtime/kubernetes.exec_outcome): the statuses are the API server's own wording, as
`kubectl exec` receives them (the failed exec is the one CI met when a container was stopping)."""

from __future__ import annotations

import json

from middleware.runtime.kubernetes import exec_outcome


def test_success_is_exit_code_zero() -> None:
    assert exec_outcome(json.dumps({"metadata": {}, "status": "Success"})) == (0, None)


def test_a_command_that_exits_non_zero_gives_its_code() -> None:
    status = {
        "metadata": {},
        "status": "Failure",
        "message": (
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
    }
    assert exec_outcome(json.dumps(status)) == (3, None)


def test_an_exec_that_could_not_run_is_a_failure_that_says_why() -> None:
    message = (
        "Internal error occurred: error executing command in container: failed to exec in container: "
        'failed to create exec "8510442e": cannot exec in a stopped state: unknown'
    )
    status = {
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    }
    code, why = exec_outcome(json.dumps(status))
    assert code == -1
    assert why is not None and why.startswith("exec failed: Internal error occurred") and "stopped" in why


def test_no_status_at_all_is_a_failure() -> None:
    code, why = exec_outcome("")
    assert code == -1 and why is not None and "no status" in why
