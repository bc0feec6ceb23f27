"""Models of the kernels' synchronization protocols (tests/protocol/), run under random
interleavings on the CPU: each must hold, and each model must catch its deliberately broken
variants (a model that cannot fail checks nothing)."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_flash_forward_ring_slots_are_published_and_refilled_safely():
    model = ROOT / "tests" / "protocol" / "flash_fwd_ring_sim.py"
    r = subprocess.run([sys.executable, str(model), "--trials", "20", "--seed", "7"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_flash_backward_grad_q_turns_hold_for_padded_and_packed_heads():
    model = ROOT / "tests" / "protocol" / "flash_dq_turns_sim.py"
    r = subprocess.run([sys.executable, str(model), "--trials", "1500", "--seed", "11"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    for broken in ("mixed-count", "pass-early", "causal-up"):
        r = subprocess.run([sys.executable, str(model), "--trials", "400", "--seed", "11", "--broken", broken],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"the model did not catch '{broken}': " + r.stdout + r.stderr
