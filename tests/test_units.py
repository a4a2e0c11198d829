"""One unit for humans: rates in percent, labelled; everything else as it is."""

from __future__ import annotations

from cmkd_cli import units


def test_rates_show_in_percent_and_other_metrics_as_numbers() -> None:
    assert units.show("val/accuracy", 0.96944) == "96.94%"
    assert units.show("eer", 0.0123) == "1.23%"
    assert units.show("miou", 0.5) == "50.00%" and units.show("IoU wall", 0.25) == "25.00%"
    assert units.show("loss", 0.123456) == "0.1235" and units.show("min_dcf", 0.5) == "0.5000"
    assert units.show("accuracy", None) == "-" and units.show("loss", float("nan")) == "-"
    assert units.label("accuracy") == "accuracy (%)" and units.label("loss") == "loss"
    assert units.scale("stats/kept") == 100 and units.scale("stats/krc") == 1
    assert units.show_all({"accuracy": 0.5, "loss": 1.0}) == "accuracy 50.00%, loss 1.0000"
