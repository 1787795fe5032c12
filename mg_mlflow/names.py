"""What a registered model name and a registry alias may be, checked before anything runs.

MLflow's own rules (``mlflow/utils/validation.py``: ``_validate_model_name``,
``_validate_model_alias_name``, ``_validate_model_alias_name_reserved``) plus what the places a name
travels to can hold: a ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` URI, a folder name of the
model cache (at most 200 characters), and a quoted MLflow filter string (``name = 'NAME'``). So a
name is letters, digits, ``-``, ``_`` and ``.``; an alias letters, digits, ``-`` and ``_``, and neither
``latest`` nor a version alias such as ``v2``.
"""

from __future__ import annotations

import re

MAX_NAME = 200
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
ALIAS = re.compile(r"^[A-Za-z0-9_-]+$")
VERSION_ALIAS = re.compile(r"^[vV]\d+$")  # MLflow's _REGISTERED_MODEL_ALIAS_VERSION_REGEX
# MLflow names a logged model "m-" + 32 hex digits (uuid4().hex: mlflow/store/tracking/sqlalchemy_store.py
# and file_store.py). Only a bare models:/m-<id> is one: models:/m-support/1 and models:/m-support@prod
# are versions of a registered model named m-support (mlflow/store/artifact/utils/models.py reads a
# /suffix or @alias as a registered model's, whatever its name).
LOGGED_MODEL_ID = re.compile(r"^m-[0-9a-f]{32}$")


def is_logged_model_id(text: str) -> bool:
    """True for an MLflow 3 logged-model id (``m-`` and 32 hex digits), e.g. the body of models:/m-<id>."""
    return bool(LOGGED_MODEL_ID.match(text))


def name_problem(name: str, option: str = "--register-as") -> str | None:
    """Why ``name`` cannot be a registered model name (None when it can), naming ``option``."""
    where = f"{option} {name!r}"
    if not isinstance(name, str) or not name.strip():
        return f"{option}: a registered model name cannot be empty"
    if len(name) > MAX_NAME:
        return f"{option}: the name is {len(name)} characters long; a registered model name has at most {MAX_NAME}"
    if "/" in name or ":" in name:
        return (f"{where}: a registered model name cannot contain '/' or ':' (models:/NAME/VERSION reads it as "
                f"a path); use letters, digits, '-', '_' and '.', e.g. {_suggest(name)!r}")
    if not NAME.match(name) or set(name) == {"."}:
        return (f"{where}: a registered model name is letters, digits, '-', '_' and '.' (starting with a letter "
                f"or digit), e.g. {_suggest(name)!r}")
    if is_logged_model_id(name):
        return f"{where}: models:/m-<32 hex digits> is an MLflow logged-model id; choose another name"
    return _mlflow_says("_validate_model_name", name, where)


def alias_problem(alias: str, option: str = "--alias") -> str | None:
    """Why ``alias`` cannot be a registry alias (None when it can), naming ``option``."""
    where = f"{option} {alias!r}"
    if not isinstance(alias, str) or not alias:
        return f"{option}: an alias cannot be empty"
    if len(alias) > MAX_NAME:
        return f"{option}: the alias is {len(alias)} characters long; an alias has at most {MAX_NAME}"
    if not ALIAS.match(alias):
        return f"{where}: an alias is letters, digits, '-' and '_', e.g. {_suggest(alias, dots=False)!r}"
    if alias.lower() == "latest":
        return f"{where}: 'latest' is reserved by MLflow (models:/NAME/latest); choose another alias, e.g. champion"
    if VERSION_ALIAS.match(alias):
        return (f"{where}: MLflow reserves v<number> for versions (models:/NAME@v2 is version 2); choose "
                f"another alias, e.g. champion or release-{alias[1:]}")
    return _mlflow_says("_validate_model_alias_name", alias, where)


def _suggest(text: str, dots: bool = True) -> str:
    allowed = r"[^A-Za-z0-9_.-]+" if dots else r"[^A-Za-z0-9_-]+"
    out = re.sub(allowed, "-", str(text)).strip("-.")[:MAX_NAME] or "my-model"
    return out if out[0].isalnum() else "m" + out


def _mlflow_says(check: str, value: str, where: str) -> str | None:
    """MLflow's own validator, so a rule it adds is enforced here too."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils import validation

    try:
        getattr(validation, check)(value)
        if check == "_validate_model_alias_name":
            validation._validate_model_alias_name_reserved(value)
    except MlflowException as exc:
        return f"{where}: {exc.message}"
    return None
