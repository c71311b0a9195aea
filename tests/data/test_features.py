"""The table encoder against scikit-learn's imputers, scalers and one-hot encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, StandardScaler

from deepworks.data.features import TableEncoder, detect_kind
from deepworks.errors import DataError


def cells(values):
    return ["" if v is None else str(v) for v in values]


def test_numeric_imputation_indicator_and_scaling_match_sklearn():
    raw = [1.0, 2.5, None, 4.0, 10.0, None, 3.0]
    enc = TableEncoder.fit({"x": cells(raw)})
    got = enc.transform({"x": cells(raw)})
    col = np.array([np.nan if v is None else v for v in raw])[:, None]
    imputer = SimpleImputer(strategy="median", add_indicator=True).fit(col)
    imputed = imputer.transform(col)
    expected = np.column_stack([StandardScaler().fit_transform(imputed[:, :1]), imputed[:, 1]])
    assert enc.feature_names == ["x", "x=missing"]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_minmax_scaling_matches_sklearn():
    raw = [3.0, -1.0, 7.0, 2.0]
    got = TableEncoder.fit({"x": cells(raw)}, scaling="minmax").transform({"x": cells(raw)})
    np.testing.assert_allclose(got, MinMaxScaler().fit_transform(np.array(raw)[:, None]), rtol=1e-6)


def test_one_hot_matches_sklearn_and_unseen_categories_go_to_other():
    train = ["red", "blue", "red", "green", None, "blue", "red"]
    enc = TableEncoder.fit({"c": cells(train)})
    assert enc.feature_names == ["c=blue", "c=green", "c=red", "c=other", "c=missing"]
    imputed = np.array([v if v is not None else "red" for v in train], dtype=object)[:, None]  # most frequent
    onehot = OneHotEncoder(handle_unknown="ignore").fit(imputed)
    got = enc.transform({"c": cells(train)})
    np.testing.assert_array_equal(got[:, :3], onehot.transform(imputed).toarray())
    assert got[:, 3].sum() == 0 and got[:, 4].tolist() == [0, 0, 0, 0, 1, 0, 0]
    unseen = enc.transform({"c": ["purple", ""]})
    assert unseen.tolist() == [[0, 0, 0, 1, 0], [0, 0, 1, 0, 1]]  # other slot; missing -> most frequent


def test_ordinal_datetime_and_kinds():
    enc = TableEncoder.fit(
        {
            "cut": ["Fair", "Ideal", "Good", "Ideal"],
            "when": ["2024-01-01", "2024-02-15", "2023-12-31", "2024-03-01"],
            "flag": ["true", "false", "true", "true"],
        },
        {"cut": {"kind": "ordinal", "order": ["Fair", "Good", "Ideal"]}},
        scaling="none",
    )
    assert [c["kind"] for c in enc.columns] == ["ordinal", "datetime", "categorical"]
    x = enc.transform({"cut": ["Good"], "when": ["2025-07-04"], "flag": ["false"]})
    # Good is position 1; 2025-07-04 was a Friday (day of week 4)
    assert x[0].tolist() == [1.0, 2025.0, 7.0, 4.0, 4.0, 1.0, 0.0, 0.0]
    with pytest.raises(DataError, match=r"'cut' holds 'Superb'.*not in its declared order"):
        enc.transform({"cut": ["Superb"], "when": ["2024-01-01"], "flag": ["true"]})


def test_identifier_columns_are_detected():
    assert detect_kind([f"id-{i}" for i in range(20)]) == "id"
    assert detect_kind([str(i) for i in range(100, 120)]) == "id"
    assert detect_kind([str(i * 1.5) for i in range(20)]) == "numeric"  # distinct measurements are data
    with pytest.warns(UserWarning, match="'row' is unique per row"):
        enc = TableEncoder.fit({"row": [str(i) for i in range(20)], "v": [str(i % 3) for i in range(20)]})
    assert enc.inputs == ["v"]


def test_encoder_round_trips_through_json():
    enc = TableEncoder.fit({"a": ["1", "", "3"], "b": ["x", "y", "x"]})
    again = TableEncoder.from_dict(json.loads(json.dumps(enc.to_dict())))
    data = {"a": ["2", ""], "b": ["y", "z"]}
    np.testing.assert_array_equal(enc.transform(data), again.transform(data))
    assert again.groups == {"a": [0, 1], "b": [2, 3, 4]}


def test_entirely_missing_column_is_refused():
    with pytest.raises(DataError, match=r"column 'empty' has no values in the training rows"):
        TableEncoder.fit({"empty": ["", "NA", "?"], "v": ["1", "2", "3"]})
