"""Stage `prepare@<model>`: generate the model's data and split it into train and test sets."""

from __future__ import annotations

from sklearn.model_selection import train_test_split

from pipeline.common import Dataset, Paths, model_from_argv, model_params, save_dataset
from pipeline.datasets import generate


def prepare(model: str) -> Dataset:
    params = dict(model_params(model)["data"])
    test_size = params.pop("test_size")
    table = generate(params.pop("generator"), **params)
    X_train, X_test, y_train, y_test = train_test_split(
        table.X, table.y, test_size=test_size, stratify=table.y, random_state=params["seed"]
    )
    categorical = [f.name for f in table.features if f.categorical]
    return Dataset([f.name for f in table.features], categorical, X_train, y_train, X_test, y_test)


if __name__ == "__main__":
    name = model_from_argv()
    save_dataset(Paths(name).data, prepare(name))
