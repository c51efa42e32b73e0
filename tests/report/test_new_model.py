"""A model is added by its own file and its params.yaml entry, nothing else (issue 27): in a copy of
the package, a toy model's class says how its row is shown, and the table, the plots and the report
show it so."""

from __future__ import annotations

import filecmp
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from matplotlib import image

from conftest import REPO, THREAD_VARS, dump_params
from evcf.models import model_entry

METRICS = ("recall@20", "recall@50", "ndcg@100")
LABEL, COLOUR = "Toy (a new row)", "#12ab34"

TOY = f'''"""A toy model: the popularity ranking, shown as a row of its own."""

from __future__ import annotations

from typing import ClassVar

from evcf.models.baselines import Popularity


class Toy(Popularity):
    name: ClassVar[str] = "toy"
    label: ClassVar[str] = "{LABEL}"
    section: ClassVar[str] = "extra"
    colour: ClassVar[str] = "{COLOUR}"
    row: ClassVar[int] = 5
'''

# run in the copy: its params.yaml passes the checks the pipeline makes, the toy builds, the report
STEPS = """
import json, sys
from pathlib import Path
import evcf
assert Path(evcf.__file__).resolve().parent == Path("evcf").resolve(), evcf.__file__
from evcf.plan.config import load_config
load_config(Path("params.yaml"), ["datasets=[synthetic]"])
from evcf.models import build_model
assert type(build_model("toy", 5)).__name__ == "Toy"
from evcf.report import make_report
from evcf.report.plots import model_color
make_report(sorted(Path("results").glob("*/*/seed-*")), Path("report"))
print(json.dumps({"colour": model_color("toy")}))
"""


def fabricate_run(root: Path, model: str, seed: int, level: float) -> Path:
    """metrics.json, history.csv and per_user.csv of one run, as the report reads them."""
    folder = root / "results" / "synthetic" / model / f"seed-{seed}"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed + len(model))
    values = np.clip(level + rng.normal(0, 0.05, (20, len(METRICS))), 0, 1)
    per_user = pd.DataFrame(values, columns=list(METRICS))
    per_user.insert(0, "uid", range(20))
    per_user.to_csv(folder / "per_user.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps(
        {"dataset": "synthetic", "model": model, "seed": seed, "wall_seconds": 3.0,
         **{m: float(values[:, j].mean()) for j, m in enumerate(METRICS)}}))
    history = {"epoch": range(1, 6), "train_loss": np.linspace(9, 5, 5), "val_ndcg@100": np.linspace(0.1, level, 5)}
    pd.DataFrame(history).to_csv(folder / "history.csv", index=False)
    return folder


def test_a_model_added_by_its_file_and_params_yaml_shows_its_own_label_and_colour(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "evcf", copy / "evcf", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "evcf/models/toy.py").write_text(TOY)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["models"].append("toy")
    params["model_params"]["toy"] = {}
    dump_params(copy / "params.yaml", params)
    changed = filecmp.dircmp(REPO / "evcf", copy / "evcf", ignore=["__pycache__"])
    assert changed.diff_files == [] and changed.subdirs["models"].right_only == ["toy.py"]
    for seed in (1, 2):
        fabricate_run(copy, "mult-vae", seed, 0.4)
        fabricate_run(copy, "toy", seed, 0.3)
    fabricate_run(copy, "popularity", 1, 0.2)

    env = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}, "PYTHONPATH": str(copy)}
    env.update({var: "1" for var in THREAD_VARS})
    done = subprocess.run([sys.executable, "-c", STEPS], cwd=copy, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert model_entry("toy") is None  # this process's registry: the toy lives in the copy only

    report = copy / "report"
    table = pd.read_csv(report / "table1.csv")
    toy = table[table["model"] == "toy"]
    assert set(toy["label"]) == {LABEL} and set(toy["section"]) == {"extra"}
    rows = [line.split("|")[1].strip() for line in (report / "table1.md").read_text().splitlines()
            if line.startswith("| ") and "(n=" in line]
    assert rows == ["Mult-VAE", "Popularity", LABEL]  # the paper's row, then ours by row
    assert f'<td class="label">{LABEL}</td>' in (report / "table1.html").read_text()
    assert LABEL in (report / "table1.tex").read_text()

    curves = image.imread(io.BytesIO((report / "plots/learning_curves_synthetic.png").read_bytes()))
    rgb = np.round(curves[..., :3] * 255).astype(int)
    drawn = np.all(rgb == [int(COLOUR[i:i + 2], 16) for i in (1, 3, 5)], axis=-1)
    assert drawn.sum() > 50, "the toy's line is not drawn in its colour"
    assert json.loads(done.stdout)["colour"] == COLOUR
    assert pd.read_csv(report / "plots/learning_curves_synthetic.csv")["label"].eq(LABEL).any()
