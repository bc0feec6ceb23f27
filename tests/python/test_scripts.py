"""The test command's summary (scripts/test-summary) reports real counts from JUnit files — ran,
passed, failed, skipped with each reason — and the README's in-tree import route works."""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
SUMMARY = ROOT / "scripts" / "test-summary"

# What ctest --output-junit writes: gtest's skip reason is only in the output.
CTEST_XML = """<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="(empty)" tests="4" failures="1" disabled="0" skipped="2">
 <testcase name="Spec.Ok" classname="Spec.Ok" status="run"><system-out>[ OK ]</system-out></testcase>
 <testcase name="Spec.Bad" classname="Spec.Bad" status="fail">
  <failure message="Failed"/><system-out>[ FAILED ]</system-out></testcase>
 <testcase name="GpuA.X" classname="GpuA.X" status="notrun">
  <skipped message="SKIP_REGULAR_EXPRESSION_MATCHED"/>
  <system-out>[ RUN      ] GpuA.X
/src/tests/gpu_test_util.h:177: Skipped
no GPU: no NVIDIA driver is installed
[  SKIPPED ] GpuA.X (0 ms)</system-out></testcase>
 <testcase name="GpuA.Y" classname="GpuA.Y" status="notrun">
  <skipped message="SKIP_REGULAR_EXPRESSION_MATCHED"/>
  <system-out>/src/tests/gpu_test_util.h:177: Skipped
no GPU: no NVIDIA driver is installed
</system-out></testcase>
</testsuite>
"""

PYTEST_XML = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="0" skipped="2" tests="3">
 <testcase classname="tests.python.test_cpu" name="test_a" time="0.1"/>
 <testcase classname="tests.python.test_gpu" name="test_b" time="0.0">
  <skipped type="pytest.skip" message="GPU test SKIPPED: no GPU">skip</skipped></testcase>
 <testcase classname="tests.python.test_gpu" name="test_c" time="0.0">
  <skipped type="pytest.skip" message="GPU test SKIPPED: no GPU">skip</skipped></testcase>
</testsuite></testsuites>
"""


def run_summary(*args):
    return subprocess.run([sys.executable, str(SUMMARY), *map(str, args)], capture_output=True,
                          text=True)


def test_summary_counts_ran_passed_failed_and_skip_reasons(tmp_path):
    (tmp_path / "ctest.xml").write_text(CTEST_XML)
    (tmp_path / "pytest.xml").write_text(PYTEST_XML)
    r = run_summary("ctest", tmp_path / "ctest.xml", "pytest", tmp_path / "pytest.xml")
    assert r.returncode == 1, r
    assert r.stdout == (
        "test: ctest: 4 tests: 2 ran (1 passed, 1 failed), 2 skipped:\n"
        "      2  no GPU: no NVIDIA driver is installed\n"
        "  FAILED Spec.Bad\n"
        "test: pytest: 3 tests: 1 ran (1 passed, 0 failed), 2 skipped:\n"
        "      2  GPU test SKIPPED: no GPU\n"
        "test: in all: 3 ran, 2 passed, 1 failed, 4 skipped (not run: the reasons are above); "
        "FAILED\n")


def test_summary_of_a_run_that_did_not_finish_fails(tmp_path):
    (tmp_path / "pytest.xml").write_text(PYTEST_XML)
    r = run_summary("ctest", tmp_path / "missing.xml", "pytest", tmp_path / "pytest.xml")
    assert r.returncode == 1
    assert r.stdout.startswith("test: ctest: no results ([Errno 2] No such file or directory: ")
    assert r.stdout.endswith("test: in all: 1 ran, 1 passed, 0 failed, 2 skipped (not run: the "
                             "reasons are above); FAILED\n")


def test_scripts_test_ends_with_the_summary():
    script = (ROOT / "scripts" / "test").read_text()
    assert "--output-junit" in script and "--junitxml" in script
    assert script.rstrip().splitlines()[-2].startswith("scripts/test-summary ctest ")


def test_readme_in_tree_import_route_works(tmp_path):
    readme = (ROOT / "README.md").read_text()
    assert "PYTHONPATH=frontends/python python3" in readme
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = "frontends/python"
    r = subprocess.run([sys.executable, "-c", "import lightseq; print(lightseq.__file__)"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(ROOT / "frontends" / "python" / "lightseq" / "__init__.py")


def test_fine_tuning_examples_say_they_need_a_gpu():
    """examples/finetune_*.py and train_mt.py: on a machine without a GPU each exits with that reason (on a GPU
    machine scripts/gpu-check runs them)."""
    import pytest
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: scripts/gpu-check runs the examples")
    for script in sorted((ROOT / "examples").glob("finetune_*.py")) + [ROOT / "examples" / "train_mt.py"]:
        p = subprocess.run([sys.executable, str(script), "--steps", "1"], capture_output=True, text=True)
        assert p.returncode != 0 and f"{script.stem}: needs a CUDA GPU" in p.stderr, (script, p.stderr[-2000:])
