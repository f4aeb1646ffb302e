"""The docs a user reads: every relative link and anchor resolves, and the README lists every
metric family a run logs (checked against a real run's keys, not a copy of the list)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "experiments").glob("*/README.md"))]


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(target)
    assert broken == []


def test_the_readme_names_every_metric_family_a_run_logs(tmp_path, monkeypatch):
    from rnnlab.compose import compose
    from rnnlab.run import run

    monkeypatch.chdir(tmp_path)
    logged: set[str] = set()
    from rnnlab.run import Hooks

    run(compose(["data=sine", "data.steps=600", "depth=2", "hidden_size=8", "train.epochs=1", "train.steps_per_epoch=3",
                 "probe.every=1", "probe.jacobian_every=1", "probe.spectra_every=1", "probe.lyapunov.steps=50",
                 "probe.lyapunov.warmup=5", "quiet=true", "tracking=none"]),
        Hooks(log=lambda metrics, step: logged.update(metrics)), output_dir=tmp_path / "run")
    readme = (ROOT / "README.md").read_text()
    families = {re.sub(r"/l\d+(/.*)?$", "", key) for key in logged}  # vanishing/l0 -> vanishing; grad_w/l0/recurrent/i -> grad_w
    missing = sorted(f for f in families if f"`{f}" not in readme)
    assert missing == []
