"""include/simia never imports Airflow (logic must be testable and usable without it)."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import simia


def test_simia_modules_do_not_import_airflow():
    names = [m.name for m in pkgutil.walk_packages(simia.__path__, "simia.")]
    code = ("import sys, importlib\n"
            f"for n in {names!r}: importlib.import_module(n)\n"
            "bad = sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.'))\n"
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(names) >= 10


def test_no_airflow_text_in_package():
    for path in Path(simia.__file__).parent.rglob("*.py"):
        text = path.read_text()
        assert "import airflow" not in text and "from airflow" not in text, path
