"""The HTML report's plot data (pipeline.check.report): duplicate cluster sizes in bins that a
single huge cluster cannot stretch, and a script legend that lists only scripts with a visible bar."""

from __future__ import annotations

import numpy as np

from pipeline.check.report import CLUSTER_LABELS, cluster_bins, script_segments


def test_cluster_sizes_are_binned_so_one_huge_cluster_does_not_squeeze_the_bars():
    sizes = np.array([2] * 50 + [3] * 20 + [4] * 5 + [7, 9] + [110])
    bins = cluster_bins(sizes)
    assert len(bins) == 9 and CLUSTER_LABELS[:9] == ["2", "3", "4", "5", "6-10", "11-20", "21-50", "51-100", ">100"]
    assert bins == [50, 20, 5, 0, 2, 0, 0, 0, 1]  # 9 bars, not an axis running to 110
    assert sum(bins) == len(sizes)
    assert cluster_bins(np.array([2, 2, 3])) == [2, 1, 0, 0]  # at least sizes 2-5 shown


def test_script_legend_lists_only_scripts_with_a_visible_bar():
    counts = {"train": {"Latin": 9000, "Han": 950, "Cyrillic": 30, "Greek": 15, "Arabic": 5},
              "eval": {"Latin": 500, "Han": 499, "Greek": 1}}
    segments = script_segments(counts, ["train", "eval"])
    labels = [label for label, _, _ in segments]
    assert labels[:2] == ["Latin", "Han"] and len(labels) == 3
    assert labels[2].startswith("other: 3 scripts under 1%")
    for _, _, shares in segments:
        assert len(shares) == 2
    assert np.allclose(np.sum([s for _, _, s in segments], axis=0), 1.0)  # every letter is in some bar
