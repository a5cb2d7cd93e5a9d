"""Sphinx configuration of the mr0-inline documentation.

Why Sphinx + pydata-sphinx-theme + MyST-NB (and not MkDocs Material + mkdocstrings):

- the API reference comes from ``sphinx.ext.autodoc`` importing the real objects, so signatures,
  ``__all__`` and numpy-style docstrings (``sphinx.ext.napoleon``) are read as Python sees them;
- MyST-NB executes the tutorials during the build, cell by cell with a per-cell timeout, and a
  failing cell is a build error (``nb_execution_raise_on_error``), so nothing shown is stale;
- Sphinx's nitpicky mode (``-n``) and ``-W`` turn every broken cross-reference, missing page or
  bad docstring into a failed build, which is what CI needs;
- it is what the scientific Python libraries this project sits beside (numpy, scipy, mrpro) use.

The API pages are generated at every build (``_write_api_pages``) from the packages as they are,
so a new public module appears without any edit here. Build with ``scripts/docs.sh``.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import logging
import os
import pkgutil
import shutil
import sys
import warnings
from pathlib import Path
from types import ModuleType

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging as sphinx_logging

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

project = "mr0-inline"
author = "mr0-inline authors"
copyright = "the mr0-inline authors, MIT licence"
release = version = "0.1.0"

extensions = [
    "myst_nb",  # Markdown pages (MyST) and executed notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # numpy-style docstrings
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
]

# -- sources ---------------------------------------------------------------------------------------
# Tutorials are jupytext py:percent files: MyST-NB reads them through jupytext and executes them.
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".py": "myst-nb"}
exclude_patterns = ["_build", "README.md", "conf.py", "**/.ipynb_checkpoints", "jupyter_execute"]
root_doc = "index"

# -- MyST and notebook execution -----------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 4  # `[text](page.md#a-heading)` links resolve and are checked
nb_execution_mode = "force"  # every build runs every tutorial
nb_execution_timeout = int(os.environ.get("MR0_DOCS_CELL_TIMEOUT", "120"))  # seconds per cell
nb_execution_raise_on_error = True  # a failing cell fails the build
nb_execution_show_tb = True  # ... and its traceback is printed
nb_execution_in_temp = True  # a tutorial writes into a temporary folder, never into docs/
nb_merge_streams = True
nb_kernel_rgx_aliases = {".*": "python3"}  # the kernel of the Python that runs Sphinx
# The kernels inherit this. `import mr0core` imports tqdm.auto, which in a kernel without
# ipywidgets warns once that it falls back to text progress bars: true, and not worth a line on
# every tutorial page. Other warnings (stderr) are shown.
os.environ.setdefault("PYTHONWARNINGS", "ignore:IProgress not found")  # by its message

# -- autodoc ---------------------------------------------------------------------------------------
autodoc_default_options: dict[str, object] = {}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True
autoclass_content = "class"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes" as fields: no second entry beside a property

OUR_PACKAGES = ("mr0core", "gadgets", "scheduler")

# -- nitpicky mode ---------------------------------------------------------------------------------
# CI reaches no documentation server, so there is no intersphinx: a reference to a name outside our
# packages (torch.Tensor, numpy.ndarray, pathlib.Path, ...) cannot resolve and is not an error. A
# reference into mr0core, gadgets or scheduler that does not resolve is one.
_OURS = "|".join(OUR_PACKAGES)
nitpick_ignore_regex = [(r"py:.*", rf"(?!(?:{_OURS})\.).*")]

# -- HTML ------------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = "mr0-inline"
html_static_path = ["_static"]
html_css_files = ["mr0.css"]  # a wider text column: code cells of 100 characters fit
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "navbar_align": "left",
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_show_sourcelink = False

# -- the API pages ---------------------------------------------------------------------------------
API_DIR = DOCS / "api" / "generated"


def _public_modules(package: str) -> list[str]:
    """List ``package`` and every module below it with no ``_`` part, sorted."""
    pkg = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def _canonical(obj: object) -> str | None:
    """Return ``module.qualname`` of a class or function, or None for other objects."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not (inspect.isclass(obj) or inspect.isroutine(obj)) or not module or not qualname:
        return None
    return f"{module}.{qualname}"


def _public_names(module: ModuleType) -> list[str]:
    """List a module's public names: its ``__all__``, else the classes and functions it defines."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == module.__name__
    ]


def _directive(module: str, name: str, obj: object) -> list[str]:
    """Write the autodoc directive for ``module.name`` (a class, exception, function, datum)."""
    target = f"{module}.{name}"
    if inspect.isclass(obj):
        kind = "autoexception" if issubclass(obj, BaseException) else "autoclass"
        return [f".. {kind}:: {target}", "   :members:", "   :show-inheritance:", ""]
    if inspect.isroutine(obj):
        return [f".. autofunction:: {target}", ""]
    return [f".. autodata:: {target}", "   :no-value:", ""]


def _summary(obj: object) -> str:
    """Return the first line of an object's docstring, or an empty string."""
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _api_pages() -> dict[str, str]:
    """Map file name → reStructuredText of every public module's API page.

    An object is documented once, on the page of the module that defines it (its ``__module__``,
    when that module is public and publishes the name); where another module re-exports it (a
    package's ``__init__``), that page lists it with a link to where it is documented.
    """
    modules: dict[str, ModuleType] = {}
    for package in OUR_PACKAGES:
        for name in _public_modules(package):
            modules[name] = importlib.import_module(name)
    published = {name: set(_public_names(mod)) for name, mod in modules.items()}

    def home(obj: object) -> str | None:
        canonical = _canonical(obj)
        if canonical is None:
            return None
        module, _, qualname = canonical.rpartition(".")
        if "." in qualname or module not in published or qualname not in published[module]:
            return None  # nested, private or unpublished where defined: documented where found
        return canonical

    pages: dict[str, str] = {}
    for name, mod in modules.items():
        title = f"``{name}``"
        lines = [title, "=" * len(title), "", f".. automodule:: {name}", ""]
        links: list[str] = []
        body: list[str] = []
        for member in _public_names(mod):
            if not hasattr(mod, member):
                raise AttributeError(f"{name}.__all__ names {member!r}, which it does not have")
            obj = getattr(mod, member)
            if inspect.ismodule(obj):
                links.append(f"* :py:mod:`{member} <{obj.__name__}>`: {_summary(obj)}".rstrip())
                continue
            where = home(obj)
            if where is not None and where != f"{name}.{member}":
                links.append(f"* :py:obj:`{member} <{where}>`: {_summary(obj)}".rstrip(": "))
            else:
                body += _directive(name, member, obj)
        if links:
            lines += [".. rubric:: Re-exported here", "", *links, ""]
        lines += body
        children = [m for m in modules if m.rpartition(".")[0] == name]
        if children:
            lines += [".. rubric:: Modules", "", ".. toctree::", "   :maxdepth: 1", ""]
            lines += [f"   {child}" for child in children]
            lines.append("")
        pages[f"{name}.rst"] = "\n".join(lines)
    return pages


def _write_api_pages(app: Sphinx) -> None:
    """Write the API pages into ``api/generated/``.

    Unchanged pages are left alone (so Sphinx does not rebuild them); pages of modules that no
    longer exist are removed.
    """
    API_DIR.mkdir(parents=True, exist_ok=True)
    wanted = _api_pages()  # imports every module (ismrmrd's sets warnings to "default")
    # napoleon (Sphinx's own extension) still uses an interface Sphinx 11 removes: not ours to fix
    warnings.filterwarnings("ignore", message="The mapping interface for autodoc options")
    warnings.filterwarnings("ignore", message="'myst_parser.sphinx_ext.myst_refs.MystReferen")
    for path in API_DIR.iterdir():
        if path.name not in wanted:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    for name, text in wanted.items():
        path = API_DIR / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


def _foreign_docstrings_out(
    app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """Drop the docstring of a function or class that is not ours (re-exported from a library).

    Its formatting is not ours to fix, so it must not fail the build; the entry itself stays.
    """
    if what in ("function", "class", "method", "exception", "classmethod", "staticmethod"):
        module = getattr(obj, "__module__", None) or ""
        if module.split(".")[0] not in OUR_PACKAGES:
            lines[:] = []


def _builtin_xrefs_out(app: Sphinx, doctree: nodes.document) -> None:
    """Turn references to builtin names (``bytes``, ``int``, ...) into plain text.

    The Python domain looks up an unqualified name as a suffix, so ``bytes`` in a signature would
    otherwise resolve to some attribute called ``bytes`` of ours, or be ambiguous.
    """
    for node in list(doctree.findall(addnodes.pending_xref)):
        if node.get("refdomain") == "py" and node.get("reftarget") in _BUILTINS:
            node.replace_self(node.children or nodes.literal(text=node["reftarget"]))


_BUILTINS = frozenset(name for name in dir(builtins) if not name.startswith("_"))


def _resolve_alias(
    app: Sphinx, env: BuildEnvironment, node: addnodes.pending_xref, contnode: nodes.Element
) -> nodes.Element | None:
    """Resolve ``mr0core.Sequence`` (a re-export) to where the object is documented.

    A reference to a name of ours that exists but is not published (private, or not in its
    module's ``__all__``) is shown as plain text. A name that does not exist (a typo, a module
    that was renamed) stays a warning and fails the build.
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if target.split(".")[0] not in OUR_PACKAGES:
        return None
    if any(part.startswith("_") for part in target.split(".")):
        return contnode
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        canonical = _canonical(obj) or (obj.__name__ if inspect.ismodule(obj) else None)
        if canonical is not None and canonical != target:
            domain = env.domains["py"]
            found = domain.resolve_xref(
                env, node["refdoc"], app.builder, node["reftype"], canonical, node, contnode
            )
            if found is not None:
                return found
        return contnode  # it exists, but is not published (not in its module's __all__)
    return None


# -- docstring problems known when the docs were added --------------------------------------------
# Each is a formatting fault in a docstring of ours (the text reads well in the source, but is not
# valid reStructuredText) or a reference to a module that no longer exists. They are listed here so
# that the site builds strictly from the start: any other warning fails the build. Fix the
# docstring, then delete its line (a full build reports lines that no longer match anything).
KNOWN_DOCSTRING_WARNINGS: list[tuple[str, str]] = [
    # (where: "docstring of <object>", what: a fragment of the message); empty: all fixed
]


class _KnownWarnings(logging.Filter):
    """Drop the warnings of ``KNOWN_DOCSTRING_WARNINGS`` before Sphinx counts them."""

    def __init__(self, app: Sphinx) -> None:
        super().__init__()
        self.translate = sphinx_logging.WarningLogRecordTranslator(app)
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        self.translate.filter(record)  # the location as text (Sphinx would do it next anyway)
        text = f"{getattr(record, 'location', '') or ''}: {record.getMessage()}"
        for known in KNOWN_DOCSTRING_WARNINGS:
            if known[0] in text and known[1] in text:
                self.seen.add(known)
                return False
        return True


def _install_known_warnings(app: Sphinx) -> None:
    """Put the filter first on Sphinx's warning handler (before its count and ``-W``)."""
    known = _KnownWarnings(app)
    for handler in logging.getLogger(sphinx_logging.NAMESPACE).handlers:
        if isinstance(handler, sphinx_logging.WarningStreamHandler):
            handler.filters.insert(0, known)

    read_all = []

    def before_read(app: Sphinx, env: BuildEnvironment, docnames: list[str]) -> None:
        read_all.append(set(docnames) >= set(env.found_docs))

    def report(app: Sphinx, exception: BaseException | None) -> None:
        stale = [k for k in KNOWN_DOCSTRING_WARNINGS if k not in known.seen]
        if not all(read_all):
            stale = []  # an incremental build did not read every page
        if known.seen:
            LOGGER.info("%d known docstring problems left out (docs/conf.py)", len(known.seen))
        for where, what in stale:
            LOGGER.info("docs/conf.py: %s %r no longer occurs: delete its line", where, what)

    app.connect("env-before-read-docs", before_read)
    app.connect("build-finished", report)


LOGGER = sphinx_logging.getLogger(__name__)


def setup(app: Sphinx) -> dict[str, object]:
    """Register the API generator, the docstring filter and the reference fixes."""
    _install_known_warnings(app)
    app.connect("builder-inited", _write_api_pages)
    app.connect("autodoc-process-docstring", _foreign_docstrings_out)
    app.connect("doctree-read", _builtin_xrefs_out)
    app.connect("missing-reference", _resolve_alias)
    return {"parallel_read_safe": True}
