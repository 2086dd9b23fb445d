"""
Settings for every script, in nanoGPT's style but strict.

A script declares its settings as plain lower-case globals (int, float, bool, str, or None; an UPPER_CASE
global is a constant, not a setting), then calls

    settings = configure(globals(), json_sections=("model", "training"))

which applies, in order, each argument that names a config file and each --key=value pair:

    python pretrain.py config/small.py --batch_size=32 --start="a=b"

A config file is either Python (config/*.py: plain assignments) or a config.json in the nested
format {"model": {...}, "training": {...}, "finetuning": {...}}; a script applies only the sections
it names. Unknown names are errors with a suggestion, and values are checked against the type of
the default, so a typo never becomes a silent new global.
"""
import ast
import difflib
import json
import os
import re
import sys
import traceback
import types

SETTING_TYPES = (int, float, bool, str, type(None))
JSON_SECTIONS = ("model", "training", "finetuning")


def _fail(message):
    raise SystemExit(message)


def _unknown(name, known, where, what="setting"):
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        hint = f"did you mean '{close[0]}'?"
    else:
        hint = f"known sections: {', '.join(known)}" if what == "section" else "run with --help to list the settings"
    _fail(f"unknown {what} '{name}' in {where}; {hint}")


def _parse_text(name, text, default):
    """Turn the text of --name=text into a value of the default's type."""
    kind = type(default)
    if kind is bool:
        if text.lower() in ("true", "1", "yes", "on"):
            return True
        if text.lower() in ("false", "0", "no", "off"):
            return False
    elif kind is int:
        try:
            return int(text)
        except ValueError:
            pass
    elif kind is float:
        try:
            return float(text)
        except ValueError:
            pass
    elif kind is str:
        return text  # taken as typed: --start="a=b" and --start=1 are both strings
    else:  # default None: a Python literal if it reads as one, else the string
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    _fail(f"setting '{name}' expects {kind.__name__} (default {default!r}), got '{text}'")


def _check_value(name, value, default, where):
    """Check a value from a config file against the default's type; an int is fine for a float."""
    kind = type(default)
    if default is None or type(value) is kind:
        return value
    if kind is float and type(value) is int:
        return float(value)
    _fail(f"setting '{name}' in {where} expects {kind.__name__} (default {default!r}), "
          f"got {type(value).__name__} {value!r}")


def _read_python_config(path):
    namespace = {}
    try:
        with open(path, encoding="utf-8") as f:
            exec(compile(f.read(), path, "exec"), namespace)
    except SyntaxError as e:
        _fail(f"config file {path} has a syntax error on line {e.lineno}: {e.msg}")
    except Exception as e:  # the file ran and raised: name its line, not configurator's
        line = next((frame.lineno for frame in reversed(traceback.extract_tb(e.__traceback__))
                     if frame.filename == path), "?")
        hint = "; a config file sees only the names it sets itself" if isinstance(e, NameError) else ""
        _fail(f"config file {path} failed on line {line} ({type(e).__name__}: {e}){hint}")
    # imported modules, functions and classes a config file may use are not settings; every other name is one,
    # whatever its type, so that a misspelt name or a list where a number belongs is an error, never ignored
    helpers = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)
    return {k: v for k, v in namespace.items() if not k.startswith("_") and not isinstance(v, helpers)}


def _read_json_config(path, json_sections):
    try:
        with open(path, encoding="utf-8") as f:
            nested = json.load(f)
    except json.JSONDecodeError as e:
        _fail(f"config file {path} is not valid JSON (line {e.lineno}: {e.msg})")
    if not isinstance(nested, dict) or not all(isinstance(v, dict) for v in nested.values()):
        _fail(f"config file {path} must hold sections like {{\"model\": {{...}}, \"training\": {{...}}}}")
    for section in nested:
        if section not in JSON_SECTIONS:
            _unknown(section, JSON_SECTIONS, path, what="section")
    if not json_sections:
        _fail(f"this script takes no config.json ({path}); give its settings as --key=value")
    values = {}
    for section in json_sections:  # later sections override earlier ones
        values.update(nested.get(section, {}))
    return values


def _print_help(script_globals, defaults):
    doc = (script_globals.get("__doc__") or "").strip()
    if doc:
        print(doc + "\n")
    comments = {}  # the comment after each setting in the script's source, shown next to its default
    if script_globals.get("__file__"):
        with open(script_globals["__file__"], encoding="utf-8") as f:
            comments = dict(re.findall(r"^(\w+) = [^#\n]*#\s*(.*)$", f.read(), flags=re.MULTILINE))
    print("settings (override with config files and --key=value):")
    width = max(len(f"{k} = {v!r}") for k, v in defaults.items())
    for name, default in defaults.items():
        print(f"  --{f'{name} = {default!r}':<{width}}  {comments.get(name, '')}".rstrip())


def configure(script_globals, json_sections=(), argv=None, verbose=True, skip_others=False):
    """Override the settings in script_globals from argv; return {name: value} of every setting. skip_others=True
    skips the names in config files that are not this script's settings (prepare.py reads pretrain.py's config
    files); a --name=value must still name one of them."""
    argv = sys.argv[1:] if argv is None else argv
    defaults = {k: v for k, v in script_globals.items()
                if not k.startswith("_") and not k.isupper() and isinstance(v, SETTING_TYPES)}
    settings = dict(defaults)
    changes = []  # (name, value, where) in the order applied

    for arg in argv:
        if arg in ("-h", "--help"):
            _print_help(script_globals, defaults)
            raise SystemExit(0)
        if arg.startswith("--"):
            if "=" not in arg:
                _fail(f"argument '{arg}' needs a value: write --name=value")
            name, text = arg[2:].split("=", 1)  # once: values may contain '='
            if name not in defaults:
                _unknown(name, defaults, "the command line")
            changes.append((name, _parse_text(name, text, defaults[name]), "command line"))
            continue
        if not os.path.isfile(arg):
            _fail(f"config file {arg} not found (settings are given as --name=value)")
        is_json = arg.lower().endswith(".json")
        values = _read_json_config(arg, json_sections) if is_json else _read_python_config(arg)
        for name, value in values.items():
            if name not in defaults:
                if skip_others:
                    continue
                _unknown(name, defaults, arg)
            changes.append((name, _check_value(name, value, defaults[name], arg), arg))

    for name, value, where in changes:
        if verbose and value != settings[name]:
            print(f"config: {name} = {value!r} (was {settings[name]!r}; from {where})", file=sys.stderr)
        settings[name] = value
    script_globals.update(settings)
    return settings
