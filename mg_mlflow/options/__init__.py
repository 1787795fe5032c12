"""Options declared once, as dataclass fields, and everything generated from them.

A field declared with :func:`option` (help, choices, group, flags, plugin key, envvar, list
splitting) is at the same time a click option (:func:`click_options`), a YAML key and a
``--set key=value`` override (:func:`build_config`: defaults < YAML < options < ``--set``, validated
once), an MLflow plugin ``-C key=value`` key (:func:`plugin_keys`, :func:`from_plugin`) and an
``mlflow run -P key=value`` extra parameter (:func:`mlflow_params_to_args`). Every string from any of
these sources is turned into the field's type by :func:`coerce`; nothing else in the package does.

A shared helper below every layer: it imports click and yaml, nothing heavy. ``fields`` declares and
coerces, ``merge`` merges sources and writes configurations out, ``cli`` makes click options.
"""

from mg_mlflow.options.cli import (FieldOption, GroupedCommand, MlflowParamsCommand, click_options, generated_params,
                                   mlflow_params_to_args, recipe_options)
from mg_mlflow.options.fields import (BOOL_WORDS, MAX_TEXT, base_type, check_values, cli_flags, coerce, coerce_hint,
                                      default_of, did_you_mean, help_text, is_optional, option, option_label,
                                      parse_bool, parse_pairs, plugin_key, unknown)
from mg_mlflow.options.merge import (build_config, flat_params, from_plugin, from_values, load_yaml, plugin_keys,
                                     to_argv, to_dict, to_yaml)

__all__ = ["BOOL_WORDS", "MAX_TEXT", "FieldOption", "GroupedCommand", "MlflowParamsCommand", "base_type",
           "build_config", "check_values", "cli_flags", "click_options", "coerce", "coerce_hint", "default_of",
           "did_you_mean", "flat_params", "from_plugin", "from_values", "generated_params", "help_text",
           "is_optional", "load_yaml", "mlflow_params_to_args", "option", "option_label", "parse_bool", "parse_pairs",
           "plugin_key", "plugin_keys", "recipe_options", "to_argv", "to_dict", "to_yaml", "unknown"]
