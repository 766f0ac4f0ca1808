"""reports/paper.py: the paper's Table E numbers and the side-by-side table, on hand-made metrics."""

from __future__ import annotations

import math

import pytest

from eomt_ood.reports import paper


def test_table_e_holds_the_papers_numbers():
    # EoMT paper, appendix C, Table E: AUPRC_OOD on BRAVO, trained on Cityscapes train.
    assert [(r.method, r.backbone, r.pretraining, r.auprc_ood, r.reimplemented) for r in paper.TABLE_E] == [
        ("M2F", "Swin-L", "IN21K", 56.8, False),
        ("M2F", "ViT-Adapter-L", "DINOv2", 68.7, True),
        ("EoMT", "ViT-L", "DINOv2", 89.7, False),
    ]


@pytest.mark.parametrize(
    ("model", "row", "same"),
    [
        ("eomt_large_patch16_1024", "EoMT", True),
        ("eomt_test", "EoMT", False),
        ("eomt_small_patch16_1024", "EoMT", False),
        ("m2f_swin_large", "M2F Swin-L", True),
        ("m2f_swin_test", "M2F Swin-L", False),
        ("m2f_vit_adapter_large", "M2F‡ ViT-Adapter-L", True),
        ("m2f_vit_adapter_test", "M2F‡ ViT-Adapter-L", False),
        ("eomt_deit3_large_patch16_1024", None, None),  # another pre-training: not Table E's model
        ("eomt_eva02_large_patch16_1024", None, None),
        (None, None, None),
    ],
)
def test_runs_map_to_their_architectures_row(model, row, same):
    columns = paper.reference_columns(model)
    if row is None:
        assert columns == {
            "paper_table_e_row": None,
            "paper_table_e_auprc_ood": None,
            "paper_table_e_same_model": None,
        }
    else:
        assert columns["paper_table_e_row"].startswith(row)
        assert columns["paper_table_e_same_model"] is same
        assert columns["paper_table_e_auprc_ood"] == pytest.approx(paper.paper_row_for(model).auprc_ood / 100)


def test_candidates_are_smiyc_synobjs_and_their_mean_in_percent():
    metrics = {"SMIYC_auprc_ood": 0.5, "synobjs_auprc_ood": 0.8, "synobjs_auroc_ood": 0.9}
    assert paper.candidates(metrics) == pytest.approx({"SMIYC": 50.0, "synobjs": 80.0, "mean": 65.0})
    assert paper.candidates({"SMIYC_auprc_ood": math.nan, "synobjs_auprc_ood": 0.25}) == {
        "SMIYC": None,
        "synobjs": 25.0,
        "mean": None,
    }


def test_score_blocks_reads_one_and_several_scores():
    several = {
        "msp": {"SMIYC_auprc_ood": 0.1},
        "rba": {"SMIYC_auprc_ood": 0.2},
        "meta": {"confidences": ["msp"]},
    }
    assert paper.score_blocks(several) == {"msp": {"SMIYC_auprc_ood": 0.1}, "rba": {"SMIYC_auprc_ood": 0.2}}
    flat = {"SMIYC_auprc_ood": 0.3, "meta": {"confidences": ["rba"]}}
    assert paper.score_blocks(flat) == {"rba": {"SMIYC_auprc_ood": 0.3}}


def _runs():
    return [
        paper.RunScores(
            "eomt-run",
            "eomt_large_patch16_1024",
            {
                "msp": {"SMIYC_auprc_ood": 0.9123, "synobjs_auprc_ood": 0.8801},
                "rba": {"SMIYC_auprc_ood": 0.95, "synobjs_auprc_ood": 0.75},
            },
        ),
        paper.RunScores(
            "tiny-swin", "m2f_swin_test", {"msp": {"SMIYC_auprc_ood": 0.1, "synobjs_auprc_ood": 0.3}}
        ),
        paper.RunScores("deit", "eomt_deit3_large_patch16_1024", {"msp": {"SMIYC_auprc_ood": 0.5}}),
    ]


def test_rows_follow_the_papers_order_with_every_score():
    rows = paper.table_e_rows(_runs())
    described = [(r["paper"].backbone if r["paper"] else None, r["run"], r["score"]) for r in rows]
    assert described == [
        ("Swin-L", "tiny-swin", "msp"),
        ("ViT-Adapter-L", None, None),  # no run for this paper row
        ("ViT-L", "eomt-run", "msp"),
        ("ViT-L", "eomt-run", "rba"),
        (None, "deit", "msp"),  # no Table E row for DeiT-III
    ]
    assert rows[2]["mean"] == pytest.approx((91.23 + 88.01) / 2) and rows[2]["same_model"] is True
    assert rows[0]["same_model"] is False


def test_text_table_shows_paper_and_measured_columns_and_says_what_is_unknown():
    text = paper.table_e_text(paper.table_e_rows(_runs()))
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("Method"))
    assert "Paper |" in header and header.split("|")[1].split() == [
        "Run",
        "Model",
        "Score",
        "SMIYC",
        "synobjs",
        "mean",
    ]
    eomt_msp = next(line for line in lines if "eomt-run" in line and "msp" in line)
    assert eomt_msp.split() == ["EoMT", "ViT-L", "DINOv2", "89.7", "|", "eomt-run", "eomt_large_patch16_1024", "msp",
                                "91.2", "88.0", "89.6"]  # fmt: skip
    eomt_rba = next(line for line in lines if "rba" in line)
    assert eomt_rba.split()[:2] == ["|", "eomt-run"]  # the paper's cells are printed once per paper row
    swin = next(line for line in lines if "tiny-swin" in line)
    assert "56.8" in swin and "m2f_swin_test *" in swin
    assert any("(no run)" in line and "68.7" in line for line in lines)
    assert "states neither the BRAVO key behind it nor the confidence score" in text
    assert "* not the paper's model (m2f_swin_large)" in text
    assert "‡ the paper's re-implementation" in text


def test_html_fragment_escapes_and_carries_the_same_cells():
    fragment = paper.table_e_html(
        paper.table_e_rows([paper.RunScores("<run>", "m2f_swin_large", {"msp": {}})])
    )
    assert "&lt;run&gt;" in fragment and "<run>" not in fragment
    assert ">56.8<" in fragment and "Measured AUPRC_OOD (%)" in fragment
