"""DET PNGs are written atomically, with axes that reach the EER point."""

import numpy as np

from cmkd_cli.metrics.plots import plot_det
from cmkd_cli.metrics.verification import det_curve

PNG = b"\x89PNG\r\n\x1a\n"


def test_plot_det_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 2000)
    far, frr = det_curve(rng.normal(size=2000) + 2 * labels, labels)
    path = tmp_path / "plots" / "det.png"
    path.parent.mkdir()
    path.write_text("old")  # replaced, not appended to
    assert plot_det(far, frr, path, label="student") == path
    assert path.read_bytes().startswith(PNG)
    assert [p.name for p in path.parent.iterdir()] == ["det.png"]  # no temporary left


def test_det_axes_reach_a_weak_systems_eer_point(tmp_path):
    from cmkd_cli.metrics.plots import det_limits
    from cmkd_cli.metrics.verification import compute_eer

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 4000)
    good = rng.normal(size=4000) + 4 * labels  # EER about 2%
    weak = rng.normal(size=4000) + 0.25 * labels  # EER about 45%
    assert det_limits(*det_curve(good, labels)) == (0.1, 40.0)  # the usual NIST box
    low, top = det_limits(*det_curve(weak, labels))
    eer, _ = compute_eer(weak, labels)
    assert eer > 0.4 and low == 0.1 and top >= 1.5 * 100 * eer  # its EER point is inside
    path = plot_det(*det_curve(weak, labels), tmp_path / "weak.png", label="weak")
    assert path.read_bytes().startswith(PNG)
