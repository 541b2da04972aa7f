"""The model and task layers are usable alone: importing them must not pull in Lightning."""

import subprocess
import sys


def test_model_and_tasks_import_without_lightning():
    code = (
        "import sys, fpt.model, fpt.tasks, fpt.backbones\n"
        "from fpt.tasks import make_task\n"
        "make_task('bit-xor').train().batch(range(2))\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning'))\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"Lightning imported by the model/task layers: {out.stdout.strip()[:200]}"
