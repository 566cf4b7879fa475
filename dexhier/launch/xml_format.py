"""Parse the subset of the ROS 2 XML launch format that dexhier's launch files use.

Element and attribute names, substitution syntax and semantics follow ``launch_xml`` / ``launch_ros``
(Jazzy/Kilted), so the same file runs under ``ros2 launch``:

- ``<launch>`` holds actions: ``<arg>``, ``<let>``, ``<set_env>``, ``<group>``,
  ``<push_ros_namespace>`` (or the older ``<push-ros-namespace>``), ``<include>``, ``<node>``.
- Every action takes ``if=`` / ``unless=`` ("true", "false", "1" or "0" after substitution, any case).
- ``<arg name default description>`` (optional ``<choice value>`` children) keeps a value that is
  already set (command line ``name:=value``, ``<include>`` argument or an earlier ``<let>``), else
  takes its default; no value and no default is an error.
- ``<group scoped="true">`` (the default) restores the launch configurations (args, lets, the ROS
  namespace) and the environment (``set_env``) when it ends. ``<include>`` is *not* scoped: what
  the included file sets stays set, exactly as in ROS 2; wrap it in a ``<group>`` to contain it.
- ``<node pkg exec name namespace args output respawn respawn_delay on_exit>`` with ``<param
  name value>``, ``<param from>``, ``<remap from to>`` and ``<env name value>`` children. A
  relative ``namespace`` is appended to the pushed namespace, an absolute one replaces it.
  ``required="true"`` (the ROS 1 spelling) is accepted with a warning: ``ros2 launch`` rejects
  it, ``on_exit="shutdown"`` is the portable form.
- Substitutions: ``$(var name [default])``, ``$(env NAME [default])``, ``$(find-pkg-share pkg)``,
  ``$(dirname)``; arguments are separated by one space and may be quoted; ``\\`` escapes the next
  character. Anything else (``$(eval ...)`` included) is rejected.

Like ``ros2 launch``, a file is checked as a whole when it is loaded (unknown elements, attributes
and substitutions are errors even in branches that an ``if=`` switches off); values are
substituted when the actions run, in document order. Errors are one line naming the file, the
line and the element, and list the valid choices.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

import yaml

log = logging.getLogger("dexhier.launch")


class LaunchError(ValueError):
    """A launch file (or a value in it) this runner cannot run; the message is one line."""


# ------------------------------------------------------------------------------ the node action
ParamValue = bool | int | float | str | list[bool] | list[int] | list[float] | list[str]
OUTPUTS = ("screen", "log", "both")


@dataclass
class NodeAction:
    """One resolved ``<node>``: everything needed to start its process."""

    package: str | None
    executable: str
    name: str | None = None
    namespace: str | None = None  # absolute, or None when neither the node nor a group sets one
    arguments: list[str] = field(default_factory=list)
    params: list[dict[str, ParamValue] | Path] = field(default_factory=list)  # in document order
    remaps: list[tuple[str, str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # set_env + <env>, on top of the runner's env
    output: str = "log"
    respawn: bool = False
    respawn_delay: float = 0.0
    required: bool = False  # on_exit="shutdown": the whole launch stops when this node exits
    source: str = ""  # file:line of the <node> element

    @property
    def full_name(self) -> str | None:
        """``/namespace/name``, or None when the node keeps the name from its code."""
        if self.name is None:
            return None
        return f"{(self.namespace or '').rstrip('/')}/{self.name}"

    @property
    def label(self) -> str:
        """Output prefix: the node name, else the executable name."""
        return self.name or Path(self.executable).name

    def ros_arguments(self) -> list[str]:
        """The ``--ros-args`` part of the command line, in the order launch_ros builds it."""
        out = ["--ros-args"]
        if self.name is not None:
            out += ["-r", f"__node:={self.name}"]
        if self.namespace is not None:
            out += ["-r", f"__ns:={self.namespace}"]
        for params in self.params:
            if isinstance(params, Path):
                out += ["--params-file", str(params)]
            else:
                out += [arg for key, value in params.items() for arg in ("-p", f"{key}:={yaml_value(value)}")]
        for src, dst in self.remaps:
            out += ["-r", f"{src}:={dst}"]
        return out

    def command(self, executable: list[str]) -> list[str]:
        """The full command line, given the resolved executable (a path, or an interpreter + code)."""
        return [*executable, *self.arguments, *self.ros_arguments()]


LaunchDescription = list[NodeAction]


def yaml_value(value: ParamValue) -> str:
    """One-line YAML for a ``-p name:=value`` rule; rcl reads it back with the same type."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, allow_unicode=True).strip()
    return text[: -len("...")].rstrip() if text.endswith("\n...") else text


def param_value(text: str) -> ParamValue:
    """Type a parameter value with YAML rules, as launch_ros does ("5" int, "'5'" str, "[1, 2]" list)."""
    if text == "":
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, list):
        if (
            value
            and all(type(item) is type(value[0]) for item in value)
            and type(value[0]) in (bool, int, float, str)
        ):
            return value
        raise ValueError(f"{text!r} is not a non-empty list of one type (bool, int, float or str)")
    if type(value) not in (bool, int, float, str):
        raise ValueError(f"{text!r} is not a bool, int, float, string or list (quote it to make a string)")
    return value


# ------------------------------------------------------------------------------ XML with line numbers
@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element]
    file: Path
    line: int
    templates: dict[str, Template] = field(default_factory=dict)  # substitution-bearing attributes

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}: <{self.tag}>"


def _load_xml(path: Path) -> Element:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise LaunchError(f"{path}: cannot read the launch file: {err.strerror}") from err
    parser = expat.ParserCreate()
    stack: list[Element] = []
    roots: list[Element] = []

    def start(tag: str, attrs: dict[str, str]) -> None:
        element = Element(tag, dict(attrs), [], path, parser.CurrentLineNumber)
        (stack[-1].children if stack else roots).append(element)
        stack.append(element)

    parser.StartElementHandler = start
    parser.EndElementHandler = lambda tag: stack.pop()
    try:
        parser.Parse(data, True)
    except expat.ExpatError as err:
        raise LaunchError(f"{path}:{err.lineno}: not well-formed XML: {expat.ErrorString(err.code)}") from err
    root = roots[0]
    if root.tag != "launch":
        raise LaunchError(f"{path}:{root.line}: the root element must be <launch>, not <{root.tag}>")
    _check(root, "")
    return root


# ------------------------------------------------------------------------------ the schema
@dataclass(frozen=True)
class _Spec:
    attrs: tuple[str, ...]
    required: tuple[str, ...] = ()
    children: tuple[str, ...] = ()
    literal: tuple[str, ...] = ()  # attributes read as text, without substitutions (as in ROS 2)


_COND = ("if", "unless")
ACTIONS = ("arg", "let", "set_env", "group", "push_ros_namespace", "push-ros-namespace", "include", "node")
_PUSH = _Spec(("namespace", *_COND), ("namespace",))
_SPECS: dict[str, _Spec] = {
    "launch": _Spec((), children=ACTIONS),
    "arg": _Spec(("name", "default", "description", *_COND), ("name",), ("choice",), ("name", "description")),
    "arg/choice": _Spec(("value",), ("value",), literal=("value",)),
    "let": _Spec(("name", "value", *_COND), ("name", "value")),
    "set_env": _Spec(("name", "value", *_COND), ("name", "value")),
    "group": _Spec(("scoped", *_COND), children=ACTIONS, literal=("scoped",)),
    "push_ros_namespace": _PUSH,
    "push-ros-namespace": _PUSH,
    "include": _Spec(("file", *_COND), ("file",), ("arg",)),
    "include/arg": _Spec(("name", "value"), ("name", "value")),
    "node": _Spec(
        (
            "pkg",
            "exec",
            "name",
            "namespace",
            "args",
            "output",
            "respawn",
            "respawn_delay",
            "on_exit",
            "required",
            *_COND,
        ),
        ("exec",),
        ("param", "remap", "env"),
        ("respawn_delay", "on_exit", "required"),
    ),
    "node/param": _Spec(("name", "value", "from")),
    "node/remap": _Spec(("from", "to"), ("from", "to")),
    "node/env": _Spec(("name", "value"), ("name", "value")),
}


def _choices(names: tuple[str, ...]) -> str:
    return ", ".join(sorted(names)) if names else "none"


def _check(el: Element, parent: str) -> None:
    """Validate names, attributes and substitution syntax of ``el`` and its subtree."""
    spec = _SPECS.get(f"{parent}/{el.tag}") or _SPECS[el.tag]
    for attr in el.attrs:
        if attr not in spec.attrs:
            raise LaunchError(f"{el.where}: unknown attribute '{attr}' (valid: {_choices(spec.attrs)})")
    for attr in spec.required:
        if attr not in el.attrs:
            raise LaunchError(f"{el.where}: missing attribute '{attr}'")
    if "if" in el.attrs and "unless" in el.attrs:
        raise LaunchError(f"{el.where}: 'if' and 'unless' cannot be used together")
    if el.tag == "param" and ("from" in el.attrs) == ("name" in el.attrs or "value" in el.attrs):
        raise LaunchError(f'{el.where}: use either from="file.yaml" or name="..." value="..."')
    if el.tag == "param" and "from" not in el.attrs and not {"name", "value"} <= set(el.attrs):
        raise LaunchError(f"{el.where}: a name= parameter needs a value= attribute")
    for attr, text in el.attrs.items():
        if attr not in spec.literal:
            el.templates[attr] = parse_template(text, f"{el.where} {attr}=")
    for child in el.children:
        if child.tag not in spec.children:
            raise LaunchError(
                f"{child.file}:{child.line}: unknown element <{child.tag}> in <{el.tag}> "
                f"(valid: {_choices(spec.children)})"
            )
        _check(child, el.tag)


# ------------------------------------------------------------------------------ substitutions
@dataclass(frozen=True)
class Call:
    """``$(name arg ...)``; each argument is itself a template."""

    name: str
    args: tuple[Template, ...]


Template = tuple[str | Call, ...]
# name -> (fewest, most) arguments
SUBSTITUTIONS: dict[str, tuple[int, int]] = {
    "var": (1, 2),
    "env": (1, 2),
    "find-pkg-share": (1, 1),
    "dirname": (0, 0),
}
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def parse_template(text: str, where: str = "") -> Template:
    """Parse attribute text into literal strings and ``$(...)`` calls (launch's frontend grammar)."""
    return _TemplateParser(text, where).top()


class _TemplateParser:
    def __init__(self, text: str, where: str) -> None:
        self.s, self.i, self.where = text, 0, where

    def fail(self, message: str) -> LaunchError:
        return LaunchError(f"{self.where}{self.s!r}: {message}")

    def _parts(self, stop: str) -> Template:
        """Literal text and calls up to (not including) a character in ``stop``."""
        parts: list[str | Call] = []
        buf: list[str] = []
        while self.i < len(self.s) and self.s[self.i] not in stop:
            ch = self.s[self.i]
            if ch == "\\" and self.i + 1 < len(self.s):
                buf.append(self.s[self.i + 1])
                self.i += 2
            elif self.s.startswith("$(", self.i):
                if buf:
                    parts.append("".join(buf))
                    buf = []
                parts.append(self.call())
            else:
                buf.append(ch)
                self.i += 1
        if buf:
            parts.append("".join(buf))
        return tuple(parts)

    def top(self) -> Template:
        return self._parts("")

    def call(self) -> Call:
        self.i += 2
        m = _IDENTIFIER.match(self.s, self.i)
        if m is None:
            raise self.fail("expected a substitution name after '$('")
        name, self.i = m.group(), m.end()
        if name not in SUBSTITUTIONS:
            raise self.fail(f"unknown substitution $({name} ...) (valid: {_choices(tuple(SUBSTITUTIONS))})")
        args: list[Template] = []
        while True:
            if self.i >= len(self.s):
                raise self.fail(f"$({name} ...) is missing its closing ')'")
            if self.s[self.i] == ")":
                self.i += 1
                break
            if self.s[self.i] != " ":
                raise self.fail(f"unexpected {self.s[self.i]!r} in $({name} ...); quote or escape it")
            self.i += 1
            args.append(self.argument(name))
        low, high = SUBSTITUTIONS[name]
        if not low <= len(args) <= high:
            wanted = str(low) if low == high else f"{low} or {high}"
            raise self.fail(f"$({name}) takes {wanted} argument(s), got {len(args)}")
        return Call(name, tuple(args))

    def argument(self, name: str) -> Template:
        quote = self.s[self.i] if self.i < len(self.s) else ""
        if quote in ("'", '"'):
            self.i += 1
            value = self._parts(quote)
            if self.i >= len(self.s):
                raise self.fail(f"unterminated {quote} in $({name} ...)")
            self.i += 1
            return value or ("",)
        value = self._parts(" )'\"(")
        if not value:
            raise self.fail(f"empty argument in $({name} ...) (arguments are separated by one space)")
        if self.i < len(self.s) and self.s[self.i] in "'\"(":
            raise self.fail(f"unexpected {self.s[self.i]!r} in $({name} ...); quote or escape it")
        return value


# ------------------------------------------------------------------------------ namespaces and names
_NODE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAMESPACE = re.compile(r"/|(/[A-Za-z_][A-Za-z0-9_]*)+")


def prefix_namespace(base: str | None, ns: str | None) -> str | None:
    """launch_ros' rule: a relative ``ns`` goes below ``base``, an absolute one replaces it."""
    if base is None and ns is None:
        return None
    if ns is None:
        combined = base or ""
    elif not base or ns.startswith("/"):
        combined = ns
    else:
        combined = ("" if base == "/" else base) + "/" + ns
    combined = combined if combined == "/" else combined.rstrip("/")
    return combined if combined.startswith("/") else "/" + combined


def _as_bool(text: str, where: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise LaunchError(f"{where}: expected true, false, 1 or 0, got {text!r}")


# ------------------------------------------------------------------------------ the interpreter
@dataclass
class _Scope:
    configs: dict[str, str]  # launch configurations: args, lets and 'ros_namespace'
    env: dict[str, str]  # the launch environment: the runner's environment + set_env


class _Interpreter:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.base_env = dict(environ)
        self.scope = _Scope({}, dict(environ))
        self.nodes: list[NodeAction] = []
        self.declared: set[str] = set()
        self.files: list[Path] = []

    # --- substitutions
    def text(self, el: Element, attr: str, default: str | None = None) -> str | None:
        if attr not in el.attrs:
            return default
        return self.evaluate(el.templates[attr], el, attr)

    def evaluate(self, template: Template, el: Element, attr: str) -> str:
        return "".join(part if isinstance(part, str) else self.call(part, el, attr) for part in template)

    def call(self, call: Call, el: Element, attr: str) -> str:
        args = [self.evaluate(arg, el, attr) for arg in call.args]
        where = f"{el.where} {attr}=: $({call.name}{''.join(' ' + a for a in args)})"
        if call.name == "dirname":
            return str(el.file.resolve().parent)
        if call.name == "var":
            if args[0] in self.scope.configs:
                return self.scope.configs[args[0]]
            if len(args) == 2:
                return args[1]
            known = _choices(tuple(k for k in self.scope.configs if k != "ros_namespace"))
            raise LaunchError(f"{where}: launch configuration '{args[0]}' is not set (set here: {known})")
        if call.name == "env":
            if args[0] in self.scope.env:
                return self.scope.env[args[0]]
            if len(args) == 2:
                return args[1]
            raise LaunchError(f"{where}: environment variable '{args[0]}' is not set (give a default)")
        return _package_share(args[0], where)  # find-pkg-share

    # --- actions
    def include(self, path: Path, given: list[tuple[str, str]], where: str) -> None:
        """Run a file's actions in the current scope (ROS 2 does not scope includes)."""
        where = where or str(path)
        if path.suffix != ".xml":
            raise LaunchError(f"{where}: only XML launch files are supported, not {path.name}")
        if not path.is_file():
            raise LaunchError(
                f"{where}: no launch file {path} (relative paths are from the current "
                "directory; use $(dirname)/... for files next to this one)"
            )
        if path.resolve() in self.files:
            raise LaunchError(f"{where}: {path} includes itself")
        root = _load_xml(path)
        _check_required_args(root, [name for name, _ in given], "" if not self.files else where)
        for name, value in given:
            self.scope.configs[name] = value
        self.files.append(path.resolve())
        self.actions(root.children)
        self.files.pop()

    def actions(self, elements: list[Element]) -> None:
        for el in elements:
            if "if" in el.attrs and not _as_bool(self.text(el, "if") or "", f"{el.where} if="):
                continue
            if "unless" in el.attrs and _as_bool(self.text(el, "unless") or "", f"{el.where} unless="):
                continue
            getattr(self, "do_" + el.tag.replace("-", "_"))(el)

    def do_arg(self, el: Element) -> None:
        name = _unescape(el.attrs["name"])
        self.declared.add(name)
        if name not in self.scope.configs:
            default = self.text(el, "default")
            if default is None:
                raise LaunchError(
                    f"{el.where}: required argument '{name}' was not provided "
                    f"(pass {name}:=VALUE); {_describe_args(el.file)}"
                )
            self.scope.configs[name] = default
        choices = [_unescape(c.attrs["value"]) for c in el.children]
        if choices and self.scope.configs[name] not in choices:
            raise LaunchError(
                f"{el.where}: argument '{name}' is {self.scope.configs[name]!r} (valid: {', '.join(choices)})"
            )

    def do_let(self, el: Element) -> None:
        self.scope.configs[self.text(el, "name") or ""] = self.text(el, "value") or ""

    def do_set_env(self, el: Element) -> None:
        self.scope.env[self.text(el, "name") or ""] = self.text(el, "value") or ""

    def do_push_ros_namespace(self, el: Element) -> None:
        ns = prefix_namespace(self.scope.configs.get("ros_namespace"), self.text(el, "namespace"))
        self.scope.configs["ros_namespace"] = _valid_namespace(ns or "/", el.where)

    def do_group(self, el: Element) -> None:
        scoped = _as_bool(el.attrs.get("scoped", "true"), f"{el.where} scoped=")
        saved = _Scope(dict(self.scope.configs), dict(self.scope.env))
        try:
            self.actions(el.children)
        finally:
            if scoped:
                self.scope = saved

    def do_include(self, el: Element) -> None:
        given = [(self.text(a, "name") or "", self.text(a, "value") or "") for a in el.children]
        self.include(Path(self.text(el, "file") or ""), given, el.where)

    def do_node(self, el: Element) -> None:
        name = self.text(el, "name")
        if name is not None and not _NODE_NAME.fullmatch(name):
            raise LaunchError(
                f"{el.where}: invalid node name {name!r} (letters, digits and '_', not starting with a digit)"
            )
        ns = prefix_namespace(self.scope.configs.get("ros_namespace"), self.text(el, "namespace"))
        output = self.text(el, "output", "log") or "log"
        if output not in OUTPUTS:
            raise LaunchError(f"{el.where}: output={output!r} is not supported (valid: {', '.join(OUTPUTS)})")
        on_exit = el.attrs.get("on_exit")
        if on_exit not in (None, "shutdown"):
            raise LaunchError(f"{el.where}: on_exit={on_exit!r} is not supported (valid: shutdown)")
        required = on_exit == "shutdown"
        if "required" in el.attrs:
            log.warning(
                '%s: required= is the ROS 1 spelling and `ros2 launch` rejects it; use on_exit="shutdown"',
                el.where,
            )
            required = required or _as_bool(el.attrs["required"], f"{el.where} required=")
        try:
            delay = float(el.attrs.get("respawn_delay", "0"))
        except ValueError:
            raise LaunchError(f"{el.where}: respawn_delay must be a number of seconds") from None
        node = NodeAction(
            package=self.text(el, "pkg"),
            executable=self.text(el, "exec") or "",
            name=name,
            namespace=None if ns is None else _valid_namespace(ns, el.where),
            arguments=self.split_args(el) if "args" in el.attrs else [],
            env={k: v for k, v in self.scope.env.items() if self.base_env.get(k) != v},
            output=output,
            respawn=_as_bool(self.text(el, "respawn", "false") or "", f"{el.where} respawn="),
            respawn_delay=max(delay, 0.0),
            required=required,
            source=f"{el.file}:{el.line}",
        )
        for child in el.children:
            self.node_child(node, child)
        self.nodes.append(node)

    def node_child(self, node: NodeAction, el: Element) -> None:
        if el.tag == "remap":
            node.remaps.append((self.text(el, "from") or "", self.text(el, "to") or ""))
        elif el.tag == "env":
            node.env[self.text(el, "name") or ""] = self.text(el, "value") or ""
        elif "from" in el.attrs:
            path = Path(self.text(el, "from") or "").absolute()
            if not path.is_file():
                raise LaunchError(f"{el.where}: parameter file {path} does not exist")
            node.params.append(path)
        else:
            name = self.text(el, "name") or ""
            try:
                value = param_value(self.text(el, "value") or "")
            except ValueError as err:
                raise LaunchError(f"{el.where}: parameter '{name}': {err}") from None
            if not node.params or isinstance(node.params[-1], Path):
                node.params.append({})
            params = node.params[-1]
            assert isinstance(params, dict)
            params[name] = value

    def split_args(self, el: Element) -> list[str]:
        """Split ``args=`` like a shell would, but keep each substitution's result in one argument."""
        out: list[str] = []
        current: str | None = None
        for part in el.templates["args"]:
            if isinstance(part, Call):
                current = (current or "") + self.call(part, el, "args")
                continue
            try:
                tokens = shlex.split(part)
            except ValueError as err:
                raise LaunchError(f"{el.where} args=: {err}") from None
            if (part[:1].isspace() or not tokens) and current is not None:
                out.append(current)
                current = None
            for i, token in enumerate(tokens):
                if i == 0 and current is not None:
                    current += token
                else:
                    if current is not None:
                        out.append(current)
                    current = token
            if part[-1:].isspace() and current is not None:
                out.append(current)
                current = None
        if current is not None:
            out.append(current)
        return out


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _valid_namespace(ns: str, where: str) -> str:
    if not _NAMESPACE.fullmatch(ns):
        raise LaunchError(
            f"{where}: invalid namespace {ns!r} ('/'-separated tokens of letters, digits "
            "and '_', not starting with a digit)"
        )
    return ns


def _package_share(package: str, where: str) -> str:
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:  # pragma: no cover - ament_index_python comes with the rclpy wheels
        raise LaunchError(f"{where}: ament_index_python is not installed") from None
    try:
        return get_package_share_directory(package)
    except (PackageNotFoundError, OSError, ValueError):
        prefixes = os.environ.get("AMENT_PREFIX_PATH") or "unset"
        raise LaunchError(
            f"{where}: package '{package}' is not registered in the ament index "
            f"(AMENT_PREFIX_PATH: {prefixes})"
        ) from None


def _args_of(root: Element, conditional: bool = False) -> list[tuple[Element, bool]]:
    """The ``<arg>`` elements of a file, with whether they sit below a conditional group."""
    found: list[tuple[Element, bool]] = []
    for el in root.children:
        if el.tag == "arg":
            found.append((el, conditional))
        elif el.tag == "group":
            found += _args_of(el, conditional or "if" in el.attrs or "unless" in el.attrs)
    return found


def _describe_args(path: Path) -> str:
    try:
        args = _args_of(_load_xml(path))
    except LaunchError:
        return ""
    parts = []
    for el, _ in args:
        default = f"default {el.attrs['default']!r}" if "default" in el.attrs else "required"
        described = f": {el.attrs['description']}" if "description" in el.attrs else ""
        parts.append(f"{el.attrs['name']} ({default}){described}")
    return f"arguments of {path.name}: " + ("; ".join(parts) if parts else "none")


def _check_required_args(root: Element, given: list[str], where: str) -> None:
    """ROS 2 checks that an included file's unconditional args without default are passed to it."""
    for el, conditional in _args_of(root):
        name = _unescape(el.attrs["name"])
        if not conditional and "default" not in el.attrs and name not in given:
            how = "on the command line" if where == "" else f"as <arg> of the <include> at {where}"
            raise LaunchError(
                f"{el.where}: required argument '{name}' was not provided (pass "
                f"{name}:=VALUE {how}); {_describe_args(el.file)}"
            )


# ------------------------------------------------------------------------------ entry point
def parse_launch_file(
    path: str | os.PathLike[str], args: Mapping[str, str] | None = None
) -> LaunchDescription:
    """Resolve a launch file with command-line arguments ``name:=value`` into the nodes to start.

    Raises :class:`LaunchError` (a ``ValueError``) with a one-line message on any problem.
    """
    interp = _Interpreter(os.environ)
    given = list((args or {}).items())
    interp.include(Path(path), given, "")
    for name, _ in given:
        if name not in interp.declared:
            log.warning(
                "%s: argument '%s' is not declared by any <arg> (declared: %s)",
                path,
                name,
                _choices(tuple(interp.declared)),
            )
    seen: set[str] = set()
    for node in interp.nodes:
        if node.full_name is not None and node.full_name in seen:
            log.warning("%s: there is more than one node named %s", node.source, node.full_name)
        seen.add(node.full_name or "")
    return interp.nodes
