"""cxr_tfp.load(...).predict(...) on hostile and careless inputs: checked before they are read, the
pixel limit for arrays too, every reason naming its input, and the good rows kept (errors="row")."""
import os
import tracemalloc

import numpy as np
import pytest

import cxr_tfp
from cxr_tfp.predictor import InputCheckError, check_inputs
from tests.faults.hostile import garbage, png_header_only, small_png


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny closed-form SavedModel, exported with an in-graph pixel limit of 2,000 (env at trace)."""
    from tests.serving import tiny_model

    d = tmp_path_factory.mktemp("tiny") / "1"
    old = os.environ.get("CXR_TFP_MAX_PIXELS")
    os.environ["CXR_TFP_MAX_PIXELS"] = "2000"
    try:
        tiny_model.build(str(d))
    finally:
        if old is None:
            os.environ.pop("CXR_TFP_MAX_PIXELS")
        else:
            os.environ["CXR_TFP_MAX_PIXELS"] = old
    return cxr_tfp.load(str(d))


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_large_files_are_refused_before_they_are_read(tmp_path):
    archive = tmp_path / "scan.png"                 # a mistaken path: 60 MB that is no image
    with open(archive, "wb") as fh:
        fh.write(b"PK\x03\x04" + garbage(4096))
        fh.truncate(60 << 20)                       # sparse: no disk used
    huge = tmp_path / "huge.dcm"                    # larger than any image within a 1 MP limit
    with open(huge, "wb") as fh:
        fh.truncate(30 << 20)
    check_inputs([small_png(32), garbage(4096)])    # imports (Pillow plugins) done before measuring
    (_, _, errors), peak = _peak_bytes(lambda: check_inputs([str(archive)]))
    assert errors[0] == f"{archive}: not a PNG, JPEG or DICOM file (from its first bytes; the rest was not read)"
    assert peak < 1 << 20, peak                     # was: the whole 60 MB read first
    (_, _, errors), peak = _peak_bytes(lambda: check_inputs([str(huge)], max_pixels=1_000_000))
    assert errors[0] == (f"{huge}: 31,457,280 bytes, larger than any image within the pixel limit can be "
                         f"(20,777,216 bytes); not read") and peak < 1 << 20


def test_folders_loops_and_broken_links_get_their_own_reason(tmp_path):
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    broken = tmp_path / "broken.png"
    broken.symlink_to(tmp_path / "gone.png")
    _, items, errors = check_inputs([str(tmp_path), str(loop), str(broken), str(tmp_path / "none.png")])
    assert items == [None] * 4
    assert errors[0].startswith(f"{tmp_path}: is a folder, not an image file")
    assert errors[1] == f"{loop}: symbolic link loop (the link leads back to itself)"
    assert errors[2] == f"{broken}: broken symbolic link (its target does not exist)"
    assert errors[3] == f"{tmp_path / 'none.png'}: no such file"


def test_arrays_get_the_pixel_limit_of_files():
    arr = np.zeros((300, 400), np.uint8)
    _, items, errors = check_inputs([arr, b"", png_header_only(20000, 20000)], max_pixels=100_000)
    assert items == [None] * 3
    assert errors[0].startswith("array[0]: image is 400x300 = 120000 pixels, above the limit of 100000")
    assert errors[1] == "bytes[1]: empty"
    assert errors[2].startswith("bytes[2]: image is 20000x20000 = 400000000 pixels, above the limit")
    # a 36-megapixel limit refuses a 6001 x 6001 array from its shape (no conversion: a view of zeros)
    big = np.broadcast_to(np.uint8(0), (6001, 6001))
    _, _, errors = check_inputs([big])
    assert "above the limit of 36000000" in errors[0]


def test_one_bad_input_keeps_the_good_results_and_names_the_graphs_refusal(tiny, tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(small_png(32, value=200))
    over_graph_limit = small_png(64, value=200)     # 4,096 pixels: the SavedModel's limit is 2,000
    inputs = [str(good), garbage(300), over_graph_limit, str(tmp_path / "missing.png"),
              np.full((32, 32), 200, np.uint8)]
    with pytest.warns(UserWarning, match="3 of 5 inputs could not be used"):
        t = tiny.predict(inputs)
    assert list(t.index) == [str(good), "bytes[1]", "bytes[2]", f"{tmp_path / 'missing.png'}", "array[4]"]
    probs = t.xs("probability", axis=1, level="field").to_numpy()
    assert np.isfinite(probs[[0, 4]]).all() and np.isnan(probs[[1, 2, 3]]).all()
    np.testing.assert_allclose(probs[0], probs[4], atol=1e-6)
    err = t["error"].tolist()
    assert err[0] is None and err[4] is None
    assert err[1].startswith("bytes[1]: ")
    # was: InvalidArgumentError 'Graph execution error ...' for the whole call, naming no input
    assert err[2].startswith("bytes[2]: image: more pixels than the limit of 2000"), err[2]
    assert "Graph execution" not in err[2] and err[3].endswith("missing.png: no such file")
    with pytest.raises(InputCheckError, match=r"^bytes\[1\]: "):
        tiny.predict(inputs, errors="raise")
    with pytest.raises(InputCheckError, match=r"^bytes\[0\]: image: more pixels than the limit of 2000"):
        tiny.predict([over_graph_limit], errors="raise")
