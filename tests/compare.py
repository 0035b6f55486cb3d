"""Structural comparison of pipeline outputs: same keys, strings and ints; floats within tol.
Tensors compare by their values (tests/test_output_shapes.py checks the types themselves)."""

import math


def assert_same(ours, theirs, tol=1e-4):
    if hasattr(theirs, "dim"):  # a torch tensor
        theirs = theirs.tolist()
    if hasattr(ours, "dim"):
        ours = ours.tolist()
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and set(ours) == set(theirs), (ours, theirs)
        for key in theirs:
            assert_same(ours[key], theirs[key], tol)
    elif isinstance(theirs, (list, tuple)):
        assert isinstance(ours, (list, tuple)) and len(ours) == len(theirs), (ours, theirs)
        for a, b in zip(ours, theirs):
            assert_same(a, b, tol)
    elif isinstance(theirs, float):
        assert math.isclose(ours, theirs, abs_tol=tol), (ours, theirs)
    else:
        assert ours == theirs, (ours, theirs)


def assert_found_entities(results):
    """A token-classification comparison proves little when random weights label everything "O".
    Most texts must have entities; not all, since an aggregation can average a text's scores back
    to "O" on one CPU's float rounding and not another's (it did on CI for ELECTRA)."""
    found = sum(1 for entities in results if entities)
    assert 2 * found >= len(results), f"only {found} of {len(results)} texts have entities: the test proves little"
