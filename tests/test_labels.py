"""Label vocabularies and harmonisation."""
import pytest

from cxr_tfp import labels as L


def test_nih_vocabulary_is_the_14_findings_and_a_prefix_of_the_record_vocabulary():
    assert len(L.NIH_FINDINGS) == 14
    assert L.FINDINGS[:14] == L.NIH_FINDINGS
    assert len(set(L.FINDINGS)) == len(L.FINDINGS)


@pytest.mark.parametrize("source,expected", [
    ("Pleural Effusion", "Effusion"), ("Infiltrate", "Infiltration"), ("Effusion", "Effusion"),
    ("Pleural_Thickening", "Pleural_Thickening"), ("Lung Opacity", "Lung_Opacity"),
    (" Mass ", "Mass"), ("Enlarged cardiac silhouette", "Cardiomegaly"),
])
def test_harmonise_maps_source_spellings(source, expected):
    assert L.harmonise(source) == expected


def test_unknown_finding_raises_naming_it():
    with pytest.raises(KeyError, match="Dragon"):
        L.harmonise("Dragon")
    assert not L.is_known("Dragon") and L.is_known("Infiltrate")


def test_mimic_vocabulary_is_harmonised_and_excludes_no_finding():
    mimic = L.resolve_vocabulary("mimic")
    assert "Effusion" in mimic and "Pleural Effusion" not in mimic
    assert "No Finding" not in mimic and len(mimic) == 13
    assert all(n in L.FINDINGS for n in mimic)


def test_resolve_vocabulary_by_name_list_and_string():
    assert L.resolve_vocabulary("synthetic") == L.SYNTHETIC_FINDINGS
    assert L.resolve_vocabulary(["Mass", "Infiltrate"]) == ("Mass", "Infiltration")
    assert L.resolve_vocabulary("Mass,Nodule") == ("Mass", "Nodule")
    with pytest.raises(ValueError, match="duplicate"):
        L.resolve_vocabulary(["Effusion", "Pleural Effusion"])


def test_indices_point_into_the_record_vocabulary():
    idx = L.indices(L.SYNTHETIC_FINDINGS)
    assert [L.FINDINGS[i] for i in idx] == list(L.SYNTHETIC_FINDINGS)
