"""The library's CPU thread policy (learning_dynamics.threads)."""

import subprocess
import sys


def python(code, env=None):
    import os

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | (env or {})
    return subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code], env=env,
                          capture_output=True, text=True, timeout=120)


def test_importing_the_library_first_sets_passive_waiting_before_torch_loads():
    result = python("import learning_dynamics, os, torch; print(learning_dynamics.THREAD_POLICY, "
                    "os.environ['OMP_WAIT_POLICY'], torch.get_num_threads() >= 1)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["set", "PASSIVE", "True"]


def test_a_users_own_policy_is_kept():
    result = python("import learning_dynamics, os; print(learning_dynamics.THREAD_POLICY, os.environ['OMP_WAIT_POLICY'])",
                    env={"OMP_WAIT_POLICY": "ACTIVE"})
    assert result.stdout.split() == ["user", "ACTIVE"]


def test_torch_imported_first_falls_back_to_one_thread_with_a_warning():
    result = python("import torch, learning_dynamics")
    assert result.returncode != 0 and "Import learning_dynamics first" in result.stderr.replace("\n", " ")
    result = subprocess.run([sys.executable, "-c", "import warnings; warnings.simplefilter('ignore'); import torch, "
                             "learning_dynamics; print(learning_dynamics.THREAD_POLICY, torch.get_num_threads())"],
                            capture_output=True, text=True, timeout=120,
                            env={k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"})
    assert result.stdout.split() == ["single", "thread", "1"]


def test_small_problems_run_on_one_thread_and_restore_the_count():
    result = python("import learning_dynamics, torch\n"
                    "from learning_dynamics.threads import small_problem, SINGLE_THREAD_BELOW\n"
                    "torch.set_num_threads(2)\n"
                    "with small_problem(SINGLE_THREAD_BELOW - 1): inside = torch.get_num_threads()\n"
                    "with small_problem(SINGLE_THREAD_BELOW): large = torch.get_num_threads()\n"
                    "print(inside, large, torch.get_num_threads())")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "2", "2"]
